"""A result set as a chart, the way Kusto's `render` operator would draw it.

Columns are picked like Kusto picks them (labels from the first text column,
values from numeric ones, time on x for a timechart), drawn with pygal as a
static SVG with no scripts and no external resources, and rasterised to PNG
with cairosvg because most email clients do not display SVG.
"""

from __future__ import annotations

import datetime as dt
import math
import re
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any
from xml.etree.ElementTree import Element

import cairosvg
import pygal

# pygal appends a finder for its map plugins to sys.meta_path. The finder has no find_spec, so
# every failed import anywhere in the process (optional dependencies probe with try/import) emits
# an ImportWarning once pygal is loaded, which filterwarnings=error turns into a crash. adxflow
# draws no maps, so the finder is taken out again, before anything else is imported.
sys.meta_path[:] = [finder for finder in sys.meta_path if not isinstance(finder, pygal.PluginImportFixer)]

from pygal.style import Style  # noqa: E402

from common.results import (  # noqa: E402
    NUMERIC_TYPES,
    TEXT_TYPES,
    Column,
    ResultSet,
    Visualization,
    parse_datetime,
)
from services.render.table import format_datetime, format_number, format_value  # noqa: E402

CHART_KINDS = ("piechart", "barchart", "columnchart", "timechart", "linechart")
PIE_SLICES = 10
OTHER = "Other"
MAX_CATEGORIES = 50
MAX_SERIES = 10
MAX_X_LABELS = 12
_LABEL_LENGTH = 30
_NO_ROWS = "no rows"
_NOTHING_TO_PLOT = "no numeric values to plot"

_STYLE = Style(
    background="#ffffff",
    plot_background="#ffffff",
    foreground="#1f2328",
    foreground_strong="#1f2328",
    foreground_subtle="#57606a",
    font_family="DejaVu Sans, Helvetica, Arial, sans-serif",
    title_font_size=16,
    legend_font_size=12,
    label_font_size=11,
    major_label_font_size=11,
    no_data_font_size=28,
    guide_stroke_color="#d0d7de",
    major_guide_stroke_color="#d0d7de",
    guide_stroke_dasharray="3,3",
    major_guide_stroke_dasharray="3,3",
    opacity="0.9",
    opacity_hover="0.9",
    transition="0ms",
    colors=(
        "#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f", "#edc948",
        "#b07aa1", "#ff9da7", "#9c755f", "#79706e", "#bab0ac",
    ),
)  # fmt: skip


class ChartError(ValueError):
    """The result cannot be drawn as the requested kind of chart."""


@dataclass(frozen=True)
class RenderedChart:
    svg: bytes
    png: bytes
    width: int
    height: int
    #: Which columns were drawn: "x" (labels or time), "y" (values) and, if any, "series".
    columns_used: dict[str, str | list[str]] = field(default_factory=dict)


def render_chart(
    result: ResultSet, kind: str, *, title: str | None = None, width: int = 800, height: int = 450
) -> RenderedChart:
    """Draw the result as `kind` (piechart, barchart, columnchart, timechart, linechart)."""
    if kind not in CHART_KINDS:
        raise ChartError(f"unsupported chart kind {kind!r}; supported: {', '.join(CHART_KINDS)}")
    hints = result.visualization or Visualization()
    frame = _Frame(title=_xml_text(title if title is not None else hints.title), width=width, height=height)
    if result.rows:
        columns = _choose_columns(result, kind)
        chart = _DRAWERS[columns.kind](result, columns, frame)
    else:
        # A query that matched nothing still gets a picture that says so, whatever its columns.
        try:
            columns = _choose_columns(result, kind)
        except ChartError:
            columns = None
        chart = frame.new(pygal.Pie, no_data_text=_NO_ROWS)  # a pie has no axes around the message
    svg: bytes = chart.render()
    png: bytes = cairosvg.svg2png(bytestring=svg, output_width=width, output_height=height)
    columns_used = columns.names(result) if columns is not None else {}
    return RenderedChart(svg=svg, png=png, width=width, height=height, columns_used=columns_used)


@dataclass(frozen=True)
class _Frame:
    """What every chart shares: size, title and the static, script-free SVG settings."""

    title: str | None
    width: int
    height: int

    def new(self, chart_class: Callable[..., Any], **options: Any) -> Any:
        settings: dict[str, Any] = {
            "width": self.width,
            "height": self.height,
            "explicit_size": True,
            "title": self.title,
            "style": _STYLE,
            "js": [],
            "value_formatter": format_number,
            "margin": 16,
            "legend_at_bottom": True,
            "truncate_legend": -1,
            "no_data_text": _NOTHING_TO_PLOT,
        }
        chart = chart_class(**(settings | options))
        chart.add_xml_filter(self._finish_svg)
        return chart

    def legend_columns(self, names: Sequence[str]) -> int:
        longest = max((len(name) for name in names), default=1)
        return max(1, min(len(names), self.width // int(longest * 7 + 40)))

    def _finish_svg(self, root: Element) -> Element:
        # pygal writes its config into an inline <script> even with js=[], and titles an untitled
        # chart "Pygal"; a static image needs neither.
        for parent in list(root.iter()):
            for child in list(parent):
                if child.tag == "script" or (child.tag == "title" and not self.title):
                    parent.remove(child)
        return root


# --- choosing columns ------------------------------------------------------------------------


@dataclass(frozen=True)
class _Columns:
    """Indexes of the columns a chart draws; `kind` is the drawing, after linechart is resolved."""

    kind: str
    x: int
    y: list[int]
    series: int | None = None

    def names(self, result: ResultSet) -> dict[str, str | list[str]]:
        names: dict[str, str | list[str]] = {
            "x": result.columns[self.x].name,
            "y": [result.columns[index].name for index in self.y],
        }
        if self.series is not None:
            names["series"] = result.columns[self.series].name
        return names


def _choose_columns(result: ResultSet, kind: str) -> _Columns:
    if kind == "timechart" or (kind == "linechart" and _has_time_axis(result)):
        return _time_columns(result, kind)
    return _category_columns(result, kind)


def _category_columns(result: ResultSet, kind: str) -> _Columns:
    """Labels from the first text (else non-numeric) column; values from the numeric ones."""
    hints = result.visualization or Visualization()
    columns = result.columns
    numeric = [index for index, column in enumerate(columns) if column.is_numeric]
    if hints.x_column:
        label: int | None = _hinted_column(result, hints.x_column, "x")
    else:
        label = _first(columns, lambda column: column.type in TEXT_TYPES)
        if label is None:
            label = _first(columns, lambda column: not column.is_numeric)
        if label is None and len(numeric) >= 2:
            label = numeric[0]
    if hints.y_columns:
        values = [_hinted_column(result, name, "y", numeric_only=True) for name in hints.y_columns]
    else:
        values = [index for index in numeric if index != label]
    if not values:
        raise ChartError(f"{kind} needs a numeric column for its values; columns are {_describe(columns)}")
    if label is None:
        raise ChartError(
            f"{kind} needs a label column (text or another non-numeric column) besides its numeric "
            f"values; columns are {_describe(columns)}"
        )
    return _Columns(kind=kind, x=label, y=values[:1] if kind == "piechart" else values)


def _time_columns(result: ResultSet, kind: str) -> _Columns:
    """Time from the first datetime column; one line per numeric column, or per text value."""
    hints = result.visualization or Visualization()
    columns = result.columns
    if hints.x_column:
        hinted = _hinted_column(result, hints.x_column, "x")
        if not columns[hinted].is_datetime:
            raise ChartError(f"{kind} needs a datetime x column; {_describe([columns[hinted]])} is not one")
        x: int | None = hinted
    else:
        x = _first(columns, lambda column: column.is_datetime)
    if x is None:
        raise ChartError(f"{kind} needs a datetime column; columns are {_describe(columns)}")
    if hints.series:
        series: int | None = _hinted_column(result, hints.series[0], "series")
    else:
        series = _first(columns, lambda column: column.type in TEXT_TYPES)
    if hints.y_columns:
        y = [_hinted_column(result, name, "y", numeric_only=True) for name in hints.y_columns]
    else:
        y = [index for index, column in enumerate(columns) if column.is_numeric]
    if not y:
        raise ChartError(f"{kind} needs a numeric column for its values; columns are {_describe(columns)}")
    return _Columns(kind="timechart", x=x, y=y[:1] if series is not None else y, series=series)


def _has_time_axis(result: ResultSet) -> bool:
    hints = result.visualization or Visualization()
    if hints.x_column:
        return any(column.name == hints.x_column and column.is_datetime for column in result.columns)
    return any(column.is_datetime for column in result.columns)


def _hinted_column(result: ResultSet, name: str, role: str, *, numeric_only: bool = False) -> int:
    """A column the query's own render operator named, checked like Kusto checks it."""
    try:
        index = result.column_index(name)
    except KeyError:
        raise ChartError(
            f"the query's render names {role} column {name!r}, which is not in the result; "
            f"columns are {_describe(result.columns)}"
        ) from None
    if numeric_only and result.columns[index].type not in NUMERIC_TYPES:
        raise ChartError(f"{role} column {_describe([result.columns[index]])} is not numeric")
    return index


# --- pie -------------------------------------------------------------------------------------


def _pie_chart(result: ResultSet, columns: _Columns, frame: _Frame) -> Any:
    totals: dict[str, float] = {}
    label_type = result.columns[columns.x].type
    for row in result.rows:
        value = _to_float(row[columns.y[0]])
        if value is not None and value > 0:
            label = _label(label_type, row[columns.x])
            totals[label] = totals.get(label, 0.0) + value
    slices = pie_slices(totals.items())
    total = sum(value for _, value in slices)
    chart = frame.new(pygal.Pie, legend_at_bottom=False)
    for label, value in slices:
        chart.add(f"{label}: {format_number(value)} ({value / total:.1%})", value)
    return chart


def pie_slices(totals: Iterable[tuple[str, float]], limit: int = PIE_SLICES) -> list[tuple[str, float]]:
    """The largest `limit` slices, and the rest summed into one "Other" slice."""
    ordered = sorted(totals, key=lambda item: item[1], reverse=True)
    if len(ordered) <= limit + 1:
        return ordered
    return [*ordered[:limit], (OTHER, sum(value for _, value in ordered[limit:]))]


# --- bar, column and category line charts ----------------------------------------------------

_CATEGORY_CLASSES: dict[str, Callable[..., Any]] = {
    "barchart": pygal.HorizontalBar,
    "columnchart": pygal.Bar,
    "linechart": pygal.Line,
}


def _category_chart(result: ResultSet, columns: _Columns, frame: _Frame) -> Any:
    rows = result.rows[:MAX_CATEGORIES]
    label_type = result.columns[columns.x].type
    labels = [_label(label_type, row[columns.x]) for row in rows]
    names = [_xml_text(result.columns[index].name) or "" for index in columns.y]
    horizontal = columns.kind == "barchart"
    options: dict[str, Any] = {"legend_at_bottom_columns": frame.legend_columns(names)}
    if len(rows) < result.row_count:
        options["x_title"] = f"first {len(rows):,} of {result.row_count:,} rows"
    if horizontal:
        # Kusto lists the first row on top; HorizontalBar starts at the bottom. Labels sit on the
        # vertical axis, about one per 14 pixels of plot.
        every = math.ceil(len(labels) / max(2, (frame.height - 130) // 14))
        if every > 1:
            options.update(x_labels_major=labels[::every], show_minor_y_labels=False)
        labels = labels[::-1]
    else:
        every = math.ceil(len(labels) / MAX_X_LABELS)
        if every > 1:
            options.update(x_labels_major_every=every, show_minor_x_labels=False)
        options["x_label_rotation"] = _label_rotation(labels[::every], frame.width)
    if columns.kind == "linechart":
        options["show_dots"] = len(rows) <= 60
    chart = frame.new(_CATEGORY_CLASSES[columns.kind], x_labels=labels, **options)
    for name, index in zip(names, columns.y, strict=True):
        values = [_to_float(row[index]) for row in rows]
        chart.add(name, values[::-1] if horizontal else values)
    return chart


# --- time charts -----------------------------------------------------------------------------


def _time_chart(result: ResultSet, columns: _Columns, frame: _Frame) -> Any:
    lines = _time_series(result, columns)
    if columns.series is not None:
        ranked = sorted(lines.items(), key=lambda item: sum(abs(y) for _, y in item[1]), reverse=True)
        shown = dict(ranked[:MAX_SERIES])
    else:
        shown = lines
    options: dict[str, Any] = {
        "show_dots": max((len(points) for points in shown.values()), default=0) <= 60,
        "dots_size": 2.5,
        "stroke_style": {"width": 1.5},
        "x_value_formatter": _format_pygal_datetime,
        "legend_at_bottom_columns": frame.legend_columns(list(shown)),
    }
    if len(shown) < len(lines):
        options["x_title"] = f"top {len(shown)} of {len(lines)} series by total"
    xs = [x for points in shown.values() for x, _ in points]
    if xs:
        ticks = time_ticks(min(xs), max(xs))
        options["x_labels"] = [{"value": position, "label": label} for position, label in ticks]
        options["x_label_rotation"] = _label_rotation([label for _, label in ticks], frame.width)
    chart = frame.new(pygal.DateTimeLine, **options)
    for name, points in shown.items():
        chart.add(name, downsample(points, frame.width))
    return chart


def _time_series(result: ResultSet, columns: _Columns) -> dict[str, list[tuple[float, float]]]:
    """Points per line, sorted by time: one line per y column, or per value of the series column."""
    lines: dict[str, list[tuple[float, float]]] = {}
    if columns.series is None:
        for index in columns.y:
            lines[_xml_text(result.columns[index].name) or ""] = []
    series_type = result.columns[columns.series].type if columns.series is not None else ""
    for row in result.rows:
        x = _to_timestamp(row[columns.x])
        if x is None:
            continue
        for index in columns.y:
            y = _to_float(row[index])
            if y is None:
                continue
            if columns.series is None:
                name = _xml_text(result.columns[index].name) or ""
            else:
                name = _label(series_type, row[columns.series])
            lines.setdefault(name, []).append((x, y))
    for points in lines.values():
        points.sort(key=lambda point: point[0])
    return lines


_STEPS_IN_SECONDS = (
    1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800,
    3600, 2 * 3600, 3 * 3600, 6 * 3600, 12 * 3600, 86400, 2 * 86400, 7 * 86400, 14 * 86400,
)  # fmt: skip
_STEPS_IN_MONTHS = (1, 2, 3, 6, 12, 24, 60, 120, 240, 600, 1200)
_MONDAY = 4 * 86400  # 1970-01-05, so weekly ticks fall on Mondays


def time_ticks(start: float, end: float, max_ticks: int = MAX_X_LABELS) -> list[tuple[float, str]]:
    """Round tick positions (UTC timestamps) between start and end, with labels fit for the span."""
    span = end - start
    if span <= 0:
        return [(start, _utc(start).strftime("%Y-%m-%d %H:%M"))]
    for step in _STEPS_IN_SECONDS:
        if span / step <= max_ticks - 1:
            origin = _MONDAY if step % (7 * 86400) == 0 else 0
            first = math.ceil((start - origin) / step) * step + origin
            positions = [float(first + n * step) for n in range(int((end - first) // step) + 1)]
            return [
                (position, _utc(position).strftime(_tick_format(step, start, end))) for position in positions
            ]
    months_spanned = span / (30.44 * 86400)
    step_months = next((step for step in _STEPS_IN_MONTHS if months_spanned / step <= max_ticks - 1), 1200)
    first_day = _utc(start)
    month = first_day.year * 12 + first_day.month - 1
    if (first_day.day, first_day.time()) != (1, dt.time()):
        month += 1
    month = -(-month // step_months) * step_months
    ticks = []
    while (position := dt.datetime(month // 12, month % 12 + 1, 1, tzinfo=dt.UTC).timestamp()) <= end:
        ticks.append((position, _utc(position).strftime("%Y-%m" if step_months < 12 else "%Y")))
        month += step_months
    return ticks


def _tick_format(step: int, start: float, end: float) -> str:
    if step < 60:
        return "%H:%M:%S"
    if step < 86400:
        return "%H:%M" if _utc(start).date() == _utc(end).date() else "%m-%d %H:%M"
    return "%Y-%m-%d"


def downsample(points: Sequence[tuple[float, float]], threshold: int) -> list[tuple[float, float]]:
    """Largest-Triangle-Three-Buckets: about `threshold` points that keep the line's shape."""
    count = len(points)
    if threshold < 3 or count <= threshold:
        return list(points)
    every = (count - 2) / (threshold - 2)
    sampled = [points[0]]
    previous = 0
    for bucket in range(threshold - 2):
        start, end = int(bucket * every) + 1, int((bucket + 1) * every) + 1
        following = points[end : min(int((bucket + 2) * every) + 1, count)] or points[-1:]
        mean_x = sum(x for x, _ in following) / len(following)
        mean_y = sum(y for _, y in following) / len(following)
        ax, ay = points[previous]
        previous = max(
            range(start, end),
            key=lambda i: abs((ax - mean_x) * (points[i][1] - ay) - (ax - points[i][0]) * (mean_y - ay)),
        )
        sampled.append(points[previous])
    sampled.append(points[-1])
    return sampled


_DRAWERS: dict[str, Callable[[ResultSet, _Columns, _Frame], Any]] = {
    "piechart": _pie_chart,
    "barchart": _category_chart,
    "columnchart": _category_chart,
    "linechart": _category_chart,
    "timechart": _time_chart,
}


# --- shared helpers --------------------------------------------------------------------------

_XML_INVALID = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")


def _xml_text(text: str | None) -> str | None:
    """Text that XML 1.0 can carry; a stray control character would make the SVG unparseable."""
    return None if text is None else _XML_INVALID.sub("\N{REPLACEMENT CHARACTER}", text)


def _label(kusto_type: str, value: Any) -> str:
    text = format_value(kusto_type, value)
    if kusto_type == "datetime":
        text = text.removesuffix(" 00:00:00")
    text = " ".join(text.split()) or "(empty)"
    if len(text) > _LABEL_LENGTH:
        text = text[: _LABEL_LENGTH - 1] + "…"
    return _xml_text(text) or ""


def _label_rotation(labels: Sequence[str], width: int) -> int:
    """Tilt x labels when, laid flat, they would run into each other."""
    if not labels:
        return 0
    needed = len(labels) * (max(len(label) for label in labels) * 6.5 + 16)
    return 30 if needed > width * 0.8 else 0


def _to_float(value: Any) -> float | None:
    if value is None or isinstance(value, bool):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _to_timestamp(value: Any) -> float | None:
    try:
        parsed = parse_datetime(value)
    except (TypeError, ValueError):
        return None
    return None if parsed is None else parsed.timestamp()


def _format_pygal_datetime(value: dt.datetime) -> str:
    # pygal hands back naive datetimes that are already in UTC.
    return format_datetime(value if value.tzinfo else value.replace(tzinfo=dt.UTC))


def _utc(timestamp: float) -> dt.datetime:
    return dt.datetime.fromtimestamp(timestamp, dt.UTC)


def _first(columns: Sequence[Column], accept: Callable[[Column], bool]) -> int | None:
    return next((index for index, column in enumerate(columns) if accept(column)), None)


def _describe(columns: Sequence[Column]) -> str:
    return ", ".join(f"{column.name}:{column.type}" for column in columns) or "(none)"
