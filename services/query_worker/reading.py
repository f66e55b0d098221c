"""Reading a query's result under the step's caps.

A query's result is read as it streams in (`services.query_worker.wire` parses
the body), frame by frame, and reading stops
at the step's caps (rows, and bytes of the rows' JSON) or where Kusto says it
cut the result short itself: the step then fails with ``ResultTooLarge``, or
keeps the rows read so far and says so. A control command's result arrives
whole (the management endpoint does not stream); the same caps are applied to
it once loaded.
"""

from __future__ import annotations

import json
import math
from collections.abc import AsyncGenerator, AsyncIterator, Iterable
from contextlib import aclosing
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, Literal

from aiohttp import ClientResponse, ClientSession
from azure.kusto.data.exceptions import KustoMultiApiError, OneApiError
from azure.kusto.data.response import KustoResponseDataSet

from common.contracts import ErrorCode
from common.errors import KustoError as StepKustoError
from common.results import Column, ResultSet, Visualization
from services.query_worker.wire import Batch, Oversized, ResponseStream


def _names(value: Any) -> list[str] | None:
    """Kusto reports column lists as comma-separated text ("a,b"); accept a JSON list too."""
    if value is None or value == "":
        return None
    if isinstance(value, list):
        return [str(item) for item in value]
    return [name.strip() for name in str(value).split(",") if name.strip()] or None


def _text(value: Any) -> str | None:
    return None if value is None or value == "" else str(value)


def _limit(value: Any) -> float | None:
    """Ymin and Ymax: a number, or "NaN" when the query does not set it."""
    if value is None or isinstance(value, bool):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _legend(value: Any) -> Literal["visible", "hidden"] | None:
    text = str(value).lower() if value is not None else None
    return "visible" if text == "visible" else "hidden" if text == "hidden" else None


def _visualization(response: Any) -> Visualization | None:
    """The query's own `render` request, from the QueryProperties table of a v2 response."""
    for table in response.tables:
        if str(getattr(table, "table_kind", "")).endswith("QueryProperties"):
            return _visualization_of(table.raw_rows)
    return None


def _visualization_of(rows: Iterable[list[Any]]) -> Visualization | None:
    """The `render` request in the rows (TableId, Key, Value) of a QueryProperties table."""
    for row in rows:
        if len(row) >= 3 and row[1] == "Visualization":
            raw = json.loads(row[2]) if isinstance(row[2], str) else row[2]
            if not isinstance(raw, dict) or not raw.get("Visualization"):
                return None
            accumulate = raw.get("Accumulate")
            return Visualization(
                kind=str(raw["Visualization"]),
                title=_text(raw.get("Title")),
                x_column=_text(raw.get("XColumn")),
                y_columns=_names(raw.get("YColumns")),
                series=_names(raw.get("Series")),
                x_title=_text(raw.get("XTitle")),
                y_title=_text(raw.get("YTitle")),
                legend=_legend(raw.get("Legend")),
                y_min=_limit(raw.get("Ymin")),
                y_max=_limit(raw.get("Ymax")),
                accumulate=accumulate is True or str(accumulate).lower() == "true",
                variant=(_text(raw.get("Kind")) or "").lower() or None,
            )
    return None


@dataclass(frozen=True, slots=True)
class QueryResult:
    """What a step read: the result, and whether it stops short of what the query returned."""

    result: ResultSet
    truncated: bool = False
    #: For people: where the result stops and why ("showing 500,000 of more rows (...)").
    note: str | None = None


_encode = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), check_circular=False).encode


def row_size(row: list[Any]) -> int:
    """What a loaded row counts against a byte cap: the UTF-8 length of its values as compact JSON.

    A streamed row counts the bytes of its JSON as it arrived (`wire`), which is
    the same for the compact JSON Kusto sends, and costs nothing to measure.
    """
    text = _encode(row)
    return len(text) if text.isascii() else len(text.encode("utf-8"))


def _amount(size: int) -> str:
    return f"{size / 2**20:,.4g} MB" if size >= 2**20 else f"{size:,} bytes"


@dataclass(frozen=True, slots=True)
class _Stop:
    """Why a result stops short: one of the step's caps, or a limit Kusto reported."""

    #: Completes "the result ...; narrow the query": the failure message.
    failure: str
    #: Completes "showing N of more rows (...)": the truncation note.
    note: str

    @classmethod
    def rows(cls, cap: int) -> _Stop:
        return cls(f"the result has more than {cap:,} rows (the step's max_rows)", "the step's max_rows")

    @classmethod
    def size(cls, cap: int) -> _Stop:
        return cls(
            f"the result has more than {_amount(cap)} of rows (the step's max_bytes)",
            f"the step's max_bytes, {_amount(cap)}",
        )

    @classmethod
    def kusto(cls, message: str) -> _Stop:
        return cls(f"Kusto cut the result short at one of its limits: {message}", f"Kusto: {message}")


def _limits_exceeded(errors: Iterable[OneApiError]) -> _Stop | None:
    """Kusto's partial failure at a query limit (80DA0003), if one of *errors* is it."""
    for error in errors:
        if error.code == "LimitsExceeded" or "LimitsExceeded" in (error.type or ""):
            return _Stop.kusto(error.description or error.message or "query limits exceeded")
    return None


def _limits_reported(columns: list[dict[str, Any]], rows: list[list[Any]]) -> _Stop | None:
    """A QueryLimitsExceeded event in QueryCompletionInformation: Kusto truncated the result."""
    names = [column["ColumnName"] for column in columns]
    for row in rows:
        event = dict(zip(names, row, strict=False))
        if event.get("EventTypeName") == "QueryLimitsExceeded":
            try:
                text = json.loads(event.get("Payload") or "{}").get("Text")
            except (ValueError, AttributeError):
                text = None
            return _Stop.kusto(text or str(event.get("StatusCodeName") or "query limits exceeded"))
    return None


async def _all(batches: AsyncIterator[Batch]) -> list[list[Any]]:
    """Every row of a small table."""
    return [row async for rows, _ in batches for row in rows]


#: The HTTP responses opened in this task while a streamed result is read (see `Session`).
streamed: ContextVar[list[ClientResponse] | None] = ContextVar("adxflow_streamed", default=None)


class Session:
    """The async client's aiohttp session, as the client uses it (``post``, ``close``), mended twice.

    - Responses opened while `streamed` is set are recorded there:
      ``execute_streaming_query`` keeps its response to itself, yet the
      reader parses its body (`wire`), and closes it when it stops early, or
      the connection stays taken (and the server blocked writing the rest)
      until the request's own timeout.
    - An error response's body is read at once: the client's streaming path
      calls ``raise_for_status()``, which releases the response, before it
      reads Kusto's error from it (azure-kusto-data 6.0 with aiohttp 3.14).
    """

    def __init__(self, session: ClientSession) -> None:
        self._session = session

    async def post(self, *args: Any, **kwargs: Any) -> ClientResponse:
        response = await self._session.post(*args, **kwargs)
        if response.status >= 400:
            await response.read()
        opened = streamed.get()
        if opened is not None:
            opened.append(response)
        return response

    async def close(self) -> None:
        await self._session.close()


class ResultReader:
    """The first primary table within the caps, the `render` request, and Kusto's limit signals.

    Fed either the frames of a streamed v2 response (`read`) or a loaded
    response (`read_loaded`); `stop` says why reading ended early, if it did.
    """

    def __init__(self, max_rows: int, max_bytes: int) -> None:
        self.max_rows = max_rows
        self.max_bytes = max_bytes
        self.columns: list[Column] = []
        self.rows: list[list[Any]] = []
        self.size = 0
        self.visualization: Visualization | None = None
        self.stop: _Stop | None = None
        self._primary_seen = False

    def keep(self, row: list[Any], size: int) -> bool:
        """Keep *row* of *size* bytes, or note which cap it would cross and say to stop."""
        if len(self.rows) >= self.max_rows:
            self.stop = _Stop.rows(self.max_rows)
            return False
        if self.size + size > self.max_bytes:
            self.stop = _Stop.size(self.max_bytes)
            return False
        self.rows.append(row)
        self.size += size
        return True

    def read_loaded(self, response: KustoResponseDataSet) -> None:
        primary = response.primary_results
        if primary:
            table = primary[0]
            self.columns = [
                Column(name=c.column_name, type=str(c.column_type).lower()) for c in table.columns
            ]
            for row in table.raw_rows:
                if not self.keep(row, row_size(row)):
                    break
        self.visualization = _visualization(response)

    async def read(self, stream: ResponseStream) -> None:
        """Read *stream* until the data set ends or a cap is reached (the caller closes the response)."""
        try:
            async with aclosing(stream.frames()) as frames:
                await self._frames(frames, stream)
        except Oversized:
            # A row still arriving is already past what the byte cap leaves room for.
            self.stop = _Stop.size(self.max_bytes)
        except KustoMultiApiError as exc:
            # Kusto's errors in place of a row: the rows before them stand.
            self.stop = _limits_exceeded(exc.get_api_errors())
            if self.stop is None:
                raise

    async def _frames(self, frames: AsyncGenerator[dict[str, Any]], stream: ResponseStream) -> None:
        async for frame in frames:
            kind = frame.get("FrameType")
            if kind == "DataSetCompletion":
                errors = frame.get("OneApiErrors") or []
                if frame.get("HasErrors") and errors:
                    raise KustoMultiApiError([{"OneApiErrors": errors}])
                return
            if kind != "DataTable":
                continue
            table = frame.get("TableKind")
            if table == "PrimaryResult" and not self._primary_seen:
                self._primary_seen = True
                self.columns = [
                    Column(name=c["ColumnName"], type=str(c["ColumnType"]).lower()) for c in frame["Columns"]
                ]
                await self._primary(frame["Rows"], stream)
            elif table == "QueryProperties":
                self.visualization = _visualization_of(await _all(frame["Rows"]))
            elif table == "QueryCompletionInformation":
                self.stop = _limits_reported(frame["Columns"], await _all(frame["Rows"]))
            # Any other table (a second primary result among them) is read past.
            if self.stop is not None:
                return

    async def _primary(self, batches: AsyncGenerator[Batch], stream: ResponseStream) -> None:
        stream.ceiling = self.max_bytes - self.size
        async with aclosing(batches):
            async for rows, sizes in batches:
                kept = self._keep_all(rows, sizes)
                stream.ceiling = self.max_bytes - self.size
                if not kept:
                    return

    def _keep_all(self, rows: list[list[Any]], sizes: list[int]) -> bool:
        """Keep a batch of rows, as `keep` would one by one, in less time."""
        room = self.max_rows - len(self.rows)
        total = sum(sizes)
        if len(rows) <= room and self.size + total <= self.max_bytes:
            self.rows.extend(rows)
            self.size += total
            return True
        return all(self.keep(row, size) for row, size in zip(rows, sizes, strict=True))

    def outcome(self, *, truncate: bool) -> QueryResult:
        # Not validated: the rows are the JSON parser's own lists, and validating
        # would copy every one of them (a third more peak memory for short rows).
        result = ResultSet.model_construct(
            columns=self.columns, rows=self.rows, visualization=self.visualization
        )
        if self.stop is None:
            return QueryResult(result)
        if not truncate:
            raise StepKustoError(
                f"{self.stop.failure}; narrow the query, or set on_too_large: truncate",
                code=ErrorCode.RESULT_TOO_LARGE,
            )
        return QueryResult(
            result, truncated=True, note=f"showing {len(self.rows):,} of more rows ({self.stop.note})"
        )
