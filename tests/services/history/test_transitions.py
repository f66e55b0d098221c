"""The transition rules without a database: every status event of a small run in every order.

Each order is also delivered with every event twice in a row, and with all of
them told again afterwards in reverse. Every merge is checked against what the
rules promise on the way (a step's status only moves forward, an ended run
stays ended unless a newer attempt of its failed step reopens it, a completion
is told when the run is over and only then), and every order must end in the
same, exact state.
"""

from __future__ import annotations

import datetime as dt
import itertools
import json
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

import pytest

from common.contracts.messages import (
    SERVICE_OF,
    ErrorCode,
    ErrorInfo,
    RunInfo,
    RunStatus,
    StatusEvent,
    Step,
    StepKind,
    StepStatus,
    TriggerKind,
)
from services.history.states import Changes, RunState, StepKey, StepState
from services.history.store import schema
from services.history.transitions import merge, queue, stall

T0 = dt.datetime(2026, 1, 5, 8, 0, tzinfo=dt.UTC)
NOW = T0 + dt.timedelta(minutes=5)
ITINERARY = [
    Step(id="trigger", kind=StepKind.TRIGGER),
    Step(id="query", kind=StepKind.QUERY, flow_step="storms"),
    Step(id="render", kind=StepKind.RENDER, flow_step="storms"),
    Step(id="record", kind=StepKind.RECORD),
]
#: When each attempt starts; it ends a second later.
STARTS = {("trigger", 1): 0, ("query", 1): 1, ("query", 2): 3, ("render", 1): 5, ("render", 2): 7}
STARTS[("record", 1)] = 9
BROKEN = ErrorInfo(code=ErrorCode.KUSTO_SEMANTIC_ERROR, message="no such table", retryable=False)
INFO = RunInfo(
    flow="storms",
    trigger=TriggerKind.MANUAL,
    connection="local",
    database="Samples",
    parameters={},
    itinerary=ITINERARY,
    submitted_at=T0,
)
RANK = {StepStatus.PENDING: 0, StepStatus.RUNNING: 1}


def at(second: float) -> dt.datetime:
    return T0 + dt.timedelta(seconds=second)


def event(step_id: str, status: StepStatus, attempt: int = 1, **extra: Any) -> StatusEvent:
    """How the step's service reports it: its start on every event, its end on the last."""
    kind = next(step.kind for step in ITINERARY if step.id == step_id)
    start = STARTS[(step_id, attempt)]
    return StatusEvent(
        run_id="run",
        step_id=step_id,
        attempt=attempt,
        kind=kind,
        service=SERVICE_OF[kind],
        status=status,
        started_at=at(start),
        finished_at=at(start + 1) if status.terminal else None,
        **extra,
    )


TRIGGERED = event("trigger", StepStatus.SUCCEEDED, run=INFO)


def step(step_id: str, status: StepStatus, attempt: int = 1, **extra: Any) -> StepState:
    """The state a step should end in."""
    position = next(index for index, each in enumerate(ITINERARY) if each.id == step_id)
    kind = ITINERARY[position].kind
    start = STARTS[(step_id, attempt)]
    values: dict[str, Any] = {
        "flow_step": ITINERARY[position].flow_step,
        "finished_at": at(start + 1) if status.terminal else None,
        **extra,
    }
    return StepState(step_id, attempt, position, status, kind.value, SERVICE_OF[kind].value, **values)


def ended_run(status: RunStatus, finished: float, **extra: Any) -> RunState:
    """The state a run should end in."""
    return RunState(
        "run",
        status,
        flow="storms",
        step_count=len(ITINERARY),
        started_at=T0,
        finished_at=at(finished),
        updated_at=NOW,
        **extra,
    )


def deliveries(
    events: Sequence[StatusEvent], allowed: Callable[[Sequence[StatusEvent]], bool] = lambda order: True
) -> Iterator[list[StatusEvent]]:
    """Every order of *events* (that *allowed* lets through): once, each twice in a row, all twice over."""
    for order in itertools.permutations(events):
        if allowed(order):
            yield list(order)
            yield [each for each in order for _ in range(2)]
            yield [*order, *reversed(order)]


@dataclass
class Rows:
    """The rows a store holds once it has written what each merge says to write."""

    run: dict[str, Any] = field(default_factory=dict)
    steps: dict[StepKey, dict[str, Any]] = field(default_factory=dict)

    def write(self, changes: Changes) -> None:
        # A column no write names is NULL, as in the tables.
        assert changes.creates_run == (not self.run)
        if changes.creates_run:
            self.run = {column.name: None for column in schema.runs.columns if column.name != "run_id"}
        self.run.update(changes.run_fields)
        for row in changes.new_steps:
            key = (row["step_id"], row["attempt"])
            assert key not in self.steps, f"{key} inserted twice"
            self.steps[key] = {
                column.name: None for column in schema.steps.columns if column.name != "run_id"
            }
            self.steps[key].update(row)
        for values, keys in changes.step_fields:
            for key in keys:
                self.steps[key].update(values)

    def frozen(self) -> str:
        return json.dumps([self.run, sorted(self.steps.items())], sort_keys=True, default=str)


@dataclass
class Replayed:
    """A sequence merged: the run and its steps after it, their rows, and each merge's changes."""

    run: RunState
    steps: tuple[StepState, ...]
    rows: Rows
    merged: list[Changes]

    @property
    def told(self) -> int:
        """How many times the run's end was told for the first time."""
        return sum(changes.ends_run for changes in self.merged)


def replay(sequence: Sequence[StatusEvent]) -> Replayed:
    """Merge *sequence* in order, checking every merge."""
    run: RunState | None = None
    steps: tuple[StepState, ...] = ()
    rows = Rows()
    merged = []
    for news in sequence:
        changes = merge(run, steps, news, NOW)
        rows.write(changes)
        check(run, steps, news, changes)
        agree(changes, rows)
        run, steps = changes.run, changes.steps
        merged.append(changes)
    assert run is not None
    ordered = tuple(sorted(steps, key=lambda state: (state.position, state.attempt)))
    return Replayed(run, ordered, rows, merged)


def check(run: RunState | None, steps: Sequence[StepState], news: StatusEvent, changes: Changes) -> None:
    """What every merge promises."""
    before = run.status if run is not None else RunStatus.QUEUED
    after = changes.run
    failed = [
        state.attempt
        for state in steps
        if state.step_id == news.step_id and state.status is StepStatus.FAILED
    ]
    reopens = (
        run is not None
        and before is RunStatus.FAILED
        and news.step_id == run.failed_step
        and bool(failed)
        and news.attempt > max(failed)
    )
    if before.terminal and not after.status.terminal:
        assert reopens, f"{news.step_id} {news.status} reopened a {before} run"
    old = {state.key: state for state in steps}
    for state in changes.steps:
        was = old.get(state.key)
        if was is not None and RANK.get(state.status, 2) < RANK.get(was.status, 2):
            # Only a step a failure skipped comes back, when the run reopens; a condition's stays.
            assert (was.status, state.status, was.explained) == (
                StepStatus.SKIPPED,
                StepStatus.PENDING,
                False,
            )
            assert reopens
    final_news = news.status.terminal and not (news.continues or news.retrying)
    over = after.status.terminal and after.flow is not None
    assert (changes.completed is not None) == (final_news and over)
    if changes.completed is not None:
        told = (changes.completed.status, changes.completed.finished_at, changes.completed.flow)
        assert told == (after.status, after.finished_at, after.flow)
    told_before = run is not None and before.terminal and run.flow is not None
    assert changes.ends_run == (changes.completed is not None and not told_before)


def agree(changes: Changes, rows: Rows) -> None:
    """The state the rules go on from is what their writes leave in the rows."""
    assert set(rows.steps) == {state.key for state in changes.steps}
    states: list[RunState | StepState] = [changes.run, *changes.steps]
    for state in states:
        row = rows.run if isinstance(state, RunState) else rows.steps[state.key]
        for name in (each.name for each in fields(state)):
            if name == "explained":
                assert bool(row["detail"]) == getattr(state, name)
            elif name != "run_id":
                assert row[name] == getattr(state, name), name


def converges(sequences: Iterator[list[StatusEvent]]) -> tuple[Replayed, set[int]]:
    """What every sequence ends in (the same, rows and all), and how often each told the run's end first."""
    finals: dict[tuple[RunState, tuple[StepState, ...], str], Replayed] = {}
    told = set()
    for sequence in sequences:
        replayed = replay(sequence)
        finals.setdefault((replayed.run, replayed.steps, replayed.rows.frozen()), replayed)
        told.add(replayed.told)
    assert len(finals) == 1, "the run ends in different states, depending on the order"
    [final] = finals.values()
    return final, told


def test_a_run_succeeds_the_same_whatever_the_order_of_its_events() -> None:
    # The last step's success may come before the run's own event, and a running event after its end.
    events = [
        TRIGGERED,
        event("query", StepStatus.RUNNING),
        event("query", StepStatus.SUCCEEDED, row_count=7, detail={"text": "StormEvents"}),
        event("render", StepStatus.SUCCEEDED),
        event("record", StepStatus.SUCCEEDED),
    ]

    final, told = converges(deliveries(events))

    assert final.run == ended_run(RunStatus.SUCCEEDED, finished=10)
    assert final.steps == (
        step("trigger", StepStatus.SUCCEEDED),
        step("query", StepStatus.SUCCEEDED, explained=True),
        step("render", StepStatus.SUCCEEDED),
        step("record", StepStatus.SUCCEEDED),
    )
    query = final.rows.steps[("query", 1)]
    assert (query["started_at"], query["row_count"], query["detail"]) == (at(1), 7, {"text": "StormEvents"})
    assert (final.rows.run["connection"], final.rows.run["error_code"]) == ("local", None)
    assert told == {1}


def test_a_failed_step_fails_the_run_and_skips_the_rest_in_any_order() -> None:
    events = [TRIGGERED, event("query", StepStatus.RUNNING), event("query", StepStatus.FAILED, error=BROKEN)]

    final, told = converges(deliveries(events))

    assert final.run == ended_run(RunStatus.FAILED, finished=2, failed_step="query")
    assert final.steps == (
        step("trigger", StepStatus.SUCCEEDED),
        step("query", StepStatus.FAILED, error_code="KustoSemanticError", error_message="no such table"),
        # Skipped because the query failed: no service reported them.
        step("render", StepStatus.SKIPPED, finished_at=None),
        step("record", StepStatus.SKIPPED, finished_at=None),
    )
    assert (final.rows.run["error_code"], final.rows.run["error_message"]) == (
        "KustoSemanticError",
        "no such table",
    )
    assert final.rows.steps[("query", 1)]["retryable"] is False
    assert told == {1}


def test_a_failure_that_lets_the_flow_go_on_fails_the_run_when_its_last_step_ends() -> None:
    failure = event("query", StepStatus.FAILED, error=BROKEN, continues=True)
    last = event("record", StepStatus.SUCCEEDED)
    events = [
        TRIGGERED,
        failure,
        event("render", StepStatus.SKIPPED, detail={"reason": "its query failed"}),
        last,
    ]

    # The last step's success ends the run as its steps stand when it comes, and a step's row keeps
    # no record of its failure letting the flow go on: here that failure is told before it.
    final, told = converges(deliveries(events, lambda order: order.index(failure) < order.index(last)))

    assert final.run == ended_run(RunStatus.FAILED, finished=10, failed_step="query")
    assert final.steps == (
        step("trigger", StepStatus.SUCCEEDED),
        step("query", StepStatus.FAILED, error_code="KustoSemanticError", error_message="no such table"),
        step("render", StepStatus.SKIPPED, explained=True),
        step("record", StepStatus.SUCCEEDED),
    )
    assert final.rows.run["error_message"] == "no such table"
    assert told == {1}


def test_a_failed_attempt_retried_with_success_lets_the_run_succeed_in_any_order() -> None:
    throttled = ErrorInfo(code=ErrorCode.KUSTO_THROTTLED, message="throttled", retryable=True)
    events = [
        TRIGGERED,
        event("query", StepStatus.FAILED, error=throttled, retrying=True),
        event("query", StepStatus.SUCCEEDED, attempt=2),
        event("render", StepStatus.SUCCEEDED),
        event("record", StepStatus.SUCCEEDED),
    ]

    final, told = converges(deliveries(events))

    assert final.run == ended_run(RunStatus.SUCCEEDED, finished=10)
    assert final.steps == (
        step("trigger", StepStatus.SUCCEEDED),
        step("query", StepStatus.FAILED, error_code="KustoThrottled", error_message="throttled"),
        step("query", StepStatus.SUCCEEDED, attempt=2),
        step("render", StepStatus.SUCCEEDED),
        step("record", StepStatus.SUCCEEDED),
    )
    assert (final.rows.run["failed_step"], final.rows.run["error_code"]) == (None, None)
    # The record step's success may come while the query's newer attempt is unheard of: the run
    # ends failed, then the newer attempt's success reopens it and it ends again, succeeded.
    assert told <= {1, 2}


def test_a_later_attempt_of_the_failed_step_reopens_the_run_in_any_order() -> None:
    events = [
        TRIGGERED,
        event("query", StepStatus.SUCCEEDED),
        event("render", StepStatus.FAILED, error=BROKEN),
        event("render", StepStatus.SUCCEEDED, attempt=2),
        event("record", StepStatus.SUCCEEDED),
    ]

    final, told = converges(deliveries(events))

    assert final.run == ended_run(RunStatus.SUCCEEDED, finished=10)
    assert final.steps == (
        step("trigger", StepStatus.SUCCEEDED),
        step("query", StepStatus.SUCCEEDED),
        step("render", StepStatus.FAILED, error_code="KustoSemanticError", error_message="no such table"),
        step("render", StepStatus.SUCCEEDED, attempt=2),
        step("record", StepStatus.SUCCEEDED),
    )
    assert (final.rows.run["error_code"], final.rows.run["error_message"]) == (None, None)
    assert told <= {1, 2}
    # In the order the services send them the run fails, reopens, then succeeds: two ends told.
    in_order = replay(events)
    assert [changes.run.status for changes in in_order.merged] == [
        RunStatus.RUNNING,
        RunStatus.RUNNING,
        RunStatus.FAILED,
        RunStatus.RUNNING,
        RunStatus.SUCCEEDED,
    ]
    assert [changes.ends_run for changes in in_order.merged] == [False, False, True, False, True]


def test_a_step_a_condition_skipped_stays_skipped_when_the_run_reopens() -> None:
    events = [
        TRIGGERED,
        event("query", StepStatus.SKIPPED, detail={"reason": "when was false"}),
        event("render", StepStatus.FAILED, error=BROKEN),
        event("render", StepStatus.RUNNING, attempt=2),
        event("render", StepStatus.SUCCEEDED, attempt=2),
        event("record", StepStatus.SUCCEEDED),
    ]

    final, _ = converges(deliveries(events))

    assert final.run == ended_run(RunStatus.SUCCEEDED, finished=10)
    assert [(state.step_id, state.attempt, state.status, state.explained) for state in final.steps] == [
        ("trigger", 1, StepStatus.SUCCEEDED, False),
        ("query", 1, StepStatus.SKIPPED, True),
        ("render", 1, StepStatus.FAILED, False),
        ("render", 2, StepStatus.SUCCEEDED, False),
        ("record", 1, StepStatus.SUCCEEDED, False),
    ]
    merged = replay(events[:4]).merged
    failed, reopened = merged[2], merged[3]
    assert {state.step_id: state.status for state in failed.steps} == {
        "trigger": StepStatus.SUCCEEDED,
        "query": StepStatus.SKIPPED,
        "render": StepStatus.FAILED,
        "record": StepStatus.SKIPPED,
    }
    assert reopened.run.status is RunStatus.RUNNING
    assert {state.step_id: state.status for state in reopened.steps if state.attempt == 1} == {
        "trigger": StepStatus.SUCCEEDED,
        "query": StepStatus.SKIPPED,
        "render": StepStatus.FAILED,
        "record": StepStatus.PENDING,
    }
    assert reopened.step_fields[0] == ({"status": "pending"}, (("record", 1),))


def test_the_failure_told_again_or_its_late_start_does_not_reopen_the_run() -> None:
    failure = event("render", StepStatus.FAILED, attempt=2, error=BROKEN)
    replayed = replay(
        [
            TRIGGERED,
            event("query", StepStatus.SUCCEEDED),
            event("render", StepStatus.FAILED, error=BROKEN),
            failure,
            failure,
            event("render", StepStatus.RUNNING, attempt=2),
        ]
    )

    assert [changes.run.status for changes in replayed.merged[2:]] == [RunStatus.FAILED] * 4
    assert (replayed.run.failed_step, replayed.run.finished_at) == ("render", at(8))


def test_a_step_heard_of_before_its_run_waits_in_a_placeholder() -> None:
    early = merge(None, (), event("render", StepStatus.SUCCEEDED), NOW)

    assert early.creates_run
    assert early.run == RunState("run", RunStatus.RUNNING, started_at=at(5), updated_at=NOW)
    assert [(row["step_id"], row["position"], row["flow_step"]) for row in early.new_steps] == [
        ("render", 0, None)
    ]
    assert early.completed is None

    described = merge(early.run, early.steps, TRIGGERED, NOW)

    assert not described.creates_run
    assert described.run_fields["connection"] == "local"
    assert described.run.step_count == 4
    assert [row["step_id"] for row in described.new_steps] == ["trigger", "query", "record"]
    assert described.step_fields == (({"position": 2, "flow_step": "storms"}, (("render", 1),)),)


def test_a_running_event_after_its_step_ended_only_fills_in_its_start() -> None:
    ended = replay([TRIGGERED, event("query", StepStatus.SUCCEEDED)])
    late = merge(ended.run, ended.steps, event("query", StepStatus.RUNNING), NOW)

    assert late.step_fields == (({"started_at": at(1)}, (("query", 1),)),)
    assert next(state for state in late.steps if state.step_id == "query").status is StepStatus.SUCCEEDED


def test_a_run_without_news_stalls_at_the_step_it_waits_for() -> None:
    running = replay([TRIGGERED, event("query", StepStatus.RUNNING)])
    run, steps = running.run, running.steps
    quiet = dt.timedelta(minutes=10)

    assert stall(run, steps, NOW + dt.timedelta(minutes=9), quiet) is None
    stalled = stall(run, steps, NOW + dt.timedelta(minutes=11), quiet)

    assert stalled is not None
    assert (stalled.run.status, stalled.run.failed_step) == (RunStatus.FAILED, "query")
    assert stalled.run_fields["error_code"] == "Stalled"
    assert (
        "no progress since 2026-01-05T08:05:00Z (600 s without news); step 'query' was running"
        in (stalled.run_fields["error_message"])
    )
    assert {state.step_id: state.status for state in stalled.steps} == {
        "trigger": StepStatus.SUCCEEDED,
        "query": StepStatus.FAILED,
        "render": StepStatus.SKIPPED,
        "record": StepStatus.SKIPPED,
    }
    assert stalled.completed is not None
    assert (stalled.completed.status, stalled.ends_run) == (RunStatus.FAILED, True)
    assert stall(stalled.run, stalled.steps, NOW + dt.timedelta(hours=1), quiet) is None


@pytest.mark.parametrize("reopen", [True, False])
def test_a_new_attempt_is_queued_only_of_an_ended_run(reopen: bool) -> None:
    running = replay([TRIGGERED, event("query", StepStatus.RUNNING)])
    assert queue(running.run, running.steps, "query", reopen=reopen, now=NOW) is None

    ended = replay([TRIGGERED, event("query", StepStatus.FAILED, error=BROKEN)])
    failed, steps = ended.run, ended.steps
    assert queue(failed, steps, "render", reopen=True, now=NOW) is None
    queued = queue(failed, steps, "query", reopen=reopen, now=NOW)

    assert queued is not None
    attempt, changes = queued
    assert attempt == 2
    assert changes.new_steps[0]["queued_at"] == NOW
    assert changes.new_steps[0]["flow_step"] == "storms"
    statuses = [(state.step_id, state.attempt, state.status) for state in changes.steps]
    if reopen:
        assert changes.run.status is RunStatus.RUNNING
        assert changes.run_fields["error_code"] is None
        assert ("render", 1, StepStatus.PENDING) in statuses
    else:
        assert (changes.run, changes.run_fields) == (failed, {})
        assert ("render", 1, StepStatus.SKIPPED) in statuses
    assert ("query", 2, StepStatus.PENDING) in statuses


@pytest.mark.parametrize(
    ("trace_id", "kept"),
    [
        ("4bf92f3577b34da6a3ce929d0e0e4736", "4bf92f3577b34da6a3ce929d0e0e4736"),
        (None, None),
        # Not a trace id: longer than the column, or not lower-case hex (the page links it).
        ("4bf92f3577b34da6a3ce929d0e0e4736ff", None),
        ("evil.example/4bf92f3577b34da6a3ce9", None),
    ],
)
def test_a_runs_trace_id_is_kept_only_as_a_trace_id_looks(trace_id: str | None, kept: str | None) -> None:
    info = INFO.model_copy(update={"trace_id": trace_id})
    changes = merge(None, [], event("trigger", StepStatus.SUCCEEDED, run=info), at(1))
    assert changes.creates_run
    assert changes.run_fields["trace_id"] == kept
