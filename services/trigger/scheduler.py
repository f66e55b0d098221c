"""Firing flows: on their schedules, and after the flows they follow.

Every replica keeps a :class:`~services.trigger.timetable.Timetable` of the
scheduled flows and sleeps until the earliest instant a flow is due or its
next look, whichever comes first. It looks every ``poll_seconds``: one read of
the store's revision and, only when that moved, of the flows' versions, to
load again the flows changed through any replica. Slots are computed from the
flow's schedule and the latest slot already fired, so after downtime a flow
fires its latest missed slot once (``missed: latest``) or skips what it missed
(``missed: skip``).

Due slots are claimed in batches, several batches at a time, with every run
of a batch started at once; the store's claim makes each slot fire once
across replicas, and keeps only the slots whose run the broker took. The
clock is injected: tests drive :meth:`Scheduler.tick` with the times they
want, or :meth:`Scheduler.run` with a clock whose waiting they control.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import gc
import random
from dataclasses import dataclass

import sqlalchemy as sa
import structlog

from common.contracts.flows import Flow, RunTemplate
from common.contracts.messages import (
    RunCompleted,
    RunContext,
    TriggerKind,
    UnreadableMessage,
    read_message,
    utcnow,
)
from common.platform import metrics
from common.platform.broker.interface import Broker, BrokerError, Delivery
from common.platform.logs import run_context
from services.trigger.starter import launch, slot_run_id
from services.trigger.store import CHAINED, FlowStore, SlotClaim
from services.trigger.timetable import Entry, Timetable

log = structlog.get_logger(__name__)

#: A slot this late under ``missed: skip`` counts as missed rather than due.
_LATE = dt.timedelta(minutes=1)
#: Slots claimed in one transaction, and how many such batches are under way at once: together
#: they bound the runs being started at any moment.
BATCH_SIZE = 200
BATCHES_IN_FLIGHT = 3
#: A look that loads at least this many flows at once (a start, a bulk import) moves them out of
#: the garbage collector's way.
FREEZE_AFTER_LOADING = 1000
#: How often fired slots no replica needs any more are deleted, and how long a scheduled one is kept.
FORGET_EVERY = dt.timedelta(hours=1)
KEEP_SCHEDULED = dt.timedelta(days=1)


@dataclass(frozen=True)
class Fired:
    flow: str
    slot: dt.datetime
    run_id: str


def slot_key(slot: dt.datetime) -> str:
    """A slot as the store keeps it: ISO UTC to the second, so text order is time order."""
    return slot.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class Clock:
    """The wall clock, and waiting for an instant of it."""

    def now(self) -> dt.datetime:
        return utcnow()

    async def sleep_until(self, instant: dt.datetime, stop: asyncio.Event) -> None:
        """Return at *instant*, or as soon as *stop* is set."""
        delay = (instant - self.now()).total_seconds()
        if delay > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), delay)


@dataclass(frozen=True, eq=False)
class _Due:
    """A slot to fire, or under ``missed: skip`` to record as skipped."""

    entry: Entry
    slot: dt.datetime
    key: str
    skip: bool
    #: How late the slot already was when the scheduler took it up, and the clock's time then.
    late: dt.timedelta
    taken_at: dt.datetime

    @property
    def claim(self) -> SlotClaim:
        run_id = "missed" if self.skip else slot_run_id(self.entry.name, self.key)
        return SlotClaim(self.entry.name, self.key, run_id)


class Scheduler:
    def __init__(
        self,
        store: FlowStore,
        broker: Broker,
        *,
        clock: Clock | None = None,
        poll_seconds: float = 1.0,
        batch_size: int = BATCH_SIZE,
        batches_in_flight: int = BATCHES_IN_FLIGHT,
        keep_chained: dt.timedelta = dt.timedelta(days=28),
    ) -> None:
        self.store = store
        self.broker = broker
        self.clock = clock or Clock()
        self.poll_seconds = poll_seconds
        self.batch_size = batch_size
        self.keep_chained = keep_chained
        self.timetable = Timetable()
        #: The store's revision when the timetable was last brought up to date.
        self._revision: int | None = None
        self._batches = asyncio.Semaphore(batches_in_flight)

    async def tick(self, now: dt.datetime) -> list[Fired]:
        """Look for changed flows, then fire every slot due at *now*; returns the runs started here."""
        await self.refresh(now)
        return await self.fire_due(now)

    async def refresh(self, now: dt.datetime) -> None:
        """Load again the flows created, changed, disabled or deleted since the last look."""
        # Read first: a change committed from here on moves it again, to be seen at the next look.
        revision = await self.store.revision()
        if revision == self._revision:
            return
        changed, gone = self.timetable.stale(await self.store.signatures())
        self.timetable.forget(gone)
        if changed:
            loaded = await self.store.scheduled(changed)
            for stored in loaded:
                self.timetable.load(stored, now)
            # Disabled or deleted between the two reads.
            self.timetable.forget(changed - {stored.flow.name for stored in loaded})
            if len(loaded) >= FREEZE_AFTER_LOADING:
                # Every full collection would walk the objects of thousands of cached flows, and a
                # burst of runs sets off several: with 10,000 flows, a fifth of the burst's CPU. What
                # the process holds now lives on; reference counting still frees what it drops.
                gc.collect()
                gc.freeze()
        self._revision = revision

    async def fire_due(self, now: dt.datetime) -> list[Fired]:
        """Fire every slot due at *now*; returns the runs this replica started."""
        due: list[_Due] = []
        taken_at = self.clock.now()
        for entry in self.timetable.take_due(now):
            slot = entry.slot_at(now)
            if slot is None:
                self.timetable.plan(entry, now)
            elif isinstance(entry.parameters, str):
                log.error("flow cannot run without parameters", flow=entry.name, error=entry.parameters)
                self.timetable.done(entry, slot)
            else:
                skip = entry.flow.trigger.missed == "skip" and now - slot > _LATE
                due.append(_Due(entry, slot, slot_key(slot), skip, now - slot, taken_at))
        if not due:
            return []
        batches = [due[start : start + self.batch_size] for start in range(0, len(due), self.batch_size)]
        # Replicas taking the batches in different orders mostly claim different ones, and so share
        # the work; within a batch, slots are claimed in one order everywhere (see FlowStore.claim).
        random.shuffle(batches)
        retry_at = now + dt.timedelta(seconds=self.poll_seconds)
        outcomes = await asyncio.gather(*(self._fire(batch, retry_at) for batch in batches))
        started = [fired for batch in outcomes for fired in batch]
        if started:
            log.info("slots fired", runs=len(started), due=len(due))
        return started

    async def _fire(self, batch: list[_Due], retry_at: dt.datetime) -> list[Fired]:
        """Claim *batch*, start the runs it won, and keep the claim of those the broker took.

        A slot whose run could not be started is looked at again at *retry_at*.
        """
        started: list[Fired] = []
        settled: set[_Due] = set()
        async with self._batches:
            try:
                async with self.store.claim([due.claim for due in batch]) as claimed:
                    launching: list[_Due] = []
                    for due in batch:
                        if (due.entry.name, due.key) not in claimed:
                            # Another replica fired it.
                            self._done(due, settled)
                        elif due.skip:
                            log.warning("missed slot skipped", flow=due.entry.name, slot=due.key)
                            self._done(due, settled)
                        else:
                            launching.append(due)
                    outcomes = await asyncio.gather(*map(self._launch, launching), return_exceptions=True)
                    for due, outcome in zip(launching, outcomes, strict=True):
                        if isinstance(outcome, BaseException):
                            if not isinstance(outcome, BrokerError):
                                log.error("run failed to start", flow=due.entry.name, exc_info=outcome)
                            claimed.release(due.entry.name, due.key)
                            continue
                        self._done(due, settled)
                        started.append(Fired(due.entry.name, due.slot, outcome))
            except (sa.exc.SQLAlchemyError, OSError):
                log.exception("claiming slots failed; they are tried again", slots=len(batch))
            finally:
                for due in batch:
                    if due not in settled:
                        self.timetable.retry(due.entry, retry_at)
        return started

    def _done(self, due: _Due, settled: set[_Due]) -> None:
        self.timetable.done(due.entry, due.slot)
        settled.add(due)

    async def _launch(self, due: _Due) -> str:
        """Start the run of *due*; its run id. Raises BrokerError if the broker did not take it."""
        entry = due.entry
        assert not isinstance(entry.parameters, str)
        context = RunContext(
            flow=entry.name,
            trigger=TriggerKind.SCHEDULE,
            scheduled_for=due.slot,
            parameters=entry.parameters,
            timezone=entry.flow.trigger.timezone,
        )
        run_id = slot_run_id(entry.name, due.key)
        # Each run starts in a task of its own (see _fire), whose context ends with it: binding
        # the run without unbinding it again is enough, and far cheaper for thousands of runs.
        structlog.contextvars.bind_contextvars(
            run_id=run_id, step_id="trigger", attempt=1, flow=entry.name, service="trigger"
        )
        try:
            await launch(self.broker, entry.template, context, run_id)
        except BrokerError as exc:
            log.error("could not start a scheduled run; its slot stays free", flow=entry.name, error=str(exc))
            raise
        late = due.late + (self.clock.now() - due.taken_at)
        metrics.SCHEDULER_LATENESS.observe(max(0.0, late.total_seconds()))
        return run_id

    async def forget(self, now: dt.datetime) -> None:
        """Delete the fired slots no replica needs any more."""
        forgotten = await self.store.forget_slots(
            scheduled_before=now - KEEP_SCHEDULED, chained_before=now - self.keep_chained
        )
        if forgotten:
            log.info("fired slots forgotten", slots=forgotten)

    async def run(self, stop: asyncio.Event) -> None:
        """Fire slots as they fall due and look for changed flows every poll, until *stop* is set."""
        look_at = forget_at = self.clock.now()
        forgetting: asyncio.Task[None] | None = None
        try:
            while not stop.is_set():
                try:
                    await self.fire_due(self.clock.now())
                    if self.clock.now() >= look_at:
                        look_at = self.clock.now() + dt.timedelta(seconds=self.poll_seconds)
                        await self.refresh(self.clock.now())
                        await self.fire_due(self.clock.now())
                except (BrokerError, sa.exc.SQLAlchemyError, OSError):
                    log.exception("scheduler failed; retrying")
                if self.clock.now() >= forget_at and (forgetting is None or forgetting.done()):
                    # In the background: a large delete must not hold up the slots falling due meanwhile.
                    forget_at = self.clock.now() + FORGET_EVERY
                    forgetting = asyncio.create_task(self._forget(forget_at - FORGET_EVERY))
                due = self.timetable.next_due()
                await self.clock.sleep_until(look_at if due is None else min(due, look_at), stop)
        finally:
            if forgetting is not None:
                forgetting.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await forgetting

    async def _forget(self, now: dt.datetime) -> None:
        try:
            await self.forget(now)
        except (sa.exc.SQLAlchemyError, OSError):
            log.exception("forgetting fired slots failed; trying again at the next interval")


class Chainer:
    """Starts the flows that follow a flow whose run just ended."""

    def __init__(self, store: FlowStore, broker: Broker) -> None:
        self.store = store
        self.broker = broker

    async def on_completed(self, delivery: Delivery) -> None:
        try:
            completed = read_message(RunCompleted, delivery.body)
        except UnreadableMessage as exc:
            log.error("unreadable completed run", error=exc.reason, message_id=delivery.message_id)
            await self.broker.refuse(delivery, exc.reason)
            return
        for stored in await self.store.followers(completed.flow):
            flow = stored.flow
            after = flow.trigger.after
            if after is None or completed.status not in after.status:
                continue
            await self._start(flow, completed.run_id)

    async def _start(self, flow: Flow, parent_run_id: str) -> None:
        """Start *flow* after its parent's run, unless a replica (or a redelivery) already did."""
        with structlog.contextvars.bound_contextvars(flow=flow.name, service="trigger"):
            try:
                parameters = flow.bind_parameters({})
            except ValueError as exc:
                log.error("flow cannot run without parameters", error=str(exc))
                return
            context = RunContext(
                flow=flow.name,
                trigger=TriggerKind.AFTER,
                parameters=parameters,
                parent_run_id=parent_run_id,
                timezone=flow.trigger.timezone,
            )
            key = f"{CHAINED}{parent_run_id}"
            run_id = slot_run_id(flow.name, key)
            async with self.store.claim([SlotClaim(flow.name, key, run_id)]) as claimed:
                if (flow.name, key) in claimed:
                    with run_context(run_id, "trigger", 1, flow=flow.name, service="trigger"):
                        await launch(self.broker, RunTemplate.of(flow), context, run_id)
