"""Writes, `async` commands and `.show operations` on the local Kusto endpoint,
driven by the real azure-kusto-data client against a writable sandbox."""

from __future__ import annotations

import datetime as dt
import socket
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import duckdb
import pytest
from azure.kusto.data import KustoConnectionStringBuilder
from azure.kusto.data.aio import KustoClient
from azure.kusto.data.exceptions import KustoServiceError
from azure.kusto.data.response import KustoResultTable

from services.embedded.kusto.database import write_database
from services.embedded.kusto.endpoint import LocalKusto
from tests.conftest import poll_until

ROWS = 2_000

#: Kusto's `.show operations` columns, in order, written out rather than
#: imported so the test holds the implementation to the real list.
SHOW_OPERATIONS_COLUMNS = [
    "OperationId",
    "Operation",
    "NodeId",
    "StartedOn",
    "LastUpdatedOn",
    "Duration",
    "State",
    "Status",
    "RootActivityId",
    "ShouldRetry",
    "Database",
    "Principal",
    "User",
    "AdminEpochStartTime",
]

#: How long a small command may take to finish in the background.
SETTLE_SECONDS = 30

#: A cross join of two 200,000-row ranges: far more than finishes while a test
#: watches it, and interruptible.
HEAVY_QUERY = (
    "range x from 1 to 200000 step 1 | extend k = 1"
    " | join kind=inner (range y from 1 to 200000 step 1 | extend k = 1) on k"
    " | summarize n = count()"
)

SUMMARY = "StormEvents | summarize n = count() by State"


@pytest.fixture(scope="module")
def database(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_database(tmp_path_factory.mktemp("local_kusto_writes") / "Sandbox.duckdb", count=ROWS)


@pytest.fixture(scope="module")
def kusto(database: Path) -> Iterator[LocalKusto]:
    with LocalKusto(database, writable=True) as endpoint:
        yield endpoint


@pytest.fixture
async def client(kusto: LocalKusto) -> AsyncIterator[KustoClient]:
    async with connect(kusto) as kusto_client:
        yield kusto_client


@pytest.fixture
def table() -> str:
    """A table name no other test writes to."""
    return f"T_{uuid.uuid4().hex[:12]}"


def connect(kusto: LocalKusto) -> KustoClient:
    return KustoClient(KustoConnectionStringBuilder.with_no_authentication(kusto.url))


async def mgmt(client: KustoClient, kusto: LocalKusto, command: str) -> KustoResultTable:
    response = await client.execute_mgmt(kusto.database, command)
    return response.primary_results[0]


async def rows(client: KustoClient, kusto: LocalKusto, query: str) -> list[list[Any]]:
    response = await client.execute(kusto.database, query)
    return [list(row) for row in response.primary_results[0].raw_rows]


async def submit(client: KustoClient, kusto: LocalKusto, command: str) -> str:
    """Run an `async` command; its operation id, checked to be the whole answer."""
    answer = await mgmt(client, kusto, command)
    assert [column.column_name for column in answer.columns] == ["OperationId"]
    assert [column.column_type for column in answer.columns] == ["guid"]
    assert len(answer.raw_rows) == 1
    return str(uuid.UUID(answer.raw_rows[0][0]))


async def operations(client: KustoClient, kusto: LocalKusto, which: str = "") -> list[Any]:
    answer = await mgmt(client, kusto, f".show operations {which}")
    assert [column.column_name for column in answer.columns] == SHOW_OPERATIONS_COLUMNS
    return answer.rows


async def settled(client: KustoClient, kusto: LocalKusto, operation_id: str) -> Any:
    """The operation's row once it is no longer InProgress, watched through the client."""
    # Rows of a result table: azure-kusto-data names their type only in a private module.
    seen: list[Any] = []

    async def finished() -> bool:
        seen[:] = await operations(client, kusto, operation_id)
        return seen[0]["State"] != "InProgress"

    await poll_until(finished, SETTLE_SECONDS, f"operation {operation_id} to settle")
    return seen[0]


def http_status(error: KustoServiceError) -> int | None:
    return getattr(error.http_response, "status", None)


async def test_set_or_append_creates_then_appends(client: KustoClient, kusto: LocalKusto, table: str) -> None:
    [[states]] = await rows(client, kusto, "StormEvents | distinct State | count")
    written = await mgmt(client, kusto, f".set-or-append {table} <| {SUMMARY}")
    assert [c.column_name for c in written.columns] == [
        "ExtentId",
        "OriginalSize",
        "ExtentSize",
        "CompressedSize",
        "IndexSize",
        "RowCount",
    ]
    assert [row["RowCount"] for row in written.rows] == [states]
    assert await rows(client, kusto, f"{table} | summarize sum(n), count()") == [[ROWS, states]]

    await mgmt(client, kusto, f".set-or-append {table} <| {SUMMARY}")
    assert await rows(client, kusto, f"{table} | summarize sum(n), count()") == [[2 * ROWS, 2 * states]]


async def test_async_set_or_append_completes_and_reports_kusto_columns(
    client: KustoClient, kusto: LocalKusto, table: str
) -> None:
    operation_id = await submit(client, kusto, f".set-or-append async {table} <| {SUMMARY}")
    row = await settled(client, kusto, operation_id)

    assert (row["OperationId"], row["Operation"], row["State"], row["Status"]) == (
        operation_id,
        "TableSetOrAppend",
        "Completed",
        "",
    )
    assert row["Database"] == kusto.database
    assert row["ShouldRetry"] is False
    uuid.UUID(row["RootActivityId"])
    started, updated = row["StartedOn"], row["LastUpdatedOn"]
    assert isinstance(started, dt.datetime)
    assert started.tzinfo is not None
    assert updated >= started
    assert row["Duration"] == updated - started
    assert row["AdminEpochStartTime"] <= started
    assert await rows(client, kusto, f"{table} | summarize sum(n)") == [[ROWS]]


async def test_async_command_whose_query_fails_ends_failed_with_the_reason(
    client: KustoClient, kusto: LocalKusto, table: str
) -> None:
    operation_id = await submit(client, kusto, f".set-or-append async {table} <| NoSuchTable | count")
    row = await settled(client, kusto, operation_id)
    assert row["State"] == "Failed"
    assert "NoSuchTable" in row["Status"]
    assert "does not exist" in row["Status"]


async def test_show_operations_lists_newest_first(client: KustoClient, kusto: LocalKusto, table: str) -> None:
    first = await submit(client, kusto, f".set-or-append async {table} <| {SUMMARY}")
    await settled(client, kusto, first)
    second = await submit(client, kusto, f".append async {table} <| {SUMMARY}")
    assert (await settled(client, kusto, second))["Operation"] == "TableAppend"

    listed = await operations(client, kusto)
    ids = [row["OperationId"] for row in listed]
    assert ids.index(second) < ids.index(first)
    started = [row["StartedOn"] for row in listed]
    assert started == sorted(started, reverse=True)

    chosen = await operations(client, kusto, f"({first}, {second})")
    assert [row["OperationId"] for row in chosen] == [first, second]


async def test_unknown_operation_is_an_empty_result(client: KustoClient, kusto: LocalKusto) -> None:
    assert await operations(client, kusto, str(uuid.uuid4())) == []


async def test_operation_id_that_is_not_a_guid_is_refused(client: KustoClient, kusto: LocalKusto) -> None:
    with pytest.raises(KustoServiceError, match="'abc' is not a guid") as refused:
        await mgmt(client, kusto, ".show operations abc")
    assert http_status(refused.value) == 400


@pytest.mark.parametrize(
    ("command", "named"),
    [
        (".ingest async into table Ingested (h'https://example.invalid/rows.csv')", ".ingest async"),
        (".export async to csv (h'https://example.invalid/out') <| StormEvents", ".export async"),
    ],
)
async def test_async_form_of_another_command_is_refused_by_name(
    client: KustoClient, kusto: LocalKusto, command: str, named: str
) -> None:
    before = len(await operations(client, kusto))
    with pytest.raises(KustoServiceError) as refused:
        await mgmt(client, kusto, command)
    assert http_status(refused.value) == 400
    assert named in str(refused.value)
    assert len(await operations(client, kusto)) == before


@pytest.mark.parametrize(
    ("tail", "reason"),
    [
        ("<| StormEvents | where", "could not parse KQL"),
        ("with (folder='x') <| StormEvents", "ingestion property folder not supported here"),
    ],
)
async def test_malformed_async_command_is_refused_before_it_starts(
    client: KustoClient, kusto: LocalKusto, table: str, tail: str, reason: str
) -> None:
    before = len(await operations(client, kusto))
    with pytest.raises(KustoServiceError) as refused:
        await mgmt(client, kusto, f".set-or-append async {table} {tail}")
    assert http_status(refused.value) == 400
    assert reason in str(refused.value)
    assert len(await operations(client, kusto)) == before


async def test_running_operation_is_watched_then_interrupted_by_close(tmp_path: Path) -> None:
    path = write_database(tmp_path / "Busy.duckdb", count=200)
    endpoint = LocalKusto(path, writable=True)
    async with endpoint as kusto, connect(kusto) as client:
        port = urlsplit(kusto.url).port
        operation_id = await submit(client, kusto, f".set-or-append async Heavy <| {HEAVY_QUERY}")
        # Answered while the command holds the database.
        (row,) = await operations(client, kusto, operation_id)
        assert row["State"] == "InProgress"
        assert row["Duration"] == dt.timedelta(0)
        closing = time.monotonic()
    assert time.monotonic() - closing < 5
    assert port is not None
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=5)
    # The file is no longer held: a read-write connection opens it.
    duckdb.connect(str(path)).close()


@pytest.mark.parametrize(
    "command",
    [f".set-or-append Refused <| {SUMMARY}", f".set-or-append async Refused <| {SUMMARY}"],
)
async def test_read_only_endpoint_refuses_writes(tmp_path: Path, command: str) -> None:
    path = write_database(tmp_path / "Reference.duckdb", count=200)
    async with LocalKusto(path) as kusto, connect(kusto) as client:
        with pytest.raises(KustoServiceError) as refused:
            await mgmt(client, kusto, command)
        assert http_status(refused.value) == 403
        assert "writes are disabled" in str(refused.value)
        assert "writable=True" in str(refused.value)
        tables = await mgmt(client, kusto, ".show tables")
        assert [row["TableName"] for row in tables] == ["StormEvents"]
        assert await operations(client, kusto) == []
