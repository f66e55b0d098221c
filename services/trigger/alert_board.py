"""A flow's alerts as the trigger API shows them, and the silences it sets over them.

What :mod:`services.trigger.api` serves under ``/v1/flows/{name}/alerts`` and ``/v1/silences``:
each alert step of a flow with its state as a whole (the worst of its instances, as an
evaluation says it), its instances, its latest transitions and the silences in force; and a
silence asked for, checked against the flow it names before it is kept.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass
from typing import Any

from common.contracts.actions import KUSTO_STEPS
from common.contracts.alerts import LONGEST, Alert, parse_duration
from common.contracts.flows import Flow
from common.platform.database import read_utc
from common.platform.routes import FieldProblem, Refusal
from services.trigger.alert_states import Instance, State
from services.trigger.alert_store import AlertStore
from services.trigger.alerting import overall, rules_of
from services.trigger.bodies import (
    AlertView,
    FlowAlerts,
    InstanceView,
    SilenceList,
    SilenceRequest,
    SilenceView,
    TransitionView,
)
from services.trigger.silences import Listed, SilenceOver, SilenceStore, StoredSilence
from services.trigger.store import FlowStore

#: Transitions an alert shows, newest first.
TRANSITIONS = 50
#: Silences a listing shows at most.
MAX_SILENCES = 500


def invalid(field: str, problem: str) -> Refusal:
    """A 400 naming *field*."""
    return Refusal(
        400, f"{field}: {problem}", code="InvalidRequest", fields=[FieldProblem(field=field, message=problem)]
    )


def alert_steps(flow: Flow) -> dict[str, Alert]:
    """The flow's steps with an alert, by id, in document order."""
    return {
        step.id: step.alert
        for step in flow.every_step()
        if isinstance(step, KUSTO_STEPS) and step.alert is not None
    }


def silence_view(silence: StoredSilence, now: dt.datetime) -> SilenceView:
    return SilenceView(
        id=silence.id,
        flow=silence.flow,
        step=silence.step_id,
        key=silence.key,
        starts_at=silence.starts_at,
        ends_at=silence.ends_at,
        comment=silence.comment,
        created_by=silence.created_by,
        created_at=silence.created_at,
        ended_at=silence.ended_at,
        state=silence.state(now),
    )


@dataclass
class AlertBoard:
    flows: FlowStore
    alerts: AlertStore
    silences: SilenceStore

    async def silence(self, asked: SilenceRequest, *, created_by: str, now: dt.datetime) -> SilenceView:
        """Keep the silence *asked* for, once it names a saved flow, an alert step and an instance of it."""
        stored = await self.flows.get(asked.flow)
        if stored is None:
            raise invalid("flow", f"{asked.flow!r} is not a saved flow")
        alerting = alert_steps(stored.flow)
        if not alerting:
            raise invalid("flow", f"flow {asked.flow!r} has no step with an alert")
        if asked.step is not None and asked.step not in alerting:
            known = ", ".join(alerting)
            raise invalid("step", f"{asked.step!r} is not a step of {asked.flow!r} with an alert ({known})")
        if asked.key is not None:
            _check_key(asked.key, {asked.step: alerting[asked.step]} if asked.step else alerting)
        ends_at = _ends_at(asked, now)
        silence = await self.silences.create(
            flow=asked.flow,
            step_id=asked.step,
            key=asked.key,
            ends_at=ends_at,
            comment=asked.comment,
            created_by=created_by,
            now=now,
        )
        return silence_view(silence, now)

    async def listed(self, *, flow: str | None, state: Listed, limit: int, now: dt.datetime) -> SilenceList:
        found = await self.silences.find(flow=flow, state=state, now=now, limit=limit)
        return SilenceList(silences=[silence_view(silence, now) for silence in found])

    async def one(self, silence_id: str, now: dt.datetime) -> SilenceView:
        silence = await self.silences.get(silence_id)
        if silence is None:
            raise _silence_not_found(silence_id)
        return silence_view(silence, now)

    async def end(self, silence_id: str, now: dt.datetime) -> None:
        try:
            ended = await self.silences.end(silence_id, now)
        except SilenceOver as exc:
            raise Refusal(409, exc.message, code="Conflict") from exc
        if ended is None:
            raise _silence_not_found(silence_id)

    async def of_flow(self, name: str, now: dt.datetime) -> FlowAlerts | None:
        """Every alert of the flow *name* as it stands at *now*; None if there is no such flow."""
        stored = await self.flows.get(name)
        if stored is None:
            return None
        views = [
            await self._alert(name, step_id, alert, now)
            for step_id, alert in alert_steps(stored.flow).items()
        ]
        active = await self.silences.find(flow=name, state="active", now=now, limit=MAX_SILENCES)
        return FlowAlerts(flow=name, alerts=views, silences=[silence_view(one, now) for one in active])

    async def _alert(self, flow: str, step_id: str, alert: Alert, now: dt.datetime) -> AlertView:
        states = await self.alerts.states(flow, step_id)
        # As an evaluation now would see them: the oldest covering an instance is what holds it.
        covering = await self.silences.active(flow, step_id, now)
        rules = rules_of(alert)

        def instance_view(instance: Instance) -> InstanceView:
            silence = next((silence for silence in covering if silence.covers(instance.key)), None)
            return InstanceView(
                key=instance.key,
                state=instance.state,
                since=instance.since,
                pending_count=instance.pending_count,
                last_held=instance.last_held,
                notified_at=instance.notified_at,
                next_repeat=instance.next_repeat(rules),
                row=dict(instance.row) if instance.row is not None else None,
                silenced_by=silence.id if silence is not None else None,
                silenced_until=silence.ends_at if silence is not None else None,
            )

        transitions = await self.alerts.history(flow, step_id, limit=TRANSITIONS)
        return AlertView(
            step=step_id,
            state=overall(states.values()),
            key_columns=list(alert.key_columns),
            instances=[instance_view(states[key]) for key in sorted(states)],
            transitions=[_transition(row) for row in transitions],
        )


def _silence_not_found(silence_id: str) -> Refusal:
    return Refusal(404, f"silence {silence_id!r} not found", code="NotFound")


def _transition(row: dict[str, Any]) -> TransitionView:
    return TransitionView(
        key=row["key"],
        before=State(row["before"]),
        after=State(row["after"]),
        notice=row["notice"],
        held=row["held"],
        run_id=row["run_id"],
        at=read_utc(row["at"]),
    )


def _check_key(key: str, alerting: dict[str, Alert]) -> None:
    """Refuse a key that names no instance any of *alerting* can have (``EventId=42``)."""
    shapes = [alert.key_columns for alert in alerting.values() if alert.key_columns]
    if not shapes:
        raise invalid("key", "the alert has no key_columns: its one instance is the alert; leave key out")
    for columns in shapes:
        pattern = ", ".join(f"{re.escape(column)}=.*" for column in columns)
        if re.fullmatch(pattern, key, flags=re.DOTALL):
            return
    examples = " or ".join(", ".join(f"{column}=..." for column in columns) for columns in shapes)
    raise invalid("key", f"{key!r} is not an instance's key; an instance is named {examples}")


def _ends_at(asked: SilenceRequest, now: dt.datetime) -> dt.datetime:
    if asked.lasts is not None:
        return now + parse_duration(asked.lasts)
    assert asked.until is not None
    until = asked.until.astimezone(dt.UTC)
    if until <= now:
        raise invalid("until", f"{asked.until.isoformat()} has passed; a silence ends in the future")
    if until > now + LONGEST:
        raise invalid("until", f"{asked.until.isoformat()} is more than a year away")
    return until
