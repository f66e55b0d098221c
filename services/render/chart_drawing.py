"""What a chart shows, shape by shape: its series, value range, ticks, labels and titles.

One drawer per shape: a pie; bars, columns, lines or areas over categories;
lines or areas over a time or number scale. Each follows a `Plan` (what the
query's `render` properties ask of the drawing) and hands its series to the
picture's `Canvas` (see `chart_canvas`), which draws them with pygal.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from common.contracts.results import ResultSet
from services.render.chart_axes import (
    MAX_LABELS,
    fitting_labels,
    label_rotation,
    number_ticks,
    thinned,
    time_ticks,
    value_labels,
    zone_name,
)
from services.render.chart_canvas import Canvas
from services.render.chart_columns import ChartColumns
from services.render.chart_kinds import Stacking
from services.render.chart_series import (
    Series,
    aligned,
    downsample,
    labeller,
    percent_of_total,
    pie_slices,
    read_series,
    running_totals,
    to_floats,
    xml_text,
)
from services.render.table import format_datetime, format_number

MAX_CATEGORIES = 50
MAX_SERIES = 10
#: A series with at most this many points shows them as dots.
_DOTS_UP_TO = 60


@dataclass(frozen=True)
class Plan:
    """What the drawing of one kind is asked, beyond its columns (mostly by the query's `render`)."""

    kind: str
    stacking: Stacking | None = None
    accumulate: bool = False
    x_title: str | None = None
    y_title: str | None = None
    hide_legend: bool = False
    y_min: float | None = None
    y_max: float | None = None

    @property
    def limited(self) -> bool:
        return self.y_min is not None or self.y_max is not None


def draw(result: ResultSet, columns: ChartColumns, plan: Plan, canvas: Canvas) -> Any:
    if plan.kind == "piechart":
        return _pie(result, columns, plan, canvas)
    if columns.axis == "category":
        return _over_categories(result, columns, plan, canvas)
    return _over_scale(result, columns, plan, canvas)


# --- pie -------------------------------------------------------------------------------------


def _pie(result: ResultSet, columns: ChartColumns, plan: Plan, canvas: Canvas) -> Any:
    label_of = labeller(result.columns[columns.x].type, canvas.options.zone)
    values = to_floats([row[columns.y[0]] for row in result.rows])
    totals: dict[str, float] = {}
    for row, value in zip(result.rows, values.tolist(), strict=True):
        if value > 0:
            label = label_of(row[columns.x])
            totals[label] = totals.get(label, 0.0) + value
    slices = pie_slices(totals.items())
    total = sum(value for _, value in slices)
    names = [label for label, _ in slices]
    chart = canvas.pie(names, legend_at_bottom=False, show_legend=not plan.hide_legend)
    for label, value in slices:
        chart.add(f"{label}: {format_number(value)} ({value / total:.1%})", value)
    return chart


# --- bars, columns, lines and areas over categories ------------------------------------------

_HORIZONTAL = frozenset({"barchart", "stackedbarchart"})
_AREAS = frozenset({"areachart", "stackedareachart"})


def _over_categories(result: ResultSet, columns: ChartColumns, plan: Plan, canvas: Canvas) -> Any:
    series = _series(result, columns, plan, canvas)
    if not series.lines:
        return canvas.nothing_to_plot()
    grid = aligned(series)
    if plan.stacking == "stacked100":
        grid = percent_of_total(grid)
    labels = series.labels or []
    horizontal = plan.kind in _HORIZONTAL
    low, high = _value_range(grid.values, plan, from_zero=plan.kind != "linechart")
    ticks = _value_ticks(low, high, plan, canvas, horizontal=horizontal)
    if horizontal:
        # Kusto lists the first row on top; pygal's horizontal charts start at the bottom.
        shown = thinned(labels, fitting_labels(len(labels), canvas.plot_height, 16))[::-1]
        rotation = 0
    else:
        shown = thinned(labels, MAX_LABELS)
        rotation = label_rotation(shown, canvas.plot_width)
    x_title, y_title = _titles(result, columns, plan, canvas, series)
    if horizontal:  # pygal writes its x title under the value axis, which runs across here
        x_title, y_title = y_title, x_title
    chart = canvas.over_categories(
        plan.kind,
        grid.names,
        fill_opacity=_fill_opacity(plan),
        clip=plan.limited,
        x_labels=shown,
        x_label_rotation=rotation,
        y_labels=value_labels(ticks, percent=plan.stacking == "stacked100"),
        range=(ticks[0], ticks[-1]),
        zero=min(max(0.0, ticks[0]), ticks[-1]),
        fill=plan.kind in _AREAS,
        show_dots=len(labels) <= _DOTS_UP_TO,
        show_legend=_show_legend(plan, grid.names),
        x_title=x_title,
        y_title=y_title,
        value_formatter=_value_formatter(plan),
    )
    stacked = plan.stacking is not None
    for name, values in zip(grid.names, grid.values, strict=True):
        drawn = [None if np.isnan(value) else float(value) for value in values]
        if stacked:
            drawn = [value or 0.0 for value in drawn]
        chart.add(name, drawn[::-1] if horizontal else drawn)
    return chart


# --- lines and areas over time or numbers ----------------------------------------------------


def _over_scale(result: ResultSet, columns: ChartColumns, plan: Plan, canvas: Canvas) -> Any:
    series = _series(result, columns, plan, canvas)
    if not series.lines:
        return canvas.nothing_to_plot()
    names, lines, (low, high) = _scale_lines(series, plan, canvas.plot_width)
    ticks = _value_ticks(low, high, plan, canvas, horizontal=False)
    x_title, y_title = _titles(result, columns, plan, canvas, series)
    chart = canvas.over_scale(
        names,
        stacked=plan.stacking is not None,
        fill_opacity=_fill_opacity(plan),
        clip=plan.limited,
        fill=plan.kind in _AREAS,
        show_dots=max(len(x) for x, _ in lines) <= _DOTS_UP_TO,
        dots_size=2.5,
        stroke_style={"width": 2 if len(names) <= 3 else 1.5},
        y_labels=value_labels(ticks, percent=plan.stacking == "stacked100"),
        range=(ticks[0], ticks[-1]),
        show_legend=_show_legend(plan, names),
        x_title=x_title,
        y_title=y_title,
        value_formatter=_value_formatter(plan),
        **_scale_axis(lines, columns, canvas),
    )
    for name, (x, y) in zip(names, lines, strict=True):
        chart.add(name, list(zip(x.tolist(), y.tolist(), strict=True)))
    return chart


def _scale_lines(
    series: Series, plan: Plan, points_wanted: int
) -> tuple[list[str], list[tuple[np.ndarray, np.ndarray]], tuple[float, float]]:
    """Each line's points, about `points_wanted` of them; stacked, each line is the top of its band."""
    if plan.stacking is None:
        lines = []
        for line in series.lines:
            kept = downsample(line.x, line.y, points_wanted)
            lines.append((line.x[kept], line.y[kept]))
        every_y = np.concatenate([y for _, y in lines])[np.newaxis, :]
        value_range = _value_range(every_y, plan, from_zero=plan.kind in _AREAS)
        return [line.name for line in series.lines], lines, value_range
    grid = aligned(series)
    if plan.stacking == "stacked100":
        grid = percent_of_total(grid)
    values = np.nan_to_num(grid.values)
    # The same points of every band, picked for the shape of the whole stack.
    kept = downsample(grid.x, values.sum(axis=0), points_wanted)
    tops = np.cumsum(values[:, kept], axis=0)
    return grid.names, [(grid.x[kept], top) for top in tops], _value_range(values, plan, from_zero=True)


def _scale_axis(
    lines: Sequence[tuple[np.ndarray, np.ndarray]], columns: ChartColumns, canvas: Canvas
) -> dict[str, Any]:
    """Labels across a time or number axis, and how pygal writes an x value."""
    start = min(float(x[0]) for x, _ in lines)
    end = max(float(x[-1]) for x, _ in lines)
    zone = canvas.options.zone
    written: Callable[[Any], str]
    if columns.axis == "time":
        labels = [{"value": position, "label": text} for position, text in time_ticks(start, end, zone)]

        def written(seconds: Any) -> str:
            return format_datetime(dt.datetime.fromtimestamp(seconds, zone), zone)

    else:
        labels, written = value_labels(number_ticks(start, end, MAX_LABELS)), format_number
    return {
        "x_labels": labels,
        "x_label_rotation": label_rotation([str(label["label"]) for label in labels], canvas.plot_width),
        "x_value_formatter": written,
    }


# --- shared ----------------------------------------------------------------------------------


def _series(result: ResultSet, columns: ChartColumns, plan: Plan, canvas: Canvas) -> Series:
    series = read_series(
        result,
        columns,
        canvas.options.zone,
        max_categories=MAX_CATEGORIES,
        max_series=MAX_SERIES,
        fold_other=plan.stacking is not None,
    )
    return running_totals(series) if plan.accumulate else series


def _value_range(values: np.ndarray, plan: Plan, *, from_zero: bool) -> tuple[float, float]:
    """The values' span (of the stacks, when stacked), widened to zero for bars and areas."""
    if plan.stacking == "stacked100":
        low, high = 0.0, 100.0
    elif plan.stacking is not None and values.size:
        filled = np.nan_to_num(values)
        low = float(np.where(filled < 0, filled, 0).sum(axis=0).min())
        high = float(np.where(filled > 0, filled, 0).sum(axis=0).max())
    elif np.isfinite(values).any():
        low, high = float(np.nanmin(values)), float(np.nanmax(values))
    else:
        low, high = 0.0, 1.0
    if from_zero:
        low, high = min(low, 0.0), max(high, 0.0)
    return low, high


def _value_ticks(low: float, high: float, plan: Plan, canvas: Canvas, *, horizontal: bool) -> list[float]:
    """Round values for the value axis, within the query's Ymin and Ymax if it set them."""
    if plan.y_min is not None:
        low = plan.y_min
    if plan.y_max is not None:
        high = plan.y_max
    if horizontal:
        longest = max(len(format_number(value)) for value in (low, high))
        most = fitting_labels(MAX_LABELS, canvas.plot_width, longest * 7 + 24)
    else:
        most = fitting_labels(MAX_LABELS, canvas.plot_height, 32)
    ticks = number_ticks(low, high, most)
    if plan.limited:
        # The query's limits are the axis' ends; round values between them label it.
        bottom = plan.y_min if plan.y_min is not None else ticks[0]
        top = plan.y_max if plan.y_max is not None else ticks[-1]
        ticks = sorted({bottom, top, *(tick for tick in ticks if bottom <= tick <= top)})
    return ticks


def _titles(
    result: ResultSet, columns: ChartColumns, plan: Plan, canvas: Canvas, series: Series
) -> tuple[str | None, str | None]:
    """Axis titles: the query's XTitle and YTitle, else the x column and the single y column."""
    x_title = plan.x_title
    if x_title is None:
        x_title = result.columns[columns.x].name
        if columns.axis == "time":
            x_title += f" ({zone_name(canvas.options.zone)})"
    if series.notes:
        x_title = "; ".join([x_title, *series.notes]) if x_title else "; ".join(series.notes)
    y_title = plan.y_title
    if y_title is None and len(columns.y) == 1:
        y_title = result.columns[columns.y[0]].name
        if plan.accumulate:
            y_title += ", running total"
        if plan.stacking == "stacked100":
            y_title += ", % of total"
    return (xml_text(x_title) or None), (xml_text(y_title) if y_title else None)


def _show_legend(plan: Plan, names: Sequence[str]) -> bool:
    # One series is named by the y axis title already.
    return not plan.hide_legend and len(names) > 1


def _fill_opacity(plan: Plan) -> float:
    # Unstacked areas overlap: the ones behind must show through.
    return 0.35 if plan.kind == "areachart" else 0.9


def _value_formatter(plan: Plan) -> Callable[[Any], str]:
    if plan.stacking == "stacked100":
        return lambda value: f"{format_number(value)}%"
    return format_number
