"""pygal drawing one picture as a static SVG: no scripts, no external resources.

A `Canvas` makes the pygal chart of each shape (a pie; bars, columns, lines or
areas over categories; lines or areas over a time or number scale) with the
picture's size, theme, title, series colours and a legend that fits, and
cleans the SVG pygal writes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any
from xml.etree.ElementTree import Element

# First: it imports pygal and mends what pygal's import does to the process.
from services.render.pygal_internals import StackedAreas  # isort: skip

import pygal
from pygal.style import Style

from services.render.chart_series import xml_text
from services.render.chart_style import THEMES, ChartOptions, series_colours, style_settings
from services.render.table import format_number

NO_ROWS = "no rows"
NOTHING_TO_PLOT = "no numeric values to plot"
#: Pixels a chart spends outside its plot area, across and down (axis labels, titles, legend).
_FRAME_WIDTH = 130
_FRAME_HEIGHT = 150
_RECT = ("x", "y", "width", "height")

_CATEGORY_CLASSES: dict[str, Callable[..., Any]] = {
    "barchart": pygal.HorizontalBar,
    "stackedbarchart": pygal.HorizontalStackedBar,
    "columnchart": pygal.Bar,
    "stackedcolumnchart": pygal.StackedBar,
    "linechart": pygal.Line,
    "areachart": pygal.Line,
    "stackedareachart": pygal.StackedLine,
}


class Canvas:
    """A pygal chart factory for one picture: size, theme, title, colours, and the static-SVG finish."""

    def __init__(self, options: ChartOptions, title: str | None) -> None:
        self.options = options
        self.theme = THEMES[options.theme]
        self.title = xml_text(title) if title else None
        self.plot_width = max(100, options.width - _FRAME_WIDTH)
        self.plot_height = max(60, options.height - _FRAME_HEIGHT)

    def pie(self, names: Sequence[str], **settings: Any) -> Any:
        return self._new(pygal.Pie, names, **settings)

    def over_categories(self, kind: str, names: Sequence[str], **settings: Any) -> Any:
        """Bars, columns, lines or areas (*kind*, a chart kind) over category labels."""
        return self._new(_CATEGORY_CLASSES[kind], names, **settings)

    def over_scale(self, names: Sequence[str], *, stacked: bool, **settings: Any) -> Any:
        """Lines or areas over a time or number scale; *stacked*, each series is the top of its band."""
        return self._new(StackedAreas if stacked else pygal.XY, names, **settings)

    def _new(
        self,
        chart_class: Callable[..., Any],
        names: Sequence[str],
        *,
        fill_opacity: float = 0.9,
        clip: bool = False,
        **settings: Any,
    ) -> Any:
        """A chart whose series, added in the order of `names`, get their names' colours."""
        columns = self._legend_columns(names)
        options: dict[str, Any] = {
            "width": self.options.width,
            "height": self.options.height,
            "explicit_size": True,
            "title": self.title,
            "style": Style(
                **style_settings(self.theme, series_colours(names, self.theme), fill_opacity=fill_opacity)
            ),
            "js": [],
            "value_formatter": format_number,
            "margin": 16,
            "legend_at_bottom": True,
            "legend_at_bottom_columns": columns,
            "margin_bottom": 16 + self._legend_rows_missed(len(names), columns),
            "truncate_legend": -1,
            "truncate_label": -1,  # labels come short already; rotation keeps them apart
            "no_data_text": NOTHING_TO_PLOT,
        }
        chart = chart_class(**(options | settings))
        chart.add_xml_filter(self._clip_and_finish if clip else self._finish)
        return chart

    def _legend_columns(self, names: Sequence[str]) -> int:
        longest = max((len(name) for name in names), default=1)
        return max(1, min(len(names), self.options.width // int(longest * 7 + 40)))

    @staticmethod
    def _legend_rows_missed(count: int, columns: int) -> int:
        """Pixels pygal forgets under a bottom legend: it counts its rows rounding down."""
        return 18 if count % columns and count > columns else 0

    def _finish(self, root: Element) -> Element:
        # pygal writes its config into an inline <script> even with js=[], and titles an untitled
        # chart "Pygal"; a static image needs neither.
        for parent in list(root.iter()):
            for child in list(parent):
                if child.tag == "script" or (child.tag == "title" and not self.title and parent is root):
                    parent.remove(child)
        return root

    def _clip_and_finish(self, root: Element) -> Element:
        """Series cut at the plot's edges: a y range the query set leaves values outside it."""
        plots = [group for group in root.iter("g") if (group.get("class") or "").split()[:1] == ["plot"]]
        background = next((child for plot in plots[:1] for child in plot if child.tag == "rect"), None)
        if background is not None:
            # Every plot layer (lines, dots, values) shares the plot's origin, so one clip fits all.
            clip_id = f"{root.get('id') or 'chart'}-plot-area"
            defs = root.makeelement("defs", {})
            area = defs.makeelement("clipPath", {"id": clip_id})
            area.append(area.makeelement("rect", {key: str(background.get(key)) for key in _RECT}))
            defs.append(area)
            plots[0].insert(0, defs)
            for plot in plots:
                for layer in plot:
                    if (layer.get("class") or "").startswith("series"):
                        layer.set("clip-path", f"url(#{clip_id})")
        return self._finish(root)

    def no_rows(self) -> Any:
        # A pie has no axes around the message.
        return self.pie([], no_data_text=NO_ROWS)

    def nothing_to_plot(self) -> Any:
        return self.pie([], no_data_text=NOTHING_TO_PLOT)
