"""The query worker's copy step over a stored result, into the machine's PostgreSQL: a step handled
twice (a redelivery) writes its rows once; a source that did not succeed, and a database the
operator did not configure, fail the step naming them."""

from __future__ import annotations

import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from azure.kusto.data import KustoClient, KustoConnectionStringBuilder

from common.contracts.errors import DatabaseError, KustoError, UnknownConnection
from common.contracts.flows import Flow, new_run
from common.contracts.messages import (
    ErrorCode,
    RunContext,
    RunMessage,
    StepOutput,
    StepStatus,
    TriggerKind,
)
from common.contracts.results import Column, ResultSet
from common.contracts.topology import Topology
from common.platform.blobs.folder import FolderBlobStore
from common.platform.broker.memory import InProcessBroker
from common.platform.config import Settings
from common.platform.connections import Connections, DatabaseConfig
from common.platform.runtime import Runtime
from services.embedded.kusto.database import ensure_database
from services.embedded.kusto.endpoint import LocalKusto
from services.query_worker.copying import CopyStep
from services.query_worker.kusto import KustoRunner
from services.query_worker.service import QueryStep

pytestmark = pytest.mark.postgres

COLUMNS = [Column(name="State", type="string"), Column(name="Events", type="long")]


def copy_flow(database: str = "reports") -> Flow:
    return Flow.model_validate(
        {
            "name": "copy",
            "connection": "local",
            "database": "Samples",
            "steps": [
                {"id": "q", "action": "run_query", "query": "T"},
                {
                    "id": "save",
                    "action": "copy_to_database",
                    "database": database,
                    "table": "summary",
                    "source": "q",
                },
            ],
        }
    )


@pytest.fixture(scope="module")
def local() -> Iterator[LocalKusto]:
    with (
        tempfile.TemporaryDirectory(prefix="adxflow-copying-") as directory,
        LocalKusto(ensure_database(Path(directory), count=2000)) as server,
    ):
        yield server


@pytest.fixture
async def world(
    tmp_path: Path, postgres_database: Any, local: LocalKusto
) -> AsyncIterator[tuple[CopyStep, FolderBlobStore, str]]:
    async with postgres_database() as url, FolderBlobStore(tmp_path / "blobs") as blobs:
        secret = tmp_path / "url"
        secret.write_text(url)
        config = DatabaseConfig.model_validate({"url_secret": {"file": str(secret)}, "tables": ["summary"]})
        connections = Connections(databases={"reports": config})
        connections.add_local("local", local.url)
        runtime = Runtime(
            settings=Settings(),
            broker=InProcessBroker(Topology("copying")),
            blobs=blobs,
            connections=connections,
        )
        kusto = KustoRunner(connections, timeout=30)
        try:
            yield CopyStep(runtime, QueryStep(runtime, kusto)), blobs, url
        finally:
            await kusto.close()


async def at_copy(
    blobs: FolderBlobStore, flow: Flow, rows: list[list[Any]], status: StepStatus
) -> RunMessage:
    run_id = uuid.uuid4().hex
    result = ResultSet(columns=COLUMNS, rows=rows)
    ref = await blobs.put(f"runs/{run_id}/q/result.json", result.to_json_bytes(), "application/json")
    query = StepOutput(
        status=status,
        row_count=len(rows),
        artifacts={"result": ref} if status is StepStatus.SUCCEEDED else {},
        detail={"columns": [f"{c.name}:{c.type}" for c in COLUMNS]},
    )
    run = new_run(flow, RunContext(flow=flow.name, trigger=TriggerKind.MANUAL), run_id)
    return run.model_copy(update={"step_id": "save", "outputs": {"q": query}})


async def table(url: str) -> list[tuple[str, int]]:
    connection = await asyncpg.connect(url.replace("postgresql+asyncpg://", "postgresql://", 1))
    try:
        rows = await connection.fetch('SELECT "State", "Events" FROM summary ORDER BY "State"')
    finally:
        await connection.close()
    return [(row["State"], row["Events"]) for row in rows]


async def test_a_copy_handled_twice_writes_its_rows_once(
    world: tuple[CopyStep, FolderBlobStore, str],
) -> None:
    step, blobs, url = world
    message = await at_copy(blobs, copy_flow(), [["TEXAS", 3], ["OHIO", 1]], StepStatus.SUCCEEDED)

    first = await step.perform(message)
    again = await step.perform(message)

    assert (first.row_count, first.detail["repeated"]) == (2, False)
    assert (again.row_count, again.detail["repeated"]) == (2, True)
    assert await table(url) == [("OHIO", 1), ("TEXAS", 3)]
    other_run = await at_copy(blobs, copy_flow(), [["IOWA", 7]], StepStatus.SUCCEEDED)
    await step.perform(other_run)
    assert await table(url) == [("IOWA", 7), ("OHIO", 1), ("TEXAS", 3)]


async def test_a_source_that_failed_fails_the_copy_naming_it(
    world: tuple[CopyStep, FolderBlobStore, str],
) -> None:
    step, blobs, _ = world
    message = await at_copy(blobs, copy_flow(), [], StepStatus.FAILED)

    with pytest.raises(DatabaseError, match=r"steps\.save\.source: 'q' has no result to copy \(failed\)"):
        await step.perform(message)


async def test_a_database_no_longer_configured_fails_the_copy_naming_the_known_ones(
    world: tuple[CopyStep, FolderBlobStore, str],
) -> None:
    step, blobs, _ = world
    message = await at_copy(blobs, copy_flow("warehouse"), [["TEXAS", 3]], StepStatus.SUCCEEDED)

    with pytest.raises(UnknownConnection, match=r"warehouse.*reports"):
        await step.perform(message)


#: The copy's own query: a flow parameter and a step parameter, both sent typed.
OWN_QUERY = (
    "StormEvents | where State startswith prefix | summarize Events = count() by State "
    "| where Events >= least | order by State asc"
)


def own_query_flow(**copy: Any) -> Flow:
    return Flow.model_validate(
        {
            "name": "copy",
            "connection": "local",
            "database": "Samples",
            "parameters": {"prefix": {"type": "string", "default": "N"}},
            "steps": [
                {
                    "id": "save",
                    "action": "copy_to_database",
                    "database": "reports",
                    "table": "summary",
                    "query": OWN_QUERY,
                    "kusto_database": "Samples",
                    "parameters": {"least": {"type": "long", "value": "{{ 1 + 1 }}"}},
                    **copy,
                }
            ],
        }
    )


def own_query_run(flow: Flow, prefix: str = "N") -> RunMessage:
    context = RunContext(flow=flow.name, trigger=TriggerKind.MANUAL, parameters={"prefix": prefix})
    return new_run(flow, context, uuid.uuid4().hex).model_copy(update={"step_id": "save"})


def asked(local: LocalKusto, query: str) -> list[tuple[str, int]]:
    """The sample data's answer to *query*, asked by the test itself (its values written in)."""
    client = KustoClient(KustoConnectionStringBuilder.with_no_authentication(local.url))
    try:
        rows = client.execute("Samples", query).primary_results[0].rows
    finally:
        client.close()
    return [(row["State"], row["Events"]) for row in rows]


async def test_a_copy_with_its_own_query_writes_its_result_and_says_what_it_sent(
    world: tuple[CopyStep, FolderBlobStore, str], local: LocalKusto
) -> None:
    step, blobs, url = world
    want = asked(
        local,
        "StormEvents | where State startswith 'N' | summarize Events = count() by State "
        "| where Events >= 2 | order by State asc",
    )

    output = await step.perform(own_query_run(own_query_flow()))

    assert len(want) > 3
    assert await table(url) == want
    assert (output.row_count, output.detail["rows"], output.detail["repeated"]) == (
        len(want),
        len(want),
        False,
    )
    assert output.detail["text"] == OWN_QUERY
    assert output.detail["parameters"] == {"prefix": "N", "least": 2}
    assert output.detail["columns"] == ["State:string", "Events:long"]
    stored = ResultSet.from_json_bytes(await blobs.get(output.artifacts["result"].key))
    assert [tuple(row) for row in stored.rows] == want


async def test_a_copys_own_query_over_its_cap_fails_naming_it_and_leaves_the_table_as_it_was(
    world: tuple[CopyStep, FolderBlobStore, str], local: LocalKusto
) -> None:
    step, blobs, url = world
    await step.perform(await at_copy(blobs, copy_flow(), [["ZULU", 9]], StepStatus.SUCCEEDED))
    want = asked(
        local,
        "StormEvents | where State startswith 'N' | summarize Events = count() by State "
        "| where Events >= 2 | order by State asc | take 3",
    )

    with pytest.raises(KustoError) as raised:
        await step.perform(own_query_run(own_query_flow(max_rows=3, mode="replace")))
    left = await table(url)
    truncated = await step.perform(own_query_run(own_query_flow(max_rows=3, on_too_large="truncate")))

    assert raised.value.code is ErrorCode.RESULT_TOO_LARGE
    assert "more than 3 rows (the step's max_rows)" in raised.value.message
    assert raised.value.detail["text"] == OWN_QUERY
    assert left == [("ZULU", 9)]
    assert (truncated.row_count, truncated.detail["truncated"]) == (3, True)
    assert await table(url) == sorted([*want, ("ZULU", 9)])


async def test_a_copy_whose_own_query_fails_says_what_it_sent(
    world: tuple[CopyStep, FolderBlobStore, str],
) -> None:
    step, _, url = world
    flow = own_query_flow(query="NoSuchTable | project State, Events = 1")

    with pytest.raises(KustoError) as raised:
        await step.perform(own_query_run(flow, prefix="O"))

    assert raised.value.code is ErrorCode.KUSTO_SEMANTIC_ERROR
    assert raised.value.detail["text"] == "NoSuchTable | project State, Events = 1"
    assert raised.value.detail["parameters"] == {"prefix": "O", "least": 2}
    with pytest.raises(asyncpg.UndefinedTableError):
        await table(url)
