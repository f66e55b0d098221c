"""The history store on SQLite and on the machine's PostgreSQL, one code path."""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import pytest

from common.contracts.messages import (
    SERVICE_OF,
    ErrorCode,
    ErrorInfo,
    RunCompleted,
    RunInfo,
    RunStatus,
    ScopeRef,
    StatusEvent,
    Step,
    StepKind,
    StepStatus,
    TriggerKind,
)
from services.history.store import HistoryStore

# The kinds of a run without scope or alert steps, in itinerary order.
#: A run's steps from its start to its record, as a flow of a query, its chart and an email has them.
KINDS = [StepKind.TRIGGER, StepKind.QUERY, StepKind.RENDER, StepKind.NOTIFY, StepKind.RECORD]

ITINERARY = [Step(id=kind.value, kind=kind) for kind in KINDS]
T0 = dt.datetime(2026, 1, 5, 8, 0, tzinfo=dt.UTC)


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def store(
    request: pytest.FixtureRequest, tmp_path: Path, postgres_database: Any
) -> AsyncIterator[HistoryStore]:
    async with AsyncExitStack() as stack:
        if request.param == "sqlite":
            url = f"sqlite+aiosqlite:///{tmp_path / 'history.db'}"
        else:
            url = await stack.enter_async_context(postgres_database())
        history = HistoryStore(url)
        stack.push_async_callback(history.close)
        await history.ensure_schema()
        yield history


def run_info(submitted: dt.datetime = T0, scope: ScopeRef | None = None, *, dry_run: bool = False) -> RunInfo:
    return RunInfo(
        dry_run=dry_run,
        scope=scope,
        parent_run_id=scope.run_id if scope else None,
        flow="storms",
        description="Storms",
        trigger=TriggerKind.MANUAL,
        connection="local",
        database="Samples",
        parameters={"min_damage": 5},
        itinerary=ITINERARY,
        submitted_at=submitted,
    )


def event(run_id: str, kind: StepKind, status: StepStatus, second: int, **extra: Any) -> StatusEvent:
    at = T0 + dt.timedelta(seconds=second)
    started = extra.pop("started", at if status is StepStatus.RUNNING else None)
    return StatusEvent(
        run_id=run_id,
        step_id=kind.value,
        kind=kind,
        service=SERVICE_OF[kind],
        status=status,
        started_at=started,
        finished_at=at if status.terminal else None,
        **extra,  # type: ignore[arg-type]
    )


async def complete_run(
    store: HistoryStore,
    run_id: str,
    submitted: dt.datetime = T0,
    scope: ScopeRef | None = None,
    *,
    dry_run: bool = False,
) -> RunCompleted | None:
    """Apply every event of a run that succeeds; what the last one announced."""
    info = run_info(submitted, scope, dry_run=dry_run)
    await store.apply(event(run_id, StepKind.TRIGGER, StepStatus.RUNNING, 0, run=info))
    completed = None
    for second, kind in enumerate(KINDS):
        await store.apply(event(run_id, kind, StepStatus.RUNNING, second))
        completed = await store.apply(
            event(
                run_id,
                kind,
                StepStatus.SUCCEEDED,
                second + 1,
                row_count=10 if kind is StepKind.QUERY else None,
            )
        )
    return completed


async def test_a_complete_run_succeeds_with_five_timed_steps(store: HistoryStore) -> None:
    await complete_run(store, "run-ok")
    run = await store.get_run("run-ok")

    assert run is not None
    assert run["status"] == RunStatus.SUCCEEDED
    assert run["duration_ms"] == 5000.0
    assert [s["step_id"] for s in run["steps"]] == [k.value for k in KINDS]
    assert all(s["status"] == "succeeded" and s["duration_ms"] == 1000.0 for s in run["steps"])
    assert run["steps"][1]["row_count"] == 10
    assert run["parameters"] == {"min_damage": 5}


async def test_a_failed_step_fails_the_run_and_skips_the_rest(store: HistoryStore) -> None:
    error = ErrorInfo(code=ErrorCode.KUSTO_SYNTAX_ERROR, message="Syntax error at 1:5", retryable=False)
    await store.apply(event("run-bad", StepKind.TRIGGER, StepStatus.RUNNING, 0, run=run_info()))
    await store.apply(event("run-bad", StepKind.TRIGGER, StepStatus.SUCCEEDED, 1))
    await store.apply(event("run-bad", StepKind.QUERY, StepStatus.RUNNING, 1))
    await store.apply(event("run-bad", StepKind.QUERY, StepStatus.FAILED, 2, error=error))

    run = await store.get_run("run-bad")
    assert run is not None
    assert run["status"] == "failed"
    assert run["failed_step"] == "query"
    assert run["error"] == {"code": "KustoSyntaxError", "message": "Syntax error at 1:5"}
    statuses = {s["step_id"]: s["status"] for s in run["steps"]}
    assert statuses == {
        "trigger": "succeeded",
        "query": "failed",
        "render": "skipped",
        "notify": "skipped",
        "record": "skipped",
    }
    assert run["steps"][1]["error"]["retryable"] is False


async def test_events_applied_twice_or_out_of_order_give_the_same_history(store: HistoryStore) -> None:
    # The query step's success arrives before the run's first event, then everything again.
    await store.apply(event("run-odd", StepKind.QUERY, StepStatus.SUCCEEDED, 3, started=T0, row_count=7))
    await store.apply(event("run-odd", StepKind.TRIGGER, StepStatus.RUNNING, 0, run=run_info()))
    await store.apply(event("run-odd", StepKind.QUERY, StepStatus.RUNNING, 1))
    await store.apply(event("run-odd", StepKind.QUERY, StepStatus.SUCCEEDED, 3, started=T0, row_count=7))

    run = await store.get_run("run-odd")
    assert run is not None
    query = next(s for s in run["steps"] if s["step_id"] == "query")
    assert query["status"] == "succeeded"
    assert query["row_count"] == 7
    assert len([s for s in run["steps"] if s["step_id"] == "query"]) == 1
    assert run["status"] == "running"
    assert run["connection"] == "local"
    assert [s["step_id"] for s in run["steps"]] == [k.value for k in KINDS]


async def test_runs_are_listed_newest_first_with_a_cursor(store: HistoryStore) -> None:
    for index in range(5):
        await complete_run(store, f"run-{index}", submitted=T0 + dt.timedelta(minutes=index))

    first = await store.list_runs(limit=2)
    assert [r["run_id"] for r in first] == ["run-4", "run-3"]
    last = first[-1]
    at = dt.datetime.fromisoformat(last["submitted_at"].replace("Z", "+00:00"))
    second = await store.list_runs(limit=10, after=(at, last["run_id"]))
    assert [r["run_id"] for r in second] == ["run-2", "run-1", "run-0"]
    assert await store.list_runs(status=RunStatus.FAILED) == []


async def test_an_unknown_run_is_none(store: HistoryStore) -> None:
    assert await store.get_run("nope") is None
    assert await store.ping() is True


async def test_a_step_that_lets_the_flow_go_on_fails_the_run_only_at_its_end(store: HistoryStore) -> None:
    error = ErrorInfo(code=ErrorCode.KUSTO_SEMANTIC_ERROR, message="table is missing")
    await store.apply(event("run-go", StepKind.TRIGGER, StepStatus.RUNNING, 0, run=run_info()))
    completed = await store.apply(
        event("run-go", StepKind.QUERY, StepStatus.FAILED, 1, error=error, continues=True)
    )
    assert completed is None
    running = await store.get_run("run-go")
    assert running is not None
    assert running["status"] == "running"

    await store.apply(
        event("run-go", StepKind.RENDER, StepStatus.SKIPPED, 2, detail={"reason": "its query failed"})
    )
    await store.apply(event("run-go", StepKind.NOTIFY, StepStatus.SUCCEEDED, 3))
    completed = await store.apply(event("run-go", StepKind.RECORD, StepStatus.SUCCEEDED, 4))

    assert completed is not None
    assert (completed.flow, completed.status) == ("storms", RunStatus.FAILED)
    run = await store.get_run("run-go")
    assert run is not None
    assert run["status"] == "failed"
    assert run["failed_step"] == "query"
    assert run["error"]["message"] == "table is missing"
    render = next(s for s in run["steps"] if s["step_id"] == "render")
    assert (render["status"], render["detail"]) == ("skipped", {"reason": "its query failed"})


async def test_a_completed_run_is_announced_again_on_a_redelivered_event(store: HistoryStore) -> None:
    await complete_run(store, "run-again")
    again = await store.apply(event("run-again", StepKind.RECORD, StepStatus.SUCCEEDED, 5))
    assert again is not None
    assert again.status is RunStatus.SUCCEEDED
    assert await store.list_runs(flow="storms", trigger="manual") != []
    assert await store.list_runs(flow="other") == []


async def test_a_retried_step_shows_every_attempt_and_only_the_last_counts(store: HistoryStore) -> None:
    throttled = ErrorInfo(code=ErrorCode.KUSTO_THROTTLED, message="throttled", retryable=True)
    await store.apply(event("run-retry", StepKind.TRIGGER, StepStatus.RUNNING, 0, run=run_info()))
    await store.apply(event("run-retry", StepKind.QUERY, StepStatus.RUNNING, 1))
    await store.apply(
        event("run-retry", StepKind.QUERY, StepStatus.FAILED, 2, error=throttled, retrying=True)
    )
    running = await store.get_run("run-retry")
    assert running is not None
    assert running["status"] == "running"
    await store.apply(event("run-retry", StepKind.QUERY, StepStatus.RUNNING, 3, attempt=2))
    await store.apply(event("run-retry", StepKind.QUERY, StepStatus.SUCCEEDED, 4, attempt=2))
    for second, kind in enumerate([StepKind.RENDER, StepKind.NOTIFY, StepKind.RECORD], start=5):
        await store.apply(event("run-retry", kind, StepStatus.SUCCEEDED, second))

    run = await store.get_run("run-retry")
    assert run is not None
    assert run["status"] == "succeeded"
    attempts = [(s["attempt"], s["status"]) for s in run["steps"] if s["step_id"] == "query"]
    assert attempts == [(1, "failed"), (2, "succeeded")]


async def test_a_run_without_news_is_failed_as_stalled(store: HistoryStore) -> None:
    await store.apply(event("run-stuck", StepKind.TRIGGER, StepStatus.RUNNING, 0, run=run_info()))
    await store.apply(event("run-stuck", StepKind.TRIGGER, StepStatus.SUCCEEDED, 1))
    await store.apply(event("run-stuck", StepKind.QUERY, StepStatus.RUNNING, 2))
    await complete_run(store, "run-done")

    later = dt.datetime.now(dt.UTC) + dt.timedelta(hours=2)
    ended = await store.fail_stalled(later, dt.timedelta(hours=1))

    assert [(e.run_id, e.status) for e in ended] == [("run-stuck", RunStatus.FAILED)]
    run = await store.get_run("run-stuck")
    assert run is not None
    assert run["error"]["code"] == "Stalled"
    assert run["failed_step"] == "query"
    assert "step 'query' was running" in run["error"]["message"]
    query = next(s for s in run["steps"] if s["step_id"] == "query")
    assert query["status"] == "failed"
    assert await store.fail_stalled(later, dt.timedelta(hours=1)) == []
    done = await store.get_run("run-done")
    assert done is not None
    assert done["status"] == "succeeded"


async def test_replaying_the_failed_step_reopens_the_run(store: HistoryStore) -> None:
    down = ErrorInfo(code=ErrorCode.SMTP_UNAVAILABLE, message="relay down", retryable=True)
    await store.apply(event("run-replay", StepKind.TRIGGER, StepStatus.RUNNING, 0, run=run_info()))
    for second, kind in enumerate([StepKind.TRIGGER, StepKind.QUERY, StepKind.RENDER], start=1):
        await store.apply(event("run-replay", kind, StepStatus.SUCCEEDED, second))
    await store.apply(event("run-replay", StepKind.NOTIFY, StepStatus.FAILED, 4, error=down))
    failed = await store.get_run("run-replay")
    assert failed is not None
    assert failed["status"] == "failed"

    await store.apply(event("run-replay", StepKind.NOTIFY, StepStatus.RUNNING, 5, attempt=2))
    reopened = await store.get_run("run-replay")
    assert reopened is not None
    assert reopened["status"] == "running"
    assert reopened["error"] is None
    await store.apply(event("run-replay", StepKind.NOTIFY, StepStatus.SUCCEEDED, 6, attempt=2))
    await store.apply(event("run-replay", StepKind.RECORD, StepStatus.SUCCEEDED, 7))
    run = await store.get_run("run-replay")
    assert run is not None
    assert run["status"] == "succeeded"


async def test_a_replay_whose_first_event_is_its_end_reopens_the_run(store: HistoryStore) -> None:
    # A quick step reports only how it ended: the newer attempt's success alone reopens the run.
    down = ErrorInfo(code=ErrorCode.SMTP_UNAVAILABLE, message="relay down", retryable=True)
    await store.apply(event("run-quick", StepKind.TRIGGER, StepStatus.SUCCEEDED, 0, run=run_info()))
    for second, kind in enumerate([StepKind.QUERY, StepKind.RENDER], start=1):
        await store.apply(event("run-quick", kind, StepStatus.SUCCEEDED, second))
    await store.apply(event("run-quick", StepKind.NOTIFY, StepStatus.FAILED, 4, error=down))
    # The same failure told again does not reopen it.
    await store.apply(event("run-quick", StepKind.NOTIFY, StepStatus.FAILED, 4, error=down))
    failed = await store.get_run("run-quick")
    assert failed is not None
    assert failed["status"] == "failed"

    await store.apply(event("run-quick", StepKind.NOTIFY, StepStatus.SUCCEEDED, 5, attempt=2))
    reopened = await store.get_run("run-quick")
    assert reopened is not None
    assert reopened["status"] == "running"
    assert reopened["error"] is None
    await store.apply(event("run-quick", StepKind.RECORD, StepStatus.SUCCEEDED, 6))
    run = await store.get_run("run-quick")
    assert run is not None
    assert run["status"] == "succeeded"


async def test_the_last_step_reported_before_the_one_before_it_ends_the_run_as_its_steps_say(
    store: HistoryStore,
) -> None:
    # A step's success and the slip it forwards go out together: the record step's event
    # may overtake the notify step's.
    await store.apply(event("run-overtaken", StepKind.TRIGGER, StepStatus.SUCCEEDED, 0, run=run_info()))
    for second, kind in enumerate([StepKind.QUERY, StepKind.RENDER], start=1):
        await store.apply(event("run-overtaken", kind, StepStatus.SUCCEEDED, second))
    completed = await store.apply(event("run-overtaken", StepKind.RECORD, StepStatus.SUCCEEDED, 5))
    assert completed is not None
    assert completed.status is RunStatus.SUCCEEDED
    await store.apply(event("run-overtaken", StepKind.NOTIFY, StepStatus.SUCCEEDED, 4))

    run = await store.get_run("run-overtaken")
    assert run is not None
    assert run["status"] == "succeeded"
    assert {step["step_id"]: step["status"] for step in run["steps"]} == {
        "trigger": "succeeded",
        "query": "succeeded",
        "render": "succeeded",
        "notify": "succeeded",
        "record": "succeeded",
    }


async def test_a_run_heard_of_last_ends_as_its_steps_said_before(store: HistoryStore) -> None:
    # The trigger's event, held back (a redelivery), comes after every other step's.
    for second, kind in enumerate([StepKind.RECORD, StepKind.QUERY, StepKind.RENDER, StepKind.NOTIFY], 1):
        assert await store.apply(event("run-late", kind, StepStatus.SUCCEEDED, second)) is None
    assert await store.list_runs() == []

    completed = await store.apply(
        event("run-late", StepKind.TRIGGER, StepStatus.SUCCEEDED, 0, run=run_info())
    )

    assert completed is not None
    assert completed.status is RunStatus.SUCCEEDED
    run = await store.get_run("run-late")
    assert run is not None
    assert (run["status"], run["finished_at"], run["connection"]) == (
        "succeeded",
        "2026-01-05T08:00:01Z",
        "local",
    )
    assert [(s["step_id"], s["status"]) for s in run["steps"]] == [(k.value, "succeeded") for k in KINDS]


async def test_a_failure_heard_of_before_its_run_skips_the_steps_the_run_brings(store: HistoryStore) -> None:
    error = ErrorInfo(code=ErrorCode.KUSTO_SYNTAX_ERROR, message="Syntax error at 1:5")
    await store.apply(event("run-early", StepKind.QUERY, StepStatus.FAILED, 2, started=T0, error=error))
    await store.apply(
        event("run-early", StepKind.TRIGGER, StepStatus.SUCCEEDED, 1, started=T0, run=run_info())
    )

    run = await store.get_run("run-early")
    assert run is not None
    assert (run["status"], run["failed_step"], run["started_at"]) == (
        "failed",
        "query",
        "2026-01-05T08:00:00Z",
    )
    assert {s["step_id"]: s["status"] for s in run["steps"]} == {
        "trigger": "succeeded",
        "query": "failed",
        "render": "skipped",
        "notify": "skipped",
        "record": "skipped",
    }


async def test_a_child_run_is_listed_under_its_step_and_its_end_is_not_announced(store: HistoryStore) -> None:
    assert await complete_run(store, "parent") is not None
    for index in (1, 0, 2):
        scope = ScopeRef(run_id="parent", step_id="each", index=index)
        assert await complete_run(store, f"child-{index}", scope=scope) is None

    assert [run["run_id"] for run in await store.list_runs(flow="storms")] == ["parent"]
    assert len(await store.list_runs(flow="storms", children=True)) == 4
    listed = await store.iterations("parent", "each")
    assert [(run["run_id"], run["scope"]["index"]) for run in listed] == [
        ("child-0", 0),
        ("child-1", 1),
        ("child-2", 2),
    ]
    assert [run["run_id"] for run in await store.iterations("parent", "each", after=0, limit=1)] == [
        "child-1"
    ]
    assert await store.iterations("parent", "each", status=RunStatus.FAILED) == []
    assert await store.iteration_statuses("parent", "each") == {"succeeded": 3}
    assert await store.iterations("parent", "other") == []
    flow_runs = await store.flow_runs("storms", T0 - dt.timedelta(days=1), T0 + dt.timedelta(days=1))
    assert len(flow_runs) == 1


async def test_a_parent_waiting_on_a_live_child_run_is_not_stalled(store: HistoryStore) -> None:
    await store.apply(event("parent", StepKind.TRIGGER, StepStatus.RUNNING, 0, run=run_info()))
    await store.apply(event("parent", StepKind.QUERY, StepStatus.RUNNING, 1))
    scope = ScopeRef(run_id="parent", step_id="each", index=0)
    await store.apply(event("child", StepKind.TRIGGER, StepStatus.RUNNING, 2, run=run_info(scope=scope)))
    await store.apply(event("child", StepKind.QUERY, StepStatus.RUNNING, 3))
    later = dt.datetime.now(dt.UTC) + dt.timedelta(hours=2)

    # The child stalls (and, being a child, is not announced); its parent waited on it, so not yet.
    assert await store.fail_stalled(later, dt.timedelta(hours=1)) == []
    child, parent = await store.get_run("child"), await store.get_run("parent")
    assert child is not None
    assert parent is not None
    assert (child["status"], child["error"]["code"]) == ("failed", "Stalled")
    assert parent["status"] == "running"

    # With no live child left, the quiet parent stalls at the next sweep.
    ended = await store.fail_stalled(later, dt.timedelta(hours=1))
    assert [(completed.run_id, completed.status) for completed in ended] == [("parent", RunStatus.FAILED)]
