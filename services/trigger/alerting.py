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
import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import replace
from typing import Any

import sqlalchemy as sa
import structlog

from common.contracts.actions import KUSTO_STEPS
from common.contracts.alerts import Alert, parse_duration
from common.contracts.dry_runs import NOT_RECORDED
from common.contracts.errors import AdxflowError
from common.contracts.flows import flow_of
from common.contracts.messages import BlobRef, ErrorCode, RunMessage, StepOutput, StepStatus, utcnow
from common.contracts.templates import evaluate_condition, template_context
from common.platform.blobs.interface import artifact_key
from common.platform.runtime import Runtime
from services.trigger.alert_notices import Held, Silence, Sorted, Told, sort_out
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
from services.trigger.alert_store import AlertStore, Verdict
from services.trigger.silences import SilenceStore

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
    """Performs the trigger's ``alert`` steps over *store*; *silences* and the operator's mute
    windows decide when what an evaluation decides is told."""

    def __init__(
        self,
        store: AlertStore,
        runtime: Runtime,
        silences: SilenceStore | None = None,
        clock: Callable[[], dt.datetime] = utcnow,
    ) -> None:
        self.store = store
        self.runtime = runtime
        self.silences = silences
        self.clock = clock
        #: Evaluations and transitions are kept as long as runs are.
        self.keep_for = dt.timedelta(days=runtime.settings.retention_days)

    async def tidy(self) -> bool:
        """Forget the evaluations and transitions older than runs are kept (instances stay)."""
        try:
            forgotten = await self.store.forget(evaluated_before=self.clock() - self.keep_for)
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
        if message.context.dry_run:
            return StepOutput(detail={"dry_run": NOT_RECORDED, "alert": _would(found, rows)})
        rules = rules_of(alert)
        now = self.clock()
        windows = self.runtime.connections.mute_windows
        muting = next(
            (name for name in alert.mute_windows if name in windows and windows[name].mutes(now)), None
        )
        silences = await self._silences(flow.name, spec.id, now)
        notices_key = artifact_key(message.run_id, message.step_id, 0, "notices.json")
        cap = self.runtime.settings.max_deliveries
        notices: list[bytes] = []

        def decide(stored: dict[str, Instance], held: list[Held]) -> Verdict:
            # Read under the alert's lock: evaluations waiting for each other move the clock on in turn.
            evaluation = evaluate(rules, stored, found, self.clock(), absent=absent)
            evaluation = _with_rows(evaluation, rows)
            sorted_out = sort_out(
                rules,
                evaluation,
                silences=silences,
                muting=muting,
                held=held,
                at_end={name: window.at_end for name, window in windows.items()},
            )
            outcome = _outcome(alert, rules, stored, evaluation, sorted_out, rows)
            if muting is not None:
                ends = windows[muting].ends_after(now)
                outcome["muted"] = {"window": muting, "until": _iso(ends), "held": len(sorted_out.hold)}
            if sorted_out.told:
                told = [_notice(one, stored, evaluation, rows) for one in sorted_out.told[:cap]]
                notices.append(json.dumps(told, separators=(",", ":"), default=str).encode("utf-8"))
                ref = BlobRef(key=notices_key, content_type="application/json", size=len(notices[0]))
                outcome["notices_blob"] = ref.model_dump(mode="json")
            return Verdict(evaluation, outcome, sorted_out.withheld, sorted_out.hold, sorted_out.release)

        async def keep(verdict: Verdict) -> None:
            # Before the evaluation commits: deliveries never find an evaluation without its notices.
            for data in notices:
                await self.runtime.blobs.put(notices_key, data, "application/json")

        outcome = await self.store.evaluate(flow.name, spec.id, message.run_id, decide, keep)
        blob = outcome.get("notices_blob")
        artifacts = {"notices": BlobRef.model_validate(blob)} if blob else {}
        return StepOutput(detail={"alert": outcome}, artifacts=artifacts)

    async def _silences(self, flow: str, step_id: str, now: dt.datetime) -> list[Silence]:
        if self.silences is None:
            return []
        return await self.silences.active(flow, step_id, now)

    async def _found(
        self, message: RunMessage, step_id: str, alert: Alert
    ) -> tuple[dict[str, Outcome], Outcome | None, dict[str, dict[str, Any]]]:
        """Each instance's outcome, the outcome of the instances not seen, and the rows of the first ones."""
        query = message.outputs.get(step_id)
        if query is None or query.status is StepStatus.FAILED:
            # The alert as a whole is in error; the instances it has (with key columns) stay as they
            # were, so that a failed query neither resolves them nor fires them again afterwards.
            return {WHOLE: Outcome.ERROR}, None, {}
        count = query.row_count or 0
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
            if alert.expect_rows:
                # No data is the alert's as a whole, like an error: its instances stay as they were.
                return {WHOLE: Outcome.NO_DATA}, None, {}
            return {}, Outcome.CLEAR, {}
        found: dict[str, Outcome] = {}
        rows: dict[str, dict[str, Any]] = {}
        context = template_context(message) if alert.condition else {}
        # The rows of as many holding instances as deliveries may tell of one by one (they are what
        # an instance fires with), and no more: memory stays bounded by the cap, not the result.
        kept = max(LISTED, self.runtime.settings.max_deliveries)
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
                if holds and len(rows) < kept and key not in rows:
                    rows[key] = row
        return found, Outcome.CLEAR, rows


#: What a test run says each instance would be, by what its evaluation found.
_WOULD = {Outcome.HOLDS: "firing", Outcome.CLEAR: "ok", Outcome.ERROR: "error", Outcome.NO_DATA: "no_data"}


def _would(found: Mapping[str, Outcome], rows: Mapping[str, dict[str, Any]]) -> dict[str, Any]:
    """A test run's evaluation: what each instance's query found, read as the state it points to
    (without the alert's history: pending periods and what was firing before are not weighed).
    Nothing is recorded, so the deliveries after it are composed as if it fired."""
    instances = [
        {"key": key, "would_be": _WOULD[outcome], "row": rows.get(key)}
        for key, outcome in sorted(found.items())[:LISTED]
    ]
    firing = sum(outcome is Outcome.HOLDS for outcome in found.values())
    states = {_WOULD[outcome] for outcome in found.values()}
    state = next((s.value for s in _SEVERITY if s.value in states), State.OK.value)
    return {
        "state": state,
        "deliver": firing > 0,
        "firing": firing,
        "instances": len(found),
        "found": instances,
        "new": [item for item in instances if item["would_be"] == "firing"],
        "still_firing": [],
        "resolved": [],
        "summary": f"would be {state}: {firing} of {len(found)} instances firing",
    }


def instance_key(row: Mapping[str, Any], columns: list[str]) -> str:
    """A row's instance: its key columns' values, each named so that distinct values stay distinct."""
    return ", ".join(f"{column}={row.get(column)}" for column in columns)


def _outcome(
    alert: Alert,
    rules: Rules,
    stored: Mapping[str, Instance],
    evaluation: Evaluation,
    sorted_out: Sorted,
    rows: Mapping[str, dict[str, Any]],
) -> dict[str, Any]:
    """The evaluation as templates read it (``alert``) and as the deliveries after it are gated."""
    before = overall(stored.values())
    after = overall(evaluation.instances.values())
    told = sorted_out.told
    new = [t.key for t in told if t.notice is Notice.FIRING]
    resolved = [t.key for t in told if t.notice is Notice.RESOLVED]
    fresh = set(new)
    still = sorted(
        key
        for key, instance in evaluation.instances.items()
        if instance.state is State.FIRING and key not in fresh
    )
    notices = sorted({t.notice.value for t in told})
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
    withheld = list(sorted_out.withheld.values())
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
        "resolved": [{"key": key, "row": _row_of(key, stored)} for key in resolved[:LISTED]],
        "counts": {
            "new": len(new),
            "still_firing": len(still),
            "resolved": len(resolved),
            "silenced": sum(reason.startswith("silenced:") for reason in withheld),
            "held": len(sorted_out.hold),
            "released": sum(t.released for t in told),
            "dropped": sorted_out.dropped,
        },
        "next_repeat": _iso(due),
        "summary": summary,
    }


def _with_rows(evaluation: Evaluation, rows: Mapping[str, dict[str, Any]]) -> Evaluation:
    """The evaluation with each instance that starts firing keeping the row it fired with."""
    instances = dict(evaluation.instances)
    for transition in evaluation.transitions:
        if transition.after is State.FIRING and transition.before is not State.FIRING:
            instance = instances.get(transition.key)
            if instance is not None and transition.key in rows:
                instances[transition.key] = replace(instance, row=rows[transition.key])
    return Evaluation(instances, evaluation.transitions)


def _notice(
    told: Told, stored: Mapping[str, Instance], evaluation: Evaluation, rows: Mapping[str, dict[str, Any]]
) -> dict[str, Any]:
    """One notice as a per-instance delivery reads it: ``alert.instance`` and its ``row``."""
    instance = evaluation.instances.get(told.key)
    row = rows.get(told.key) or (instance.row if instance else None) or _row_of(told.key, stored)
    return {
        "key": told.key,
        "notice": told.notice.value,
        "state": told.state.value,
        "previous": told.previous.value,
        "since": _iso(told.since),
        "released": told.released,
        "row": dict(row) if row is not None else None,
    }


def _row_of(key: str, stored: Mapping[str, Instance]) -> dict[str, Any] | None:
    instance = stored.get(key)
    return dict(instance.row) if instance is not None and instance.row is not None else None


def _iso(moment: dt.datetime | None) -> str | None:
    return moment.isoformat().replace("+00:00", "Z") if moment else None


def _listed(key: str, rows: Mapping[str, dict[str, Any]]) -> dict[str, Any]:
    return {"key": key, "row": rows.get(key)}


def overall(found: Iterable[Instance]) -> State:
    states = {instance.state for instance in found}
    return next((state for state in _SEVERITY if state in states), State.OK)


def _since(found: Iterable[Instance], state: State) -> str | None:
    moments = [instance.since for instance in found if instance.state is state and instance.since is not None]
    return _iso(min(moments)) if moments else None
