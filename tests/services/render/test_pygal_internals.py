"""Render's reach into pygal (services/render/pygal_internals.py), checked on the installed pygal.

Each test fails with pygal's version and the member when a release changes
what the module relies on.
"""

from __future__ import annotations

import importlib
import re
import sys

import pygal

from services.render import pygal_internals
from services.render.pygal_internals import FILL_MEMBER, StackedAreas

VERSION = pygal.__version__
#: The y coordinates of an area's outline in pygal's SVG: every second number after M or L.
_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")


def areas(chart: pygal.XY) -> list[list[float]]:
    """The y coordinates of each series' filled area, in the order of the series."""
    svg = chart.render().decode()
    outlines = re.findall(r'<path d="([^"]+)" class="line reactive', svg)
    return [[float(y) for y in _NUMBER.findall(outline)[1::2]] for outline in outlines]


def two_bands(chart_class: type[pygal.XY]) -> list[list[float]]:
    chart = chart_class(fill=True, show_dots=False, js=[], width=400, height=300)
    chart.add("low", [(0, 1), (10, 1)])
    chart.add("high", [(0, 3), (10, 3)])
    return areas(chart)


def test_an_upper_band_closes_on_the_line_below_it_not_on_zero() -> None:
    low, high = two_bands(StackedAreas)
    stock_low, stock_high = two_bands(pygal.XY)

    zero = max(stock_low)
    line_below = min(low)
    assert stock_high.count(zero) == 2, f"pygal {VERSION}: an XY area no longer closes on zero"
    assert zero not in high, (
        f"pygal {VERSION}: the stacked area's override of Line.{FILL_MEMBER} no longer shapes the "
        "polygon of its area (services/render/pygal_internals.py)"
    )
    assert high.count(line_below) == 2
    assert low == stock_low


def test_the_fill_member_is_where_the_module_overrides_it() -> None:
    fill = getattr(pygal.graph.line.Line, FILL_MEMBER, None)
    assert callable(fill), f"pygal {VERSION}: Line.{FILL_MEMBER} is gone; stacked areas override it"
    assert StackedAreas._fill is not fill
    assert issubclass(pygal.XY, pygal.graph.line.Line), f"pygal {VERSION}: XY no longer draws through Line"


def test_pygal_s_map_finder_is_taken_out_and_stays_out() -> None:
    finder = pygal.PluginImportFixer
    sys.meta_path.append(finder())
    try:
        importlib.reload(pygal_internals)
        assert not any(isinstance(entry, finder) for entry in sys.meta_path), (
            f"pygal {VERSION}: its map finder is no longer recognised by services/render/pygal_internals.py"
        )
    finally:
        sys.meta_path[:] = [entry for entry in sys.meta_path if not isinstance(entry, finder)]
