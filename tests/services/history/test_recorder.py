"""The recorder merges status events that arrive together in one transaction, on the real PostgreSQL."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import pytest

from common.contracts.messages import RunCompleted, RunStatus, StatusEvent, StepKind, StepStatus
from common.contracts.topology import Topology
from common.platform.blobs.folder import FolderBlobStore
from common.platform.broker.interface import Delivery
from common.platform.broker.memory import InProcessBroker
from common.platform.config import Settings
from common.platform.connections import Connections
from common.platform.runtime import Runtime
from services.history.dead_letters import DeadLetterStore
from services.history.reruns import Redo
from services.history.service import Recorder
from services.history.store import HistoryStore
from tests.services.history.test_store import event, run_info

pytestmark = pytest.mark.postgres


class CountingStore(HistoryStore):
    """The history store, counting the transactions that merge events."""

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.batches: list[int] = []

    async def apply_all(self, events: Sequence[StatusEvent]) -> list[RunCompleted | None]:
        self.batches.append(len(events))
        return await super().apply_all(events)


@pytest.fixture
async def recorder(tmp_path: Path, postgres_database: Any) -> AsyncIterator[tuple[Recorder, CountingStore]]:
    async with AsyncExitStack() as stack:
        url = await stack.enter_async_context(postgres_database())
        store = CountingStore(url)
        stack.push_async_callback(store.close)
        letters = DeadLetterStore(url)
        stack.push_async_callback(letters.close)
        await store.ensure_schema()
        await letters.ensure_schema()
        runtime = Runtime(
            settings=Settings(data_dir=tmp_path),
            broker=InProcessBroker(Topology("history-recorder")),
            blobs=FolderBlobStore(tmp_path / "blobs"),
            connections=Connections(),
        )
        await stack.enter_async_context(runtime)
        yield Recorder(store, runtime, Redo(store, letters, runtime)), store


def delivered(status: StatusEvent) -> Delivery:
    return Delivery(body=status.model_dump_json().encode(), routing_key="status", message_id=status.event_id)


def whole_run(run_id: str) -> list[StatusEvent]:
    events = [event(run_id, StepKind.TRIGGER, StepStatus.SUCCEEDED, 0, run=run_info())]
    return events + [
        event(run_id, kind, StepStatus.SUCCEEDED, second)
        for second, kind in enumerate([StepKind.QUERY, StepKind.RENDER, StepKind.NOTIFY, StepKind.RECORD], 1)
    ]


async def test_events_arriving_together_are_merged_in_fewer_transactions_with_the_same_history(
    recorder: tuple[Recorder, CountingStore],
) -> None:
    handler, store = recorder
    runs = [f"run-batch-{number}" for number in range(6)]
    # The runs' events interleaved, as handlers of one queue receive them.
    arrivals = [
        status for statuses in zip(*(whole_run(run) for run in runs), strict=True) for status in statuses
    ]

    await asyncio.gather(*(handler.on_status(delivered(status)) for status in arrivals))

    assert sum(store.batches) == len(arrivals)
    assert len(store.batches) < len(arrivals)
    for run_id in runs:
        run = await store.get_run(run_id)
        assert run is not None
        assert run["status"] == RunStatus.SUCCEEDED
        assert [step["status"] for step in run["steps"]] == ["succeeded"] * 5


async def test_an_event_the_database_refuses_fails_alone_and_the_others_are_merged(
    recorder: tuple[Recorder, CountingStore],
) -> None:
    handler, store = recorder
    good = whole_run("run-good")
    # A run id longer than its column: PostgreSQL refuses the row, not the connection.
    bad = event("r" * 80, StepKind.QUERY, StepStatus.SUCCEEDED, 1)

    outcomes = await asyncio.gather(
        *(handler.on_status(delivered(status)) for status in [*good[:3], bad, *good[3:]]),
        return_exceptions=True,
    )

    failed = [outcome for outcome in outcomes if isinstance(outcome, BaseException)]
    assert len(failed) == 1
    assert "value too long" in str(failed[0])
    assert outcomes.index(failed[0]) == 3
    run = await store.get_run("run-good")
    assert run is not None
    assert run["status"] == RunStatus.SUCCEEDED
    assert await store.get_run("r" * 80) is None
