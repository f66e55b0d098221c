"""The scheduler with an injected clock, on the stores it really uses."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from common.broker import Delivery, InProcessBroker
from common.contracts import RunCompleted, RunMessage, RunStatus, StepKind, TriggerKind
from common.flows import Flow
from common.topology import Topology
from services.trigger.scheduler import Chainer, Scheduler
from services.trigger.store import FlowStore

BERLIN = ZoneInfo("Europe/Berlin")
SAVED = dt.datetime(2026, 3, 26, 12, 0, tzinfo=dt.UTC)


def flow(name: str, **trigger: Any) -> Flow:
    return Flow.model_validate(
        {
            "name": name,
            "connection": "local",
            "database": "Samples",
            "trigger": trigger,
            "steps": [{"id": "q", "action": "run_query", "query": "StormEvents | count"}],
        }
    )


@pytest.fixture
async def broker() -> AsyncIterator[InProcessBroker]:
    async with InProcessBroker(Topology("scheduler-test")) as in_process:
        yield in_process


async def started_runs(broker: InProcessBroker) -> list[RunMessage]:
    """Every run message waiting for its first step."""
    runs: list[RunMessage] = []
    waiting = broker.depth(broker.topology.step_queue(StepKind.QUERY))
    if not waiting:
        return runs
    got = asyncio.Event()

    async def take(delivery: Delivery) -> None:
        runs.append(RunMessage.model_validate_json(delivery.body))
        if len(runs) == waiting:
            got.set()

    await broker.consume(broker.topology.step_queue(StepKind.QUERY), take)
    await asyncio.wait_for(got.wait(), 5)
    return runs


async def test_a_daily_berlin_flow_fires_at_eight_local_across_the_spring_change(
    tmp_path: Path, broker: InProcessBroker
) -> None:
    store = FlowStore(f"sqlite+aiosqlite:///{tmp_path / 'flows.db'}")
    await store.create_schema()
    try:
        await store.save(flow("daily", cron="0 8 * * *", timezone="Europe/Berlin"), now=SAVED)
        scheduler = Scheduler(store, broker)
        fired = []
        # Every 10 minutes for five days, the clock stepping over 2026-03-29 02:00 → 03:00.
        now = SAVED
        while now < SAVED + dt.timedelta(days=5):
            fired.extend(await scheduler.tick(now))
            now += dt.timedelta(minutes=10)
    finally:
        await store.close()

    assert [f.slot.astimezone(BERLIN).strftime("%m-%d %H:%M") for f in fired] == [
        "03-27 08:00",
        "03-28 08:00",
        "03-29 08:00",
        "03-30 08:00",
        "03-31 08:00",
    ]
    assert [f.slot.strftime("%H:%M") for f in fired] == ["07:00", "07:00", "06:00", "06:00", "06:00"]
    runs = await started_runs(broker)
    assert sorted(run.context.scheduled_for for run in runs) == [f.slot for f in fired]
    assert {run.context.trigger for run in runs} == {TriggerKind.SCHEDULE}


async def test_after_downtime_only_the_latest_missed_slot_fires(
    tmp_path: Path, broker: InProcessBroker
) -> None:
    store = FlowStore(f"sqlite+aiosqlite:///{tmp_path / 'flows.db'}")
    await store.create_schema()
    try:
        await store.save(flow("often", every="15m"), now=SAVED)
        await store.save(flow("skipper", every="15m", missed="skip"), now=SAVED)
        scheduler = Scheduler(store, broker)
        first = await scheduler.tick(SAVED + dt.timedelta(minutes=15, seconds=2))
        after_downtime = await scheduler.tick(SAVED + dt.timedelta(hours=3, minutes=7))
        again = await scheduler.tick(SAVED + dt.timedelta(hours=3, minutes=8))
    finally:
        await store.close()

    assert {(f.flow, f.slot) for f in first} == {
        ("often", SAVED + dt.timedelta(minutes=15)),
        ("skipper", SAVED + dt.timedelta(minutes=15)),
    }
    assert [(f.flow, f.slot) for f in after_downtime] == [("often", SAVED + dt.timedelta(hours=3))]
    assert again == []


@pytest.mark.postgres
async def test_two_replicas_fire_each_slot_once(postgres_url: str, broker: InProcessBroker) -> None:
    async with AsyncExitStack() as stack:
        stores = [FlowStore(postgres_url), FlowStore(postgres_url)]
        for store in stores:
            stack.push_async_callback(store.close)
        await stores[0].create_schema()
        await stores[1].create_schema()
        for index in range(5):
            await stores[0].save(flow(f"every-minute-{index}", every="1m"), now=SAVED)
        replicas = [Scheduler(store, broker) for store in stores]
        fired = []
        for minute in range(1, 4):
            now = SAVED + dt.timedelta(minutes=minute, seconds=1)
            both = await asyncio.gather(*(replica.tick(now) for replica in replicas))
            fired.extend(f for one in both for f in one)

    slots = [(f.flow, f.slot) for f in fired]
    assert len(slots) == 15
    assert len(set(slots)) == 15
    runs = await started_runs(broker)
    assert sorted(run.run_id for run in runs) == sorted(f.run_id for f in fired)


async def test_a_chained_flow_starts_once_after_its_parent_ends_as_asked(
    tmp_path: Path, broker: InProcessBroker
) -> None:
    store = FlowStore(f"sqlite+aiosqlite:///{tmp_path / 'flows.db'}")
    await store.create_schema()
    try:
        await store.save(flow("parent"))
        await store.save(flow("on-success", after={"flow": "parent"}))
        await store.save(flow("on-failure", after={"flow": "parent", "status": ["failed"]}))
        chainer = Chainer(store, broker)
        done = RunCompleted(run_id="p1", flow="parent", status=RunStatus.SUCCEEDED, finished_at=SAVED)
        delivery = Delivery(body=done.model_dump_json().encode(), routing_key="run.completed")
        await chainer.on_completed(delivery)
        await chainer.on_completed(delivery)
    finally:
        await store.close()

    [run] = await started_runs(broker)
    assert run.context.flow == "on-success"
    assert run.context.trigger is TriggerKind.AFTER
    assert run.context.parent_run_id == "p1"


async def test_disabling_stops_a_flow_and_enabling_starts_it_from_then(
    tmp_path: Path, broker: InProcessBroker
) -> None:
    store = FlowStore(f"sqlite+aiosqlite:///{tmp_path / 'flows.db'}")
    await store.create_schema()
    try:
        scheduler = Scheduler(store, broker)
        hourly = flow("hourly", every="1h")
        await store.save(hourly, now=SAVED)
        first = await scheduler.tick(SAVED + dt.timedelta(hours=1, seconds=5))
        await store.save(
            hourly.model_copy(update={"enabled": False}), now=SAVED + dt.timedelta(hours=1, minutes=1)
        )
        while_disabled = await scheduler.tick(SAVED + dt.timedelta(hours=3, seconds=5))
        enabled_at = SAVED + dt.timedelta(hours=3, minutes=30)
        await store.save(hourly, now=enabled_at)
        right_after = await scheduler.tick(enabled_at + dt.timedelta(minutes=1))
        next_slot = await scheduler.tick(SAVED + dt.timedelta(hours=4, seconds=5))
        await store.delete("hourly")
        after_delete = await scheduler.tick(SAVED + dt.timedelta(hours=5, seconds=5))
    finally:
        await store.close()

    assert [f.slot for f in first] == [SAVED + dt.timedelta(hours=1)]
    assert while_disabled == []
    assert right_after == []
    assert [f.slot for f in next_slot] == [SAVED + dt.timedelta(hours=4)]
    assert after_delete == []
