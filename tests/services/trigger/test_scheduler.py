"""The scheduler with an injected clock, on the stores it really uses."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import sqlalchemy as sa

from common.contracts.flows import Flow
from common.contracts.messages import RunCompleted, RunMessage, RunStatus, StepKind, TriggerKind
from common.contracts.topology import Topology
from common.platform.broker.interface import BrokerError, Delivery
from common.platform.broker.memory import InProcessBroker
from services.trigger.scheduler import Chainer, Clock, Scheduler
from services.trigger.store import CHAINED, FlowStore, fired

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


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def database_url(
    request: pytest.FixtureRequest, tmp_path: Path, postgres_database: Any
) -> AsyncIterator[str]:
    if request.param == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path / 'flows.db'}"
        return
    async with postgres_database() as url:
        yield url


@pytest.fixture
async def store(database_url: str) -> AsyncIterator[FlowStore]:
    flows = FlowStore(database_url)
    await flows.ensure_schema()
    try:
        yield flows
    finally:
        await flows.close()


class SteppedClock(Clock):
    """A clock that moves only when the test moves it, and says when the scheduler goes to sleep."""

    def __init__(self, now: dt.datetime) -> None:
        self._now = now
        self._moved = asyncio.Event()
        self._sleeps: asyncio.Queue[dt.datetime] = asyncio.Queue()

    def now(self) -> dt.datetime:
        return self._now

    def move_to(self, instant: dt.datetime) -> None:
        self._now = instant
        moved, self._moved = self._moved, asyncio.Event()
        moved.set()

    async def next_sleep(self) -> dt.datetime:
        """The instant the scheduler next asks to sleep until."""
        return await asyncio.wait_for(self._sleeps.get(), 5)

    async def sleep_until(self, instant: dt.datetime, stop: asyncio.Event) -> None:
        self._sleeps.put_nowait(instant)
        while self._now < instant and not stop.is_set():
            waits = {asyncio.ensure_future(self._moved.wait()), asyncio.ensure_future(stop.wait())}
            _, pending = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            for waiting in pending:
                waiting.cancel()


class Arrivals:
    """Runs as they reach the queue of their first step."""

    def __init__(self) -> None:
        self.runs: list[RunMessage] = []
        self._arrived = asyncio.Event()

    async def watch(self, broker: InProcessBroker) -> Arrivals:
        await broker.consume(broker.topology.step_queue(StepKind.QUERY), self._take)
        return self

    async def _take(self, delivery: Delivery) -> None:
        self.runs.append(RunMessage.model_validate_json(delivery.body))
        self._arrived.set()

    async def count(self, expected: int) -> list[RunMessage]:
        async with asyncio.timeout(5):
            while len(self.runs) < expected:
                self._arrived.clear()
                await self._arrived.wait()
        return self.runs


class RefusingBroker(InProcessBroker):
    """Refuses the first step of the runs of some flows, as RabbitMQ does a message it does not confirm."""

    def __init__(self, topology: Topology, refused: set[str]) -> None:
        super().__init__(topology)
        self.refused = refused

    async def publish(
        self, routing_key: str, body: bytes, *, message_id: str | None = None, delay: float | None = None
    ) -> None:
        first_step = routing_key == self.topology.step_key(StepKind.QUERY)
        if first_step and json.loads(body)["context"]["flow"] in self.refused:
            raise BrokerError("not confirmed")
        await super().publish(routing_key, body, message_id=message_id, delay=delay)


class StallingBroker(InProcessBroker):
    """Never confirms the first step of one flow's run; says when that publish was reached."""

    def __init__(self, topology: Topology, stalled: str) -> None:
        super().__init__(topology)
        self.stalled = stalled
        self.reached = asyncio.Event()

    async def publish(
        self, routing_key: str, body: bytes, *, message_id: str | None = None, delay: float | None = None
    ) -> None:
        first_step = routing_key == self.topology.step_key(StepKind.QUERY)
        if first_step and json.loads(body)["context"]["flow"] == self.stalled:
            self.reached.set()
            await asyncio.Event().wait()
        await super().publish(routing_key, body, message_id=message_id, delay=delay)


async def slot_rows(store: FlowStore) -> list[tuple[str, str]]:
    async with store.engine.connect() as conn:
        rows = (await conn.execute(sa.select(fired.c.flow, fired.c.slot))).all()
    return sorted((row.flow, row.slot) for row in rows)


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
    await store.ensure_schema()
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
    await store.ensure_schema()
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
async def test_two_replicas_claiming_in_batches_fire_each_slot_once(
    postgres_url: str, broker: InProcessBroker
) -> None:
    async with AsyncExitStack() as stack:
        stores = [FlowStore(postgres_url), FlowStore(postgres_url)]
        for store in stores:
            stack.push_async_callback(store.close)
        await stores[0].ensure_schema()
        await stores[1].ensure_schema()
        for index in range(40):
            await stores[0].save(flow(f"every-minute-{index:02d}", every="1m"), now=SAVED)
        # Batches of different sizes, so that each replica's batches overlap several of the other's.
        replicas = [
            Scheduler(stores[0], broker, batch_size=7, batches_in_flight=3),
            Scheduler(stores[1], broker, batch_size=11, batches_in_flight=2),
        ]
        fired = []
        for minute in range(1, 4):
            now = SAVED + dt.timedelta(minutes=minute, seconds=1)
            both = await asyncio.gather(*(replica.tick(now) for replica in replicas))
            fired.extend(f for one in both for f in one)

    slots = [(f.flow, f.slot) for f in fired]
    assert len(slots) == 120
    assert len(set(slots)) == 120
    runs = await started_runs(broker)
    assert sorted(run.run_id for run in runs) == sorted(f.run_id for f in fired)


async def test_a_chained_flow_starts_once_after_its_parent_ends_as_asked(
    tmp_path: Path, broker: InProcessBroker
) -> None:
    store = FlowStore(f"sqlite+aiosqlite:///{tmp_path / 'flows.db'}")
    await store.ensure_schema()
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
    await store.ensure_schema()
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


async def test_the_scheduler_sleeps_until_a_slot_is_due_and_fires_it_then(
    store: FlowStore, broker: InProcessBroker
) -> None:
    await store.save(flow("every-minute", every="1m"), now=SAVED)
    clock = SteppedClock(SAVED + dt.timedelta(seconds=40))
    scheduler = Scheduler(store, broker, clock=clock, poll_seconds=30)
    arrivals = await Arrivals().watch(broker)
    stop = asyncio.Event()
    running = asyncio.create_task(scheduler.run(stop))
    try:
        # The next slot (12:01) comes before the next look for changed flows (12:01:10).
        assert await clock.next_sleep() == SAVED + dt.timedelta(minutes=1)
        assert arrivals.runs == []
        clock.move_to(SAVED + dt.timedelta(minutes=1))
        [run] = await arrivals.count(1)
        assert run.context.scheduled_for == SAVED + dt.timedelta(minutes=1)
        # The next look now comes first.
        assert await clock.next_sleep() == SAVED + dt.timedelta(seconds=70)
    finally:
        stop.set()
        await running


async def test_a_flow_changed_through_another_replica_is_picked_up_at_the_next_look(
    store: FlowStore, broker: InProcessBroker
) -> None:
    await store.save(flow("report", every="1h"), now=SAVED)
    clock = SteppedClock(SAVED + dt.timedelta(seconds=10))
    scheduler = Scheduler(store, broker, clock=clock, poll_seconds=30)
    arrivals = await Arrivals().watch(broker)
    stop = asyncio.Event()
    running = asyncio.create_task(scheduler.run(stop))
    try:
        assert await clock.next_sleep() == SAVED + dt.timedelta(seconds=40)
        # Another replica's API makes it a one-minute flow.
        await store.save(flow("report", every="1m"), now=SAVED + dt.timedelta(seconds=20))
        clock.move_to(SAVED + dt.timedelta(seconds=40))
        assert await clock.next_sleep() == SAVED + dt.timedelta(minutes=1)
        clock.move_to(SAVED + dt.timedelta(minutes=1))
        [run] = await arrivals.count(1)
        assert run.context.scheduled_for == SAVED + dt.timedelta(minutes=1)
        # ... then disables it: after the next look nothing is due any more.
        assert await clock.next_sleep() == SAVED + dt.timedelta(seconds=70)
        disabled = flow("report", every="1m").model_copy(update={"enabled": False})
        await store.save(disabled, now=SAVED + dt.timedelta(seconds=65))
        clock.move_to(SAVED + dt.timedelta(seconds=70))
        assert await clock.next_sleep() == SAVED + dt.timedelta(seconds=100)
        assert len(scheduler.timetable) == 0
    finally:
        stop.set()
        await running
    assert len(arrivals.runs) == 1


async def test_a_look_loads_again_only_the_flows_that_changed(
    store: FlowStore, broker: InProcessBroker, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("a", "b", "c"):
        await store.save(flow(name, every="1m"), now=SAVED)
    loaded: list[set[str] | None] = []
    scheduled = store.scheduled

    async def spy(names: Any = None) -> Any:
        loaded.append(None if names is None else set(names))
        return await scheduled(names)

    monkeypatch.setattr(store, "scheduled", spy)
    scheduler = Scheduler(store, broker)
    first = await scheduler.tick(SAVED + dt.timedelta(minutes=1, seconds=1))
    unchanged = await scheduler.tick(SAVED + dt.timedelta(minutes=1, seconds=2))
    changed = flow("b", every="1m").model_copy(update={"description": "changed"})
    await store.save(changed, now=SAVED + dt.timedelta(minutes=1, seconds=3))
    await store.delete("c")
    second = await scheduler.tick(SAVED + dt.timedelta(minutes=2, seconds=1))

    assert loaded == [{"a", "b", "c"}, {"b"}]
    assert sorted(f.flow for f in first) == ["a", "b", "c"]
    assert unchanged == []
    assert sorted(f.flow for f in second) == ["a", "b"]
    runs = {(run.context.flow, run.context.scheduled_for): run for run in await started_runs(broker)}
    assert runs["b", SAVED + dt.timedelta(minutes=2)].flow.get("description") == "changed"
    assert len(runs) == 5


async def test_a_run_the_broker_refuses_leaves_its_slot_free_and_the_others_claimed(
    store: FlowStore, broker: InProcessBroker
) -> None:
    for index in range(6):
        await store.save(flow(f"flow-{index}", every="1m"), now=SAVED)
    refusing = RefusingBroker(Topology("scheduler-test-refusing"), refused={"flow-1", "flow-4"})
    await refusing.start()
    now = SAVED + dt.timedelta(minutes=1, seconds=1)
    try:
        replica = Scheduler(store, refusing, batch_size=4)
        with_refusals = await replica.tick(now)
        # Another replica looking at the same moment finds only the refused slots free.
        other = await Scheduler(store, broker).tick(now)
        # The first one tries again a poll later, and finds them taken.
        again = await replica.tick(now + dt.timedelta(seconds=1))
    finally:
        await refusing.close()

    assert sorted(f.flow for f in with_refusals) == ["flow-0", "flow-2", "flow-3", "flow-5"]
    assert sorted(f.flow for f in other) == ["flow-1", "flow-4"]
    assert again == []
    assert [slot for _, slot in await slot_rows(store)] == ["2026-03-26T12:01:00Z"] * 6


async def test_a_refused_run_is_tried_again_a_poll_later(store: FlowStore) -> None:
    await store.save(flow("flaky", every="1m"), now=SAVED)
    refusing = RefusingBroker(Topology("scheduler-test-flaky"), refused={"flaky"})
    await refusing.start()
    now = SAVED + dt.timedelta(minutes=1, seconds=1)
    try:
        scheduler = Scheduler(store, refusing, poll_seconds=5)
        refused = await scheduler.tick(now)
        refusing.refused.clear()
        too_soon = await scheduler.tick(now + dt.timedelta(seconds=4))
        retried = await scheduler.tick(now + dt.timedelta(seconds=5))
    finally:
        await refusing.close()

    assert refused == too_soon == []
    assert [(f.flow, f.slot) for f in retried] == [("flaky", SAVED + dt.timedelta(minutes=1))]


async def test_a_replica_stopped_mid_batch_leaves_the_whole_batch_to_the_others(
    store: FlowStore, broker: InProcessBroker
) -> None:
    for index in range(5):
        await store.save(flow(f"flow-{index}", every="1m"), now=SAVED)
    stalling = StallingBroker(Topology("scheduler-test-stalling"), stalled="flow-3")
    await stalling.start()
    now = SAVED + dt.timedelta(minutes=1, seconds=1)
    try:
        ticking = asyncio.create_task(Scheduler(store, stalling).tick(now))
        await asyncio.wait_for(stalling.reached.wait(), 5)
        ticking.cancel()
        with pytest.raises(asyncio.CancelledError):
            await ticking
    finally:
        await stalling.close()
    # The runs it had started already are started again under the same run ids.
    other = await Scheduler(store, broker).tick(now)

    assert sorted(f.flow for f in other) == [f"flow-{index}" for index in range(5)]


async def test_fired_slots_are_forgotten_except_each_flows_latest(
    store: FlowStore, broker: InProcessBroker
) -> None:
    await store.save(flow("parent"), now=SAVED)
    await store.save(flow("every-minute", every="1m"), now=SAVED)
    await store.save(flow("follower", after={"flow": "parent"}), now=SAVED)
    scheduler = Scheduler(store, broker)
    for minute in range(1, 4):
        await scheduler.tick(SAVED + dt.timedelta(minutes=minute, seconds=1))
    done = RunCompleted(run_id="p1", flow="parent", status=RunStatus.SUCCEEDED, finished_at=SAVED)
    await Chainer(store, broker).on_completed(Delivery(done.model_dump_json().encode(), "run.completed"))
    assert len(await slot_rows(store)) == 4

    # Slots are stamped with the time they were fired: all of them "now" here.
    soon = dt.datetime.now(dt.UTC) + dt.timedelta(minutes=1)
    forgotten = await store.forget_slots(scheduled_before=soon, chained_before=soon - dt.timedelta(days=1))
    kept = await slot_rows(store)
    # A replica starting afresh resumes from the latest slot kept.
    resumed = await Scheduler(store, broker).tick(SAVED + dt.timedelta(minutes=3, seconds=30))
    forgotten += await store.forget_slots(scheduled_before=soon, chained_before=soon)

    assert kept == [("every-minute", "2026-03-26T12:03:00Z"), ("follower", f"{CHAINED}p1")]
    assert resumed == []
    assert forgotten == 3
    assert await slot_rows(store) == [("every-minute", "2026-03-26T12:03:00Z")]


async def test_the_store_revision_moves_with_every_change_to_a_flow_and_only_then(
    store: FlowStore, broker: InProcessBroker
) -> None:
    revisions = [await store.revision()]
    await store.save(flow("hourly", every="1h"), now=SAVED)
    revisions.append(await store.revision())
    await Scheduler(store, broker).tick(SAVED + dt.timedelta(hours=1, seconds=1))
    revisions.append(await store.revision())
    await store.save(flow("hourly", every="2h"), now=SAVED + dt.timedelta(hours=1, minutes=1))
    revisions.append(await store.revision())
    await store.delete("hourly")
    revisions.append(await store.revision())
    await store.delete("hourly")
    revisions.append(await store.revision())

    assert revisions == [0, 1, 1, 2, 3, 3]
