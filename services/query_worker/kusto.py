"""Running KQL with azure-kusto-data's async client, and naming what went wrong.

Trigger values reach Kusto only as query parameters: the worker adds a
``declare query_parameters`` statement typed from the flow's parameter
declarations (unless the query declares them itself) and sends the values in
the request properties, never spliced into the text.

A query's result is read as it streams in, frame by frame, and reading stops
at the step's caps (rows, and bytes of the rows' JSON) or where Kusto says it
cut the result short itself: the step then fails with ``ResultTooLarge``, or
keeps the rows read so far and says so. A control command's result arrives
whole (the management endpoint does not stream); the same caps are applied to
it once loaded.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import inspect
import json
import math
import re
from collections.abc import AsyncIterator, Iterable, Mapping
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, cast

import structlog
from aiohttp import ClientError, ClientResponse, ClientSession
from azure.kusto.data import ClientRequestProperties, KustoConnectionStringBuilder
from azure.kusto.data.aio import KustoClient
from azure.kusto.data.exceptions import (
    KustoApiError,
    KustoAuthenticationError,
    KustoClientError,
    KustoError,
    KustoMultiApiError,
    KustoNetworkError,
    KustoServiceError,
    KustoStreamingQueryError,
    KustoThrottlingError,
    OneApiError,
)
from azure.kusto.data.response import KustoResponseDataSet
from azure.kusto.data.streaming_response import FrameType

from common.connections import Connections, connection_string
from common.contracts import ErrorCode
from common.errors import KustoError as StepKustoError
from common.results import Column, ResultSet, Visualization

log = structlog.get_logger(__name__)

_DECLARES = re.compile(r"^\s*declare\s+query_parameters\s*\(", re.IGNORECASE | re.MULTILINE)
#: Extra time the client waits past ``servertimeout`` for the server's own answer.
_CLIENT_GRACE = 10.0


#: A query parameter: its KQL type and its value (already checked against the type).
Parameters = Mapping[str, tuple[str, Any]]


def kql_literal(kind: str, value: Any) -> str:
    """A parameter value in Kusto's wire form: raw for strings, a KQL literal otherwise."""
    if kind == "string":
        return str(value)
    if kind == "bool":
        return "true" if value else "false"
    if kind in ("int", "long"):
        return str(int(value))
    if kind == "real":
        number = float(value)
        return repr(number) if math.isfinite(number) else f"real({number})"
    if kind == "datetime":
        return f"datetime({value})"
    if kind == "timespan":
        return f"timespan({value})"
    raise ValueError(f"unsupported parameter type {kind!r}")


def with_declarations(query: str, parameters: Parameters) -> str:
    """Declare the parameters, unless the query declares its own."""
    if not parameters or _DECLARES.search(query):
        return query
    declared = ", ".join(f"{name}:{kind}" for name, (kind, _) in parameters.items())
    return f"declare query_parameters({declared});\n{query}"


def request_properties(
    parameters: Parameters, client_request_id: str, timeout: float
) -> ClientRequestProperties:
    properties = ClientRequestProperties()
    properties.client_request_id = client_request_id
    properties.application = "adxflow"
    properties.set_option(ClientRequestProperties.request_timeout_option_name, dt.timedelta(seconds=timeout))
    for name, (kind, value) in parameters.items():
        properties.set_parameter(name, kql_literal(kind, value))
    return properties


def _names(value: Any) -> list[str] | None:
    """Kusto reports column lists as comma-separated text ("a,b"); accept a JSON list too."""
    if value is None or value == "":
        return None
    if isinstance(value, list):
        return [str(item) for item in value]
    return [name.strip() for name in str(value).split(",") if name.strip()]


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
            if not raw or not raw.get("Visualization"):
                return None
            return Visualization(
                kind=raw.get("Visualization"),
                title=raw.get("Title") or None,
                x_column=raw.get("XColumn") or None,
                y_columns=_names(raw.get("YColumns")),
                series=_names(raw.get("Series")),
            )
    return None


def classify(exc: BaseException, connection: str) -> StepKustoError:
    """A Kusto client failure as a step error with a stable code."""
    if isinstance(exc, KustoThrottlingError):
        return StepKustoError(
            f"Kusto throttled the request: {exc}", code=ErrorCode.KUSTO_THROTTLED, retryable=True
        )
    if isinstance(exc, KustoNetworkError):
        return StepKustoError(
            f"cannot reach the cluster of connection {connection!r}: {exc}",
            code=ErrorCode.KUSTO_UNAVAILABLE,
            retryable=True,
        )
    if isinstance(exc, KustoStreamingQueryError):
        return StepKustoError(
            f"the result from connection {connection!r} ended before it was complete: {exc}",
            code=ErrorCode.KUSTO_SERVICE_ERROR,
            retryable=True,
        )
    if isinstance(exc, KustoAuthenticationError | KustoClientError) and not isinstance(
        exc, KustoServiceError
    ):
        return StepKustoError(
            f"connection {connection!r} could not authenticate: {exc}",
            code=ErrorCode.KUSTO_REQUEST_DENIED,
        )
    if isinstance(exc, KustoServiceError):
        status = getattr(exc.http_response, "status", None) or getattr(exc.http_response, "status_code", None)
        message = _service_message(exc)
        if status in (401, 403):
            return StepKustoError(
                f"connection {connection!r} is not allowed to run this: {message}",
                code=ErrorCode.KUSTO_REQUEST_DENIED,
            )
        if isinstance(status, int) and status >= 500:
            return StepKustoError(message, code=ErrorCode.KUSTO_SERVICE_ERROR, retryable=True)
        if _timed_out(message):
            return StepKustoError(message, code=ErrorCode.REQUEST_TIMEOUT)
        if _is_syntax(exc, message):
            return StepKustoError(message, code=ErrorCode.KUSTO_SYNTAX_ERROR)
        return StepKustoError(message, code=ErrorCode.KUSTO_SEMANTIC_ERROR)
    return StepKustoError(f"Kusto request failed: {exc}", code=ErrorCode.KUSTO_SERVICE_ERROR)


def _service_message(exc: KustoServiceError) -> str:
    if isinstance(exc, KustoApiError):
        error = exc.get_api_error()
        return error.description or error.message or str(exc)
    if isinstance(exc, KustoMultiApiError):
        return "; ".join(e.description or e.message or "" for e in exc.get_api_errors()) or str(exc)
    return str(exc)


def _timed_out(message: str) -> bool:
    lowered = message.lower()
    return "timed out" in lowered or ("timeout" in lowered and "exceeded" in lowered)


def _is_syntax(exc: KustoServiceError, message: str) -> bool:
    kind = exc.get_api_error().type or "" if isinstance(exc, KustoApiError) else ""
    lowered = message.lower()
    return (
        "syntax" in kind.lower()
        or "syntax error" in lowered
        or "mismatched input" in lowered
        or "extraneous input" in lowered
        or "no viable alternative" in lowered
    )


@dataclass(frozen=True, slots=True)
class QueryResult:
    """What a step read: the result, and whether it stops short of what the query returned."""

    result: ResultSet
    truncated: bool = False
    #: For people: where the result stops and why ("showing 500,000 of more rows (...)").
    note: str | None = None


_encode = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), check_circular=False).encode


def row_size(row: list[Any]) -> int:
    """What a row counts against a byte cap: the UTF-8 length of its raw values as compact JSON.

    About what the row costs in the stored result; the same for a streamed and a
    loaded result, and cheap (a couple of microseconds for a short row).
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


#: The HTTP responses opened in this task while a streamed result is read (see `_Session`).
_streamed: ContextVar[list[ClientResponse] | None] = ContextVar("adxflow_streamed", default=None)


class _Session:
    """The async client's aiohttp session, as the client uses it (``post``, ``close``), mended twice.

    - Responses opened while `_streamed` is set are recorded there:
      ``execute_streaming_query`` keeps its response to itself, yet a reader
      that stops early must close it, or the connection stays taken (and the
      server blocked writing the rest) until the request's own timeout.
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
        opened = _streamed.get()
        if opened is not None:
            opened.append(response)
        return response

    async def close(self) -> None:
        await self._session.close()


class _Client(KustoClient):
    """azure-kusto-data's async client over a `_Session`."""

    def __init__(self, kcsb: KustoConnectionStringBuilder) -> None:
        super().__init__(kcsb)
        self._session = _Session(cast(ClientSession, self._session))  # type: ignore[assignment]


class _ResultReader:
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

    def keep(self, row: list[Any]) -> bool:
        """Keep *row*, or note which cap it would cross and say to stop."""
        if len(self.rows) >= self.max_rows:
            self.stop = _Stop.rows(self.max_rows)
            return False
        size = row_size(row)
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
                if not self.keep(row):
                    break
        self.visualization = _visualization(response)

    async def read(self, frames: AsyncIterator[dict[str, Any]]) -> None:
        """Read frames until the data set ends or a cap is reached (the caller closes the stream)."""
        try:
            await self._frames(frames)
        except KustoMultiApiError as exc:
            # Kusto's errors in place of a row: the rows before them stand.
            self.stop = _limits_exceeded(exc.get_api_errors())
            if self.stop is None:
                raise

    async def _frames(self, frames: AsyncIterator[dict[str, Any]]) -> None:
        async for frame in frames:
            if frame["FrameType"] is FrameType.DataSetCompletion:
                await self._completion(frame)
                return
            if frame["FrameType"] is not FrameType.DataTable:
                continue
            kind = frame["TableKind"]  # the wire value: PrimaryResult, QueryProperties, ...
            if kind == "PrimaryResult":
                await self._primary(frame)
            elif kind == "QueryProperties":
                self.visualization = _visualization_of(frame["Rows"])
            elif kind == "QueryCompletionInformation":
                self.stop = _limits_reported(frame["Columns"], frame["Rows"])
            if self.stop is not None:
                return

    async def _primary(self, frame: dict[str, Any]) -> None:
        rows = frame["Rows"]  # rows parsed as they are iterated
        try:
            if self._primary_seen:
                # Only the first primary table is the step's result; the stream moves
                # past a table only once it is read to its end.
                async for _ in rows:
                    pass
                return
            self._primary_seen = True
            self.columns = [
                Column(name=c["ColumnName"], type=str(c["ColumnType"]).lower()) for c in frame["Columns"]
            ]
            async for row in rows:
                if not self.keep(row):
                    return
        finally:
            await rows.aclose()

    async def _completion(self, frame: dict[str, Any]) -> None:
        errors = frame.get("OneApiErrors") or []
        if inspect.isawaitable(errors):
            # azure-kusto-data 6.0 hands these over unparsed, as a coroutine to await.
            errors = await errors
        if frame.get("HasErrors") and errors:
            raise KustoMultiApiError([{"OneApiErrors": errors}])

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


class KustoRunner:
    """One async client per configured connection, created on first use."""

    def __init__(self, connections: Connections, *, timeout: float) -> None:
        self._connections = connections
        self._timeout = timeout
        self._clients: dict[str, KustoClient] = {}

    def _client(self, name: str) -> KustoClient:
        client = self._clients.get(name)
        if client is None:
            client = _Client(connection_string(self._connections.get(name)))
            self._clients[name] = client
        return client

    async def run(
        self,
        *,
        connection: str,
        database: str,
        text: str,
        command: bool,
        client_request_id: str,
        max_rows: int,
        max_bytes: int,
        truncate: bool,
        parameters: Parameters | None = None,
        timeout: float | None = None,
    ) -> QueryResult:
        """Run a query (or, with *command*, a control command) and read its primary result.

        The server is told the timeout (``servertimeout``) and cancels the query
        itself; should it not answer in time, the client gives up a little
        later and asks the cluster to cancel the request by its ClientRequestId.

        Past *max_rows* rows or *max_bytes* bytes (see `row_size`), or where Kusto
        reports that it cut the result short, reading stops: with *truncate* the
        rows read so far come back flagged, otherwise `ResultTooLarge` is raised.
        """
        client = self._client(connection)
        parameters = parameters or {}
        limit = timeout or self._timeout
        properties = request_properties(parameters if not command else {}, client_request_id, limit)
        reader = _ResultReader(max_rows, max_bytes)
        loop = asyncio.get_running_loop()
        started = loop.time()
        try:
            async with asyncio.timeout(limit + _CLIENT_GRACE):
                if command:
                    reader.read_loaded(await client.execute_mgmt(database, text, properties))
                else:
                    query = with_declarations(text, parameters)
                    await self._stream(client, database, query, properties, reader)
        except TimeoutError:
            elapsed = loop.time() - started
            await self._cancel(client, database, client_request_id)
            raise StepKustoError(
                f"the query did not finish within its {limit:g} s timeout (gave up after {elapsed:.1f} s); "
                "it was cancelled on the cluster",
                code=ErrorCode.REQUEST_TIMEOUT,
            ) from None
        except KustoError as exc:
            error = classify(exc, connection)
            if error.code is ErrorCode.REQUEST_TIMEOUT:
                elapsed = loop.time() - started
                error.message = f"{error.message} (timeout {limit:g} s, after {elapsed:.1f} s)"
            raise error from exc
        except ClientError as exc:
            raise StepKustoError(
                f"the connection to the cluster of connection {connection!r} broke while reading: {exc}",
                code=ErrorCode.KUSTO_UNAVAILABLE,
                retryable=True,
            ) from exc
        outcome = reader.outcome(truncate=truncate)
        if outcome.truncated:
            log.info("result truncated", rows=len(reader.rows), note=outcome.note)
        return outcome

    @staticmethod
    async def _stream(
        client: KustoClient,
        database: str,
        query: str,
        properties: ClientRequestProperties,
        reader: _ResultReader,
    ) -> None:
        """Read a query's result as it arrives; the response is closed however reading ends."""
        opened: list[ClientResponse] = []
        token = _streamed.set(opened)
        try:
            dataset = await client.execute_streaming_query(database, query, properties=properties)
            await reader.read(dataset.streamed_data)
        finally:
            _streamed.reset(token)
            for response in opened:
                response.close()

    @staticmethod
    async def _cancel(client: KustoClient, database: str, client_request_id: str) -> None:
        """Best effort: ask the cluster to stop a request the client gave up on."""
        command = f".cancel query {json.dumps(client_request_id)}"
        try:
            async with asyncio.timeout(_CLIENT_GRACE):
                await client.execute_mgmt(database, command)
        except (KustoError, TimeoutError) as exc:
            log.warning("could not cancel the query on the cluster", error=str(exc)[:200])

    async def close(self) -> None:
        clients, self._clients = self._clients, {}
        for client in clients.values():
            await client.close()
