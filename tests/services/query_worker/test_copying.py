"""The query worker's copy step over a stored result, into the machine's PostgreSQL: a step handled
twice (a redelivery) writes its rows once; a source that did not succeed, and a database the
operator did not configure, fail the step naming them."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from common.contracts.errors import DatabaseError, UnknownConnection
from common.contracts.flows import Flow, new_run
from common.contracts.messages import RunContext, RunMessage, StepOutput, StepStatus, TriggerKind
from common.contracts.results import Column, ResultSet
from common.contracts.topology import Topology
from common.platform.blobs.folder import FolderBlobStore
from common.platform.broker.memory import InProcessBroker
from common.platform.config import Settings
from common.platform.connections import Connections, DatabaseConfig
from common.platform.runtime import Runtime
from services.query_worker.copying import CopyStep

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


@pytest.fixture
async def world(
    tmp_path: Path, postgres_database: Any
) -> AsyncIterator[tuple[CopyStep, FolderBlobStore, str]]:
    async with postgres_database() as url, FolderBlobStore(tmp_path / "blobs") as blobs:
        secret = tmp_path / "url"
        secret.write_text(url)
        config = DatabaseConfig.model_validate({"url_secret": {"file": str(secret)}, "tables": ["summary"]})
        runtime = Runtime(
            settings=Settings(),
            broker=InProcessBroker(Topology("copying")),
            blobs=blobs,
            connections=Connections(databases={"reports": config}),
        )
        yield CopyStep(runtime), blobs, url


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
