"""How a chart looks: its size, light or dark theme, time zone, and a colour per series.

A series keeps its colour from chart to chart: its name hashes to a place in
the theme's palette, so "TEXAS" is drawn in the same colour in every report.
Two names that hash to the same place within one chart are told apart by
moving the later one (in name order) to the next free colour; "Other", the
remainder folded into one slice or band, is always a neutral grey.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from services.render.chart_series import OTHER

#: Sizes outside these bounds make no sense as an image in an email or on a page.
MIN_SIZE = 100
MAX_SIZE = 4000


@dataclass(frozen=True)
class ChartOptions:
    """What the caller decides about a chart, whatever its data.

    `title` None takes the query's own `render` title, if it gave one; `zone`
    is where time labels are read (ticks fall on local round times there).
    """

    title: str | None = None
    width: int = 800
    height: int = 450
    theme: Literal["light", "dark"] = "light"
    zone: dt.tzinfo = dt.UTC

    def __post_init__(self) -> None:
        for name in ("width", "height"):
            size = getattr(self, name)
            if not MIN_SIZE <= size <= MAX_SIZE:
                raise ValueError(f"chart {name} must be {MIN_SIZE} to {MAX_SIZE} pixels, not {size!r}")
        if self.theme not in THEMES:
            raise ValueError(f"chart theme must be one of {', '.join(THEMES)}, not {self.theme!r}")


@dataclass(frozen=True)
class Theme:
    background: str
    text: str
    subtle_text: str
    guide: str
    #: Series colours, told apart from each other and from `other` on this background.
    palette: tuple[str, ...]
    other: str


THEMES: dict[str, Theme] = {
    "light": Theme(
        background="#ffffff",
        text="#1f2328",
        subtle_text="#57606a",
        guide="#d0d7de",
        palette=(
            "#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f", "#edc948",
            "#b07aa1", "#ff9da7", "#9c755f", "#17becf", "#c2378f", "#6a51a3",
        ),
        other="#a0a4a8",
    ),
    "dark": Theme(
        background="#0d1117",
        text="#e6edf3",
        subtle_text="#9198a1",
        guide="#30363d",
        palette=(
            "#79a8e0", "#ffa552", "#ff7b72", "#8fd3cc", "#7ee07a", "#f4d35e",
            "#d2a8e8", "#ffb3bd", "#c9a27e", "#39d0e3", "#e86fd0", "#a08cf2",
        ),
        other="#6e7681",
    ),
}  # fmt: skip


def series_colours(names: Sequence[str], theme: Theme) -> list[str]:
    """One colour per name, in the order given: its own colour unless another name took it first."""
    palette = theme.palette
    taken: dict[int, str] = {}
    for name in sorted(set(names) - {OTHER}):
        place = _home(name, len(palette))
        for probe in range(len(palette)):
            if (place + probe) % len(palette) not in taken:
                taken[(place + probe) % len(palette)] = name
                break
    colour_of = {name: palette[place] for place, name in taken.items()}
    # More names than colours: the rest reuse the palette in turn (callers keep well below it).
    spare = iter(palette * (1 + len(names) // len(palette)))
    return [theme.other if name == OTHER else colour_of.get(name) or next(spare) for name in names]


def _home(name: str, size: int) -> int:
    """A place in the palette fixed by the name alone: not Python's hash, which varies by process."""
    digest = hashlib.blake2b(name.encode("utf-8", "surrogatepass"), digest_size=8).digest()
    return int.from_bytes(digest, "big") % size


def style_settings(theme: Theme, colours: Sequence[str], *, fill_opacity: float = 0.9) -> dict[str, Any]:
    """Keyword arguments for pygal's Style: the theme, these series colours, readable at email size."""
    return {
        "background": theme.background,
        "plot_background": theme.background,
        "foreground": theme.text,
        "foreground_strong": theme.text,
        "foreground_subtle": theme.subtle_text,
        "font_family": "DejaVu Sans, Helvetica, Arial, sans-serif",
        "title_font_size": 16,
        "legend_font_size": 12,
        "label_font_size": 11,
        "major_label_font_size": 11,
        "no_data_font_size": 28,
        "guide_stroke_color": theme.guide,
        "major_guide_stroke_color": theme.guide,
        "guide_stroke_dasharray": "3,3",
        "major_guide_stroke_dasharray": "3,3",
        "opacity": str(fill_opacity),
        "opacity_hover": str(fill_opacity),
        "transition": "0ms",
        # pygal derives further colours from the last one given; a chart always gets all of its own.
        "colors": tuple(colours) or theme.palette[:1],
    }
