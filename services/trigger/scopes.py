"""Scope steps: an ``if`` decided, a ``for_each`` or ``parallel`` fanned out to child runs and joined.

The trigger performs every step of kind ``scope``:

* an ``if`` renders its condition and records the branch taken; the steps of
  the other branch are skipped as the slip goes on (:mod:`common.platform.steps`);
* a ``for_each`` reads its source's rows from the blob store and a
  ``parallel`` takes its branches: each becomes an item and a child run, the
  parent's message is parked in SQL (:mod:`services.trigger.scope_store`) and
  no consumer waits for it;
* the ``join`` that ends every child run records its item's end, starts the
  next waiting item in its place (``concurrency`` at once at most), and, at
  the last one, sends the parent on with the scope's outcome: counts, each
  iteration's outputs (capped) and, after a ``parallel``, every branch's
  outputs as the parent's own.

Child runs are runs like any other (history lists them under their parent's
step); an iteration's failure ends that iteration, and the scope's step fails
once every item has ended, as the flow's ``on_failure`` then decides.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator
from typing import Any

import sqlalchemy as sa
import structlog

from common.contracts.actions import ForEach, If, Parallel
from common.contracts.errors import AdxflowError, Requeue
from common.contracts.flows import JOIN, Flow, child_itinerary, flow_of, for_context, step_spec
from common.contracts.messages import (
    ErrorCode,
    ErrorInfo,
    RunMessage,
    ScopeRef,
    StepOutput,
    StepStatus,
    utcnow,
)
from common.contracts.templates import evaluate_condition, template_context
from common.platform.broker.interface import BrokerError
from common.platform.runtime import Runtime
from common.platform.steps import StepParked, all_of, emit, fail_step, forward
from services.trigger.scope_store import Counts, Decision, Item, ScopeStore, child_run_id

log = structlog.get_logger(__name__)

#: Iterations whose outputs a ``for_each``'s own output lists for the steps after it.
SUMMARY_ITERATIONS = 100
#: Rows of each step an iteration's outputs keep for the steps after the scope.
SUMMARY_ROWS = 5
#: How often a scope's step tells history how far its items are, at most.
REPORT_EVERY = dt.timedelta(seconds=2)
#: Child starts published at once.
_STARTS_AT_ONCE = 64


class ScopeError(AdxflowError):
    """A scope step that cannot go on as its flow asks."""


class Scopes:
    """Performs the trigger's ``scope`` steps over *store*."""

    def __init__(self, store: ScopeStore, runtime: Runtime) -> None:
        self.store = store
        self.runtime = runtime
        #: A finished scope is kept as long as its runs are (a re-run of an iteration needs it).
        self.keep_for = dt.timedelta(days=runtime.settings.retention_days)

    async def tidy(self) -> bool:
        """Forget the scopes that finished, and went on, longer ago than runs are kept."""
        try:
            forgotten = await self.store.forget(finished_before=utcnow() - self.keep_for)
        except (sa.exc.SQLAlchemyError, OSError):
            log.exception("forgetting finished scopes failed; retrying at the next interval")
            return False
        if forgotten:
            log.info("finished scopes forgotten", scopes=forgotten)
        return True

    async def perform(self, message: RunMessage) -> StepOutput:
        if message.step_id == JOIN:
            return await self._join(message)
        flow = flow_of(message)
        spec = step_spec(message, flow)
        if isinstance(spec, If):
            return _decide(message, spec)
        if isinstance(spec, ForEach):
            return await self._for_each(message, flow, spec)
        if isinstance(spec, Parallel):
            return await self._parallel(message, spec)
        raise ScopeError(f"step {spec.id!r} ({spec.action}) is not a scope step")

    # -- fanning out ---------------------------------------------------------

    async def _for_each(self, message: RunMessage, flow: Flow, spec: ForEach) -> StepOutput:
        settings = self.runtime.settings
        source = message.outputs.get(spec.for_each)
        if source is None or source.status is not StepStatus.SUCCEEDED or "result" not in source.artifacts:
            status = source.status.value if source else "not run"
            counts = Counts(total=0)
            return _output(spec, counts, [], note=f"its source {spec.for_each!r} has no rows ({status})")
        rows = source.row_count or 0
        cap = min(spec.max_items, settings.scope_max_items)
        truncated = rows > cap
        if truncated and spec.on_too_many == "fail":
            raise ScopeError(
                f"steps.{spec.id}.max_items: {spec.for_each!r} returned {rows:,} rows, more than the "
                f"{cap:,} this step iterates; raise max_items (this server allows up to "
                f"{settings.scope_max_items:,}) or set on_too_many: truncate",
                code=ErrorCode.TOO_MANY_ITEMS,
                detail={"rows": rows, "max_items": cap},
            )
        if rows == 0:
            return _output(spec, Counts(total=0), [])
        key = source.artifacts["result"].key

        async def entries() -> AsyncIterator[Item]:
            # Streamed from the blob store: the fan-out holds a chunk of rows at a time, never the result.
            number = 0
            async for columns, rows in self.runtime.blobs.result_rows(key):
                names = [column.name for column in columns]
                for values in rows:
                    if number >= cap:
                        return
                    row = dict(zip(names, values, strict=True))
                    yield Item(number, child_run_id(message.run_id, spec.id, number), row=row)
                    number += 1

        concurrency = min(spec.concurrency, settings.scope_max_concurrency)
        decision = await self.store.fan_out(message, concurrency, entries(), truncated=truncated)
        await self._start(message, flow, decision)
        raise StepParked(
            {
                "scope": "for_each",
                **decision.counts.as_detail(),
                "concurrency": concurrency,
                "source_rows": rows,
            },
            report=not decision.settled,
        )

    async def _parallel(self, message: RunMessage, spec: Parallel) -> StepOutput:
        entries = [
            Item(number, child_run_id(message.run_id, spec.id, number), branch=lane.id)
            for number, lane in enumerate(spec.parallel)
        ]
        decision = await self.store.fan_out(message, len(entries), entries)
        await self._start(message, flow_of(message), decision)
        raise StepParked({"scope": "parallel", **decision.counts.as_detail()}, report=not decision.settled)

    async def _start(self, parent: RunMessage, flow: Flow, decision: Decision) -> None:
        """Publish the starts *decision* holds, then mark them published."""
        items = decision.starts
        if not items:
            return
        try:
            for first in range(0, len(items), _STARTS_AT_ONCE):
                chunk = items[first : first + _STARTS_AT_ONCE]
                await all_of(*(self._start_one(parent, flow, item) for item in chunk))
        except BrokerError as exc:
            # The decision stands; handled again, this delivery publishes what is left.
            log.warning("child runs not all started; trying again", error=str(exc)[:200])
            raise Requeue from exc
        await self.store.published(parent.run_id, parent.step_id, [item.item for item in items])

    async def _start_one(self, parent: RunMessage, flow: Flow, item: Item) -> None:
        broker = self.runtime.broker
        scope = ScopeRef(
            run_id=parent.run_id, step_id=parent.step_id, index=item.item, branch=item.branch, row=item.row
        )
        child = RunMessage(
            run_id=item.child_run_id,
            step_id="trigger",
            submitted_at=utcnow(),
            flow=parent.flow,
            context=parent.context.model_copy(update={"parent_run_id": parent.run_id, "scope": scope}),
            itinerary=for_context(child_itinerary(flow, parent.step_id, item.branch), parent.context),
            outputs={slip: out for slip, out in parent.outputs.items() if slip != "trigger"},
            trace=parent.trace,
        )
        output = StepOutput(detail={"trigger": "scope", "parent_run_id": parent.run_id, "index": item.item})
        await emit(
            broker, child, StepStatus.SUCCEEDED, started_at=child.submitted_at, output=output, with_run=True
        )
        await forward(broker, child, output)

    # -- joining -------------------------------------------------------------

    async def _join(self, child: RunMessage) -> StepOutput:
        scope = child.context.scope
        if scope is None:
            raise ScopeError("a join step in a run that is nobody's child")
        flow = flow_of(child)
        spec = flow.step(scope.step_id)
        own = [step.id for step in child.itinerary if step.flow_step is not None]
        failed = [
            slip for slip in own if (out := child.outputs.get(slip)) and out.status is StepStatus.FAILED
        ]
        status = StepStatus.FAILED if failed else StepStatus.SUCCEEDED
        if isinstance(spec, Parallel):
            outputs = {
                slip: child.outputs[slip].model_dump(mode="json") for slip in own if slip in child.outputs
            }
        else:
            outputs = {slip: _compact(child.outputs[slip]) for slip in own if slip in child.outputs}
        decision = await self.store.join(
            scope.run_id,
            scope.step_id,
            child.run_id,
            status,
            outputs,
            stop_on_failure=isinstance(spec, ForEach) and spec.on_item_failure == "stop",
            report_every=REPORT_EVERY,
            summary_items=None if isinstance(spec, Parallel) else SUMMARY_ITERATIONS,
        )
        parent = decision.parent
        if parent is None:
            log.warning("join of a child run its scope no longer waits for", parent_run_id=scope.run_id)
        else:
            await self._start(parent, flow, decision)
            if decision.finished is not None:
                await self._finish(parent, spec, decision)
            elif decision.report:
                detail = {"scope": spec.action, **decision.counts.as_detail()}
                await emit(self.runtime.broker, parent, StepStatus.RUNNING, detail=detail)
        return StepOutput(
            detail={
                "parent_run_id": scope.run_id,
                "parent_step": scope.step_id,
                "index": scope.index,
                "iteration": status.value,
                "failed_steps": failed,
                "repeated": decision.repeated,
            }
        )

    async def _finish(self, parent: RunMessage, spec: Any, decision: Decision) -> None:
        """Send the parent on with the scope's outcome (or end it at this step), then mark it so."""
        assert decision.finished is not None
        counts = decision.counts
        items = decision.finished
        broker = self.runtime.broker
        onward = parent
        if isinstance(spec, Parallel):
            merged = {
                slip: StepOutput.model_validate(out)
                for item in items
                for slip, out in item["outputs"].items()
            }
            onward = parent.model_copy(update={"outputs": {**parent.outputs, **merged}})
            listed = [{key: item[key] for key in ("index", "branch", "run_id", "status")} for item in items]
        else:
            listed = items
        output = _output(spec, counts, listed)
        try:
            if counts.failed == 0 and counts.skipped == 0:
                await all_of(
                    forward(broker, onward, output),
                    emit(broker, onward, StepStatus.SUCCEEDED, output=output),
                )
                stopped = False
            else:
                error = ErrorInfo(
                    code=ErrorCode.ITERATIONS_FAILED, message=_failure_message(spec, counts, items)
                )
                stopped = await fail_step(broker, onward, error, output=output)
        except BrokerError as exc:
            log.warning("scope's parent not sent on; trying again", error=str(exc)[:200])
            raise Requeue from exc
        await self.store.forwarded(parent.run_id, parent.step_id, parent_stopped=stopped)
        log.info(
            "scope finished", parent_run_id=parent.run_id, resumed=decision.resumed, **counts.as_detail()
        )


def _decide(message: RunMessage, spec: If) -> StepOutput:
    holds = evaluate_condition(spec.condition, template_context(message), field=f"steps.{spec.id}.if")
    branch = "then" if holds else "else"
    chosen = spec.then if holds else spec.otherwise
    steps = ", ".join(step.id for step in chosen) or "no steps"
    return StepOutput(
        detail={
            "scope": "if",
            "branch": branch,
            "condition": spec.condition,
            "reason": f"the condition was {'true' if holds else 'false'}: the {branch} branch runs ({steps})",
        }
    )


def _output(spec: Any, counts: Counts, listed: list[dict[str, Any]], note: str | None = None) -> StepOutput:
    detail: dict[str, Any] = {"scope": spec.action, **counts.as_detail()}
    if isinstance(spec, ForEach):
        detail["source"] = spec.for_each
    if note:
        detail["reason"] = note
    return StepOutput(row_count=counts.total, preview=listed, detail=detail)


def _compact(output: StepOutput) -> dict[str, Any]:
    """An iteration step's output as the steps after the scope read it: status, counts, first rows."""
    return {
        "status": output.status.value,
        "row_count": output.row_count,
        "rows": output.preview[:SUMMARY_ROWS],
        "error": output.error.message if output.error else None,
        "branch": output.detail.get("branch"),
    }


def _failure_message(spec: Any, counts: Counts, items: list[dict[str, Any]]) -> str:
    first = next((item for item in items if item["status"] == StepStatus.FAILED.value), None)
    where = ""
    if first is not None:
        failing = next(
            ((slip, out) for slip, out in first["outputs"].items() if out.get("status") == "failed"), None
        )
        name = f"branch {first['branch']!r}" if first.get("branch") else f"iteration {first['index']}"
        where = f"; first: {name}"
        if failing is not None:
            slip, out = failing
            error = out.get("error")
            message = error.get("message") if isinstance(error, dict) else error
            where += f", step {slip!r}: {message}"
    if isinstance(spec, Parallel):
        head = f"{counts.failed} of {counts.total} branches failed"
    else:
        head = f"{counts.failed:,} of {counts.total:,} iterations failed"
        if counts.skipped:
            head += f", {counts.skipped:,} not started (on_item_failure: stop)"
    return (head + where)[:2000]
