"""A run and its steps as the transition rules read them, and the changes the rules decide.

The rules (:mod:`services.history.transitions`) gather changes in a
:class:`Draft`; what they decide comes out as :class:`Changes`: the rows to
write, and the state the run is in after them.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, fields, replace
from typing import Any

from common.contracts.messages import RunCompleted, RunStatus, StepStatus

#: One attempt of one step: (step_id, attempt).
StepKey = tuple[str, int]


@dataclass(frozen=True)
class RunState:
    """What the rules read of a run."""

    run_id: str
    status: RunStatus = RunStatus.QUEUED
    flow: str | None = None
    #: How many steps the itinerary has; unknown until the run's own event came.
    step_count: int | None = None
    started_at: dt.datetime | None = None
    finished_at: dt.datetime | None = None
    failed_step: str | None = None
    #: When the run last had news.
    updated_at: dt.datetime | None = None
    #: A child run's scope step in its parent: its end is the parent's to hear of (through the
    #: scope's join), so it is not announced as a run of its own.
    scope_step: str | None = None
    #: A test run: its end is not announced either (no flow follows a test run).
    dry_run: bool = False


@dataclass(frozen=True)
class StepState:
    """What the rules read of one attempt of a step."""

    step_id: str
    attempt: int
    position: int
    status: StepStatus
    #: What a new attempt of the step is given as the previous attempt had it.
    kind: str
    service: str
    flow_step: str | None = None
    finished_at: dt.datetime | None = None
    error_code: str | None = None
    error_message: str | None = None
    #: Whether the attempt has a detail: a step a condition skipped says why, one skipped
    #: because an earlier step failed does not.
    explained: bool = False

    @property
    def key(self) -> StepKey:
        return (self.step_id, self.attempt)


@dataclass(frozen=True)
class Changes:
    """What to write for one event (a stall, a new attempt), and how the run stands after it."""

    run: RunState
    steps: tuple[StepState, ...]
    #: The run has no row yet: insert one with :attr:`run_fields`.
    creates_run: bool
    #: Columns of the run's row to set.
    run_fields: Mapping[str, Any]
    #: Step rows to insert, each with its columns.
    new_steps: tuple[Mapping[str, Any], ...]
    #: Columns to set on existing step rows, each with the attempts to set them on.
    step_fields: tuple[tuple[Mapping[str, Any], tuple[StepKey, ...]], ...]
    #: How the run ended, when the event ends it or meets it ended (said again on a redelivery).
    completed: RunCompleted | None
    #: Whether this is the first time the run's end is told: it had not ended, as far as anyone heard.
    ends_run: bool


class Draft:
    """Changes being gathered: every write also moves the state the next rule reads."""

    def __init__(self, run: RunState | None, run_id: str, steps: Iterable[StepState], now: dt.datetime):
        self.creates_run = run is None
        self.run = run or RunState(run_id, updated_at=now)
        self.run_fields: dict[str, Any] = {}
        if run is None:
            # A run is a real one until its own event says otherwise (the column's default too).
            self.run_fields.update(status=RunStatus.QUEUED.value, updated_at=now, dry_run=False)
        self.steps = {step.key: step for step in steps}
        self.new_steps: dict[StepKey, dict[str, Any]] = {}
        self.step_fields: list[tuple[Mapping[str, Any], tuple[StepKey, ...]]] = []

    def ordered(self) -> list[StepState]:
        return sorted(self.steps.values(), key=lambda step: (step.position, step.attempt))

    def set_run(self, **values: Any) -> None:
        self.run_fields.update(values)
        self.run = _run_with(self.run, values)

    def add_step(
        self,
        step_id: str,
        attempt: int,
        position: int,
        *,
        kind: str,
        service: str,
        flow_step: str | None = None,
        **values: Any,
    ) -> None:
        """A new step row: pending unless the other columns it is given (*values*) say otherwise."""
        state = StepState(step_id, attempt, position, StepStatus.PENDING, kind, service, flow_step)
        row = {"step_id": step_id, "attempt": attempt, "position": position, "kind": kind, "service": service}
        row.update(
            {"flow_step": flow_step, "status": state.status.value, "artifacts": {}, "detail": {}, **values}
        )
        self.new_steps[state.key] = row
        self.steps[state.key] = _step_with(state, row)

    def set_steps(self, keys: Sequence[StepKey], **values: Any) -> None:
        written = []
        for key in keys:
            self.steps[key] = _step_with(self.steps[key], values)
            if key in self.new_steps:
                self.new_steps[key].update(values)
            else:
                written.append(key)
        if written:
            self.step_fields.append((values, tuple(written)))

    def changes(self, completed: RunCompleted | None = None, ends_run: bool = False) -> Changes:
        return Changes(
            run=self.run,
            steps=tuple(self.steps.values()),
            creates_run=self.creates_run,
            run_fields=self.run_fields,
            new_steps=tuple(self.new_steps.values()),
            step_fields=tuple(self.step_fields),
            completed=completed,
            ends_run=ends_run,
        )


_RUN_STATE = frozenset(name.name for name in fields(RunState))


def _run_with(run: RunState, values: Mapping[str, Any]) -> RunState:
    changed = {name: value for name, value in values.items() if name in _RUN_STATE}
    if "status" in changed:
        changed["status"] = RunStatus(changed["status"])
    return replace(run, **changed)


_STEP_STATE = ("position", "flow_step", "finished_at", "error_code", "error_message")


def _step_with(step: StepState, values: Mapping[str, Any]) -> StepState:
    changed = {name: values[name] for name in _STEP_STATE if name in values}
    if "status" in values:
        changed["status"] = StepStatus(values["status"])
    if "detail" in values:
        changed["explained"] = bool(values["detail"])
    return replace(step, **changed)
