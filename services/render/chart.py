"""A result set as a chart, the way Kusto's `render` operator would draw it.

`render_chart` picks the columns like Kusto picks them (`chart_columns`),
turns rows into series (`chart_series`), draws them with pygal as a static
SVG (`chart_drawing`, `chart_canvas`, `chart_axes`, `chart_style`) and
rasterises it to PNG with cairosvg, because most email clients do not display
SVG. `from_query` (`chart_kinds`) says which kind a query's own `render`
operator asks for.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import cairosvg

from common.contracts.results import ResultSet, Visualization
from services.render.chart_canvas import Canvas
from services.render.chart_columns import ChartColumns, ChartError, choose_columns
from services.render.chart_drawing import Plan, draw
from services.render.chart_kinds import CHART_KINDS, from_query, stacking
from services.render.chart_series import OTHER, pie_slices
from services.render.chart_style import ChartOptions

__all__ = [
    "CHART_KINDS",
    "OTHER",
    "ChartError",
    "ChartOptions",
    "RenderedChart",
    "from_query",
    "pie_slices",
    "render_chart",
]

_DEFAULTS = ChartOptions()


@dataclass(frozen=True)
class RenderedChart:
    svg: bytes
    png: bytes
    width: int
    height: int
    #: Which columns were drawn: "x" (labels, time or numbers), "y" (values) and, if any,
    #: "series"; and what the query's `render` changed: "accumulate", "stacked", "y_min", "y_max".
    columns_used: dict[str, str | list[str] | bool | float] = field(default_factory=dict)


def render_chart(result: ResultSet, kind: str, options: ChartOptions = _DEFAULTS) -> RenderedChart:
    """Draw the result as `kind`, one of `CHART_KINDS`; no rows make a picture that says so."""
    if kind not in CHART_KINDS:
        raise ChartError(f"unsupported chart kind {kind!r}; supported: {', '.join(CHART_KINDS)}")
    hints = result.visualization or Visualization()
    canvas = Canvas(options, options.title if options.title is not None else hints.title)
    plan = _plan(kind, hints)
    columns: ChartColumns | None
    if result.rows:
        columns = choose_columns(result, kind)
        chart = draw(result, columns, plan, canvas)
    else:
        # A query that matched nothing still gets a picture, whatever its columns.
        try:
            columns = choose_columns(result, kind)
        except ChartError:
            columns = None
        chart = canvas.no_rows()
    svg: bytes = chart.render()
    png: bytes = cairosvg.svg2png(bytestring=svg, output_width=options.width, output_height=options.height)
    used: dict[str, str | list[str] | bool | float] = {}
    if columns is not None:
        used.update(columns.names(result))
        used.update(_changes(plan))
    return RenderedChart(svg=svg, png=png, width=options.width, height=options.height, columns_used=used)


def _plan(kind: str, hints: Visualization) -> Plan:
    return Plan(
        kind=kind,
        stacking=stacking(kind, hints),
        accumulate=hints.accumulate and kind != "piechart",
        x_title=hints.x_title,
        y_title=hints.y_title,
        hide_legend=hints.legend == "hidden",
        y_min=hints.y_min if kind != "piechart" else None,
        y_max=hints.y_max if kind != "piechart" else None,
    )


def _changes(plan: Plan) -> dict[str, str | bool | float]:
    """What the query's `render` properties changed in the drawing, so that a surprise can be explained."""
    changes: dict[str, str | bool | float] = {}
    if plan.accumulate:
        changes["accumulate"] = True
    if plan.stacking is not None:
        changes["stacked"] = plan.stacking
    if plan.y_min is not None:
        changes["y_min"] = plan.y_min
    if plan.y_max is not None:
        changes["y_max"] = plan.y_max
    return changes
