"""The stall watcher and retention survive an unexpected exception, and readiness says while they are down."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from common.contracts.messages import RunCompleted, RunStatus, StepKind, StepStatus
from common.contracts.topology import Topology
from common.platform.blobs.folder import FolderBlobStore
from common.platform.broker.interface import BrokerError, Delivery
from common.platform.broker.memory import InProcessBroker
from common.platform.config import Settings
from common.platform.connections import Connections
from common.platform.http import NotReady
from common.platform.runtime import Runtime
from common.platform.supervision import STALE_AFTER, Backoff, Loops
from services.history.dead_letters import DeadLetterStore
from services.history.reruns import Redo
from services.history.retention import Retention
from services.history.service import Recorder
from services.history.store import HistoryStore
from tests.conftest import poll_until
from tests.faults import FailOnce, ManualClock, tracebacks_of
from tests.services.history.test_store import complete_run, event, run_info

QUICK = Backoff(base=0.001, cap=0.004)


class ImpatientRecorder(Recorder):
    """The recorder, counting any run without news since the sweep before as stalled."""

    quiet_for = dt.timedelta(0)  # type: ignore[assignment]


@dataclass
class History:
    store: HistoryStore
    letters: DeadLetterStore
    runtime: Runtime
    completed: list[RunCompleted]


@pytest.fixture
async def history(tmp_path: Path) -> AsyncIterator[History]:
    async with AsyncExitStack() as stack:
        url = f"sqlite+aiosqlite:///{tmp_path / 'history.db'}"
        store, letters = HistoryStore(url), DeadLetterStore(url)
        stack.push_async_callback(store.close)
        stack.push_async_callback(letters.close)
        await store.ensure_schema()
        await letters.ensure_schema()
        runtime = Runtime(
            settings=Settings(data_dir=tmp_path, retention_days=28),
            broker=InProcessBroker(Topology("history-supervision")),
            blobs=FolderBlobStore(tmp_path / "blobs"),
            connections=Connections(),
        )
        await stack.enter_async_context(runtime)
        completed: list[RunCompleted] = []

        async def take(delivery: Delivery) -> None:
            completed.append(RunCompleted.model_validate_json(delivery.body))

        await runtime.broker.consume(runtime.broker.topology.run_completed_queue, take)
        yield History(store, letters, runtime, completed)


async def _ready(loops: Loops) -> bool:
    try:
        return await loops.check()
    except NotReady:
        return False


async def test_the_stall_watcher_starts_again_after_an_unexpected_exception_and_fails_the_stalled_run(
    history: History,
) -> None:
    await history.store.apply(event("run-stuck", StepKind.TRIGGER, StepStatus.SUCCEEDED, 0, run=run_info()))
    await history.store.apply(event("run-stuck", StepKind.QUERY, StepStatus.RUNNING, 1))
    faulty = FailOnce(history.store.fail_stalled)
    history.store.fail_stalled = faulty  # type: ignore[method-assign]
    recorder = ImpatientRecorder(
        history.store, history.runtime, Redo(history.store, history.letters, history.runtime)
    )
    clock = ManualClock()
    loops = Loops(clock)
    watching = loops.loop("stall_watcher", 15.0, backoff=QUICK)
    stop = asyncio.Event()
    with capture_logs() as logs:
        running = asyncio.create_task(watching.every(recorder.sweep_stalled, stop))
        try:
            await asyncio.wait_for(faulty.raised.wait(), 5)
            clock.advance(STALE_AFTER * 15.0 + 1)
            with pytest.raises(NotReady, match="stall_watcher has not ticked for 46 s"):
                await loops.check()
            faulty.release()
            await poll_until(lambda: _true(bool(history.completed)), what="the stalled run to be announced")
            await poll_until(lambda: _ready(loops), what="the stall watcher to tick again")
        finally:
            stop.set()
            await asyncio.wait_for(running, 5)
    assert [(done.run_id, done.status) for done in history.completed] == [("run-stuck", RunStatus.FAILED)]
    run = await history.store.get_run("run-stuck")
    assert run is not None
    assert run["error"]["code"] == "Stalled"
    [logged] = tracebacks_of(logs, "stall_watcher")
    assert logged["event"] == "loop failed; starting it again"


async def test_retention_starts_again_after_an_unexpected_exception_and_deletes_expired_runs(
    history: History,
) -> None:
    # Submitted in January: long past 28 days.
    await complete_run(history.store, "run-old")
    faulty = FailOnce(history.store.expired)
    history.store.expired = faulty  # type: ignore[method-assign]
    retention = Retention(history.store, history.letters, history.runtime.blobs, history.runtime.settings)
    clock = ManualClock()
    loops = Loops(clock)
    retaining = loops.loop("retention", 3600.0, backoff=QUICK)
    stop = asyncio.Event()
    with capture_logs() as logs:
        running = asyncio.create_task(retaining.every(retention.tick, stop))
        try:
            await asyncio.wait_for(faulty.raised.wait(), 5)
            clock.advance(STALE_AFTER * 3600.0 + 1)
            with pytest.raises(NotReady, match="retention has not ticked for 10801 s"):
                await loops.check()
            faulty.release()
            await poll_until(lambda: _ready(loops), what="retention to tick again")
        finally:
            stop.set()
            await asyncio.wait_for(running, 5)
    assert await history.store.get_run("run-old") is None
    [logged] = tracebacks_of(logs, "retention")
    assert logged["event"] == "loop failed; starting it again"


async def _true(value: bool) -> bool:
    return value


class RefusingOnceBroker(InProcessBroker):
    """Refuses the first announcement of a run's end, as RabbitMQ does a publish it does not confirm."""

    refused = False

    async def publish(
        self, routing_key: str, body: bytes, *, message_id: str | None = None, delay: float | None = None
    ) -> None:
        if routing_key == self.topology.run_completed_key and not self.refused:
            self.refused = True
            raise BrokerError("not confirmed")
        await super().publish(routing_key, body, message_id=message_id, delay=delay)


async def test_a_stalled_runs_end_refused_by_a_refusing_once_broker_is_announced_at_the_next_sweep(
    tmp_path: Path,
) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'history.db'}"
    store, letters = HistoryStore(url), DeadLetterStore(url)
    await store.ensure_schema()
    await letters.ensure_schema()
    broker = RefusingOnceBroker(Topology("history-refusing"))
    runtime = Runtime(
        settings=Settings(data_dir=tmp_path),
        broker=broker,
        blobs=FolderBlobStore(tmp_path / "blobs"),
        connections=Connections(),
    )
    try:
        async with runtime:
            await store.apply(event("run-stuck", StepKind.TRIGGER, StepStatus.SUCCEEDED, 0, run=run_info()))
            recorder = ImpatientRecorder(store, runtime, Redo(store, letters, runtime))

            assert await recorder.sweep_stalled() is False
            assert broker.depth(broker.topology.run_completed_queue) == 0
            assert await recorder.sweep_stalled() is True
            assert broker.depth(broker.topology.run_completed_queue) == 1
            assert await recorder.sweep_stalled() is True
            assert broker.depth(broker.topology.run_completed_queue) == 1
    finally:
        await letters.close()
        await store.close()
