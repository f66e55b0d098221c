"""The scheduler's view of its flows: each parsed once, with the next instant it is due.

A :class:`Timetable` keeps every enabled scheduled flow as it was last loaded
(refreshed only when its version or save time changed) together with the
latest slot known to be taken care of (fired here or by another replica,
or skipped) and the instant the flow is next due. Slots are always computed
by the flow's :class:`~services.trigger.schedule.Schedule`; the timetable only
remembers where each flow stands, so waking up once at the earliest due
instant is enough.
"""

from __future__ import annotations

import datetime as dt
import heapq
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import structlog

from common.contracts.flows import Flow, RunTemplate
from services.trigger.schedule import Schedule, ScheduleError, parse_every
from services.trigger.store import Signature, StoredFlow

log = structlog.get_logger(__name__)

#: The due instant of a flow taken out of the timetable until it is planned again.
_NEVER = dt.datetime.max.replace(tzinfo=dt.UTC)


def schedule_of(flow: Flow) -> Schedule:
    trigger = flow.trigger
    every = parse_every(trigger.every) if trigger.every is not None else None
    return Schedule(cron=trigger.cron, every=every, timezone=trigger.timezone)


@dataclass(eq=False)
class Entry:
    """One scheduled flow, ready to fire."""

    flow: Flow
    signature: Signature
    anchor: dt.datetime
    schedule: Schedule
    template: RunTemplate
    #: The parameters every scheduled run binds (their defaults), or why the flow cannot run.
    parameters: dict[str, Any] | str
    #: The latest slot fired, skipped or found taken by another replica.
    last: dt.datetime | None
    due: dt.datetime = _NEVER

    @property
    def name(self) -> str:
        return self.flow.name

    def slot_at(self, now: dt.datetime) -> dt.datetime | None:
        """The slot to fire at *now*: the latest one not yet taken care of, if any."""
        not_before = max(self.anchor, self.last) if self.last else self.anchor
        return self.schedule.latest_at_or_before(now, not_before=not_before)


class Timetable:
    def __init__(self) -> None:
        self._entries: dict[str, Entry] = {}
        #: Flows whose schedule cannot be computed, with the signature that was refused.
        self._unusable: dict[str, Signature] = {}
        #: (due, sequence, entry); an item whose entry is gone or due elsewhere is stale.
        self._heap: list[tuple[dt.datetime, int, Entry]] = []
        self._sequence = 0

    def __len__(self) -> int:
        return len(self._entries)

    def stale(self, signatures: dict[str, Signature]) -> tuple[set[str], set[str]]:
        """Given every scheduled flow's signature now: the flows to load again, and those gone."""
        known = {name: entry.signature for name, entry in self._entries.items()} | self._unusable
        changed = {name for name, signature in signatures.items() if known.get(name) != signature}
        gone = set(known) - set(signatures)
        return changed, gone

    def forget(self, names: Iterable[str]) -> None:
        for name in names:
            self._entries.pop(name, None)
            self._unusable.pop(name, None)

    def load(self, stored: StoredFlow, now: dt.datetime) -> Entry | None:
        """Take in *stored* (new, or a new version of a flow already here), due from *now*."""
        flow = stored.flow
        signature = Signature(stored.version, stored.updated_at)
        previous = self._entries.pop(stored.flow.name, None)
        self._unusable.pop(flow.name, None)
        try:
            schedule = schedule_of(flow)
        except ScheduleError as exc:
            log.error("flow has an unusable schedule", flow=flow.name, error=str(exc))
            self._unusable[flow.name] = signature
            return None
        try:
            parameters: dict[str, Any] | str = flow.bind_parameters({})
        except ValueError as exc:
            parameters = str(exc)
        known = [slot for slot in (stored.last_slot, previous.last if previous else None) if slot]
        entry = Entry(
            flow=flow,
            signature=signature,
            anchor=stored.anchor,
            schedule=schedule,
            template=RunTemplate.of(flow),
            parameters=parameters,
            last=max(known, default=None),
        )
        self._entries[flow.name] = entry
        self.plan(entry, now)
        return entry

    def plan(self, entry: Entry, now: dt.datetime) -> None:
        """Due at once if a slot is waiting at *now*, otherwise at the next slot."""
        waiting = entry.slot_at(now)
        self._set_due(entry, waiting if waiting is not None else entry.schedule.next_after(now))

    def done(self, entry: Entry, slot: dt.datetime) -> None:
        """*slot* is taken care of: the flow is next due at the slot after it."""
        if entry.last is None or slot > entry.last:
            entry.last = slot
        self._set_due(entry, entry.schedule.next_after(slot))

    def retry(self, entry: Entry, at: dt.datetime) -> None:
        """The slot due could not be fired: look again at *at*."""
        self._set_due(entry, at)

    def next_due(self) -> dt.datetime | None:
        """The earliest instant a flow is due."""
        while self._heap:
            due, _, entry = self._heap[0]
            if self._current(entry, due):
                return due
            heapq.heappop(self._heap)
        return None

    def take_due(self, now: dt.datetime) -> list[Entry]:
        """Every flow due at or before *now*, by name; each is due again only once planned anew."""
        taken: list[Entry] = []
        while self._heap and self._heap[0][0] <= now:
            due, _, entry = heapq.heappop(self._heap)
            if self._current(entry, due):
                entry.due = _NEVER
                taken.append(entry)
        return sorted(taken, key=lambda entry: entry.name)

    def _current(self, entry: Entry, due: dt.datetime) -> bool:
        return self._entries.get(entry.name) is entry and entry.due == due

    def _set_due(self, entry: Entry, due: dt.datetime) -> None:
        entry.due = due
        self._sequence += 1
        heapq.heappush(self._heap, (due, self._sequence, entry))
        if len(self._heap) > 2 * len(self._entries) + 64:
            # Flows changed or gone leave items behind that would otherwise wait for their time.
            self._heap = [item for item in self._heap if self._current(item[2], item[0])]
            heapq.heapify(self._heap)
