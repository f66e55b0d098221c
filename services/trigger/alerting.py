"""Alert steps: an alert's evaluation after its Kusto step, performed by the trigger.

The evaluation reads what its query found (for an alert with key columns, every row of the
stored result, streamed from the blob store), asks the rules (:mod:`services.trigger.alert_states`)
what that does to each instance, records it in SQL (:mod:`services.trigger.alert_store`) and
says in its output what templates and the deliveries after it read as ``alert``: the state, the
previous state, since when, what is new, still firing and resolved, and whether there is
anything to deliver.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping
from typing import Any

import sqlalchemy as sa
import structlog

from common.contracts.actions import KUSTO_STEPS
from common.contracts.alerts import Alert, parse_duration
from common.contracts.errors import AdxflowError
from common.contracts.flows import flow_of
from common.contracts.messages import ErrorCode, RunMessage, StepOutput, StepStatus, utcnow
from common.contracts.templates import evaluate_condition, template_context
from common.platform.runtime import Runtime
from services.trigger.alert_states import (
    Evaluation,
    Instance,
    Notice,
    Outcome,
    Policy,
    Rules,
    State,
    evaluate,
)
from services.trigger.alert_store import AlertStore

log = structlog.get_logger(__name__)

#: Instances an evaluation's output lists by name in each of new, still firing and resolved.
LISTED = 100
#: The instance of an alert without key columns.
WHOLE = ""
#: Worst first: the state an alert with key columns shows as a whole.
_SEVERITY = (State.ERROR, State.NO_DATA, State.FIRING, State.PENDING, State.OK)
_POLICIES = {
    "error": Policy.STATE,
    "no_data": Policy.STATE,
    "firing": Policy.FIRING,
    "ok": Policy.OK,
    "keep": Policy.KEEP,
}


class AlertError(AdxflowError):
    """An alert that cannot be evaluated as its flow asks (a key column the result does not have)."""


def rules_of(alert: Alert) -> Rules:
    pending = alert.pending_for
    return Rules(
        pending_evaluations=pending if isinstance(pending, int) else 1,
        pending_for=parse_duration(pending) if isinstance(pending, str) else None,
        keep_firing_for=parse_duration(alert.keep_firing_for) if alert.keep_firing_for else dt.timedelta(0),
        repeat_every=parse_duration(alert.repeat_every) if alert.repeat_every else None,
        on_error=_POLICIES[alert.on_error],
        on_no_data=_POLICIES[alert.on_no_data],
        notify_firing=alert.notify.firing,
        notify_resolved=alert.notify.resolved,
    )


class Alerts:
    """Performs the trigger's ``alert`` steps over *store*."""

    def __init__(self, store: AlertStore, runtime: Runtime) -> None:
        self.store = store
        self.runtime = runtime
        #: Evaluations and transitions are kept as long as runs are.
        self.keep_for = dt.timedelta(days=runtime.settings.retention_days)

    async def tidy(self) -> bool:
        """Forget the evaluations and transitions older than runs are kept (instances stay)."""
        try:
            forgotten = await self.store.forget(evaluated_before=utcnow() - self.keep_for)
        except (sa.exc.SQLAlchemyError, OSError):
            log.exception("forgetting old alert evaluations failed; retrying at the next interval")
            return False
        if forgotten:
            log.info("old alert evaluations forgotten", evaluations=forgotten)
        return True

    async def perform(self, message: RunMessage) -> StepOutput:
        flow = flow_of(message)
        assert message.step.flow_step is not None
        spec = flow.step(message.step.flow_step)
        if not isinstance(spec, KUSTO_STEPS) or spec.alert is None:
            raise AlertError(f"step {spec.id!r} has no alert")
        alert = spec.alert
        found, absent, rows = await self._found(message, spec.id, alert)
        rules = rules_of(alert)
        now = utcnow()

        def decide(stored: dict[str, Instance]) -> tuple[Evaluation, dict[str, Any]]:
            evaluation = evaluate(rules, stored, found, now, absent=absent)
            return evaluation, _outcome(alert, rules, stored, evaluation, rows)

        outcome = await self.store.evaluate(flow.name, spec.id, message.run_id, decide)
        return StepOutput(detail={"alert": outcome})

    async def _found(
        self, message: RunMessage, step_id: str, alert: Alert
    ) -> tuple[dict[str, Outcome], Outcome, dict[str, dict[str, Any]]]:
        """Each instance's outcome, the outcome of the instances not seen, and the rows of the first ones."""
        query = message.outputs.get(step_id)
        if query is None or query.status is StepStatus.FAILED:
            # The alert as a whole is in error (with key columns, so is each instance it has).
            return {WHOLE: Outcome.ERROR}, Outcome.ERROR, {}
        count = query.row_count or 0
        none = Outcome.NO_DATA if alert.expect_rows else Outcome.CLEAR
        if not alert.key_columns:
            if count == 0 and alert.expect_rows:
                return {WHOLE: Outcome.NO_DATA}, Outcome.NO_DATA, {}
            if alert.condition:
                field = f"steps.{step_id}.alert.condition"
                holds = evaluate_condition(alert.condition, template_context(message), field=field)
            else:
                holds = count > 0
            return {WHOLE: Outcome.HOLDS if holds else Outcome.CLEAR}, Outcome.CLEAR, {}
        if count == 0 or "result" not in query.artifacts:
            return {}, none, {}
        found: dict[str, Outcome] = {}
        rows: dict[str, dict[str, Any]] = {}
        context = template_context(message) if alert.condition else {}
        async for columns, batch in self.runtime.blobs.result_rows(query.artifacts["result"].key):
            names = [column.name for column in columns]
            missing = [name for name in alert.key_columns if name not in names]
            if missing:
                raise AlertError(
                    f"steps.{step_id}.alert.key_columns: {', '.join(map(repr, missing))} not in the result "
                    f"(columns: {', '.join(names)})",
                    code=ErrorCode.TEMPLATE_ERROR,
                )
            for values in batch:
                row = dict(zip(names, values, strict=True))
                key = instance_key(row, alert.key_columns)
                if alert.condition:
                    field = f"steps.{step_id}.alert.condition"
                    holds = evaluate_condition(alert.condition, {**context, "row": row}, field=field)
                else:
                    holds = True
                # A key on several rows holds if any of its rows does.
                if holds or key not in found:
                    found[key] = Outcome.HOLDS if holds else Outcome.CLEAR
                if holds and len(rows) < LISTED * 3 and key not in rows:
                    rows[key] = row
        return found, Outcome.CLEAR, rows


def instance_key(row: Mapping[str, Any], columns: list[str]) -> str:
    """A row's instance: its key columns' values, each named so that distinct values stay distinct."""
    return ", ".join(f"{column}={row.get(column)}" for column in columns)


def _outcome(
    alert: Alert,
    rules: Rules,
    stored: Mapping[str, Instance],
    evaluation: Evaluation,
    rows: Mapping[str, dict[str, Any]],
) -> dict[str, Any]:
    """The evaluation as templates read it (``alert``) and as the deliveries after it are gated."""
    before = _overall(stored.values())
    after = _overall(evaluation.instances.values())
    told = [t for t in evaluation.transitions if t.notice is not None]
    new = [t.key for t in told if t.notice is Notice.FIRING]
    resolved = [t.key for t in told if t.notice is Notice.RESOLVED]
    fresh = set(new)
    still = sorted(
        key
        for key, instance in evaluation.instances.items()
        if instance.state is State.FIRING and key not in fresh
    )
    notices = sorted({t.notice.value for t in told if t.notice is not None})
    firing = sum(instance.state is State.FIRING for instance in evaluation.instances.values())
    keyed = bool(alert.key_columns)
    since = _since(evaluation.instances.values(), after)
    summary = (
        f"{len(new)} new, {len(still)} still firing, {len(resolved)} resolved"
        if keyed
        else f"{after.value}" + (f" since {since}" if since else "")
    )
    repeat = [instance.next_repeat(rules) for instance in evaluation.instances.values()]
    due = min((moment for moment in repeat if moment is not None), default=None)
    return {
        "state": after.value,
        "previous": before.value,
        "since": since,
        "changed": after is not before,
        "notices": notices,
        "deliver": bool(told),
        "firing": firing,
        "instances": len(evaluation.instances),
        "new": [_listed(key, rows) for key in new[:LISTED]],
        "still_firing": [_listed(key, rows) for key in still[:LISTED]],
        "resolved": [{"key": key} for key in resolved[:LISTED]],
        "counts": {"new": len(new), "still_firing": len(still), "resolved": len(resolved)},
        "next_repeat": due.isoformat().replace("+00:00", "Z") if due else None,
        "summary": summary,
    }


def _listed(key: str, rows: Mapping[str, dict[str, Any]]) -> dict[str, Any]:
    return {"key": key, "row": rows.get(key)}


def _overall(found: Iterable[Instance]) -> State:
    states = {instance.state for instance in found}
    return next((state for state in _SEVERITY if state in states), State.OK)


def _since(found: Iterable[Instance], state: State) -> str | None:
    moments = [instance.since for instance in found if instance.state is state and instance.since is not None]
    return min(moments).isoformat().replace("+00:00", "Z") if moments else None
