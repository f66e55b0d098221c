"""The ``ingest_to_kusto`` step: a query's rows on the operator's database, or a file's, ingested into
a Kusto table, once per run however often the step is tried.

Streaming (the default), in order:

1. The source's rows are read a batch at a time: a query's in a read-only
   transaction (`common.platform.sql.reads`), typed as Kusto types; a file's
   from disk (`services.query_worker.ingest_files`).
2. With ``create_table``, ``.create-merge table`` creates the target or adds the
   columns it lacks; either way each source column must then be a column of the
   target of the same type (or one it widens to: int to long, numbers to real),
   or the step fails naming the column and nothing was ingested.
3. The rows go as CSV, at most 4 MB a request, through azure-kusto-ingest's
   streaming client into a staging table of the step's own (created afresh, so
   what an earlier try left in it is gone).
4. One command moves them into the target:
   ``.append T with (tags='["ingest-by:<run>;<step>"]', ingestIfNotExists='["<run>;<step>"]') <| stage``.
   A try that finds the tag on the target ingested nothing more; the staging
   table is dropped either way.

A try broken off before the move leaves the target as it was; one broken off
after it finds the move made. Streaming ingestion cannot tag its extents
(Kusto's documented limit), which is why the rows are staged and then moved by a
command that can.

``method: queued`` sends each batch to the cluster's queued ingestion instead
(its data management endpoint, ``https://ingest-<cluster>``), each batch tagged
``ingest-by:<run>;<step>;<n>`` and held back by ``ingestIfNotExists`` when an
earlier try queued it. Kusto ingests queued data later and on its own: the step
records what it queued, not what landed. The local endpoint has no queued
ingestion, so that path is not exercised here.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator
from contextlib import aclosing
from typing import Any, TypeVar

from common.contracts.actions import FileSource, IngestToKusto, SqlSource
from common.contracts.dry_runs import NOT_WRITTEN
from common.contracts.errors import AdxflowError, DatabaseError, KustoError
from common.contracts.flows import Flow, flow_of, step_spec
from common.contracts.messages import ErrorCode, RunMessage, StepOutput
from common.contracts.results import Column, parse_datetime
from common.platform.runtime import Runtime
from common.platform.sql import Batch, SqlDatabase
from common.platform.sql.reads import bound_names
from common.platform.sql.types import timespan_ticks
from services.query_worker.dry_runs import sampled
from services.query_worker.ingest_target import CsvBatches, Target, check_names
from services.query_worker.kusto import KustoRunner
from services.query_worker.parameters import step_parameters

T = TypeVar("T")

#: Rows read from the source at a time.
BATCH_ROWS = 5_000


def bound_parameters(query: str, parameters: dict[str, tuple[str, Any]], dialect: str) -> dict[str, Any]:
    """The values of the parameters *query* binds (``:name``), as the database's driver takes them."""
    names = bound_names(query)
    bound: dict[str, Any] = {}
    for name in names:
        if name not in parameters:
            raise DatabaseError(
                f"the query binds :{name}, which is neither a parameter of the flow nor of the source",
                code=ErrorCode.INVALID_PARAMETERS,
            )
        kind, value = parameters[name]
        bound[name] = _sql_value(kind, value, dialect)
    return bound


def _sql_value(kind: str, value: Any, dialect: str) -> Any:
    if kind == "datetime":
        instant = parse_datetime(value)
        if instant is not None and dialect != "postgresql":
            return instant.astimezone(dt.UTC).replace(tzinfo=None)
        return instant
    if kind == "timespan":
        return dt.timedelta(microseconds=timespan_ticks(value) / 10)
    return value


class IngestStep:
    def __init__(self, runtime: Runtime, kusto: KustoRunner) -> None:
        self.runtime = runtime
        self.kusto = kusto

    async def perform(self, message: RunMessage) -> StepOutput:
        flow = flow_of(message)
        spec = step_spec(message, flow)
        if not isinstance(spec, IngestToKusto):
            raise KustoError(f"step {spec.id!r} ({spec.action}) ingests nothing")
        target = Target(self.runtime, self.kusto, message, flow, spec)
        if spec.from_sql is not None:
            outcome, where = await self._from_sql(message, flow, spec, spec.from_sql, target)
        else:
            assert spec.from_file is not None  # one of the two, as the document checks
            outcome, where = await self._from_file(message, spec, spec.from_file, target)
        detail, counted, columns = outcome
        rows = detail.get("rows", counted.rows) if message.context.dry_run else counted.rows
        return StepOutput(
            row_count=rows,
            detail={
                **where,
                "kusto_database": target.database,
                "table": spec.table,
                "rows": rows,
                "bytes": counted.bytes,
                "columns": [f"{column.name}:{column.type}" for column in columns],
                **detail,
            },
        )

    async def _from_sql(
        self, message: RunMessage, flow: Flow, spec: IngestToKusto, source: SqlSource, target: Target
    ) -> tuple[Ingested, dict[str, Any]]:
        config = self.runtime.connections.database(source.database)
        parameters = step_parameters(message, flow, source.parameters, f"steps.{spec.id}.from_sql.parameters")
        counted = CsvBatches(source.database, config.max_rows, config.max_bytes)
        # The history shows what was sent, beside why it failed if it did.
        names = bound_names(source.query)
        sent = {
            "database": source.database,
            "text": source.query,
            "parameters": {name: value for name, (_, value) in parameters.items() if name in names},
        }
        try:
            async with SqlDatabase(source.database, config) as database:
                bound = bound_parameters(source.query, parameters, database.dialect)
                # Closed before the database is: the read's transaction ends on its open connection.
                reading = aclosing(database.read(source.query, bound, batch_rows=BATCH_ROWS))
                async with reading as batches:
                    outcome = await self._ingest(
                        spec, target, counted, batches, typed=True, dry_run=message.context.dry_run
                    )
        except AdxflowError as exc:
            exc.detail = {**sent, **exc.detail}
            raise
        return outcome, sent

    async def _from_file(
        self, message: RunMessage, spec: IngestToKusto, source: FileSource, target: Target
    ) -> tuple[Ingested, dict[str, Any]]:
        # The files' module brings pyarrow (some 65 MB resident): imported by a worker's first ingestion
        # from a file, not by every query worker.
        from services.query_worker.ingest_files import IngestFile

        async with IngestFile(self.runtime, message, spec.id, source) as file:
            counted = CsvBatches("", None, None)
            async with aclosing(file.batches(BATCH_ROWS)) as batches:
                outcome = await self._ingest(
                    spec, target, counted, batches, typed=file.typed, dry_run=message.context.dry_run
                )
        return outcome, {"file": file.shown, "format": file.format}

    async def _ingest(
        self,
        spec: IngestToKusto,
        target: Target,
        counted: CsvBatches,
        batches: AsyncIterator[Batch],
        *,
        typed: bool,
        dry_run: bool = False,
    ) -> Ingested:
        if dry_run:
            # A test run reads the source and ingests nothing: no table made, no tag written.
            would = await sampled(batches)
            detail = {"dry_run": NOT_WRITTEN, "method": spec.method, **would.detail()}
            return detail, counted, would.columns
        first = await anext(batches)
        columns = first[0]
        check_names(columns)
        columns = await target.prepared(columns, typed=typed)
        requests = counted.requests(columns, chain(first, batches))
        if spec.method == "queued":
            queued = await target.queue(columns, requests, target.tag)
            return {"method": "queued", "batches": queued, "repeated": False}, counted, columns
        return await target.stream(columns, requests, target.tag), counted, columns


#: What an ingestion did (its detail), what it counted, and the columns it ingested.
Ingested = tuple[dict[str, Any], "CsvBatches", list[Column]]


async def chain(first: T, rest: AsyncIterator[T]) -> AsyncIterator[T]:
    """*first*, then the rest."""
    yield first
    async for batch in rest:
        yield batch
