"""Ingestion: a PostgreSQL table's rows into a table of the local Kusto endpoint through the
``ingest_to_kusto`` step, and what bounds its rate.

A fresh PostgreSQL database holds an ``orders`` table of *rows* rows (a bigint id, a time, a
region, an exact amount, a flag and a JSON document: ~120 bytes of CSV a row), filled by
``generate_series``. The local Kusto endpoint serves a fresh DuckDB file, writable, in a process
of its own. Each round, in this process:

- *source alone*: the step's reading and encoding without Kusto: ``SqlDatabase.read`` (a
  server-side cursor in a read-only transaction, 5,000 rows a batch) through ``CsvBatches`` into
  4 MB CSV requests, which are dropped;
- *the step*: ``IngestStep.perform`` (``services/query_worker/ingesting.py`` and
  ``ingest_target.py``) on a run of a flow ingesting the whole table into a new Kusto table
  with ``create_table``: the same reading, each request sent by azure-kusto-ingest's
  ``KustoStreamingIngestClient`` into the staging table, then the tagged ``.append`` into the
  target, and the staging table dropped.

Rows per second are the table's rows over the time. Each request is sent (the client's
``ingest_from_stream``, on a thread: it compresses the request and waits for the endpoint to
load it) while the next is read and encoded; the time with a request on its way is summed.
The endpoint process's CPU seconds over the step are read from ``/proc``, this process's from
``time.process_time``.
"""

from __future__ import annotations

import time
import uuid
from contextlib import AsyncExitStack, aclosing
from pathlib import Path
from typing import Any

import asyncpg

from benchmarks.figures import Section
from benchmarks.servers import KustoEndpoint, cpu_seconds, fresh_database, unique
from common.contracts.flows import Flow, new_run
from common.contracts.messages import RunContext, TriggerKind
from common.contracts.topology import Topology
from common.platform.blobs.folder import FolderBlobStore
from common.platform.broker.memory import InProcessBroker
from common.platform.config import Settings
from common.platform.connections import Connections, DatabaseConfig, NoAuth
from common.platform.runtime import Runtime
from common.platform.sql import SqlDatabase
from services.embedded.kusto.database import write_database
from services.query_worker.ingest_target import CsvBatches, Target
from services.query_worker.ingesting import BATCH_ROWS, IngestStep, chain
from services.query_worker.kusto import KustoRunner

QUERY = "SELECT id, placed, region, amount, flag, details FROM orders"
FILL = """
CREATE TABLE orders (
    id bigint PRIMARY KEY, placed timestamptz, region text, amount numeric(12, 2), flag boolean, details jsonb
);
INSERT INTO orders
SELECT n, timestamptz '2026-12-01 00:00:00+00' + n * interval '1 second',
       (ARRAY['north', 'south', 'east', 'west', 'ü-central'])[1 + n % 5],
       (n % 100000) / 100.0, n % 2 = 0, jsonb_build_object('n', n, 'tags', jsonb_build_array('a', n % 7))
FROM generate_series(1, $1) AS n;
"""

METHOD = """\
A PostgreSQL table's rows ingested into the local Kusto endpoint by the `ingest_to_kusto` step,
in this process, against the same reading and encoding without Kusto. See
`benchmarks/ingestion.py` for what each figure covers.
"""


def flow(table: str) -> Flow:
    return Flow.model_validate(
        {
            "name": "bench-ingest",
            "connection": "local",
            "database": "Samples",
            "steps": [
                {
                    "id": "load",
                    "action": "ingest_to_kusto",
                    "table": table,
                    "create_table": True,
                    "from_sql": {"database": "orders", "query": QUERY},
                }
            ],
        }
    )


async def source_alone(database: SqlDatabase) -> tuple[float, int, int]:
    """Seconds to read and encode every row, the rows and the requests made."""
    began = time.perf_counter()
    counted = CsvBatches("orders", None, None)
    requests = 0
    async with aclosing(database.read(QUERY, {}, batch_rows=BATCH_ROWS)) as batches:
        first = await anext(batches)
        async for _ in counted.requests(first[0], chain(first, batches)):
            requests += 1
    return time.perf_counter() - began, counted.rows, requests


class TimedSends:
    """The seconds `Target._send` spends, summed over a step."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self._send = Target._send

    def __enter__(self) -> TimedSends:
        timed = self

        async def send(target: Any, ingest: Any, body: bytes, properties: Any) -> None:
            began = time.perf_counter()
            try:
                await timed._send(target, ingest, body, properties)
            finally:
                timed.seconds += time.perf_counter() - began

        Target._send = send  # type: ignore[method-assign]
        return self

    def __exit__(self, *_: object) -> None:
        Target._send = self._send  # type: ignore[method-assign]


async def run(section: Section, workdir: Path, *, quick: bool) -> None:
    rows = 2_000 if quick else 200_000
    rounds = 1 if quick else 3
    async with AsyncExitStack() as stack:
        url = await stack.enter_async_context(fresh_database())
        admin = await asyncpg.connect(url.replace("postgresql+asyncpg://", "postgresql://", 1))
        try:
            await admin.execute(FILL.replace("$1", str(rows)))
        finally:
            await admin.close()
        kusto_file = write_database(workdir / "kusto" / "Samples.duckdb", count=10)
        endpoint = await stack.enter_async_context(KustoEndpoint(kusto_file, writable=True))
        config = DatabaseConfig.model_validate({"url": url, "reads": True})
        connections = Connections(
            configs={"local": NoAuth(cluster=endpoint.url, auth="none")}, databases={"orders": config}
        )
        runtime = await stack.enter_async_context(
            Runtime(
                settings=Settings(data_dir=workdir),
                broker=InProcessBroker(Topology(unique("bench-ingest-"))),
                blobs=FolderBlobStore(workdir / "blobs"),
                connections=connections,
            )
        )
        kusto = KustoRunner(connections, timeout=600)
        stack.push_async_callback(kusto.close)
        step = IngestStep(runtime, kusto)
        alone: list[float] = []
        whole: list[float] = []
        sending: list[float] = []
        endpoint_cpu: list[float] = []
        own_cpu: list[float] = []
        requests = 0
        for _ in range(rounds):
            async with SqlDatabase("orders", config) as database:
                seconds, read, requests = await source_alone(database)
            assert read == rows, (read, rows)
            alone.append(seconds)
            table = f"Orders_{uuid.uuid4().hex[:10]}"
            message = new_run(
                flow(table), RunContext(flow="bench-ingest", trigger=TriggerKind.MANUAL), uuid.uuid4().hex
            ).model_copy(update={"step_id": "load"})
            cpu_before = cpu_seconds(endpoint.pid)
            own_before = time.process_time()
            with TimedSends() as sends:
                began = time.perf_counter()
                outcome = await step.perform(message)
                whole.append(time.perf_counter() - began)
            endpoint_cpu.append(cpu_seconds(endpoint.pid) - cpu_before)
            own_cpu.append(time.process_time() - own_before)
            sending.append(sends.seconds)
            assert outcome.row_count == rows, outcome.detail
            assert not outcome.detail["repeated"], outcome.detail
        section.add(
            f"{rows:,} rows PostgreSQL → Kusto, the step: rows/s", "rows/s", [rows / s for s in whole]
        )
        section.add("the step: time", "s", whole)
        section.add("the source alone (read and CSV): rows/s", "rows/s", [rows / s for s in alone])
        section.add(
            "the step's time with a streaming request on its way (overlapping the reading)",
            "%",
            [100 * s / w for s, w in zip(sending, whole, strict=True)],
        )
        section.add("the endpoint's CPU over the step", "s", endpoint_cpu)
        section.add(
            "this process's CPU over the step, of the step's time",
            "%",
            [100 * c / w for c, w in zip(own_cpu, whole, strict=True)],
        )
        section.notes.append(
            f"{rounds} round(s); {requests} streaming request(s) of at most 4 MB a round, each sent while "
            "the next is read and encoded. What bounds the rate is read off the CPU figures: the endpoint's "
            "loading of the requests is a small part of the step's time, and this process is busy for all "
            "of it (over 100%: azure-kusto-ingest compresses each request on a thread beside the reading). "
            "Its one interpreter reads the rows through asyncpg and SQLAlchemy (which decodes each JSON "
            "document that the CSV then encodes again) and writes the CSV: the ingestion is bound by that "
            "Python work, not by Kusto's side."
        )
