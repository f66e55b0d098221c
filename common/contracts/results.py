"""A query result as it travels through the blob store.

The query-worker stores what Kusto answered (column names, Kusto types and the
raw wire values) so that render and notifier never need the Kusto client and
every service reads the same bytes. Values stay in their wire form (datetimes
as ISO strings, dynamic as JSON) until a consumer asks for typed ones.

The stored form is `ResultSet`'s JSON. The query-worker writes it with a
`ResultWriter` as the rows arrive, so a big result is never whole in its
memory; `ResultSet.from_json_bytes` reads either the same.
"""

from __future__ import annotations

import codecs
import datetime as dt
import json
import re
from collections.abc import Awaitable, Callable
from json.scanner import make_scanner
from typing import Any, Literal, cast

from pydantic import BaseModel, Field, TypeAdapter, ValidationError

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
        """The result stored as *data*, read a row at a time (see `_read_rows`).

        A result can be hundreds of thousands of rows. Parsed in one call (as
        pydantic's ``model_validate_json`` would), it holds the GIL for the whole
        parse, and a service calling it in a worker thread still stalls its event
        loop (heartbeats, other steps, the broker connection). Row by row, the
        thread gives the GIL up between rows, so ``asyncio.to_thread`` keeps the
        loop running while a big result is read.
        """
        try:
            fields = _read_document(data.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ValueError(f"not a stored result: {exc}") from None
        rows = fields.pop("rows", None)
        if rows is None:
            return cls.model_validate(fields)  # says what is missing
        # The rows were checked while read; the rest is small.
        result = cls.model_validate({**fields, "rows": []})
        result.rows = rows
        return result

    def column_index(self, name: str) -> int:
        for index, column in enumerate(self.columns):
            if column.name == name:
                return index
        raise KeyError(name)


#: Rows as `ResultSet.to_json_bytes` writes them (NaN and infinities as null, as pydantic does).
_ROWS = TypeAdapter(list[list[Any]])
_COLUMNS = TypeAdapter(list[Column])


class ResultWriter:
    """A `ResultSet`'s JSON written piece by piece: the columns, the rows as they come, then the rest.

    The rows go in as values (:meth:`add`), encoded as `ResultSet.to_json_bytes`
    encodes them, or as JSON text that reads back as exactly those values
    (:meth:`add_json`), written as it is. The visualization goes last, once the
    whole response has been read; a JSON reader takes an object's keys in any order.
    """

    def __init__(self, write: Callable[[bytes], Awaitable[None]]) -> None:
        self._write = write
        self._started = False
        self._rows = False
        self._ended = False

    async def start(self, columns: list[Column]) -> None:
        """Write the columns; before any row, and at most once."""
        if self._started:
            raise RuntimeError("the result's columns are written already")
        self._started = True
        await self._write(b'{"columns":' + _COLUMNS.dump_json(columns) + b',"rows":[')

    async def add(self, rows: list[list[Any]]) -> None:
        """Write *rows*."""
        if rows:
            await self._add(_ROWS.dump_json(rows)[1:-1])

    async def add_json(self, text: str) -> None:
        """Write rows given as their JSON, separated by commas (no brackets around them)."""
        if text:
            await self._add(text.encode("utf-8"))

    async def _add(self, data: bytes) -> None:
        if not self._started or self._ended:
            raise RuntimeError("rows go between the columns and the end of the result")
        if self._rows:
            data = b"," + data
        self._rows = True
        await self._write(data)

    async def end(self, visualization: Visualization | None) -> None:
        """Write the visualization and close the JSON (a result without a table has no columns)."""
        if not self._started:
            await self.start([])
        if self._ended:
            raise RuntimeError("the result is written already")
        self._ended = True
        shown = visualization.model_dump_json().encode("utf-8") if visualization is not None else b"null"
        await self._write(b'],"visualization":' + shown + b"}")


_scan: Callable[[str, int], tuple[Any, int]] = make_scanner(cast(Any, json.JSONDecoder()))
_space = re.compile(r"[ \t\n\r]*")
_WHITESPACE = frozenset(" \t\n\r")


def _skip(text: str, pos: int) -> int:
    return _space.match(text, pos).end()  # type: ignore[union-attr]


def _expect(text: str, pos: int, character: str) -> int:
    """The position past *character*, the next that is not whitespace."""
    pos = _skip(text, pos)
    if text[pos : pos + 1] != character:
        raise json.JSONDecodeError(f"expected {character!r}", text, pos)
    return pos + 1


def _value(text: str, pos: int) -> tuple[Any, int]:
    pos = _skip(text, pos)
    try:
        return _scan(text, pos)
    except StopIteration:
        raise json.JSONDecodeError("expected a value", text, pos) from None


def _read_document(text: str) -> dict[str, Any]:
    """The stored result's top-level object, its ``rows`` read by `_read_rows`, the rest whole."""
    fields: dict[str, Any] = {}
    pos = _expect(text, 0, "{")
    if text[_skip(text, pos) : _skip(text, pos) + 1] == "}":
        return fields
    while True:
        key, pos = _value(text, pos)
        pos = _expect(text, pos, ":")
        if key == "rows":
            fields[key], pos = _read_rows(text, pos)
        else:
            fields[key], pos = _value(text, pos)
        pos = _skip(text, pos)
        if text[pos : pos + 1] == "}":
            if _skip(text, pos + 1) != len(text):
                raise json.JSONDecodeError("extra data", text, pos + 1)
            return fields
        pos = _expect(text, pos, ",")


def _read_rows(text: str, pos: int) -> tuple[list[list[Any]], int]:
    """The rows array at *pos*, one C scanner call a row; and where it ends.

    The loop is this module's hot path (a stored result has no whitespace between
    rows, so it is only looked for where a row is not followed by ',' or ']').
    """
    rows: list[list[Any]] = []
    append, scan = rows.append, _scan
    pos = _skip(text, _expect(text, pos, "["))
    if text.startswith("]", pos):
        return rows, pos + 1
    while True:
        try:
            row, pos = scan(text, pos)
        except StopIteration:
            raise json.JSONDecodeError("expected a row", text, pos) from None
        if type(row) is not list:
            raise json.JSONDecodeError("a row is not an array", text, pos)
        append(row)
        after = text[pos : pos + 1]
        if after in _WHITESPACE:
            pos = _skip(text, pos)
            after = text[pos : pos + 1]
        if after == ",":
            pos += 1
            if text[pos : pos + 1] in _WHITESPACE:
                pos = _skip(text, pos)
        elif after == "]":
            return rows, pos + 1
        else:
            raise json.JSONDecodeError("expected ',' or ']' after a row", text, pos)


def parse_datetime(value: Any) -> dt.datetime | None:
    if value is None or isinstance(value, dt.datetime):
        return value
    parsed = dt.datetime.fromisoformat(str(value))  # Python 3.11 reads Kusto's trailing Z
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.UTC)


class RowStream:
    """A stored result's rows read as its bytes arrive, without the whole result in memory.

    Fed the blob's chunks in order (:meth:`feed`), it answers the rows each one
    completed; :attr:`columns` is set once the columns have been read, before
    any row. It reads what `ResultWriter` and `ResultSet.to_json_bytes` write,
    the columns first; anything else is a ``ValueError``, as a truncated result
    is once :meth:`end` is called.
    """

    _HEAD = re.compile(r'\s*\{\s*"columns"\s*:\s*')

    def __init__(self) -> None:
        self._decode = codecs.getincrementaldecoder("utf-8")()
        self._text = ""
        self._pos = 0
        self.columns: list[Column] | None = None
        #: Past the rows' closing bracket: whatever follows is not read.
        self.done = False

    def feed(self, chunk: bytes) -> list[list[Any]]:
        """The rows *chunk* completed (none once the rows are read)."""
        if self.done:
            return []
        try:
            self._text = self._text[self._pos :] + self._decode.decode(chunk)
        except UnicodeDecodeError as exc:
            raise ValueError(f"not a stored result: {exc}") from None
        self._pos = 0
        try:
            if self.columns is None and not self._read_head():
                return []
            return self._read_rows() if self.columns is not None else []
        except (json.JSONDecodeError, ValidationError) as exc:
            raise ValueError(f"not a stored result: {exc}") from None

    def end(self) -> None:
        """The blob has ended: fail unless every row was read."""
        if not self.done:
            raise ValueError("not a stored result: it ends before its rows do")

    def _read_head(self) -> bool:
        head = self._HEAD.match(self._text)
        if head is None:
            if not '{"columns":'.startswith(re.sub(r"\s+", "", self._text[:256])):
                raise json.JSONDecodeError("expected the columns first", self._text, 0)
            return False
        try:
            columns, pos = _value(self._text, head.end())
            pos = _expect(self._text, pos, ",")
            key, pos = _value(self._text, pos)
            pos = _expect(self._text, pos, ":")
            pos = _expect(self._text, pos, "[")
        except json.JSONDecodeError:
            return False
        if key != "rows":
            raise json.JSONDecodeError("expected the rows after the columns", self._text, pos)
        self.columns = _COLUMNS.validate_python(columns)
        self._pos = pos
        return True

    def _read_rows(self) -> list[list[Any]]:
        """The rows completed so far; as `_read_rows` (the module's), whitespace is only looked for
        where a row is not followed by ',' or ']'."""
        rows: list[list[Any]] = []
        append, scan = rows.append, _scan
        text, pos = self._text, _skip(self._text, self._pos)
        size = len(text)
        if text.startswith("]", pos):
            self.done = True
            return rows
        while True:
            try:
                row, after = scan(text, pos)
            except (StopIteration, json.JSONDecodeError):
                break  # the row goes on in the next chunk
            if after < size and text[after] in _WHITESPACE:
                after = _skip(text, after)
            if after >= size:
                break  # what follows the row is in the next chunk
            if type(row) is not list:
                raise json.JSONDecodeError("a row is not an array", text, pos)
            append(row)
            following = text[after]
            if following == ",":
                pos = after + 1
                if text[pos : pos + 1] in _WHITESPACE:
                    pos = _skip(text, pos)
                continue
            if following == "]":
                self.done = True
                pos = after + 1
                break
            raise json.JSONDecodeError("expected ',' or ']' after a row", text, after)
        self._pos = pos
        return rows
