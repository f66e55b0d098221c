"""Reading a query's result under the step's caps.

A query's result is read as it streams in (`services.query_worker.wire` parses
the body), frame by frame, and reading stops
at the step's caps (rows, and bytes of the rows' JSON) or where Kusto says it
cut the result short itself: the step then fails with ``ResultTooLarge``, or
keeps the rows read so far and says so. A control command's result arrives
whole (the management endpoint does not stream); the same caps are applied to
it once loaded.

The rows go on, batch by batch, to a `ResultWriter` (the blob of the stored
result) as they are read; the reader keeps only the first few of them (the
step's preview) and counts the rest.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import AsyncGenerator, AsyncIterator, Iterable
from contextlib import aclosing
from contextvars import ContextVar
from typing import Any, Literal

from aiohttp import ClientResponse, ClientSession
from azure.kusto.data.exceptions import KustoMultiApiError, OneApiError
from azure.kusto.data.response import KustoResponseDataSet

from common.contracts.errors import KustoError as StepKustoError
from common.contracts.messages import ErrorCode
from common.contracts.results import Column, ResultWriter, Visualization
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


@dataclasses.dataclass(frozen=True, slots=True)
class QueryResult:
    """What a step read, but for the rows past its first few (those went to the `ResultWriter`),
    and whether it stops short of what the query returned."""

    columns: list[Column]
    #: The first rows, as many as the reader was asked to keep.
    head: list[list[Any]]
    row_count: int
    visualization: Visualization | None = None
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


@dataclasses.dataclass(frozen=True, slots=True)
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
    return [row async for batch in batches for row in batch.rows]


#: Rows of a loaded result taken together (sized, counted, written).
_LOADED_BATCH = 1000

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
    The rows kept go to *into*, if given, and the first *head* of them stay in
    `head`; `finish` says what was read and ends what *into* holds.
    """

    def __init__(
        self, max_rows: int, max_bytes: int, *, head: int = 0, into: ResultWriter | None = None
    ) -> None:
        self.max_rows = max_rows
        self.max_bytes = max_bytes
        self.columns: list[Column] = []
        self.head: list[list[Any]] = []
        #: Rows kept, and the bytes of their JSON.
        self.count = 0
        self.size = 0
        self.visualization: Visualization | None = None
        self.stop: _Stop | None = None
        self._head = head
        self._into = into
        self._primary_seen = False

    async def _start(self, columns: list[Column]) -> None:
        self.columns = columns
        if self._into is not None:
            await self._into.start(columns)

    def _fitting(self, sizes: list[int]) -> int:
        """How many of rows of *sizes* fit under the caps; where not all do, note which cap stops them."""
        room = self.max_rows - self.count
        if len(sizes) <= room and self.size + sum(sizes) <= self.max_bytes:
            return len(sizes)
        size = self.size
        for fitting, row_size in enumerate(sizes):
            if fitting >= room:
                self.stop = _Stop.rows(self.max_rows)
                return fitting
            if size + row_size > self.max_bytes:
                self.stop = _Stop.size(self.max_bytes)
                return fitting
            size += row_size
        return len(sizes)

    async def _keep(self, batch: Batch) -> bool:
        """Keep the rows of *batch* that fit under the caps; False once a cap is reached."""
        rows, sizes, text = batch
        fitting = self._fitting(sizes)
        if fitting < len(rows):
            rows, sizes, text = rows[:fitting], sizes[:fitting], None
        wanted = self._head - len(self.head)
        if wanted > 0:
            self.head.extend(rows[:wanted])
        self.count += len(rows)
        self.size += sum(sizes)
        if self._into is not None:
            if text is None:
                await self._into.add(rows)
            else:
                await self._into.add_json(text)
        return self.stop is None

    async def read_loaded(self, response: KustoResponseDataSet) -> None:
        primary = response.primary_results
        if primary:
            table = primary[0]
            await self._start(
                [Column(name=c.column_name, type=str(c.column_type).lower()) for c in table.columns]
            )
            raw = table.raw_rows
            for start in range(0, len(raw), _LOADED_BATCH):
                rows = raw[start : start + _LOADED_BATCH]
                if not await self._keep(Batch(rows, [row_size(row) for row in rows], None)):
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
                columns = frame["Columns"]
                await self._start(
                    [Column(name=c["ColumnName"], type=str(c["ColumnType"]).lower()) for c in columns]
                )
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
            async for batch in batches:
                kept = await self._keep(batch)
                stream.ceiling = self.max_bytes - self.size
                if not kept:
                    return

    async def finish(self, *, truncate: bool) -> QueryResult:
        """What was read; raises `ResultTooLarge` where a cap stopped reading and *truncate* is not set."""
        if self.stop is not None and not truncate:
            raise StepKustoError(
                f"{self.stop.failure}; narrow the query, or set on_too_large: truncate",
                code=ErrorCode.RESULT_TOO_LARGE,
            )
        if self._into is not None:
            await self._into.end(self.visualization)
        read = QueryResult(self.columns, self.head, self.count, self.visualization)
        if self.stop is None:
            return read
        note = f"showing {self.count:,} of more rows ({self.stop.note})"
        return dataclasses.replace(read, truncated=True, note=note)
