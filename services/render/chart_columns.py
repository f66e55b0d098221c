"""Which columns a chart draws, picked the way Kusto's `render` picks them.

Without hints: labels from the first non-numeric column, values from the
numeric ones, time on x for a time chart, and one series per value of a text
column. Columns the query's `render ... with (xcolumn=..., ycolumns=...,
series=...)` names win, and are checked like Kusto checks them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

from common.contracts.results import NUMERIC_TYPES, TEXT_TYPES, Column, ResultSet, Visualization
from services.render.chart_kinds import LINE_KINDS

#: What the x axis is: names side by side, or a continuous time or number scale.
Axis = Literal["category", "time", "number"]


class ChartError(ValueError):
    """The result cannot be drawn as the requested kind of chart."""


@dataclass(frozen=True)
class ChartColumns:
    """Indexes of the columns a chart draws, and what its x axis is."""

    axis: Axis
    x: int
    y: tuple[int, ...]
    series: tuple[int, ...] = ()

    def names(self, result: ResultSet) -> dict[str, str | list[str]]:
        names: dict[str, str | list[str]] = {
            "x": result.columns[self.x].name,
            "y": [result.columns[index].name for index in self.y],
        }
        if self.series:
            names["series"] = [result.columns[index].name for index in self.series]
        return names


def choose_columns(result: ResultSet, kind: str) -> ChartColumns:
    hints = result.visualization or Visualization()
    if kind == "piechart":
        return _pie_columns(result, hints)
    if kind == "timechart":
        return _scale_columns(result, hints, kind, "time")
    if kind in LINE_KINDS:
        x = _hinted_x(result, hints)
        columns = result.columns
        if (x is not None and columns[x].is_datetime) or (
            x is None and _first(columns, _is_datetime) is not None
        ):
            return _scale_columns(result, hints, kind, "time")
        numeric = [index for index, column in enumerate(columns) if column.is_numeric]
        unlabelled = _first(columns, lambda column: not column.is_numeric) is None
        if (x is not None and columns[x].is_numeric) or (x is None and unlabelled and len(numeric) >= 2):
            return _scale_columns(result, hints, kind, "number")
    return _category_columns(result, hints, kind)


def _pie_columns(result: ResultSet, hints: Visualization) -> ChartColumns:
    """Labels from the first text (else non-numeric) column; values from the first numeric one."""
    columns = result.columns
    label = _hinted_x(result, hints)
    if label is None:
        label = _first(columns, _is_text)
    if label is None:
        label = _first(columns, lambda column: not column.is_numeric)
    values = _values(result, hints, exclude=label)
    if not values:
        raise ChartError(f"piechart needs a numeric column for its values; columns are {_describe(columns)}")
    if label is None and len(values) >= 2:
        label = values.pop(0)
    if label is None:
        raise ChartError(
            "piechart needs a label column (text or another non-numeric column) besides its numeric "
            f"values; columns are {_describe(columns)}"
        )
    return ChartColumns(axis="category", x=label, y=(values[0],))


def _category_columns(result: ResultSet, hints: Visualization, kind: str) -> ChartColumns:
    """Labels from the first non-numeric column, split by the next one; values from the numeric ones."""
    columns = result.columns
    label = _hinted_x(result, hints)
    if label is None:
        label = _first(columns, lambda column: not column.is_numeric)
    values = _values(result, hints, exclude=label)
    if not values:
        raise ChartError(f"{kind} needs a numeric column for its values; columns are {_describe(columns)}")
    if label is None and len(values) >= 2:
        label = values.pop(0)
    if label is None:
        raise ChartError(
            f"{kind} needs a label column (text or another non-numeric column) besides its numeric "
            f"values; columns are {_describe(columns)}"
        )
    series = _series(result, hints, lambda index: index != label and not columns[index].is_numeric)
    return _with_series(label, values, series, hints, "category")


def _scale_columns(result: ResultSet, hints: Visualization, kind: str, axis: Axis) -> ChartColumns:
    """Time (or numbers) on x; one line per numeric column, or per value of a text column."""
    columns = result.columns
    hinted = _hinted_x(result, hints)
    if axis == "time":
        if hinted is not None and not columns[hinted].is_datetime:
            raise ChartError(f"{kind} needs a datetime x column; {_describe([columns[hinted]])} is not one")
        x = hinted if hinted is not None else _first(columns, _is_datetime)
        if x is None:
            raise ChartError(f"{kind} needs a datetime column; columns are {_describe(columns)}")
    else:
        x = hinted if hinted is not None else _first(columns, lambda column: column.is_numeric)
        if x is None:
            raise ChartError(f"{kind} needs a numeric x column; columns are {_describe(columns)}")
    values = _values(result, hints, exclude=x)
    if not values:
        raise ChartError(f"{kind} needs a numeric column for its values; columns are {_describe(columns)}")
    series = _series(result, hints, lambda index: index != x and _is_text(columns[index]))
    return _with_series(x, values, series, hints, axis)


def _with_series(
    x: int, values: list[int], series: tuple[int, ...], hints: Visualization, axis: Axis
) -> ChartColumns:
    # Split by a column, a chart draws one value column unless the query named several.
    y = values if not series or hints.y_columns else values[:1]
    return ChartColumns(axis=axis, x=x, y=tuple(y), series=series)


def _values(result: ResultSet, hints: Visualization, *, exclude: int | None) -> list[int]:
    if hints.y_columns:
        return [_hinted_column(result, name, "y", numeric_only=True) for name in hints.y_columns]
    return [index for index, column in enumerate(result.columns) if column.is_numeric and index != exclude]


def _series(result: ResultSet, hints: Visualization, usable: Callable[[int], bool]) -> tuple[int, ...]:
    if hints.series:
        return tuple(_hinted_column(result, name, "series") for name in hints.series)
    first = next((index for index in range(len(result.columns)) if usable(index)), None)
    return () if first is None else (first,)


def _hinted_x(result: ResultSet, hints: Visualization) -> int | None:
    return _hinted_column(result, hints.x_column, "x") if hints.x_column else None


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


def _is_text(column: Column) -> bool:
    return column.type in TEXT_TYPES


def _is_datetime(column: Column) -> bool:
    return column.is_datetime


def _first(columns: Sequence[Column], accept: Callable[[Column], bool]) -> int | None:
    return next((index for index, column in enumerate(columns) if accept(column)), None)


def _describe(columns: Sequence[Column]) -> str:
    return ", ".join(f"{column.name}:{column.type}" for column in columns) or "(none)"
