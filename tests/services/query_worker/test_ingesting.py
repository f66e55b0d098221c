"""The query worker's ingestion step from the machine's PostgreSQL and MariaDB into the local Kusto
endpoint, through azure-kusto-ingest's streaming client: every type there and back (nulls, zones,
unicode, decimals), a step handled twice ingesting once, what a broken try left behind, a table
that does not fit, the database's caps, bound parameters."""

from __future__ import annotations

import asyncio
import datetime as dt
import gzip
import json
import os
import signal
import sys
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import asyncmy
import asyncpg
import pytest
from aiohttp import web
from azure.kusto.data import KustoClient, KustoConnectionStringBuilder
from azure.kusto.ingest import BlobDescriptor
from azure.kusto.ingest.ingestion_blob_info import IngestionBlobInfo
from sqlalchemy.engine import make_url

from common.contracts.errors import AdxflowError, ArtifactMissing, DatabaseError, FileUnavailable, KustoError
from common.contracts.flows import Flow, new_run
from common.contracts.messages import ErrorCode, RunContext, RunMessage, TriggerKind
from common.contracts.results import Column
from common.contracts.topology import Topology
from common.platform.blobs.folder import FolderBlobStore
from common.platform.broker.memory import InProcessBroker
from common.platform.config import Settings
from common.platform.connections import Connections, DatabaseConfig, NoAuth
from common.platform.runtime import Runtime
from services.embedded.kusto.database import write_database
from services.embedded.kusto.endpoint import LocalKusto
from services.query_worker import ingest_target, ingesting
from services.query_worker.export_files import ParquetFile
from services.query_worker.ingest_target import ingest_tag, queued_properties, staging_table
from services.query_worker.ingesting import IngestStep
from services.query_worker.kusto import KustoRunner

pytestmark = pytest.mark.postgres

UTC = dt.UTC

POSTGRES_SOURCE = """
CREATE TABLE readings (
    id bigint PRIMARY KEY, small integer, ratio double precision, price numeric(20, 6), name text,
    at timestamptz, local_at timestamp, flag boolean, details jsonb, ref uuid, took interval, day date
);
INSERT INTO readings VALUES
    (1, 7, 0.25, 12345678901234.123456, 'Zürich ☃ "quoted", with commas', '2026-03-29 01:30:00+02',
     '2026-01-01 12:00:00', true, '{"a": [1, 2], "b": "ü"}', '6f9619ff-8b86-d011-b42d-00c04fc964ff',
     '1 day 02:03:04.5', '2026-02-28'),
    (2, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL),
    (3, -1, -1.5e10, -0.000001, E'line\\nbreak', '1999-12-31 23:59:59.999999+00', NULL, false, '[]',
     NULL, '-00:00:01', NULL);
"""

MARIADB_SOURCE = [
    "CREATE TABLE readings (id BIGINT PRIMARY KEY, ratio DOUBLE, price DECIMAL(20, 6), name TEXT, "
    "at DATETIME(6), took TIME(6))",
    "INSERT INTO readings VALUES (1, 0.25, 12345678901234.123456, 'Zürich ☃', '2026-03-29 01:30:00.5', "
    "'02:03:04.5'), (2, NULL, NULL, NULL, NULL, NULL)",
]


@dataclass
class World:
    step: IngestStep
    kusto: LocalKusto
    client: KustoClient
    connections: Connections

    def rows(self, query: str) -> list[dict[str, Any]]:
        result = self.client.execute(self.kusto.database, query).primary_results[0]
        return [row.to_dict() for row in result]

    def schema(self, table: str) -> list[tuple[str, str]]:
        return [(row["ColumnName"], row["ColumnType"]) for row in self.rows(f"{table} | getschema")]

    def tables(self) -> set[str]:
        shown = self.client.execute_mgmt(self.kusto.database, ".show tables").primary_results[0]
        return {row["TableName"] for row in shown}


@pytest.fixture(scope="module")
def kusto(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[LocalKusto]:
    path = write_database(tmp_path_factory.mktemp("ingesting") / "Samples.duckdb", count=10)
    with LocalKusto(path, writable=True) as endpoint:
        yield endpoint  # type: ignore[misc]


@pytest.fixture
async def postgres_source(
    postgres_database: Callable[[], AbstractAsyncContextManager[str]],
) -> AsyncIterator[str]:
    async with postgres_database() as url:
        connection = await asyncpg.connect(url.replace("postgresql+asyncpg://", "postgresql://", 1))
        try:
            await connection.execute(POSTGRES_SOURCE)
        finally:
            await connection.close()
        yield url


def world_of(
    tmp_path: Path, kusto: LocalKusto, sources: dict[str, dict[str, Any]], settings: Settings | None = None
) -> World:
    databases = {}
    for name, entry in sources.items():
        secret = tmp_path / f"{name}-url"
        secret.write_text(entry.pop("url"))
        databases[name] = DatabaseConfig.model_validate({"url_secret": {"file": str(secret)}, **entry})
    connections = Connections(configs={"local": NoAuth(cluster=kusto.url, auth="none")}, databases=databases)
    runtime = Runtime(
        settings=settings or Settings(),
        broker=InProcessBroker(Topology("ingesting")),
        blobs=FolderBlobStore(tmp_path / "blobs"),
        connections=connections,
    )
    step = IngestStep(runtime, KustoRunner(connections, timeout=30))
    client = KustoClient(KustoConnectionStringBuilder.with_no_authentication(kusto.url))
    return World(step, kusto, client, connections)


@pytest.fixture
async def world(tmp_path: Path, kusto: LocalKusto, postgres_source: str) -> AsyncIterator[World]:
    found = world_of(tmp_path, kusto, {"source": {"url": postgres_source, "reads": True}})
    yield found
    found.client.close()
    await found.step.kusto.close()


def table_name() -> str:
    return f"Imported_{uuid.uuid4().hex[:10]}"


def ingest_flow(table: str, query: str = "SELECT * FROM readings ORDER BY id", **step: Any) -> Flow:
    return Flow.model_validate(
        {
            "name": "importing",
            "connection": "local",
            "database": "Samples",
            "parameters": {
                "minimum": {"type": "long", "default": 0},
                "name": {"type": "string", "default": ""},
            },
            "steps": [
                {
                    "id": "load",
                    "action": "ingest_to_kusto",
                    "table": table,
                    "from_sql": {"database": "source", "query": query},
                    "create_table": True,
                    **step,
                }
            ],
        }
    )


def at_ingest(flow: Flow, **parameters: Any) -> RunMessage:
    context = RunContext(flow=flow.name, trigger=TriggerKind.MANUAL, parameters=parameters)
    return new_run(flow, context, uuid.uuid4().hex).model_copy(update={"step_id": "load"})


async def test_every_postgresql_type_arrives_as_its_kusto_type_with_its_value(world: World) -> None:
    table = table_name()

    outcome = await world.step.perform(at_ingest(ingest_flow(table)))

    assert outcome.row_count == 3
    assert (outcome.detail["rows"], outcome.detail["repeated"], outcome.detail["requests"]) == (3, False, 1)
    assert world.schema(table) == [
        ("id", "long"),
        ("small", "int"),
        ("ratio", "real"),
        ("price", "decimal"),
        ("name", "string"),
        ("at", "datetime"),
        ("local_at", "datetime"),
        ("flag", "bool"),
        ("details", "dynamic"),
        ("ref", "guid"),
        ("took", "timespan"),
        ("day", "datetime"),
    ]
    first, empty, last = world.rows(f"{table} | order by id asc")
    assert first["name"] == 'Zürich ☃ "quoted", with commas'
    assert first["at"] == dt.datetime(2026, 3, 28, 23, 30, tzinfo=UTC)
    assert first["local_at"] == dt.datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
    assert Decimal(str(first["price"])) == Decimal("12345678901234.123456")
    assert (first["small"], first["ratio"], first["flag"]) == (7, 0.25, True)
    assert first["details"] == {"a": [1, 2], "b": "ü"}
    assert str(first["ref"]) == "6f9619ff-8b86-d011-b42d-00c04fc964ff"
    assert first["took"] == dt.timedelta(days=1, hours=2, minutes=3, seconds=4.5)
    assert first["day"] == dt.datetime(2026, 2, 28, tzinfo=UTC)
    # Nulls stay null (a Kusto string is never null: it is empty).
    assert {key: value for key, value in empty.items() if key != "id"} == {
        **{key: None for key in empty if key not in ("id", "name")},
        "name": "",
    }
    assert last["name"] == "line\nbreak"
    assert last["at"] == dt.datetime(1999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC)
    assert (last["ratio"], last["flag"], last["details"]) == (-1.5e10, False, [])
    assert last["took"] == dt.timedelta(seconds=-1)
    assert Decimal(str(last["price"])) == Decimal("-0.000001")


async def test_a_step_handled_twice_ingests_its_rows_once(world: World) -> None:
    table = table_name()
    message = at_ingest(ingest_flow(table))

    first = await world.step.perform(message)
    again = await world.step.perform(message)

    assert (first.detail["repeated"], again.detail["repeated"]) == (False, True)
    assert world.rows(f"{table} | count")[0]["Count"] == 3
    # The staging table went both times; another run ingests again.
    assert staging_table(table, ingest_tag(message)) not in world.tables()
    await world.step.perform(at_ingest(ingest_flow(table)))
    assert world.rows(f"{table} | count")[0]["Count"] == 6


async def test_what_a_broken_try_left_in_the_staging_table_is_not_ingested(world: World) -> None:
    table = table_name()
    message = at_ingest(ingest_flow(table))
    stage = staging_table(table, ingest_tag(message))
    world.client.execute_mgmt(world.kusto.database, f".set-or-append {stage} <| print id=long(99)")

    await world.step.perform(message)

    assert [row["id"] for row in world.rows(f"{table} | order by id asc")] == [1, 2, 3]
    assert stage not in world.tables()


@pytest.mark.parametrize(
    ("batch_rows", "request_bytes"),
    [(5_000, 230), (1, 300)],
    ids=["a-batch-over-a-request-goes-row-by-row", "batches-fill-requests"],
)
async def test_rows_go_in_several_requests_when_they_are_over_one_requests_bytes(
    world: World, monkeypatch: pytest.MonkeyPatch, batch_rows: int, request_bytes: int
) -> None:
    monkeypatch.setattr(ingest_target, "REQUEST_BYTES", request_bytes)
    monkeypatch.setattr(ingesting, "BATCH_ROWS", batch_rows)
    table = table_name()

    outcome = await world.step.perform(at_ingest(ingest_flow(table)))

    assert outcome.detail["requests"] == 2
    assert [row["id"] for row in world.rows(f"{table} | order by id asc")] == [1, 2, 3]


async def test_values_reach_the_query_only_as_bound_parameters(world: World) -> None:
    table = table_name()
    query = (
        "SELECT id, name FROM readings WHERE id >= :minimum AND (name IS NULL OR name <> :name) ORDER BY id"
    )

    outcome = await world.step.perform(at_ingest(ingest_flow(table, query), minimum=2, name="x' OR '1'='1"))

    assert outcome.row_count == 2
    assert [row["id"] for row in world.rows(f"{table} | order by id asc")] == [2, 3]
    # The history shows the SQL and the values bound, as sent.
    assert (outcome.detail["text"], outcome.detail["parameters"]) == (
        query,
        {"minimum": 2, "name": "x' OR '1'='1"},
    )


async def test_a_table_that_is_not_there_or_does_not_fit_is_refused_naming_it_and_left_as_it_was(
    world: World,
) -> None:
    table = table_name()
    query = "SELECT id, name FROM readings"
    with pytest.raises(KustoError, match=f"table '{table}' is not in database 'Samples'; create_table: true"):
        await world.step.perform(at_ingest(ingest_flow(table, query, create_table=False)))
    assert table not in world.tables()

    world.client.execute_mgmt(world.kusto.database, f".create table {table} (id:long, name:long)")
    with pytest.raises(
        KustoError, match=r"column 'name' is string in the source but long in table"
    ) as refused:
        await world.step.perform(at_ingest(ingest_flow(table, query, create_table=False)))
    assert refused.value.code is ErrorCode.TABLE_MISMATCH
    with pytest.raises(KustoError, match=r"column 'name' is long there, not string"):
        await world.step.perform(at_ingest(ingest_flow(table, query)))
    assert world.rows(f"{table} | count")[0]["Count"] == 0


async def test_an_existing_table_takes_fewer_columns_and_wider_types(world: World) -> None:
    table = table_name()
    world.client.execute_mgmt(
        world.kusto.database, f".create table {table} (Extra:string, id:long, small:real)"
    )

    await world.step.perform(
        at_ingest(
            ingest_flow(table, "SELECT cast(id AS integer) AS id, small FROM readings", create_table=False)
        )
    )

    rows = world.rows(f"{table} | order by id asc")
    assert [(row["Extra"], row["id"], row["small"]) for row in rows] == [
        ("", 1, 7.0),
        ("", 2, None),
        ("", 3, -1.0),
    ]


async def test_a_source_over_the_databases_cap_ingests_nothing(
    tmp_path: Path, kusto: LocalKusto, postgres_source: str
) -> None:
    world = world_of(tmp_path, kusto, {"source": {"url": postgres_source, "reads": True, "max_rows": 2}})
    table = table_name()
    message = at_ingest(ingest_flow(table))
    try:
        with pytest.raises(
            DatabaseError, match=r"more than max_rows=2 rows, the cap of database 'source'"
        ) as capped:
            await world.step.perform(message)
        assert capped.value.code is ErrorCode.RESULT_TOO_LARGE
        assert world.rows(f"{table} | count")[0]["Count"] == 0
        assert staging_table(table, ingest_tag(message)) not in world.tables()
    finally:
        world.client.close()
        await world.step.kusto.close()


async def test_a_database_flows_may_not_read_is_refused(
    tmp_path: Path, kusto: LocalKusto, postgres_source: str
) -> None:
    world = world_of(tmp_path, kusto, {"source": {"url": postgres_source, "tables": ["x"]}})
    try:
        with pytest.raises(DatabaseError, match="database 'source' is not one flows may read"):
            await world.step.perform(at_ingest(ingest_flow(table_name())))
    finally:
        world.client.close()
        await world.step.kusto.close()


async def test_a_query_the_database_refuses_fails_the_step_naming_the_database(world: World) -> None:
    with pytest.raises(AdxflowError, match=r"database 'source' refused the query: .*no_such_table"):
        await world.step.perform(at_ingest(ingest_flow(table_name(), "SELECT * FROM no_such_table")))
    with pytest.raises(AdxflowError, match=r"database 'source' refused the query: .*read-only"):
        await world.step.perform(at_ingest(ingest_flow(table_name(), "DELETE FROM readings RETURNING id")))


@pytest.mark.mariadb
async def test_mariadb_rows_arrive_with_their_types(
    tmp_path: Path, kusto: LocalKusto, mariadb_database: Callable[[], AbstractAsyncContextManager[str]]
) -> None:
    async with mariadb_database() as url:
        server = make_url(url)
        connection = await asyncmy.connect(
            host=server.host,
            port=server.port or 3306,
            user=server.username,
            password=server.password or "",
            database=server.database,
        )
        try:
            async with connection.cursor() as cursor:
                for statement in MARIADB_SOURCE:
                    await cursor.execute(statement)
            await connection.commit()
        finally:
            await connection.ensure_closed()
        world = world_of(tmp_path, kusto, {"source": {"url": url, "reads": True}})
        table = table_name()
        try:
            await world.step.perform(at_ingest(ingest_flow(table)))
            assert world.schema(table) == [
                ("id", "long"),
                ("ratio", "real"),
                ("price", "decimal"),
                ("name", "string"),
                ("at", "datetime"),
                ("took", "timespan"),
            ]
            first, empty = world.rows(f"{table} | order by id asc")
        finally:
            world.client.close()
            await world.step.kusto.close()
    assert first["name"] == "Zürich ☃"
    assert Decimal(str(first["price"])) == Decimal("12345678901234.123456")
    assert first["at"] == dt.datetime(2026, 3, 29, 1, 30, 0, 500000, tzinfo=UTC)
    assert first["took"] == dt.timedelta(hours=2, minutes=3, seconds=4.5)
    assert (empty["ratio"], empty["price"], empty["at"], empty["took"]) == (None, None, None, None)


# -- from a file ---------------------------------------------------------------------------------


def file_flow(table: str, **source: Any) -> Flow:
    return Flow.model_validate(
        {
            "name": "importing",
            "connection": "local",
            "database": "Samples",
            "steps": [
                {
                    "id": "load",
                    "action": "ingest_to_kusto",
                    "table": table,
                    "create_table": True,
                    "from_file": source,
                }
            ],
        }
    )


@pytest.fixture
async def files(tmp_path: Path, kusto: LocalKusto) -> AsyncIterator[tuple[World, FolderBlobStore, str]]:
    """A world whose runtime lets flows fetch files from a local web server, and that server's URL."""
    served = tmp_path / "served"
    served.mkdir()
    app = web.Application()
    app.router.add_static("/files", served)

    async def broken(request: web.Request) -> web.Response:
        return web.Response(status=503, text="down for maintenance")

    app.router.add_get("/broken.csv", broken)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    settings = Settings(ingest_allowed_hosts=["127.0.0.1"], ingest_file_max_bytes=64 * 1024)
    found = world_of(tmp_path, kusto, {}, settings)
    blobs = found.step.runtime.blobs
    assert isinstance(blobs, FolderBlobStore)
    try:
        yield found, blobs, f"http://127.0.0.1:{port}"
    finally:
        found.client.close()
        await found.step.kusto.close()
        await runner.cleanup()


CSV_FILE = (
    "id,at,name,amount,details\n"
    '1,2026-03-29T01:30:00+02:00,"Zürich, ""quoted""",12345678901234.123456,"{""a"": [1, 2]}"\n'
    "2,,,,\n"
    '3,1999-12-31T23:59:59.999999Z,"two\nlines",-0.000001,[]\n'
)


async def test_a_csv_file_in_the_blob_store_takes_the_types_of_the_table_it_goes_into(
    files: tuple[World, FolderBlobStore, str],
) -> None:
    world, blobs, _ = files
    table = table_name()
    world.client.execute_mgmt(
        world.kusto.database,
        f".create table {table} (id:long, at:datetime, name:string, amount:decimal, details:dynamic)",
    )
    await blobs.put(
        "imports/daily/orders.csv.gz", gzip.compress(CSV_FILE.encode("utf-8")), "application/gzip"
    )

    outcome = await world.step.perform(at_ingest(file_flow(table, blob="daily/orders.csv.gz")))

    assert (outcome.row_count, outcome.detail["file"], outcome.detail["format"]) == (
        3,
        "imports/daily/orders.csv.gz",
        "csv",
    )
    first, empty, last = world.rows(f"{table} | order by id asc")
    assert first["at"] == dt.datetime(2026, 3, 28, 23, 30, tzinfo=UTC)
    assert first["name"] == 'Zürich, "quoted"'
    assert Decimal(str(first["amount"])) == Decimal("12345678901234.123456")
    assert first["details"] == {"a": [1, 2]}
    assert (empty["at"], empty["name"], empty["amount"], empty["details"]) == (None, "", None, None)
    assert (last["name"], last["details"]) == ("two\nlines", [])


async def test_a_csv_file_creates_a_table_of_strings(files: tuple[World, FolderBlobStore, str]) -> None:
    world, blobs, _ = files
    table = table_name()
    await blobs.put("imports/orders.csv", CSV_FILE.encode("utf-8"), "text/csv")

    await world.step.perform(at_ingest(file_flow(table, blob="orders.csv")))

    assert world.schema(table) == [(name, "string") for name in ("id", "at", "name", "amount", "details")]
    assert [row["id"] for row in world.rows(f"{table} | order by id asc")] == ["1", "2", "3"]


async def test_json_lines_at_an_allowed_url_are_typed_by_json(
    files: tuple[World, FolderBlobStore, str], tmp_path: Path
) -> None:
    world, _, server = files
    table = table_name()
    lines = [
        {"id": 1, "name": "ü", "ratio": 0.5, "ok": True, "tags": ["a"], "note": None},
        {"id": 2, "ratio": None, "ok": False, "tags": {"b": 1}, "note": "later"},
    ]
    (tmp_path / "served" / "events.jsonl").write_text("\n".join(json.dumps(line) for line in lines) + "\n")

    outcome = await world.step.perform(
        at_ingest(file_flow(table, url=f"{server}/files/events.jsonl?sig=secret"))
    )

    assert outcome.detail["file"] == f"{server}/files/events.jsonl"
    assert world.schema(table) == [
        ("id", "long"),
        ("name", "string"),
        ("ratio", "real"),
        ("ok", "bool"),
        ("tags", "dynamic"),
        ("note", "string"),
    ]
    rows = world.rows(f"{table} | order by id asc")
    assert [(row["id"], row["name"], row["ratio"], row["ok"], row["tags"], row["note"]) for row in rows] == [
        (1, "ü", 0.5, True, ["a"], ""),
        (2, "", None, False, {"b": 1}, "later"),
    ]


async def test_a_parquet_file_export_to_file_wrote_arrives_with_its_kusto_types(
    files: tuple[World, FolderBlobStore, str],
) -> None:
    world, blobs, _ = files
    columns = [
        Column(name="id", type="long"),
        Column(name="at", type="datetime"),
        Column(name="price", type="decimal"),
        Column(name="took", type="timespan"),
        Column(name="details", type="dynamic"),
        Column(name="ok", type="bool"),
    ]
    rows = [
        [1, "2026-03-28T23:30:00.1234567Z", "12345678901234.123456", "1.02:03:04.5000001", {"a": 1}, True],
        [2, None, None, None, None, None],
    ]
    async with blobs.writer("imports/exported.parquet", "application/vnd.apache.parquet") as blob:
        exported = ParquetFile(blob, compression="zstd")
        await exported.start(columns)
        await exported.add(rows)
        await exported.finish()
    table = table_name()

    await world.step.perform(at_ingest(file_flow(table, blob="exported.parquet")))

    assert world.schema(table) == [(column.name, column.type) for column in columns]
    first, empty = world.rows(f"{table} | order by id asc")
    assert first["at"] == dt.datetime(2026, 3, 28, 23, 30, 0, 123456, tzinfo=UTC)
    assert Decimal(str(first["price"])) == Decimal("12345678901234.123456")
    # The local endpoint keeps microseconds; the tick goes to Kusto as it was written.
    assert first["took"] == dt.timedelta(days=1, hours=2, minutes=3, seconds=4.5)
    assert (first["details"], first["ok"]) == ({"a": 1}, True)
    assert (empty["at"], empty["price"], empty["took"], empty["details"], empty["ok"]) == (None,) * 5


@pytest.mark.parametrize(
    ("source", "error", "problem"),
    [
        ({"blob": "missing.csv"}, ArtifactMissing, "imports/missing.csv"),
        ({"url": "{server}/files/missing.csv"}, ArtifactMissing, "answered 404"),
        ({"url": "{server}/broken.csv"}, FileUnavailable, "answered 503"),
        (
            {"url": "https://elsewhere.example/orders.csv"},
            AdxflowError,
            "not in the operator's ingestion allowlist",
        ),
        ({"blob": "big.csv"}, AdxflowError, "larger than ingest_file_max_bytes=65,536"),
        (
            {"blob": "orders.txt"},
            AdxflowError,
            r"steps\.load\.from_file\.format: 'orders.txt' ends with none of",
        ),
        ({"blob": "ragged.csv"}, AdxflowError, "line 3 of the file has 1 fields for 2 columns"),
    ],
)
async def test_a_file_that_cannot_be_had_or_read_fails_the_step_saying_why(
    files: tuple[World, FolderBlobStore, str], source: dict[str, str], error: type[Exception], problem: str
) -> None:
    world, blobs, server = files
    await blobs.put("imports/big.csv", b"a\n" + b"1\n" * 40_000, "text/csv")
    await blobs.put("imports/orders.txt", b"a\n1\n", "text/plain")
    await blobs.put("imports/ragged.csv", b"a,b\n1,2\n3\n", "text/csv")
    table = table_name()
    message = at_ingest(
        file_flow(table, **{key: value.format(server=server) for key, value in source.items()})
    )

    with pytest.raises(error, match=problem) as failed:
        await world.step.perform(message)

    assert isinstance(failed.value, AdxflowError)
    assert failed.value.retryable is (error is FileUnavailable)
    assert table not in world.tables()


#: An ingestion in a process of its own (the run message on stdin) that says when it is at *where*
#: (``streamed``: one request is in the staging table, more to come; ``moved``: the rows are in the
#: target and the step has not answered) and waits there to be killed.
INGEST_UNTIL_KILLED = """
import asyncio, os, sys
from common.contracts.messages import RunMessage
from common.contracts.topology import Topology
from common.platform.blobs.folder import FolderBlobStore
from common.platform.broker.memory import InProcessBroker
from common.platform.config import Settings
from common.platform.connections import Connections, DatabaseConfig, NoAuth, SecretRef
from common.platform.runtime import Runtime
from services.query_worker import ingest_target, ingesting
from services.query_worker.kusto import KustoRunner

where = sys.argv[1]
ingesting.REQUEST_BYTES = 230

async def stop_here() -> None:
    print(where, flush=True)
    await asyncio.Event().wait()

send, drop = ingest_target.Target._send, ingest_target.Target._drop

async def sent_once(self, ingest, body, properties):
    await send(self, ingest, body, properties)
    if where == "streamed":
        await stop_here()

async def dropped(self, stage):
    if where == "moved":
        await stop_here()
    await drop(self, stage)

ingest_target.Target._send, ingest_target.Target._drop = sent_once, dropped

async def main() -> None:
    message = RunMessage.model_validate_json(sys.stdin.read())
    source = DatabaseConfig(url_secret=SecretRef(env="SOURCE_URL"), reads=True)
    connections = Connections(
        configs={"local": NoAuth(cluster=os.environ["KUSTO_URL"], auth="none")}, databases={"source": source}
    )
    runtime = Runtime(
        settings=Settings(), broker=InProcessBroker(Topology("killed")),
        blobs=FolderBlobStore(os.environ["BLOBS"]), connections=connections,
    )
    await ingesting.IngestStep(runtime, KustoRunner(connections, timeout=30)).perform(message)

asyncio.run(main())
"""


@pytest.mark.parametrize(("where", "repeated"), [("streamed", False), ("moved", True)])
async def test_an_ingestion_killed_mid_way_is_redone_once(
    world: World, postgres_source: str, tmp_path: Path, where: str, repeated: bool
) -> None:
    table = table_name()
    message = at_ingest(ingest_flow(table))
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        INGEST_UNTIL_KILLED,
        where,
        cwd=Path(__file__).parents[3],
        env={
            **os.environ,
            "SOURCE_URL": postgres_source,
            "KUSTO_URL": world.kusto.url,
            "BLOBS": str(tmp_path / "b"),
        },
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert process.stdin is not None
        assert process.stdout is not None
        process.stdin.write(message.model_dump_json().encode())
        process.stdin.close()
        line = await asyncio.wait_for(process.stdout.readline(), 60)
        assert line == f"{where}\n".encode()
    finally:
        process.kill()
        await process.wait()
    assert process.returncode == -signal.SIGKILL
    stage = staging_table(table, ingest_tag(message))
    # Killed while streaming: the rows are staged, not in the target; killed after the move: in it.
    assert world.rows(f"{table} | count")[0]["Count"] == (3 if repeated else 0)
    assert stage in world.tables()

    redone = await world.step.perform(message)

    assert redone.detail["repeated"] is repeated
    assert [row["id"] for row in world.rows(f"{table} | order by id asc")] == [1, 2, 3]
    assert stage not in world.tables()


async def test_a_source_database_that_is_away_is_a_retryable_failure_and_nothing_is_ingested(
    tmp_path: Path, kusto: LocalKusto
) -> None:
    # Nothing listens on the discard port: the connection is refused.
    away = "postgresql+asyncpg://postgres@127.0.0.1:9/postgres"
    world = world_of(tmp_path, kusto, {"source": {"url": away, "reads": True}})
    table = table_name()
    try:
        with pytest.raises(DatabaseError, match="database 'source' could not be reached") as failed:
            await world.step.perform(at_ingest(ingest_flow(table)))
        assert (failed.value.code, failed.value.retryable) == (ErrorCode.DATABASE_UNAVAILABLE, True)
        assert table not in world.tables()
    finally:
        world.client.close()
        await world.step.kusto.close()


def test_a_queued_batch_maps_its_fields_by_name_and_is_held_back_when_its_tag_was_ingested() -> None:
    columns = [Column(name="id", type="long"), Column(name="at", type="datetime")]

    properties = queued_properties("Samples", "Orders", columns, "run-1;load;3")
    described = IngestionBlobInfo(
        BlobDescriptor("https://account.blob.core.windows.net/c/b.csv.gz?sig=x", 10), properties
    ).properties

    additional = described["AdditionalProperties"]
    assert json.loads(additional["tags"]) == ["ingest-by:run-1;load;3"]
    assert json.loads(additional["ingestIfNotExists"]) == ["run-1;load;3"]
    assert json.loads(additional["ingestionMapping"]) == [
        {"column": "id", "datatype": "long", "properties": {"Ordinal": "0"}},
        {"column": "at", "datatype": "datetime", "properties": {"Ordinal": "1"}},
    ]
    assert (described["DatabaseName"], described["TableName"]) == ("Samples", "Orders")
