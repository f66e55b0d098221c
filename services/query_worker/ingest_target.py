"""The Kusto side of an ingestion (`services.query_worker.ingesting`): the target table made or
extended and checked, the rows as CSV requests of at most `REQUEST_BYTES`, sent through
azure-kusto-ingest into a staging table of the step's own, and moved into the target by one
command tagged ``ingest-by:<run>;<step>`` with ``ingestIfNotExists`` of the same, which a
repeated try finds and does not repeat; or, with ``method: queued``, each request queued with a
tag of its own.
"""

from __future__ import annotations

import asyncio
import csv
import hashlib
import io
import itertools
import json
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

import structlog
from azure.kusto.data import DataFormat
from azure.kusto.data.exceptions import KustoError as ClientKustoError
from azure.kusto.ingest import (
    ColumnMapping,
    IngestionMappingKind,
    IngestionProperties,
    KustoStreamingIngestClient,
    QueuedIngestClient,
    StreamDescriptor,
)

from common.contracts.actions import IngestToKusto
from common.contracts.errors import AdxflowError, DatabaseError, KustoError
from common.contracts.flows import Flow
from common.contracts.messages import ErrorCode, RunMessage
from common.contracts.results import Column
from common.platform.connections import connection_string
from common.platform.runtime import Runtime
from common.platform.sql import Batch
from common.platform.sql.reads import csv_fields
from services.query_worker.kusto import KustoRunner, classify, client_request_id

log = structlog.get_logger(__name__)

#: The most bytes of CSV one streaming request carries (Kusto's limit is 4 MB uncompressed).
REQUEST_BYTES = 4_000_000
#: What a column of one type may be moved into besides its own type, and how.
_WIDENED = {("int", "long"): "tolong", ("int", "real"): "toreal", ("long", "real"): "toreal"}
#: A missing column's value, typed as the target's column.
_NULLS = {
    "bool": "bool(null)",
    "int": "int(null)",
    "long": "long(null)",
    "real": "real(null)",
    "decimal": "decimal(null)",
    "string": '""',
    "guid": "guid(null)",
    "datetime": "datetime(null)",
    "timespan": "timespan(null)",
    "dynamic": "dynamic(null)",
}


def ingest_tag(message: RunMessage) -> str:
    """The ``ingest-by`` value of one step of one run: the same for every try of it."""
    return f"{message.run_id};{message.step_id}"


def staging_table(table: str, tag: str) -> str:
    """The staging table of one step of one run for *table*."""
    return f"{table}_adxflow_{hashlib.sha256(tag.encode('utf-8')).hexdigest()[:16]}"


def kql_string(text: str) -> str:
    """*text* as a KQL string literal."""
    return json.dumps(text, ensure_ascii=False)


def tagged(tag: str) -> str:
    """The ingestion properties that tag what an ingestion creates and hold back a repeat of it."""
    tags = kql_string(json.dumps([f"ingest-by:{tag}"]))
    once = kql_string(json.dumps([tag]))
    return f"with (tags={tags}, ingestIfNotExists={once})"


#: The column names an ingestion takes (Kusto's own allow these and more).
_COLUMN_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_ .-]{0,127}$")


def check_names(columns: Sequence[Column]) -> None:
    """Refuse a source without columns, or with a column name Kusto would not take as it is."""
    if not columns:
        raise DatabaseError("the query answered no columns: there is nothing to ingest")
    for column in columns:
        if not _COLUMN_NAME.match(column.name):
            raise DatabaseError(
                f"column {column.name!r} of the source is not a name a Kusto column takes here "
                "(letters, digits, _, space, . and -): give it another name in the query (AS ...)",
                code=ErrorCode.TABLE_MISMATCH,
            )


def schema_text(columns: Sequence[Column]) -> str:
    return ", ".join(f"['{column.name}']:{column.type}" for column in columns)


def moved(target: Sequence[Column], source: Sequence[Column]) -> str:
    """The projection of the staging table into the target's columns, in the target's order."""
    by_name = {column.name: column for column in source}
    parts = []
    for column in target:
        found = by_name.get(column.name)
        name = f"['{column.name}']"
        if found is None:
            parts.append(f"{name} = {_NULLS.get(column.type, 'dynamic(null)')}")
        elif found.type == column.type:
            parts.append(name)
        else:
            parts.append(f"{name} = {_WIDENED[(found.type, column.type)]}({name})")
    return ", ".join(parts)


def fit_problem(table: str, target: Sequence[Column], source: Sequence[Column]) -> str | None:
    """Why *source* cannot go into *target*, naming the column, or None when it can."""
    types = {column.name: column.type for column in target}
    for column in source:
        kind = types.get(column.name)
        if kind is None:
            return (
                f"column {column.name!r} of the source is not a column of table {table!r} "
                "(create_table: true adds it)"
            )
        if kind != column.type and (column.type, kind) not in _WIDENED:
            return f"column {column.name!r} is {column.type} in the source but {kind} in table {table!r}"
    return None


class CsvBatches:
    """Batches of rows as CSV requests of at most `REQUEST_BYTES`, counted and held to the caps."""

    def __init__(self, database: str, max_rows: int | None, max_bytes: int | None) -> None:
        self._database = database
        self._max_rows = max_rows
        self._max_bytes = max_bytes
        self.rows = 0
        self.bytes = 0

    async def requests(
        self, columns: Sequence[Column], batches: AsyncIterator[Batch]
    ) -> AsyncIterator[bytes]:
        """The rows as CSV, in requests of at most `REQUEST_BYTES` (a batch at a time, or a row at a
        time for a batch over that)."""
        fields = csv_fields(columns)
        chunk: list[bytes] = []
        pending = 0
        async for _, rows in batches:
            for row in rows:
                for index, convert in fields:
                    row[index] = convert(row[index])
            encoded = _csv(rows)
            pieces = [encoded] if len(encoded) <= REQUEST_BYTES else [_csv([row]) for row in rows]
            self._count(len(rows), len(encoded))
            for piece in pieces:
                if len(piece) > REQUEST_BYTES:
                    raise DatabaseError(
                        f"a row of the source is {len(piece):,} bytes as CSV, more than the "
                        f"{REQUEST_BYTES:,} one streaming request carries",
                        code=ErrorCode.RESULT_TOO_LARGE,
                    )
                if pending + len(piece) > REQUEST_BYTES:
                    yield b"".join(chunk)
                    chunk, pending = [], 0
                chunk.append(piece)
                pending += len(piece)
        if chunk:
            yield b"".join(chunk)

    def _count(self, rows: int, size: int) -> None:
        self.rows += rows
        self.bytes += size
        if self._max_rows is not None and self.rows > self._max_rows:
            raise DatabaseError(
                f"the source has more than max_rows={self._max_rows} rows, the cap of database "
                f"{self._database!r}; nothing was ingested",
                code=ErrorCode.RESULT_TOO_LARGE,
            )
        if self._max_bytes is not None and self.bytes > self._max_bytes:
            raise DatabaseError(
                f"the source has more than max_bytes={self._max_bytes} bytes of rows, the cap of "
                f"database {self._database!r}; nothing was ingested",
                code=ErrorCode.RESULT_TOO_LARGE,
            )


def _csv(rows: list[list[Any]]) -> bytes:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerows(rows)
    return buffer.getvalue().encode("utf-8")


def queued_properties(
    database: str, table: str, columns: Sequence[Column], batch: str
) -> IngestionProperties:
    """How one batch is queued: its CSV fields mapped to the target's columns by name (the target's
    order may differ), tagged ``ingest-by:<batch>`` and held back when a batch of that tag was."""
    mapping = [ColumnMapping(column.name, column.type, ordinal=index) for index, column in enumerate(columns)]
    return IngestionProperties(
        database,
        table,
        data_format=DataFormat.CSV,
        column_mappings=mapping,
        ingestion_mapping_kind=IngestionMappingKind.CSV,
        ingest_by_tags=[batch],
        ingest_if_not_exists=[batch],
    )


class Target:
    """The Kusto side of one ingestion: its commands, and the rows sent through azure-kusto-ingest."""

    def __init__(
        self, runtime: Runtime, kusto: KustoRunner, message: RunMessage, flow: Flow, spec: IngestToKusto
    ) -> None:
        self._runtime = runtime
        self._kusto = kusto
        self._message = message
        self.connection = spec.connection or flow.connection
        self.database = spec.database or flow.database
        self._spec = spec
        self.tag = ingest_tag(message)
        self._target: list[Column] = []

    async def command(self, text: str, *, rows: int = 10_000) -> tuple[list[Column], list[list[Any]]]:
        settings = self._runtime.settings
        result = await self._kusto.run(
            connection=self.connection,
            database=self.database,
            text=text,
            command=True,
            client_request_id=client_request_id(self._message),
            max_rows=rows,
            max_bytes=settings.max_result_bytes,
            truncate=True,
            head=rows,
            timeout=settings.query_timeout_seconds,
        )
        return result.columns, result.head

    async def schema(self, table: str) -> list[Column] | None:
        """*table*'s columns, or None when the database has no such table."""
        columns, rows = await self.command(".show tables")
        at_table = [column.name for column in columns].index("TableName")
        if table not in {str(row[at_table]) for row in rows}:
            return None
        columns, rows = await self.command(f"['{table}'] | getschema")
        names = [column.name for column in columns]
        at_name, at_type = names.index("ColumnName"), names.index("ColumnType")
        return [Column(name=str(row[at_name]), type=str(row[at_type])) for row in rows]

    async def prepared(self, columns: Sequence[Column], *, typed: bool) -> list[Column]:
        """The source's columns as they go into the target, after creating or extending it when the
        step asks; refused if the source does not fit. A source that is not *typed* (a CSV or JSON
        file: text and JSON's own types) takes the target's type for each column the target has,
        and Kusto reads each field as that type."""
        table = self._spec.table
        if self._spec.create_table:
            merged = list(columns)
            if not typed:
                # A file's text takes the types of the columns there: only those missing are made.
                there = {column.name for column in await self.schema(table) or []}
                merged = [column for column in columns if column.name not in there]
            if merged:
                await self.command(f".create-merge table ['{table}'] ({schema_text(merged)})")
        target = await self.schema(table)
        if target is None:
            raise KustoError(
                f"table {table!r} is not in database {self.database!r}; "
                "create_table: true creates it from the source's columns",
                code=ErrorCode.TABLE_MISMATCH,
            )
        if not typed:
            kinds = {column.name: column.type for column in target}
            columns = [
                Column(name=column.name, type=kinds.get(column.name, column.type)) for column in columns
            ]
        problem = fit_problem(table, target, columns)
        if problem is not None:
            raise KustoError(problem, code=ErrorCode.TABLE_MISMATCH)
        self._target = target
        return list(columns)

    async def stream(
        self, columns: Sequence[Column], requests: AsyncIterator[bytes], tag: str
    ) -> dict[str, Any]:
        target = self._target
        first = await anext(requests, None)
        if first is None:
            return {"method": "streaming", "requests": 0, "repeated": False}
        stage = staging_table(self._spec.table, tag)
        await self.command(f".drop table ['{stage}'] ifexists")
        await self.command(f".create table ['{stage}'] ({schema_text(columns)})")
        try:
            with KustoStreamingIngestClient(self._blocking_connection()) as client:
                properties = IngestionProperties(self.database, stage, data_format=DataFormat.CSV)
                sent = await _pipelined(
                    _then(first, requests),
                    lambda body: self._send(client.ingest_from_stream, body, properties),
                )
            projection = moved(target, columns)
            _, created = await self.command(
                f".append ['{self._spec.table}'] {tagged(tag)} <| ['{stage}'] | project {projection}"
            )
        finally:
            await self._drop(stage)
        return {"method": "streaming", "requests": sent, "repeated": not created}

    async def _drop(self, stage: str) -> None:
        """Drop the staging table; a failure to is logged, not raised: the next try drops it first."""
        try:
            await self.command(f".drop table ['{stage}'] ifexists")
        except AdxflowError as exc:
            log.warning("staging table not dropped", table=stage, error=exc.message)

    async def queue(self, columns: Sequence[Column], requests: AsyncIterator[bytes], tag: str) -> int:
        numbered = itertools.count()
        with QueuedIngestClient(self._blocking_connection(ingest=True)) as client:

            def send(body: bytes) -> Awaitable[None]:
                properties = queued_properties(
                    self.database, self._spec.table, columns, f"{tag};{next(numbered)}"
                )
                return self._send(client.ingest_from_stream, body, properties)

            return await _pipelined(requests, send)

    def _blocking_connection(self, *, ingest: bool = False) -> Any:
        config = self._runtime.connections.get(self.connection)
        if ingest:
            config = config.model_copy(update={"cluster": _ingest_endpoint(config.cluster)})
        return connection_string(config, blocking=True)

    async def _send(self, ingest: Any, body: bytes, properties: IngestionProperties) -> None:
        try:
            await asyncio.to_thread(ingest, StreamDescriptor(io.BytesIO(body)), properties)
        except ClientKustoError as exc:
            raise classify(exc, self.connection) from exc


async def _pipelined(bodies: AsyncIterator[bytes], send: Callable[[bytes], Awaitable[None]]) -> int:
    """Send each body, the next one read and encoded while the last is on its way (one at a time,
    in order); the bodies sent. A failure on either side waits for the send in flight first."""
    sent = 0
    flight: asyncio.Future[None] | None = None
    try:
        async for body in bodies:
            if flight is not None:
                await flight
            flight = asyncio.ensure_future(send(body))
            sent += 1
        if flight is not None:
            await flight
    except BaseException:
        if flight is not None and not flight.done():
            await asyncio.gather(flight, return_exceptions=True)
        raise
    return sent


def _ingest_endpoint(cluster: str) -> str:
    """A cluster's data management endpoint: ``https://ingest-<cluster>``."""
    scheme, _, host = cluster.partition("://")
    return cluster if host.startswith("ingest-") else f"{scheme}://ingest-{host}"


async def _then(first: bytes, rest: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    yield first
    async for body in rest:
        yield body
