"""A query result as it travels through the blob store.

The query-worker stores what Kusto answered (column names, Kusto types and the
raw wire values) so that render and notifier never need the Kusto client and
every service reads the same bytes. Values stay in their wire form (datetimes
as ISO strings, dynamic as JSON) until a consumer asks for typed ones.
"""

from __future__ import annotations

import datetime as dt
from typing import Any, Literal

from pydantic import BaseModel, Field

#: Kusto's scalar type names, lower-cased, and the numeric ones among them.
NUMERIC_TYPES = frozenset({"int", "long", "real", "decimal"})
TEXT_TYPES = frozenset({"string", "guid"})


class Column(BaseModel):
    name: str
    type: str = Field(description="Kusto scalar type, lower case: string, long, real, datetime, ...")

    @property
    def is_numeric(self) -> bool:
        return self.type in NUMERIC_TYPES

    @property
    def is_datetime(self) -> bool:
        return self.type == "datetime"


class Visualization(BaseModel):
    """What a query's own `render` operator asked for, as Kusto reported it.

    `kind` is the chart Kusto names "Visualization" (timechart, piechart, ...);
    `variant` is its `kind` property (default, unstacked, stacked, stacked100,
    map). Limits Kusto reports as "NaN" (unset) are None here.
    """

    kind: str | None = None
    title: str | None = None
    x_column: str | None = None
    y_columns: list[str] | None = None
    series: list[str] | None = None
    x_title: str | None = None
    y_title: str | None = None
    legend: Literal["visible", "hidden"] | None = None
    y_min: float | None = None
    y_max: float | None = None
    #: Each y value is added to all its predecessors: a running total per series.
    accumulate: bool = False
    variant: str | None = None


class ResultSet(BaseModel):
    columns: list[Column]
    rows: list[list[Any]]
    visualization: Visualization | None = None

    @property
    def row_count(self) -> int:
        return len(self.rows)

    def to_json_bytes(self) -> bytes:
        return self.model_dump_json().encode("utf-8")

    @classmethod
    def from_json_bytes(cls, data: bytes) -> ResultSet:
        return cls.model_validate_json(data)

    def column_index(self, name: str) -> int:
        for index, column in enumerate(self.columns):
            if column.name == name:
                return index
        raise KeyError(name)


def parse_datetime(value: Any) -> dt.datetime | None:
    if value is None or isinstance(value, dt.datetime):
        return value
    text = str(value)
    if text.endswith("Z"):
        text = text[:-1] + "+00:00"
    parsed = dt.datetime.fromisoformat(text)
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.UTC)
