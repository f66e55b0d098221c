"""From result rows to the numbers a chart draws: named series of (x, y) points.

Values arrive in their wire form (numbers, ISO datetime strings, nulls) and
are read column-wise with numpy: a 100,000-row time chart parses in tens of
milliseconds. A series is a y column, or, when the chart splits by a series
column, a y column for one value of it. What Kusto's `render` properties ask
of the numbers (running totals, stacking scaled to 100%) and what keeps a
chart readable (few series, about a point per pixel) happen here too.
"""

from __future__ import annotations

import datetime as dt
import math
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from tsdownsample import MinMaxLTTBDownsampler

from common.contracts.results import ResultSet, parse_datetime
from services.render.table import format_value

if TYPE_CHECKING:
    from services.render.chart_columns import ChartColumns

#: The slice (or band) that sums every series too small to draw on its own.
OTHER = "Other"
PIE_SLICES = 10
_LABEL_LENGTH = 30
_XML_INVALID = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")


@dataclass(frozen=True)
class Line:
    """One series: finite points, sorted by x (category index, Unix time in seconds, or number)."""

    name: str
    x: np.ndarray
    y: np.ndarray


@dataclass(frozen=True)
class Series:
    """Every series of a chart, largest first when split by a column, with what was left out."""

    lines: list[Line]
    #: The category names of a category axis, in x order; None on a time or number axis.
    labels: list[str] | None
    #: For people: what is not drawn ("first 50 of 80 rows", "top 10 of 14 series by total").
    notes: list[str]


@dataclass(frozen=True)
class Grid:
    """Series on shared x positions: `values[i, j]` is series i at `x[j]`, NaN where it has none."""

    names: list[str]
    x: np.ndarray
    values: np.ndarray


def read_series(
    result: ResultSet,
    columns: ChartColumns,
    zone: dt.tzinfo,
    *,
    max_categories: int,
    max_series: int,
    fold_other: bool,
) -> Series:
    """The chart's series; past `max_series`, the rest summed as "Other" (`fold_other`) or left out."""
    rows = result.rows
    if columns.axis == "category":
        x, labels, notes = _categories(result, columns, zone, max_categories)
    else:
        raw = [row[columns.x] for row in rows]
        x, labels, notes = (to_timestamps(raw) if columns.axis == "time" else to_floats(raw)), None, []
    keys, key_names = _series_keys(result, columns, zone)
    y_names = [xml_text(result.columns[index].name) for index in columns.y]
    lines: list[Line] = []
    for y_name, index in zip(y_names, columns.y, strict=True):
        y = to_floats([row[index] for row in rows])
        for key, members in _groups(keys, np.flatnonzero(np.isfinite(x) & np.isfinite(y))):
            key_name = key_names[key]
            name = y_name if key_name is None else key_name if len(y_names) == 1 else f"{key_name}: {y_name}"
            by_x = members[np.argsort(x[members], kind="stable")]
            lines.append(Line(name, x[by_x], y[by_x]))
    if columns.series:
        lines.sort(key=lambda line: float(np.abs(line.y).sum()), reverse=True)
    if len(lines) > max_series:
        notes.append(f"top {max_series} of {len(lines)} series by total")
        kept, rest = lines[:max_series], lines[max_series:]
        lines = [*kept, _summed(rest)] if fold_other else kept
    return Series(lines=lines, labels=labels, notes=notes)


def _categories(
    result: ResultSet, columns: ChartColumns, zone: dt.tzinfo, most: int
) -> tuple[np.ndarray, list[str], list[str]]:
    """Each row's category number (NaN past `most`), the categories' names, and a note if cut.

    Each row is a category of its own, as Kusto draws it; split by a series
    column, a label is one category whichever rows it comes from.
    """
    label_of = labeller(result.columns[columns.x].type, zone)
    rows = result.rows
    if columns.series:
        numbers: dict[str, int] = {}
        x = np.array([numbers.setdefault(label_of(row[columns.x]), len(numbers)) for row in rows], float)
        labels, total, counted = list(numbers), len(numbers), "labels"
    else:
        x = np.arange(len(rows), dtype=float)
        labels, total, counted = [label_of(row[columns.x]) for row in rows[:most]], len(rows), "rows"
    if total <= most:
        return x, labels, []
    x[x >= most] = np.nan
    return x, labels[:most], [f"first {most:,} of {total:,} {counted}"]


def _series_keys(
    result: ResultSet, columns: ChartColumns, zone: dt.tzinfo
) -> tuple[np.ndarray | None, list[str | None]]:
    """Each row's series number, and the series' names: the series columns' labels, joined."""
    if not columns.series:
        return None, [None]
    label_ofs = [(index, labeller(result.columns[index].type, zone)) for index in columns.series]
    if len(label_ofs) == 1:
        index = label_ofs[0][0]
        raw: list[Any] = [row[index] for row in result.rows]
    else:
        raw = [tuple(row[index] for index, _ in label_ofs) for row in result.rows]

    def name_of(value: Any) -> str:
        parts = value if len(label_ofs) > 1 else (value,)
        return ", ".join(label_of(part) for (_, label_of), part in zip(label_ofs, parts, strict=True))

    numbers: dict[str, int] = {}
    try:
        # Each distinct value named once; values whose names agree are one series.
        number_of = {value: numbers.setdefault(name_of(value), len(numbers)) for value in dict.fromkeys(raw)}
        keys = [number_of[value] for value in raw]
    except TypeError:  # a dynamic value (a list or an object) cannot be a dictionary key
        keys = [numbers.setdefault(name_of(value), len(numbers)) for value in raw]
    return np.array(keys, dtype=np.int64), list(numbers)


def _groups(keys: np.ndarray | None, members: np.ndarray) -> Iterator[tuple[int, np.ndarray]]:
    """The rows (`members`, in row order) of each series number, by series number."""
    if keys is None:
        if len(members):
            yield 0, members
        return
    ordered = members[np.argsort(keys[members], kind="stable")]
    numbers = keys[ordered]
    starts = np.flatnonzero(np.r_[True, numbers[1:] != numbers[:-1]]).tolist() if len(ordered) else []
    for start, end in zip(starts, [*starts[1:], len(ordered)], strict=True):
        yield int(numbers[start]), ordered[start:end]


def _summed(lines: Sequence[Line]) -> Line:
    x = np.concatenate([line.x for line in lines])
    y = np.concatenate([line.y for line in lines])
    positions, inverse = np.unique(x, return_inverse=True)
    return Line(OTHER, positions, np.bincount(inverse, weights=y, minlength=len(positions)))


def running_totals(series: Series) -> Series:
    """Kusto's `accumulate=true`: each point is the sum of its series up to it."""
    lines = [Line(line.name, line.x, np.cumsum(line.y)) for line in series.lines]
    return Series(lines=lines, labels=series.labels, notes=series.notes)


def aligned(series: Series) -> Grid:
    """The series on the union of their x positions (every category, on a category axis)."""
    if series.labels is not None:
        x = np.arange(len(series.labels), dtype=float)
    else:
        x = np.unique(np.concatenate([line.x for line in series.lines])) if series.lines else np.empty(0)
    values = np.full((len(series.lines), len(x)), np.nan)
    for row, line in zip(values, series.lines, strict=True):
        positions = np.searchsorted(x, line.x)
        row[np.unique(positions)] = 0.0
        np.add.at(row, positions, line.y)
    return Grid(names=[line.name for line in series.lines], x=x, values=values)


def percent_of_total(grid: Grid) -> Grid:
    """Kusto's `kind=stacked100`: each series as a share of the stack at each x, in percent."""
    values = np.nan_to_num(grid.values)
    totals = values.sum(axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        shares = np.where(totals != 0, values / totals * 100.0, 0.0)
    return Grid(names=grid.names, x=grid.x, values=shares)


def downsample(x: np.ndarray, y: np.ndarray, n_out: int) -> np.ndarray:
    """Indices of about `n_out` points that keep the line's shape (MinMax-LTTB), its ends included."""
    if len(x) <= n_out or n_out < 4:
        return np.arange(len(x))
    chosen = MinMaxLTTBDownsampler().downsample(x, y, n_out=n_out)
    return np.unique(np.concatenate(([0], chosen.astype(np.int64), [len(x) - 1])))


def to_floats(values: Sequence[Any]) -> np.ndarray:
    """Numbers from wire values (numbers, numeric text such as decimals); NaN for nulls and the rest."""
    try:
        numbers = np.array(values, dtype=float)
    except (TypeError, ValueError):
        numbers = np.array([_to_float(value) for value in values], dtype=float)
    if numbers.ndim != 1:
        numbers = np.array([_to_float(value) for value in values], dtype=float)
    numbers[~np.isfinite(numbers)] = np.nan
    return numbers


def to_timestamps(values: Sequence[Any]) -> np.ndarray:
    """Unix times in seconds from wire datetimes; NaN for nulls and values that are not datetimes.

    Kusto writes UTC with a "Z" (`2024-03-01T00:00:00.1230000Z`): numpy reads those at
    once; anything else (an offset, a datetime object) goes through `parse_datetime`.
    """
    texts = [value[:-1] if type(value) is str and value.endswith("Z") else "NaT" for value in values]
    try:
        parsed = np.array(texts, dtype="datetime64[us]")
    except ValueError:
        return np.array([_to_timestamp(value) for value in values], dtype=float)
    seconds = parsed.astype(np.int64) / 1e6
    missing = np.isnat(parsed)
    seconds[missing] = np.nan
    for index in np.flatnonzero(missing).tolist():
        if values[index] is not None:
            seconds[index] = _to_timestamp(values[index])
    return seconds


def _to_float(value: Any) -> float:
    if value is None or isinstance(value, bool):
        return math.nan
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def _to_timestamp(value: Any) -> float:
    try:
        parsed = parse_datetime(value)
    except (TypeError, ValueError):
        return math.nan
    return math.nan if parsed is None else parsed.timestamp()


def labeller(kusto_type: str, zone: dt.tzinfo) -> Callable[[Any], str]:
    """`label` for one column, remembered per distinct value: a column repeats its values a lot."""
    known: dict[Any, str] = {}

    def label_of(value: Any) -> str:
        try:
            return known[value]
        except KeyError:
            text = known[value] = label(kusto_type, value, zone)
            return text
        except TypeError:  # a dynamic value: a list or an object
            return label(kusto_type, value, zone)

    return label_of


def label(kusto_type: str, value: Any, zone: dt.tzinfo) -> str:
    """A value as a category or series name: one line, short, XML-safe; a whole day as its date."""
    text = format_value(kusto_type, value, zone)
    if kusto_type == "datetime" and text:
        text = _day_or_moment(value, zone, text)
    text = " ".join(text.split()) or "(empty)"
    if len(text) > _LABEL_LENGTH:
        text = text[: _LABEL_LENGTH - 1] + "…"
    return xml_text(text)


def _day_or_moment(value: Any, zone: dt.tzinfo, text: str) -> str:
    """A whole day as its date (Kusto bins days in UTC, so a UTC midnight is a day too); any
    other moment to the minute in *zone*, the axis title naming the zone."""
    try:
        moment = parse_datetime(value)
    except (TypeError, ValueError):
        return text
    if moment is None:
        return text
    for candidate in (moment.astimezone(zone), moment.astimezone(dt.UTC)):
        if candidate.time() == dt.time():
            return candidate.date().isoformat()
    local = moment.astimezone(zone)
    return local.strftime("%Y-%m-%d %H:%M" if local.second == local.microsecond == 0 else "%Y-%m-%d %H:%M:%S")


def xml_text(text: str) -> str:
    """Text that XML 1.0 can carry; a stray control character would make the SVG unparseable."""
    return _XML_INVALID.sub("\N{REPLACEMENT CHARACTER}", text)


def pie_slices(totals: Iterable[tuple[str, float]], limit: int = PIE_SLICES) -> list[tuple[str, float]]:
    """The largest `limit` slices, and the rest summed into one "Other" slice."""
    ordered = sorted(totals, key=lambda item: item[1], reverse=True)
    if len(ordered) <= limit + 1:
        return ordered
    return [*ordered[:limit], (OTHER, sum(value for _, value in ordered[limit:]))]
