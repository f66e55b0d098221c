"""duckdb-kql's Kusto REST server and handler, as the local Kusto endpoint runs them.

The handler closes the gaps between azure-kusto-data and duckdb-kql 1.1.2:

* azure-kusto-data sends the request's ``properties`` as a JSON *string*; the
  server reads them only as an object, so parameters and ``servertimeout``
  were silently dropped.
* Parameter values are read against the query's declarations by the strict
  literal reader in `services.embedded.kusto.literals`.
* Nagle's algorithm is off: a small response otherwise waits for the client's
  delayed ACK, about 40 ms a query (measured 54 ms against 12 ms for `print 1`).
* Writes: a writable endpoint opens its file read-write and lets the engine run
  its write commands (`.set`, `.append`, `.set-or-append`, `.set-or-replace`,
  and `.create`/`.attach`/`.detach database`); a read-only one refuses them with
  a 403 that says how to start a writable one.
* `async` ingestion commands run in the background and `.show operations`
  reports them, as `services.embedded.kusto.operations` describes.
* Streaming ingestion (`POST /v1/rest/ingest/{database}/{table}`), as
  `services.embedded.kusto.streaming` describes, and `.ingest inline`.
* Ingest-by tags: `tags` and `ingestIfNotExists` on the ingestion commands, and
  `.show table T extents`, as `services.embedded.kusto.extents` describes.
* `.create table`, `.create-merge table` and `.drop table`, as
  `services.embedded.kusto.tables` describes.
* A trailing `render` is reported in the QueryProperties table, as
  `services.embedded.kusto.render` describes.
* A browser page may POST to loopback without asking first; a request carrying
  an `Origin` that is not the Azure Data Explorer UI is refused, so no page can
  send this endpoint a write.
"""

from __future__ import annotations

import io
import json
import re
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any, cast

import duckdb
import duckdb_kql
from duckdb import DuckDBPyConnection
from duckdb_kql import KqlError, KqlUnsupportedError
from duckdb_kql.ingest import INGESTION_COLUMNS, INGESTION_SCHEMA, is_ingestion_command, parse_ingestion
from duckdb_kql.server import KustoRestServer, RestColumn, Result, error_response, v1_response

from services.embedded.kusto.duckdb_kql_internals import (
    StockHandler,
    is_write_command,
    strip_leading_comments,
)
from services.embedded.kusto.extents import (
    INLINE_COLUMNS,
    ZERO_EXTENT,
    ExtentLog,
    IngestionProperties,
    inline_ingestion,
    shown_extents_table,
    tagged_command,
)
from services.embedded.kusto.literals import RequestRefused, typed_parameters
from services.embedded.kusto.operations import (
    OPERATION_ID,
    OPERATION_NAMES,
    REQUEST_TIMEOUTS,
    SHOW_OPERATIONS,
    AsyncCommand,
    OperationLog,
    OperationState,
    async_command,
    operation_ids,
)
from services.embedded.kusto.render import RenderRefused, shown_visualization, with_visualization
from services.embedded.kusto.staging import EntityNotFound, StagedAppend
from services.embedded.kusto.streaming import StreamingRequest, read_body, streaming_request, streaming_result
from services.embedded.kusto.tables import Tables, table_command

__all__ = ["POLL_SECONDS", "LocalServer", "WritesDisabled"]

#: How often the serving thread looks for a shutdown request; it bounds how long
#: `close()` waits for the accept loop to notice.
POLL_SECONDS = 0.05
#: How long `close()` keeps interrupting a running query before it gives up on
#: closing the DuckDB connection (the process exit will).
_DRAIN_SECONDS = 5.0


class WritesDisabled(KqlUnsupportedError):
    """A write command sent to an endpoint that opened its database read-only.

    A `KqlUnsupportedError` because that is the refusal duckdb-kql's handler
    answers with 403 when its message says writes are disabled; the message is
    our own, since the engine's points at its `allow_write` knob, not ours.
    """

    def __init__(self, command: str, database: str) -> None:
        KqlError.__init__(
            self,
            f"{command} writes to the database, and writes are disabled here: {database} is open "
            "read-only; an endpoint started with LocalKusto(..., writable=True) runs write commands",
        )
        self.construct = command
        self.span = None
        self.hint = None


#: What an ingestion command answers, labelled as the engine labels its own.
_INGESTION_RESULT = [
    RestColumn(c.name, c.column_type or "", c.data_type, c.column_type) for c in INGESTION_SCHEMA
]

_VERB = re.compile(r"\.[A-Za-z][A-Za-z-]*")


def _normalized_body(body: bytes) -> bytes | None:
    """The request body as the stock handler should read it, or None if unchanged."""
    try:
        request = json.loads(body or b"{}")
    except ValueError:
        return None  # the stock handler answers a malformed body
    if not isinstance(request, dict):
        return None
    properties = request.get("properties")
    changed = False
    if isinstance(properties, str):
        try:
            properties = json.loads(properties)
        except ValueError as exc:
            raise RequestRefused(f"request properties are not JSON: {exc}") from exc
        if not isinstance(properties, dict):
            raise RequestRefused("request properties must be a JSON object")
        changed = True
    if not isinstance(properties, dict):
        return None
    parameters = properties.get("Parameters")
    csl = request.get("csl")
    # Only a request with parameters pays for parsing the query's declarations.
    if isinstance(parameters, dict) and parameters and isinstance(csl, str):
        properties["Parameters"] = typed_parameters(csl, parameters)
        changed = True
    if not changed:
        return None
    request["properties"] = properties
    return json.dumps(request).encode("utf-8")


class _LocalHandler(StockHandler):
    """duckdb-kql's handler, fed a body it can read in full, answering `render`."""

    disable_nagle_algorithm = True
    #: The request's Visualization object as JSON, while its trailing `render` is answered.
    visualization_json: str | None = None

    def do_POST(self) -> None:  # BaseHTTPRequestHandler's interface
        # A page in the browser may POST here without a preflight (a "simple"
        # request); its response is unreadable, but a write would still happen.
        origin = self.headers.get("Origin")
        if origin is not None and origin not in self.kusto.allowed_origins:
            self.respond(
                403,
                error_response(f"requests from origin {origin!r:.80} are not accepted", code="Forbidden"),
            )
            self.close_connection = True
            return
        if cast(LocalServer, self.server).closing:
            self.respond(503, error_response("the local Kusto endpoint is shutting down"))
            self.close_connection = True
            return
        try:
            streaming = streaming_request(self.path)
        except RequestRefused as exc:
            self.respond(400, error_response(str(exc)))
            self.close_connection = True  # its body was not read
            return
        if streaming is not None:
            self._ingest_stream(streaming)
            return
        original = self.rfile
        try:
            length = int(self.headers.get("Content-Length", "0"))
        except ValueError:
            length = -1
        if length < 0:
            # The stock handler would read to end of stream, which on a
            # keep-alive connection never comes.
            self.respond(400, error_response("malformed Content-Length"))
            self.close_connection = True
            return
        body = original.read(length)
        try:
            normalized = _normalized_body(body)
        except RequestRefused as exc:
            self.respond(400, error_response(str(exc)))
            return
        if normalized is not None:
            body = normalized
            del self.headers["Content-Length"]
            self.headers["Content-Length"] = str(len(body))
        try:
            self.visualization_json = shown_visualization(self.path, body)
        except RenderRefused as exc:
            self.respond(400, error_response(str(exc)))
            return
        self.rfile = io.BytesIO(body)
        try:
            super().do_POST()
        finally:
            # The connection's next request is read from this attribute; left on
            # the spent buffer, a keep-alive connection would read nothing.
            self.rfile = original
            self.visualization_json = None

    def _ingest_stream(self, request: StreamingRequest) -> None:
        try:
            data = read_body(
                self.rfile, self.headers.get("Content-Length"), self.headers.get("Transfer-Encoding")
            )
        except RequestRefused as exc:
            self.respond(400, error_response(str(exc)))
            self.close_connection = True  # what is left of the body is not read
            return
        try:
            result = cast(LocalServer, self.server).ingest_stream(request, data)
        except EntityNotFound as exc:
            self.respond(400, exc.payload())
            return
        except WritesDisabled as exc:
            self.respond(403, error_response(str(exc), code="Forbidden"))
            return
        except (KqlError, RequestRefused, duckdb.Error) as exc:
            self.respond(400, error_response(str(exc)))
            return
        self.respond(200, v1_response(result))

    def finished_payload(self, status: int, payload: Any) -> Any:
        # The stock handler builds the v2 frames and sends them in one call;
        # this is the one place the QueryProperties table can be filled in.
        if self.visualization_json is not None and status == 200 and isinstance(payload, list):
            return [with_visualization(frame, self.visualization_json) for frame in payload]
        return payload


class LocalServer(KustoRestServer):
    """The stock server with our handler, background operations, and a close
    that waits for both kinds of work."""

    def __init__(
        self, con: DuckDBPyConnection, *, source: Path, host: str, port: int, writable: bool
    ) -> None:
        # The catalog connection must exist before the stock constructor, which
        # reads it through databases().
        self._catalog = con.cursor()
        self._catalog_lock = threading.Lock()
        super().__init__(con, host=host, port=port, quiet=True, source=str(source), allow_write=writable)
        self.RequestHandlerClass = _LocalHandler
        self._connection = con
        self._source_name = source.name
        self._activity = threading.Condition()
        self._running = 0
        self._closing = False
        self.operations = OperationLog()
        self.extents = ExtentLog()
        self._staging = StagedAppend(con)
        self._tables = Tables(con)

    @property
    def closing(self) -> bool:
        with self._activity:
            return self._closing

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that hangs up mid-request (a cancelled query, a killed worker) is
        # ordinary here; anything else is still printed the stock way.
        if isinstance(sys.exc_info()[1], ConnectionError):
            return
        super().handle_error(request, client_address)

    def databases(self) -> list[str]:
        # The handler asks this before every request. On the main connection
        # it would wait behind a running query, and `.show operations` would
        # not answer until the operation it is asked about had finished.
        with self._catalog_lock:
            rows = self._catalog.execute(
                "SELECT database_name FROM duckdb_databases() WHERE NOT internal ORDER BY database_name"
            ).fetchall()
        return [str(row[0]) for row in rows]

    def run(
        self,
        csl: str,
        parameters: dict[str, Any] | None = None,
        database: str | None = None,
        options: dict[str, Any] | None = None,
    ) -> Result:
        head = strip_leading_comments(csl)
        shown = SHOW_OPERATIONS.match(head)
        if shown is not None:
            return self.operations.result(operation_ids(shown.group("rest")))
        extents_of = shown_extents_table(head)
        if extents_of is not None:
            self._staging.check_table(self._target(database), extents_of)
            return self.extents.result(self._target(database), extents_of)
        inline = inline_ingestion(head)
        table = table_command(head)
        if not self.allow_write and (inline is not None or table is not None or is_write_command(head)):
            verb = _VERB.match(head)
            raise WritesDisabled(verb.group(0) if verb else "the command", self._source_name)
        if table is not None:
            self._begin()
            try:
                if table.verb == ".drop":
                    # The ingestions into it are held off while it goes, and its extents go with it.
                    with self.extents.ingestion(self._target(database), table.table):
                        self.extents.forget(self._target(database), table.table)
                        return self._tables.run(self._target(database), table)
                return self._tables.run(self._target(database), table)
            finally:
                self._end()
        if inline is not None:
            self._begin()
            try:
                created = self._ingest_staged(
                    self._target(database),
                    inline.table,
                    inline.properties.format or "csv",
                    inline.data,
                    inline.properties,
                )
            finally:
                self._end()
            return Result(
                list(INLINE_COLUMNS), [(extent_id,) for extent_id, _ in created] or [(ZERO_EXTENT,)]
            )
        deferred = async_command(head)
        if deferred is not None:
            return self._submit(deferred, parameters, database, options)
        self._begin()
        try:
            return self._write(csl, parameters, database, options)
        finally:
            self._end()

    def _target(self, database: str | None) -> str:
        return database if database and database != "default" else self.database

    def _write(
        self,
        csl: str,
        parameters: dict[str, Any] | None,
        database: str | None,
        options: dict[str, Any] | None,
    ) -> Result:
        """Run *csl* the stock way; an ingestion command records its extents' tags and
        honours `ingestIfNotExists`."""
        head = strip_leading_comments(csl)
        tagged = tagged_command(head)
        if tagged is not None:
            verb, table, text, properties = tagged
        elif is_ingestion_command(head):
            command = parse_ingestion(head)
            verb, table, text, properties = command.verb, command.table, csl, IngestionProperties()
        else:
            return super().run(csl, parameters, database, options)
        target = self._target(database)
        with self.extents.ingestion(target, table):
            if self.extents.ingested_by(target, table, properties.ingest_if_not_exists) is not None:
                return Result(list(_INGESTION_RESULT), [])
            result = super().run(text, parameters, database, options)
            names = [column.name for column in result.columns]
            if names == list(INGESTION_COLUMNS):
                extent_at, rows_at = names.index("ExtentId"), names.index("RowCount")
                created = [(row[extent_at], int(row[rows_at])) for row in result.rows]
                self.extents.record(
                    target, table, created, properties.tags, replace=verb == ".set-or-replace"
                )
            return result

    def ingest_stream(self, request: StreamingRequest, data: bytes) -> Result:
        """A streaming ingestion: *data* appended to the request's table."""
        if not self.allow_write:
            raise WritesDisabled("streaming ingestion", self._source_name)
        if request.database not in self.databases():
            raise EntityNotFound(request.database, "Database")
        self._begin()
        try:
            created = self._ingest_staged(
                request.database, request.table, request.format, data, IngestionProperties()
            )
        finally:
            self._end()
        return streaming_result(sum(rows for _, rows in created))

    def _ingest_staged(
        self, database: str, table: str, data_format: str, data: bytes, properties: IngestionProperties
    ) -> list[tuple[uuid.UUID, int]]:
        """Append *data* to an existing *table* unless `ingestIfNotExists` holds it back;
        the extents created."""
        with self.extents.ingestion(database, table):
            if self.extents.ingested_by(database, table, properties.ingest_if_not_exists) is not None:
                return []
            created = self._staging.append(database, table, data_format, data)
            self.extents.record(database, table, created, properties.tags, replace=False)
            return created

    def _begin(self) -> None:
        """Count a piece of work, so close() waits for it; `_end` uncounts it."""
        with self._activity:
            # Keep-alive connections outlive the accept loop, so a request can
            # still arrive after close() began; it must not reach a closed database.
            if self._closing:
                raise RuntimeError("the local Kusto endpoint is shutting down")
            self._running += 1

    def _end(self) -> None:
        with self._activity:
            self._running -= 1
            self._activity.notify_all()

    def _submit(
        self,
        command: AsyncCommand,
        parameters: dict[str, Any] | None,
        database: str | None,
        options: dict[str, Any] | None,
    ) -> Result:
        """Start *command* on a thread and answer its operation id."""
        # A malformed command or query is the request's error, as on Kusto,
        # not an operation that fails later.
        tagged = tagged_command(command.text)
        duckdb_kql.parse(parse_ingestion(tagged.text if tagged else command.text).source)
        options = {k: v for k, v in (options or {}).items() if k not in REQUEST_TIMEOUTS}
        target = self._target(database)
        self._begin()  # ended by the thread, when the command is done
        operation = self.operations.start(OPERATION_NAMES[command.verb], target)
        thread = threading.Thread(
            target=self._execute,
            args=(operation.id, command.text, parameters, database, options),
            name=f"local-kusto-operation-{operation.id}",
            daemon=True,
        )
        try:
            thread.start()
        except BaseException as exc:
            self.operations.finish(operation.id, OperationState.FAILED, str(exc))
            self._end()
            raise
        return Result([OPERATION_ID], [(operation.id,)])

    def _execute(
        self,
        operation_id: uuid.UUID,
        csl: str,
        parameters: dict[str, Any] | None,
        database: str | None,
        options: dict[str, Any],
    ) -> None:
        try:
            # The stock run: the lock that serializes every statement on the
            # one connection; the work was counted when it was submitted.
            self._write(csl, parameters, database, options)
        except Exception as exc:  # any failure is the operation's outcome, not the thread's
            state = OperationState.CANCELLED if self.closing else OperationState.FAILED
            self.operations.finish(operation_id, state, str(exc))
        else:
            self.operations.finish(operation_id, OperationState.COMPLETED)
        finally:
            self._end()

    def close_database(self) -> None:
        """Cancel what is running, background operations included, then close DuckDB.

        The interrupt is repeated because one sent while a query is still being
        translated finds nothing to cancel. Closing a busy connection fails
        rather than waits, so a query that ignores interrupts past the drain
        time leaves the connection to the process exit.
        """
        deadline = time.monotonic() + _DRAIN_SECONDS
        with self._activity:
            self._closing = True
            while self._running and time.monotonic() < deadline:
                self._connection.interrupt()
                self._activity.wait(POLL_SECONDS)
            if self._running:
                return
        with self._catalog_lock:
            self._catalog.close()
        self._staging.close()
        self._tables.close()
        self._connection.close()
