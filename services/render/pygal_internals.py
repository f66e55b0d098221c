"""The two uses render makes of pygal beyond its public API.

* pygal appends a finder for its map plugins to ``sys.meta_path`` when it is
  imported. The finder has no ``find_spec``, so every failed import anywhere in
  the process (optional dependencies probe with try/import) emits an
  ImportWarning once pygal is loaded, which ``filterwarnings=error`` turns into
  a crash. adxflow draws no maps, so the finder is taken out again here, right
  after pygal is imported: import pygal through this module, first.
* Stacked areas over a time or number scale: pygal stacks areas only over
  categories (``StackedLine``), and an ``XY`` chart fills each line down to
  zero. :class:`StackedAreas` fills each line down to the one below it instead,
  by overriding the private ``Line._fill`` that turns a line's points into the
  polygon of its area, as ``StackedLine`` itself does.

This module is that reach into the library, and nothing else; importing it
checks that the members are still there, and
``tests/services/render/test_pygal_internals.py`` fails, naming pygal's version
and the member, when a release changes how they behave.
"""

from __future__ import annotations

import inspect
import sys
from typing import Any

import pygal
from pygal.graph.line import Line

#: The releases this reach was checked against (pyproject.toml keeps pygal below 4).
CHECKED = "3.0, 3.1"
#: The private member a stacked area overrides.
FILL_MEMBER = "_fill"


class LibraryChanged(RuntimeError):
    """pygal no longer has what this module reaches for."""

    def __init__(self, problem: str) -> None:
        super().__init__(
            f"pygal {pygal.__version__} (checked against {CHECKED}): {problem}; "
            "services/render/pygal_internals.py must be brought up to date"
        )


def _without_map_finder() -> None:
    finder = getattr(pygal, "PluginImportFixer", None)
    if finder is None:
        return  # a pygal that installs no finder leaves nothing to take out
    sys.meta_path[:] = [entry for entry in sys.meta_path if not isinstance(entry, finder)]


def _check_fill() -> None:
    fill = getattr(Line, FILL_MEMBER, None)
    if fill is None or list(inspect.signature(fill).parameters) != ["self", "values"]:
        raise LibraryChanged(f"Line.{FILL_MEMBER}(self, values), which stacked areas override, is gone")
    if not issubclass(pygal.XY, Line):
        raise LibraryChanged(f"pygal.XY no longer draws through Line.{FILL_MEMBER}")


_without_map_finder()
_check_fill()


class StackedAreas(pygal.XY):
    """Areas between each line and the one below it; the series arrive already summed up."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._below: list[Any] | None = None
        super().__init__(*args, **kwargs)

    def _fill(self, values: list[Any]) -> list[Any]:
        below, self._below = self._below, values
        if below is None:
            return list(super()._fill(values))
        return values + below[::-1]
