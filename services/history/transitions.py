"""The rules of a run's life: what a status event, a stall or a new attempt changes in a run and its steps.

Pure: the store loads a run's state, asks these rules what changes, and writes
that. Status events may arrive twice or out of order (redelivery, several
producers), so merging one is idempotent: a step's status only moves forward, a
terminal run stays terminal unless its failed step is tried again (a replay or
a re-run reopens it), and an event for a run not seen yet creates a
placeholder the run's own event fills in later.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Sequence
from typing import Any

from common.contracts.messages import (
    ErrorCode,
    ErrorInfo,
    RunCompleted,
    RunInfo,
    RunStatus,
    StatusEvent,
    StepStatus,
)
from services.history.states import Changes, Draft, RunState, StepKey, StepState

#: How far along each status is: a step's status never moves back.
_RANK = {
    StepStatus.PENDING: 0,
    StepStatus.RUNNING: 1,
    StepStatus.SUCCEEDED: 2,
    StepStatus.FAILED: 2,
    StepStatus.SKIPPED: 2,
}


_TRACE_ID = re.compile(r"[0-9a-f]{32}")


def _run_fields(info: RunInfo) -> dict[str, Any]:
    """The columns of a run's row its own event fills in."""
    return {
        "flow": info.flow,
        "description": info.description,
        "trigger_kind": info.trigger.value,
        "scheduled_for": info.scheduled_for,
        "parent_run_id": info.parent_run_id,
        "connection": info.connection,
        "database": info.database,
        "parameters": info.parameters,
        "step_count": len(info.itinerary),
        "submitted_at": info.submitted_at,
        # Kept only as a trace id looks (the column holds 32 characters; the page links it).
        "trace_id": info.trace_id if info.trace_id and _TRACE_ID.fullmatch(info.trace_id) else None,
        "scope_step": info.scope.step_id if info.scope else None,
        "iteration": info.scope.index if info.scope else None,
        "branch": info.scope.branch if info.scope else None,
        "dry_run": info.dry_run,
        "test_recipient": info.test_recipient,
    }


def _event_fields(event: StatusEvent) -> dict[str, Any]:
    """The columns of a step's row that *event* says something about."""
    values: dict[str, Any] = {"status": event.status.value}
    if event.started_at is not None:
        values["started_at"] = event.started_at
    if event.finished_at is not None:
        values["finished_at"] = event.finished_at
    if event.row_count is not None:
        values["row_count"] = event.row_count
    if event.artifacts:
        values["artifacts"] = {name: ref.model_dump() for name, ref in event.artifacts.items()}
    if event.detail:
        values["detail"] = event.detail
    if event.error is not None:
        values.update(
            error_code=event.error.code.value,
            error_message=event.error.message,
            retryable=event.error.retryable,
        )
    return values


# -- merging a status event ---------------------------------------------------


def merge(run: RunState | None, steps: Sequence[StepState], event: StatusEvent, now: dt.datetime) -> Changes:
    """What *event* changes in a run (None: not seen yet) with *steps*, merged at *now*.

    When the event ends the run, or meets a run already ended, the changes say
    how it ended: saying it again on a redelivered event is deliberate, as
    whoever acts on a completed run must be idempotent anyway, and this way a
    crash between the commit and the announcement cannot lose it.
    """
    draft = Draft(run, event.run_id, steps, now)
    # A run that failed before its own event came had no flow to announce its end by.
    told_before = run is not None and run.status.terminal and run.flow is not None
    describes = event.run is not None and (run is None or run.step_count is None)
    if event.run is not None:
        if describes:
            draft.set_run(**_run_fields(event.run))
        _lay_out(draft, event.run)
    # Decided before the event's own attempt is merged: a failure told again does not reopen.
    reopens = _reopens(draft, event)
    position = _take(draft, event)
    _settle(draft, event, position, now, reopens=reopens, revisits=reopens or describes)
    goes_on = event.continues or event.retrying
    if not event.status.terminal or (event.status is StepStatus.FAILED and goes_on):
        return draft.changes()
    ended = draft.run
    completed = _announced(ended, ended.status, ended.finished_at or now) if ended.status.terminal else None
    if completed is None:
        return draft.changes()
    return draft.changes(completed, ends_run=not told_before)


def _announced(run: RunState, status: RunStatus, finished_at: dt.datetime) -> RunCompleted | None:
    """How the end of *run* is told; None for a run whose end is not: one of a scope's children (its
    parent hears of it through the scope's join), or a test run (no flow follows a test run)."""
    if run.flow is None or run.scope_step is not None or run.dry_run:
        return None
    return RunCompleted(run_id=run.run_id, flow=run.flow, status=status, finished_at=finished_at)


def _lay_out(draft: Draft, info: RunInfo) -> None:
    """Give the run every step of its itinerary, each where the itinerary has it."""
    known = {step.step_id: step for step in draft.steps.values()}
    # Steps a failure heard of first would have skipped, had they been there.
    status = StepStatus.SKIPPED if draft.run.status is RunStatus.FAILED else StepStatus.PENDING
    for position, step in enumerate(info.itinerary):
        if step.id not in known:
            draft.add_step(
                step.id,
                1,
                position,
                kind=step.kind.value,
                service=step.service.value,
                flow_step=step.flow_step,
                status=status.value,
            )
        elif (known[step.id].position, known[step.id].flow_step) != (position, step.flow_step):
            # A step that reported before the run's own event got a guessed position, and no flow step.
            attempts = [key for key in draft.steps if key[0] == step.id]
            draft.set_steps(attempts, position=position, flow_step=step.flow_step)


def _take(draft: Draft, event: StatusEvent) -> int:
    """Merge the event into its step's attempt; returns the step's position in the run."""
    values = _event_fields(event)
    current = draft.steps.get((event.step_id, event.attempt))
    if current is None:
        # A new attempt goes where the step's others are; a step not heard of yet, last.
        other = next((step for step in draft.steps.values() if step.step_id == event.step_id), None)
        position = other.position if other else len(draft.steps)
        draft.add_step(
            event.step_id,
            event.attempt,
            position,
            kind=event.kind.value,
            service=event.service.value,
            flow_step=other.flow_step if other else None,
            **values,
        )
        return position
    if _RANK[current.status] > _RANK[event.status]:
        # An older event arriving late: keep what is known, but fill gaps.
        values = {name: value for name, value in values.items() if name == "started_at"}
    if values:
        draft.set_steps([current.key], **values)
    return current.position


def _settle(
    draft: Draft, event: StatusEvent, position: int, now: dt.datetime, *, reopens: bool, revisits: bool
) -> None:
    """Derive the run's status from the step event just merged.

    With *revisits* the run has just been described or reopened, and its last
    step may have reported its success before: the run ends now, as its steps say.
    """
    run = draft.run
    values: dict[str, Any] = {}
    if event.started_at is not None and (run.started_at is None or event.started_at < run.started_at):
        values["started_at"] = event.started_at
    if run.status.terminal and not reopens:
        # An ended run takes the start of a step that started before it ended, heard of late.
        if values and (run.finished_at is None or values["started_at"] <= run.finished_at):
            draft.set_run(**values)
        return
    if reopens:
        _reopen(draft, now)
    values["updated_at"] = now
    # A failure an attempt after it has superseded was tried again: it does not end the run.
    newer = any(
        step.step_id == event.step_id and step.attempt > event.attempt for step in draft.steps.values()
    )
    last = _last_attempt(draft)
    if event.status is StepStatus.FAILED and not (event.continues or event.retrying or newer):
        values.update(_failure(event.step_id, event.error, event.finished_at or now))
        draft.set_steps(_with_status(draft, StepStatus.PENDING), status=StepStatus.SKIPPED.value)
    elif last is not None and (
        (event.status is StepStatus.SUCCEEDED and position == last.position)
        or (revisits and last.status is StepStatus.SUCCEEDED)
    ):
        values.update(_end(draft, last.finished_at or now))
    elif event.status is not StepStatus.PENDING:
        values["status"] = RunStatus.RUNNING.value
    draft.set_run(**values)


def _last_attempt(draft: Draft) -> StepState | None:
    """The latest attempt of the itinerary's last step; None until the run's own event came."""
    if draft.run.step_count is None:
        return None
    last = [step for step in draft.ordered() if step.position == draft.run.step_count - 1]
    return last[-1] if last else None


def _end(draft: Draft, at: dt.datetime) -> dict[str, Any]:
    """The run's end once its last step succeeded: failed if a step failed and let the flow go on."""
    failed = _first_failed(draft)
    if failed is None:
        return {"status": RunStatus.SUCCEEDED.value, "finished_at": at}
    return {
        "status": RunStatus.FAILED.value,
        "finished_at": at,
        "failed_step": failed.step_id,
        "error_code": failed.error_code,
        "error_message": failed.error_message,
    }


def _failure(step_id: str | None, error: ErrorInfo | None, at: dt.datetime) -> dict[str, Any]:
    return {
        "status": RunStatus.FAILED.value,
        "finished_at": at,
        "failed_step": step_id,
        "error_code": error.code.value if error else None,
        "error_message": error.message if error else None,
    }


def _with_status(draft: Draft, status: StepStatus) -> list[StepKey]:
    return [step.key for step in draft.ordered() if step.status is status]


def _first_failed(draft: Draft) -> StepState | None:
    """The first step whose latest attempt failed (an attempt retried successfully does not count)."""
    latest = {step.step_id: step for step in draft.ordered()}
    return next((step for step in latest.values() if step.status is StepStatus.FAILED), None)


def _reopens(draft: Draft, event: StatusEvent) -> bool:
    """A failed run comes back to life when its failed step is tried again (a replay).

    The newer attempt's first event may be its end (a quick step reports only that).
    """
    run = draft.run
    if run.status is not RunStatus.FAILED or event.step_id != run.failed_step:
        return False
    if event.status is StepStatus.PENDING:
        return False
    failed = [
        step.attempt
        for step in draft.steps.values()
        if step.step_id == event.step_id and step.status is StepStatus.FAILED
    ]
    return bool(failed) and max(failed) < event.attempt


def _reopen(draft: Draft, now: dt.datetime) -> None:
    """Set a failed run running again, with the steps its failure skipped due again."""
    draft.set_run(
        status=RunStatus.RUNNING.value,
        finished_at=None,
        failed_step=None,
        error_code=None,
        error_message=None,
        updated_at=now,
    )
    # Steps skipped because this one failed are due again; those a condition skipped stay so.
    skipped = [
        step.key for step in draft.ordered() if step.status is StepStatus.SKIPPED and not step.explained
    ]
    draft.set_steps(skipped, status=StepStatus.PENDING.value)


# -- a new attempt, a stall ---------------------------------------------------


def queue(
    run: RunState, steps: Sequence[StepState], step_id: str, *, reopen: bool, now: dt.datetime
) -> tuple[int, Changes] | None:
    """A new attempt of *step_id*, queued at *now* by history itself: its number, and what changes.

    With *reopen* (a re-run) the run must have failed at that step, and it is
    running again after; without it (a resend) the run must have ended, and its
    status stays. None when the run is not so.
    """
    if not run.status.terminal:
        return None
    if reopen and (run.status is not RunStatus.FAILED or run.failed_step != step_id):
        return None
    attempts = [step for step in steps if step.step_id == step_id]
    if not attempts:
        return None
    latest = max(attempts, key=lambda step: step.attempt)
    draft = Draft(run, run.run_id, steps, now)
    if reopen:
        _reopen(draft, now)
    draft.add_step(
        step_id,
        latest.attempt + 1,
        latest.position,
        kind=latest.kind,
        service=latest.service,
        flow_step=latest.flow_step,
        queued_at=now,
    )
    return latest.attempt + 1, draft.changes()


def stall(
    run: RunState, steps: Sequence[StepState], now: dt.datetime, quiet_for: dt.timedelta
) -> Changes | None:
    """Fail a run that has had no news for *quiet_for* at *now*, as Stalled; None if it has not stalled."""
    if run.status.terminal or run.updated_at is None or run.updated_at >= now - quiet_for:
        return None
    draft = Draft(run, run.run_id, steps, now)
    waiting = next(
        (step for step in draft.ordered() if step.status in (StepStatus.RUNNING, StepStatus.PENDING)), None
    )
    since = run.updated_at.isoformat().replace("+00:00", "Z")
    where = f"step {waiting.step_id!r} was {waiting.status}" if waiting else "no step was running"
    message = (
        f"no progress since {since} ({quiet_for.total_seconds():g} s without news); {where}. "
        "A service may have stopped, or its queue is not being consumed."
    )
    error = ErrorInfo(code=ErrorCode.STALLED, message=message)
    draft.set_run(**_failure(waiting.step_id if waiting else None, error, now), updated_at=now)
    draft.set_steps(
        _with_status(draft, StepStatus.RUNNING),
        status=StepStatus.FAILED.value,
        finished_at=now,
        error_code=error.code.value,
        error_message=message,
        retryable=False,
    )
    draft.set_steps(_with_status(draft, StepStatus.PENDING), status=StepStatus.SKIPPED.value)
    completed = _announced(run, RunStatus.FAILED, now)
    if completed is None:
        return draft.changes()
    return draft.changes(completed, ends_run=True)
