"""Running KQL with azure-kusto-data's async client, and naming what went wrong.

Trigger values reach Kusto only as query parameters: the worker adds a
``declare query_parameters`` statement typed from the flow's parameter
declarations (unless the query declares them itself) and sends the values in
the request properties, never spliced into the text.

The result is read under the step's caps by `services.query_worker.reading`,
and its rows written to the blob store as they arrive.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import math
import re
from collections.abc import Mapping
from enum import StrEnum
from typing import Any

import structlog
from aiohttp import ClientError, ClientResponse
from azure.kusto.data import ClientRequestProperties
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
)

from common.contracts.errors import KustoError as StepKustoError
from common.contracts.messages import ErrorCode, RunMessage
from common.contracts.results import ResultWriter
from common.platform import metrics, tracing
from common.platform.blobs.interface import BlobWriter
from common.platform.connections import Connections, connection_string
from services.query_worker.kusto_internals import RecordingClient
from services.query_worker.reading import QueryResult, ResultReader, streamed
from services.query_worker.wire import ResponseStream

log = structlog.get_logger(__name__)

_DECLARES = re.compile(r"^\s*declare\s+query_parameters\s*\(", re.IGNORECASE | re.MULTILINE)
#: Extra time the client waits past ``servertimeout`` for the server's own answer
#: (a cluster that honours it answers at the limit, give or take its latency).
_CLIENT_GRACE = 2.0
#: How long a step that gave up waits for the cluster to answer its ``.cancel query``.
#: A cluster may queue the cancel behind the query itself (the local endpoint does);
#: the step does not wait for that, and says so.
_CANCEL_WAIT = 3.0


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


def client_request_id(message: RunMessage) -> str:
    """The ClientRequestId of a step's requests: it names the run and step, so a query can be found
    (and cancelled) on the cluster from the run history."""
    return f"adxflow;{message.run_id};{message.step_id};{message.attempt}"


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


def timeout_margin() -> float:
    """How long past its timeout a Kusto step may take to end: the client's grace, then the cancel's wait."""
    return _CLIENT_GRACE + _CANCEL_WAIT


class Cancel(StrEnum):
    """What came of the ``.cancel query`` a step sent when it gave up."""

    ACKNOWLEDGED = "acknowledged"
    REFUSED = "refused"
    NOT_ACKNOWLEDGED = "not_acknowledged"


def _timeout_error(limit: float, elapsed: float, cancel: Cancel, why: str = "") -> StepKustoError:
    still = "the query may still be running on the cluster"
    said = {
        Cancel.ACKNOWLEDGED: "cancel sent and acknowledged",
        Cancel.REFUSED: f"cancel refused by the cluster ({why}); {still}",
        Cancel.NOT_ACKNOWLEDGED: f"cancel not acknowledged within {_CANCEL_WAIT:g} s; {still}",
    }[cancel]
    return StepKustoError(
        f"the query did not finish within its {limit:g} s timeout (gave up after {elapsed:.1f} s); {said}",
        code=ErrorCode.REQUEST_TIMEOUT,
        detail={"cancel": cancel.value},
    )


def _read_failure(
    exc: KustoError | ClientError, connection: str, limit: float, elapsed: float
) -> StepKustoError:
    """A failure while a request was sent or its result read, as the step's error."""
    if isinstance(exc, ClientError):
        return StepKustoError(
            f"the connection to the cluster of connection {connection!r} broke while reading: {exc}",
            code=ErrorCode.KUSTO_UNAVAILABLE,
            retryable=True,
        )
    error = classify(exc, connection)
    if error.code is ErrorCode.REQUEST_TIMEOUT:
        error.message = f"{error.message} (timeout {limit:g} s, after {elapsed:.1f} s)"
    return error


class KustoRunner:
    """One async client per configured connection, created on first use."""

    def __init__(self, connections: Connections, *, timeout: float) -> None:
        self._connections = connections
        self._timeout = timeout
        self._clients: dict[str, KustoClient] = {}

    def _client(self, name: str) -> KustoClient:
        client = self._clients.get(name)
        if client is None:
            client = RecordingClient(connection_string(self._connections.get(name)))
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
        head: int,
        into: BlobWriter | None = None,
        parameters: Parameters | None = None,
        timeout: float | None = None,
    ) -> QueryResult:
        """Run a query (or, with *command*, a control command) and read its primary result.

        The result is written to *into* as `ResultSet` JSON while it is read;
        only its first *head* rows are kept in memory. Where this raises, what
        was written is incomplete (the writer then drops it, as a `BlobWriter`
        left by an exception does).

        The server is told the timeout (``servertimeout``) and cancels the query
        itself; should it not answer in time, the client gives up `_CLIENT_GRACE`
        seconds later (closing the request's connection), asks the cluster to
        cancel the request by its ClientRequestId and waits `_CANCEL_WAIT` seconds
        at most for the answer: the step ends within its timeout plus
        `timeout_margin`, and its error says whether the cluster took the cancel.

        Past *max_rows* rows or *max_bytes* bytes of row JSON, or where Kusto
        reports that it cut the result short, reading stops: with *truncate* the
        rows read so far come back flagged, otherwise `ResultTooLarge` is raised.
        """
        client = self._client(connection)
        parameters = parameters or {}
        limit = timeout or self._timeout
        properties = request_properties(parameters if not command else {}, client_request_id, limit)
        writer = ResultWriter(into.write) if into is not None else None
        reader = ResultReader(max_rows, max_bytes, head=head, into=writer)
        loop = asyncio.get_running_loop()
        started = loop.time()
        # The connection's name and the database, never the cluster's connection string or the
        # parameter values.
        attributes = {
            "db.system.name": "azure.kusto",
            "db.namespace": database,
            "db.operation.name": "command" if command else "query",
            "adxflow.connection": connection,
            "adxflow.client_request_id": client_request_id,
        }
        with tracing.client_span("kusto command" if command else "kusto query", attributes) as span:
            try:
                async with asyncio.timeout(limit + _CLIENT_GRACE):
                    if command:
                        await reader.read_loaded(await client.execute_mgmt(database, text, properties))
                    else:
                        query = with_declarations(text, parameters)
                        await self._stream(client, database, query, properties, reader)
            except TimeoutError:
                # The request was abandoned as the timeout cancelled it: its connection is
                # closed, so nothing waits for the cluster's answer.
                elapsed = loop.time() - started
                cancel, why = await self._cancel(client, database, client_request_id)
                raise _timeout_error(limit, elapsed, cancel, why) from None
            except (KustoError, ClientError) as exc:
                raise _read_failure(exc, connection, limit, loop.time() - started) from exc
            finally:
                metrics.KUSTO_LATENCY.labels(connection).observe(loop.time() - started)
                metrics.KUSTO_ROWS.labels(connection).inc(reader.count)
                metrics.KUSTO_BYTES.labels(connection).inc(reader.size)
            outcome = await reader.finish(truncate=truncate)
            if outcome.truncated:
                log.info("result truncated", rows=outcome.row_count, note=outcome.note)
            span.set_attribute("adxflow.row_count", outcome.row_count)
            span.set_attribute("adxflow.truncated", outcome.truncated)
        return outcome

    @staticmethod
    async def _stream(
        client: KustoClient,
        database: str,
        query: str,
        properties: ClientRequestProperties,
        reader: ResultReader,
    ) -> None:
        """Read a query's result as it arrives; the response is closed however reading ends.

        The client sends the request and turns an error status into its
        exception; the body, which it has not begun to read, is parsed here.
        """
        opened: list[ClientResponse] = []
        token = streamed.set(opened)
        try:
            await client.execute_streaming_query(database, query, properties=properties)
            [response] = opened
            await reader.read(ResponseStream(response.content))
        finally:
            streamed.reset(token)
            for response in opened:
                response.close()

    @staticmethod
    async def _cancel(client: KustoClient, database: str, client_request_id: str) -> tuple[Cancel, str]:
        """Ask the cluster to stop a request the client gave up on, waiting for its answer only briefly.

        Unanswered in `_CANCEL_WAIT` seconds, the cancel is abandoned like the
        query was; what came of it goes into the step's error, truthfully.
        """
        command = f".cancel query {json.dumps(client_request_id)}"
        try:
            async with asyncio.timeout(_CANCEL_WAIT):
                await client.execute_mgmt(database, command)
        except TimeoutError:
            log.warning("the cluster did not answer the cancel", wait_seconds=_CANCEL_WAIT)
            return Cancel.NOT_ACKNOWLEDGED, ""
        except (KustoError, ClientError) as exc:
            why = _service_message(exc) if isinstance(exc, KustoServiceError) else str(exc)
            log.warning("the cluster refused the cancel", error=why[:200])
            return Cancel.REFUSED, why[:300]
        return Cancel.ACKNOWLEDGED, ""

    async def close(self) -> None:
        clients, self._clients = self._clients, {}
        for client in clients.values():
            await client.close()
