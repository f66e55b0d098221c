"""Firing flows: on their schedules, and after the flows they follow.

Every replica ticks; the store's slot claim makes each slot fire once. Slots
are computed from the flow's schedule and the latest slot already fired, so
after downtime a flow fires its latest missed slot once (``missed: latest``)
or skips what it missed (``missed: skip``). The clock is injected: tests drive
:meth:`Scheduler.tick` with the times they want.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass

import sqlalchemy as sa
import structlog
from pydantic import ValidationError

from common import metrics
from common.broker import Broker, BrokerError, Delivery
from common.contracts import RunCompleted, RunContext, TriggerKind, utcnow
from common.errors import DeadLetter
from common.flows import Flow
from services.trigger.launcher import launch, slot_run_id
from services.trigger.schedule import Schedule, ScheduleError, parse_every
from services.trigger.store import FlowStore

log = structlog.get_logger(__name__)

#: A slot this late under ``missed: skip`` counts as missed rather than due.
_LATE = dt.timedelta(minutes=1)


@dataclass(frozen=True)
class Fired:
    flow: str
    slot: dt.datetime
    run_id: str


def slot_key(slot: dt.datetime) -> str:
    """A slot as the store keeps it: ISO UTC to the second, so text order is time order."""
    return slot.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def schedule_of(flow: Flow) -> Schedule:
    trigger = flow.trigger
    every = parse_every(trigger.every) if trigger.every is not None else None
    return Schedule(cron=trigger.cron, every=every, timezone=trigger.timezone)


async def fire(
    store: FlowStore,
    broker: Broker,
    flow: Flow,
    key: str,
    trigger: TriggerKind,
    *,
    scheduled_for: dt.datetime | None = None,
    parent_run_id: str | None = None,
) -> str | None:
    """Start *flow*'s run for *key* unless a replica already did; its run id if this call did."""
    with structlog.contextvars.bound_contextvars(flow=flow.name, service="trigger"):
        try:
            parameters = flow.bind_parameters({})
        except ValueError as exc:
            log.error("flow cannot run without parameters", error=str(exc))
            return None
        context = RunContext(
            flow=flow.name,
            trigger=trigger,
            scheduled_for=scheduled_for,
            parameters=parameters,
            parent_run_id=parent_run_id,
            timezone=flow.trigger.timezone,
        )
        run_id = slot_run_id(flow.name, key)
        async with store.claim(flow.name, key, run_id) as won:
            if not won:
                return None
            await launch(broker, flow, context, run_id)
        return run_id


class Scheduler:
    def __init__(
        self,
        store: FlowStore,
        broker: Broker,
        *,
        clock: Callable[[], dt.datetime] = utcnow,
        poll_seconds: float = 1.0,
    ) -> None:
        self.store = store
        self.broker = broker
        self.clock = clock
        self.poll_seconds = poll_seconds

    async def tick(self, now: dt.datetime) -> list[Fired]:
        """Fire every slot due at *now*; returns the runs this replica started."""
        started: list[Fired] = []
        for stored in await self.store.scheduled():
            flow = stored.flow
            try:
                schedule = schedule_of(flow)
            except ScheduleError as exc:
                log.error("flow has an unusable schedule", flow=flow.name, error=str(exc))
                continue
            not_before = max(stored.anchor, stored.last_slot) if stored.last_slot else stored.anchor
            slot = schedule.latest_at_or_before(now, not_before=not_before)
            if slot is None:
                continue
            key = slot_key(slot)
            if flow.trigger.missed == "skip" and now - slot > _LATE:
                async with self.store.claim(flow.name, key, "missed") as won:
                    if won:
                        log.warning("missed slot skipped", flow=flow.name, slot=key)
                continue
            run_id = await fire(self.store, self.broker, flow, key, TriggerKind.SCHEDULE, scheduled_for=slot)
            if run_id is not None:
                metrics.SCHEDULER_LATENESS.observe(max(0.0, (now - slot).total_seconds()))
                started.append(Fired(flow.name, slot, run_id))
        return started

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                await self.tick(self.clock())
            except (BrokerError, sa.exc.SQLAlchemyError, OSError):
                log.exception("scheduler tick failed; retrying")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.poll_seconds)


class Chainer:
    """Starts the flows that follow a flow whose run just ended."""

    def __init__(self, store: FlowStore, broker: Broker) -> None:
        self.store = store
        self.broker = broker

    async def on_completed(self, delivery: Delivery) -> None:
        try:
            completed = RunCompleted.model_validate_json(delivery.body)
        except ValidationError as exc:
            raise DeadLetter from exc
        for stored in await self.store.followers(completed.flow):
            flow = stored.flow
            after = flow.trigger.after
            if after is None or completed.status not in after.status:
                continue
            key = f"after:{completed.run_id}"
            await fire(self.store, self.broker, flow, key, TriggerKind.AFTER, parent_run_id=completed.run_id)
