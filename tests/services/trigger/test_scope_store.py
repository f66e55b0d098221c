"""The scope store on SQLite and on the machine's PostgreSQL: fan-out, joins, re-runs, retention."""

from __future__ import annotations

import asyncio
import datetime as dt
import uuid
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from common.contracts.flows import Flow, new_run
from common.contracts.messages import RunContext, RunMessage, StepStatus, TriggerKind, utcnow
from services.trigger.scope_store import Decision, Item, ScopeStore, child_run_id, items, scopes

FLOW = Flow.model_validate(
    {
        "name": "per-row",
        "connection": "local",
        "database": "Samples",
        "steps": [
            {"id": "rows", "action": "run_query", "query": "StormEvents | take 10"},
            {
                "id": "each",
                "for_each": "rows",
                "steps": [{"id": "count", "action": "run_query", "query": "StormEvents | count"}],
            },
        ],
    }
)
SUCCEEDED, FAILED = StepStatus.SUCCEEDED, StepStatus.FAILED


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def database_url(
    request: pytest.FixtureRequest, tmp_path: Path, postgres_database: Any
) -> AsyncIterator[str]:
    if request.param == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path / 'scopes.db'}"
        return
    async with postgres_database() as url:
        yield url


@pytest.fixture
async def store(database_url: str) -> AsyncIterator[ScopeStore]:
    scoped = ScopeStore(database_url)
    await scoped.ensure_schema()
    try:
        yield scoped
    finally:
        await scoped.close()


def parent(run_id: str | None = None, attempt: int = 1) -> RunMessage:
    """A run of FLOW at its for_each step."""
    run = new_run(FLOW, RunContext(flow=FLOW.name, trigger=TriggerKind.MANUAL), run_id or uuid.uuid4().hex)
    return run.model_copy(update={"step_id": "each", "attempt": attempt})


def entries(message: RunMessage, count: int) -> list[Item]:
    return [
        Item(number, child_run_id(message.run_id, message.step_id, number), row={"n": number})
        for number in range(count)
    ]


async def join(
    store: ScopeStore, message: RunMessage, child: str, status: StepStatus, *, stop: bool = False
) -> Decision:
    return await store.join(
        message.run_id,
        message.step_id,
        child,
        status,
        {"count": {"status": status.value}},
        stop_on_failure=stop,
        report_every=dt.timedelta(hours=1),
        summary_items=None,
    )


async def stored_items(store: ScopeStore, message: RunMessage) -> list[tuple[int, str, str]]:
    """Every item of the scope as (number, status, child run), in order."""
    async with store.engine.connect() as conn:
        rows = await conn.execute(
            sa.select(items.c.item, items.c.status, items.c.child_run_id)
            .where(items.c.run_id == message.run_id, items.c.step_id == message.step_id)
            .order_by(items.c.item)
        )
        return [tuple(row) for row in rows.all()]


async def stored_counts(store: ScopeStore, message: RunMessage) -> dict[str, Any]:
    where = sa.and_(scopes.c.run_id == message.run_id, scopes.c.step_id == message.step_id)
    async with store.engine.connect() as conn:
        row = (await conn.execute(sa.select(scopes).where(where))).one()
    names = ("total", "running", "succeeded", "failed", "skipped", "stopping")
    return {name: getattr(row, name) for name in names} | {"finished": row.finished_at is not None}


async def test_every_item_starts_once_and_joins_once_and_the_last_join_finishes(store: ScopeStore) -> None:
    message = parent()
    started: list[int] = []

    first = await store.fan_out(message, 3, entries(message, 7))
    started += [item.item for item in first.starts]
    running = [item.child_run_id for item in first.starts]
    await store.published(message.run_id, message.step_id, [item.item for item in first.starts])
    finished: list[dict[str, Any]] | None = None
    joins = 0
    while running:
        decision = await join(store, message, running.pop(0), SUCCEEDED)
        joins += 1
        assert not decision.repeated
        started += [item.item for item in decision.starts]
        running += [item.child_run_id for item in decision.starts]
        await store.published(message.run_id, message.step_id, [item.item for item in decision.starts])
        assert decision.counts.running == len(running) <= 3
        if decision.finished is not None:
            assert running == []
            finished = decision.finished

    assert [item.item for item in first.starts] == [0, 1, 2]
    assert sorted(started) == list(range(7))
    assert joins == 7
    assert finished is not None
    assert [(entry["index"], entry["status"]) for entry in finished] == [(n, "succeeded") for n in range(7)]
    assert await stored_counts(store, message) == {
        "total": 7,
        "running": 0,
        "succeeded": 7,
        "failed": 0,
        "skipped": 0,
        "stopping": False,
        "finished": True,
    }


async def test_replicas_joining_at_once_never_run_more_than_the_concurrency(database_url: str) -> None:
    async with AsyncExitStack() as stack:
        replicas = [ScopeStore(database_url) for _ in range(3)]
        for replica in replicas:
            stack.push_async_callback(replica.close)
        await replicas[0].ensure_schema()
        message = parent()
        decision = await replicas[0].fan_out(message, 4, entries(message, 30))
        running = list(decision.starts)
        started = [item.item for item in running]
        finishes = 0
        while running:
            # Every running child joins at once, each through one of the replicas.
            joined = await asyncio.gather(
                *(
                    join(replicas[number % 3], message, item.child_run_id, SUCCEEDED)
                    for number, item in enumerate(running)
                )
            )
            running = [item for decision in joined for item in decision.starts]
            started += [item.item for item in running]
            finishes += sum(decision.finished is not None for decision in joined)
            counts = await stored_counts(replicas[0], message)
            assert counts["running"] == len(running) <= 4

        assert sorted(started) == list(range(30))
        assert finishes == 1
        assert await stored_counts(replicas[0], message) | {"running": None} == {
            "total": 30,
            "running": None,
            "succeeded": 30,
            "failed": 0,
            "skipped": 0,
            "stopping": False,
            "finished": True,
        }


async def test_a_fan_out_handled_again_publishes_only_the_starts_not_published(store: ScopeStore) -> None:
    message = parent()
    first = await store.fan_out(message, 3, entries(message, 5))
    await store.published(message.run_id, message.step_id, [0, 1])

    again = await store.fan_out(message, 3, entries(message, 5))
    await store.published(message.run_id, message.step_id, [item.item for item in again.starts])
    third = await store.fan_out(message, 3, entries(message, 5))

    assert [item.item for item in first.starts] == [0, 1, 2]
    assert not first.repeated
    assert again.repeated
    assert [(item.item, item.child_run_id) for item in again.starts] == [(2, first.starts[2].child_run_id)]
    assert (third.repeated, third.starts) == (True, [])
    assert again.counts.as_detail() == first.counts.as_detail()
    assert [(number, status) for number, status, _ in await stored_items(store, message)] == [
        (0, "running"),
        (1, "running"),
        (2, "running"),
        (3, "waiting"),
        (4, "waiting"),
    ]
    assert (await stored_counts(store, message))["total"] == 5


async def test_two_deliveries_of_one_fan_out_at_once_park_it_once(database_url: str) -> None:
    # A duplicate delivery taken by another replica at the same moment: on PostgreSQL both insert
    # the items, and the one that loses the race must read the scope the other made, not fail.
    async with AsyncExitStack() as stack:
        replicas = [ScopeStore(database_url) for _ in range(2)]
        for replica in replicas:
            stack.push_async_callback(replica.close)
        await replicas[0].ensure_schema()
        for _ in range(5):
            message = parent()

            both = await asyncio.gather(
                *(replica.fan_out(message, 3, entries(message, 40)) for replica in replicas)
            )

            assert sorted(decision.repeated for decision in both) == [False, True]
            assert [[item.item for item in decision.starts] for decision in both] == [[0, 1, 2], [0, 1, 2]]
            assert len(await stored_items(replicas[0], message)) == 40
            assert (await stored_counts(replicas[0], message))["running"] == 3


async def test_a_join_handled_again_is_repeated_and_changes_no_counts(store: ScopeStore) -> None:
    message = parent()
    first = await store.fan_out(message, 1, entries(message, 3))
    await store.published(message.run_id, message.step_id, [0])
    child = first.starts[0].child_run_id
    joined = await join(store, message, child, SUCCEEDED)
    before = await stored_counts(store, message)

    again = await join(store, message, child, SUCCEEDED)
    await store.published(message.run_id, message.step_id, [item.item for item in again.starts])
    third = await join(store, message, child, SUCCEEDED)

    assert [item.item for item in joined.starts] == [1]
    assert not joined.repeated
    # The start its end decided is published again until the broker has taken it, and only that.
    assert again.repeated
    assert [item.item for item in again.starts] == [1]
    assert (third.repeated, third.starts) == (True, [])
    assert again.counts.as_detail() == joined.counts.as_detail()
    assert await stored_counts(store, message) == before
    assert before | {"stopping": None} == {
        "total": 3,
        "running": 1,
        "succeeded": 1,
        "failed": 0,
        "skipped": 0,
        "stopping": None,
        "finished": False,
    }


async def test_a_join_of_an_unknown_scope_or_child_is_ignored(store: ScopeStore) -> None:
    message = parent()
    await store.fan_out(message, 1, entries(message, 2))

    unknown_scope = await join(store, parent(), "no-such-child", SUCCEEDED)
    unknown_child = await join(store, message, "no-such-child", SUCCEEDED)

    assert unknown_scope.parent is None
    assert unknown_child.parent is None
    assert unknown_child.repeated
    assert (await stored_counts(store, message))["running"] == 1


async def test_a_failure_under_stop_skips_the_waiting_items_and_the_scope_ends_with_every_count(
    store: ScopeStore,
) -> None:
    message = parent()
    first = await store.fan_out(message, 2, entries(message, 5))
    zero, one = (item.child_run_id for item in first.starts)

    failed = await join(store, message, zero, FAILED, stop=True)
    last = await join(store, message, one, SUCCEEDED, stop=True)

    assert failed.starts == []
    assert failed.finished is None
    assert failed.counts.as_detail() | {"truncated": None} == {
        "total": 5,
        "running": 1,
        "succeeded": 0,
        "failed": 1,
        "skipped": 3,
        "truncated": None,
    }
    assert last.starts == []
    assert last.finished is not None
    assert [entry["status"] for entry in last.finished] == [
        "failed",
        "succeeded",
        "skipped",
        "skipped",
        "skipped",
    ]
    assert await stored_counts(store, message) == {
        "total": 5,
        "running": 0,
        "succeeded": 1,
        "failed": 1,
        "skipped": 3,
        "stopping": True,
        "finished": True,
    }


async def test_without_stop_a_failure_starts_the_next_item_in_its_place(store: ScopeStore) -> None:
    message = parent()
    first = await store.fan_out(message, 1, entries(message, 2))

    failed = await join(store, message, first.starts[0].child_run_id, FAILED)

    assert [item.item for item in failed.starts] == [1]
    assert failed.counts.skipped == 0


async def test_a_re_run_of_the_parent_step_starts_only_what_failed_or_was_skipped_under_new_ids(
    store: ScopeStore,
) -> None:
    message = parent()
    first = await store.fan_out(message, 2, entries(message, 5))
    zero, one = (item.child_run_id for item in first.starts)
    await join(store, message, zero, FAILED, stop=True)
    await join(store, message, one, SUCCEEDED, stop=True)
    await store.forwarded(message.run_id, message.step_id, parent_stopped=True)
    old_ids = {number: child for number, _, child in await stored_items(store, message)}

    rerun = await store.fan_out(parent(message.run_id, attempt=2), 2, entries(message, 5))
    late = await join(store, message, zero, FAILED, stop=True)

    assert not rerun.repeated
    assert [item.item for item in rerun.starts] == [0, 2]
    assert [item.child_run_id for item in rerun.starts] == [
        child_run_id(message.run_id, "each", 0, 2),
        child_run_id(message.run_id, "each", 2, 2),
    ]
    assert {item.child_run_id for item in rerun.starts}.isdisjoint(old_ids.values())
    assert rerun.counts.as_detail() | {"truncated": None} == {
        "total": 5,
        "running": 2,
        "succeeded": 1,
        "failed": 0,
        "skipped": 0,
        "truncated": None,
    }
    stored = await stored_items(store, message)
    assert [(number, status) for number, status, _ in stored] == [
        (0, "running"),
        (1, "succeeded"),
        (2, "running"),
        (3, "waiting"),
        (4, "waiting"),
    ]
    # The item that succeeded keeps its child run; the join of an old child run changes nothing.
    assert stored[1][2] == old_ids[1]
    assert (late.parent, late.repeated) == (None, True)

    running = list(rerun.starts)
    last: Decision | None = None
    while running:
        last = await join(store, message, running.pop(0).child_run_id, SUCCEEDED, stop=True)
        running += last.starts
    assert last is not None
    assert last.finished is not None
    assert last.parent is not None
    assert last.parent.attempt == 2
    assert [entry["status"] for entry in last.finished] == ["succeeded"] * 5
    assert await stored_counts(store, message) == {
        "total": 5,
        "running": 0,
        "succeeded": 5,
        "failed": 0,
        "skipped": 0,
        "stopping": False,
        "finished": True,
    }


async def test_a_higher_attempt_after_the_scope_succeeded_leaves_it_finished(store: ScopeStore) -> None:
    # A retry of the fan-out (its database failed after the starts were published) that arrives
    # once every item has succeeded: nothing to start again, and the scope stays done.
    message = parent()
    first = await store.fan_out(message, 2, entries(message, 2))
    assert not first.settled
    for item in first.starts:
        await join(store, message, item.child_run_id, SUCCEEDED)
    assert not (await store.fan_out(message, 2, entries(message, 2))).settled
    await store.forwarded(message.run_id, message.step_id)

    retried = await store.fan_out(parent(message.run_id, attempt=2), 2, entries(message, 2))

    # Settled: the step's outcome was told when the parent went on; this retry tells history nothing.
    assert (retried.starts, retried.repeated, retried.settled) == ([], True, True)
    assert await stored_counts(store, message) == {
        "total": 2,
        "running": 0,
        "succeeded": 2,
        "failed": 0,
        "skipped": 0,
        "stopping": False,
        "finished": True,
    }
    assert await store.forget(finished_before=utcnow() + dt.timedelta(seconds=1)) == 1


async def test_a_failed_child_run_again_succeeding_resumes_the_stopped_parent_at_its_next_attempt(
    store: ScopeStore,
) -> None:
    message = parent()
    first = await store.fan_out(message, 2, entries(message, 3))
    zero, one = (item.child_run_id for item in first.starts)
    [two] = (await join(store, message, zero, SUCCEEDED)).starts
    await join(store, message, one, FAILED)
    ended = await join(store, message, two.child_run_id, SUCCEEDED)
    assert ended.finished is not None
    await store.forwarded(message.run_id, message.step_id, parent_stopped=True)

    resumed = await join(store, message, one, SUCCEEDED)

    assert resumed.resumed
    assert not resumed.repeated
    assert resumed.starts == []
    assert resumed.parent is not None
    assert resumed.parent.attempt == message.attempt + 1
    assert resumed.finished is not None
    assert [entry["status"] for entry in resumed.finished] == ["succeeded"] * 3
    assert resumed.counts.as_detail() | {"truncated": None} == {
        "total": 3,
        "running": 0,
        "succeeded": 3,
        "failed": 0,
        "skipped": 0,
        "truncated": None,
    }
    # Handled again before the parent went on: the same decision to send it on, not a new attempt.
    again = await join(store, message, one, SUCCEEDED)
    assert again.repeated
    assert again.parent is not None
    assert again.parent.attempt == message.attempt + 1
    assert again.finished is not None
    await store.forwarded(message.run_id, message.step_id)
    assert (await join(store, message, one, SUCCEEDED)).finished is None


async def test_a_child_succeeding_again_does_not_resume_a_parent_that_went_on(store: ScopeStore) -> None:
    message = parent()
    first = await store.fan_out(message, 2, entries(message, 2))
    zero, one = (item.child_run_id for item in first.starts)
    await join(store, message, zero, SUCCEEDED)
    await join(store, message, one, FAILED)
    # The scope's failure did not stop the parent (on_failure: continue): it went on.
    await store.forwarded(message.run_id, message.step_id, parent_stopped=False)

    again = await join(store, message, one, SUCCEEDED)

    assert not again.resumed
    assert again.finished is None
    assert (await stored_counts(store, message))["succeeded"] == 2


async def test_forget_deletes_the_scopes_that_finished_before_the_cutoff_with_their_items(
    store: ScopeStore,
) -> None:
    done, busy = parent(), parent()
    first = await store.fan_out(done, 2, entries(done, 2))
    for item in first.starts:
        await join(store, done, item.child_run_id, SUCCEEDED)
    await store.forwarded(done.run_id, done.step_id)
    await store.fan_out(busy, 1, entries(busy, 2))

    kept_by_an_early_cutoff = await store.forget(finished_before=utcnow() - dt.timedelta(hours=1))
    forgotten = await store.forget(finished_before=utcnow() + dt.timedelta(seconds=1))

    assert kept_by_an_early_cutoff == 0
    assert forgotten == 1
    assert await stored_items(store, done) == []
    assert [status for _, status, _ in await stored_items(store, busy)] == ["running", "waiting"]
    async with store.engine.connect() as conn:
        left = (await conn.execute(sa.select(scopes.c.run_id))).scalars().all()
    assert left == [busy.run_id]
