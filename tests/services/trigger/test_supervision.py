"""The scheduler and the chainer survive an unexpected exception, and readiness says while they are down."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from common.contracts.messages import RunCompleted, RunStatus, TriggerKind, utcnow
from common.contracts.topology import Topology
from common.platform.broker.memory import InProcessBroker
from common.platform.http import NotReady
from common.platform.supervision import STALE_AFTER, Backoff, Loops
from services.trigger.scheduler import Chainer, Scheduler
from services.trigger.store import FlowStore
from tests.conftest import poll_until
from tests.faults import FailOnce, ManualClock, tracebacks_of
from tests.services.trigger.test_scheduler import Arrivals, flow

QUICK = Backoff(base=0.001, cap=0.004)


@pytest.fixture
async def broker() -> AsyncIterator[InProcessBroker]:
    async with InProcessBroker(Topology("trigger-supervision")) as in_process:
        yield in_process


async def _ready(loops: Loops) -> bool:
    try:
        return await loops.check()
    except NotReady:
        return False


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[FlowStore]:
    flows = FlowStore(f"sqlite+aiosqlite:///{tmp_path / 'flows.db'}")
    await flows.ensure_schema()
    try:
        yield flows
    finally:
        await flows.close()


async def test_the_scheduler_starts_again_after_an_unexpected_exception_and_fires_what_is_due(
    store: FlowStore, broker: InProcessBroker
) -> None:
    # Saved two minutes ago: its latest missed slot is due as soon as the scheduler loads it.
    await store.save(flow("minutely", every="1m"), now=utcnow() - dt.timedelta(minutes=2))
    faulty = FailOnce(store.revision)
    store.revision = faulty  # type: ignore[method-assign]
    clock = ManualClock()
    loops = Loops(clock)
    supervised = loops.loop("scheduler", 10.0, backoff=QUICK)
    scheduler = Scheduler(store, broker, poll_seconds=0.01)
    arrivals = await Arrivals().watch(broker)
    stop = asyncio.Event()
    with capture_logs() as logs:
        running = asyncio.create_task(supervised.run(lambda: scheduler.run(stop, supervised.ticked), stop))
        try:
            await asyncio.wait_for(faulty.raised.wait(), 5)
            clock.advance(STALE_AFTER * 10.0 + 1)
            with pytest.raises(NotReady, match="scheduler has not ticked for 31 s"):
                await loops.check()
            faulty.release()
            [run] = await arrivals.count(1)
            assert run.context.flow == "minutely"
            await poll_until(lambda: _ready(loops), what="the scheduler to tick again")
        finally:
            stop.set()
            await asyncio.wait_for(running, 5)
    [logged] = tracebacks_of(logs, "scheduler")
    assert logged["event"] == "loop failed; starting it again"


async def test_the_chainer_tries_a_run_again_after_an_unexpected_exception_and_starts_its_follower_once(
    store: FlowStore, broker: InProcessBroker
) -> None:
    await store.save(flow("parent"))
    await store.save(flow("child", after={"flow": "parent"}))
    faulty = FailOnce(store.followers)
    store.followers = faulty  # type: ignore[method-assign]
    loops = Loops(ManualClock())
    chaining = loops.consumer("chainer", backoff=QUICK)
    arrivals = await Arrivals().watch(broker)
    await broker.consume(
        broker.topology.run_completed_queue, chaining.handler(Chainer(store, broker).on_completed), prefetch=1
    )
    done = RunCompleted(run_id="p1", flow="parent", status=RunStatus.SUCCEEDED, finished_at=utcnow())
    with capture_logs() as logs:
        await broker.publish_model(broker.topology.run_completed_key, done)
        await asyncio.wait_for(faulty.raised.wait(), 5)
        with pytest.raises(NotReady, match="chainer has been failing for 0 s: Injected"):
            await loops.check()
        faulty.release()
        [run] = await arrivals.count(1)
    assert (run.context.flow, run.context.trigger, run.context.parent_run_id) == (
        "child",
        TriggerKind.AFTER,
        "p1",
    )
    await poll_until(lambda: _ready(loops), what="the chainer to succeed")
    assert [entry["event"] for entry in tracebacks_of(logs, "chainer")] == [
        "handler failed; trying the message again"
    ]
    # Handled in place: the message was not handed back to the broker meanwhile.
    assert broker.depth(broker.topology.run_completed_queue) == 0
    assert broker.depth(broker.topology.dead_letter_queue) == 0
