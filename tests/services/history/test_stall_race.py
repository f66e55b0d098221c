"""The stall sweep against a run that succeeds at the same moment: the success is never overwritten.

On PostgreSQL the sweep waits for the row the success holds and then finds the
run finished; on SQLite, which has no row locks, the sweep's write finds the
run no longer unfinished and quiet, and changes nothing.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import asyncpg
import pytest
from sqlalchemy.ext.asyncio import AsyncConnection

from common.contracts.messages import RunCompleted, RunStatus, StatusEvent, StepKind, StepStatus, utcnow
from services.history.states import Changes
from services.history.store import HistoryStore, writes
from services.history.store.writes import Loaded
from tests.conftest import poll_until
from tests.services.history.test_store import event, run_info

QUIET = dt.timedelta(hours=1)


async def _almost_done(store: HistoryStore, run_id: str) -> StatusEvent:
    """A run whose every step but the last succeeded; the success of its last step, not yet applied."""
    await store.apply(event(run_id, StepKind.TRIGGER, StepStatus.SUCCEEDED, 0, run=run_info()))
    for second, kind in enumerate([StepKind.QUERY, StepKind.RENDER, StepKind.NOTIFY], 1):
        await store.apply(event(run_id, kind, StepStatus.SUCCEEDED, second))
    await store.apply(event(run_id, StepKind.RECORD, StepStatus.RUNNING, 4))
    return event(run_id, StepKind.RECORD, StepStatus.SUCCEEDED, 5)


async def _assert_succeeded(store: HistoryStore, run_id: str) -> None:
    run = await store.get_run(run_id)
    assert run is not None
    assert (run["status"], run["error"]) == ("succeeded", None)
    assert {step["step_id"]: step["status"] for step in run["steps"]}["record"] == "succeeded"


@pytest.fixture
async def postgres_store(postgres_url: str) -> AsyncIterator[tuple[HistoryStore, str]]:
    store = HistoryStore(postgres_url)
    await store.ensure_schema()
    try:
        yield store, postgres_url
    finally:
        await store.close()


async def _waiting_on_a_row_lock(url: str) -> bool:
    """Whether some session of *url*'s database waits for a lock."""
    database = url.rsplit("/", 1)[1]
    admin = await asyncpg.connect(url.replace("postgresql+asyncpg://", "postgresql://", 1))
    try:
        waiting = await admin.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = $1 AND wait_event_type = 'Lock'", database
        )
    finally:
        await admin.close()
    return bool(waiting)


@pytest.mark.postgres
async def test_on_postgresql_a_run_succeeding_while_the_sweep_reaches_it_stays_succeeded(
    postgres_store: tuple[HistoryStore, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    store, url = postgres_store
    success = await _almost_done(store, "run-race")
    merged, commit = asyncio.Event(), asyncio.Event()
    merge_run = writes._merge_run

    async def merged_then_held(
        conn: AsyncConnection, run_id: str, events: Sequence[StatusEvent], now: dt.datetime
    ) -> list[Changes]:
        # The success is written, its transaction not yet committed: the run's row stays locked.
        changes = await merge_run(conn, run_id, events, now)
        merged.set()
        await commit.wait()
        return changes

    monkeypatch.setattr(writes, "_merge_run", merged_then_held)
    succeeding = asyncio.create_task(store.apply(success))
    await asyncio.wait_for(merged.wait(), 10)
    # Hours later by the sweep's clock: the run counts as quiet when the sweep selects it.
    sweeping = asyncio.create_task(store.fail_stalled(utcnow() + 2 * QUIET, QUIET))
    await poll_until(lambda: _waiting_on_a_row_lock(url), what="the sweep to wait for the run's row")
    commit.set()

    completed = await asyncio.wait_for(succeeding, 10)
    assert completed is not None
    assert completed.status is RunStatus.SUCCEEDED
    assert await asyncio.wait_for(sweeping, 10) == []
    await _assert_succeeded(store, "run-race")


async def test_on_sqlite_a_run_succeeding_after_the_sweep_decided_stays_succeeded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = HistoryStore(f"sqlite+aiosqlite:///{tmp_path / 'history.db'}")
    await store.ensure_schema()
    try:
        success = await _almost_done(store, "run-race")
        load = writes._load
        raced: list[RunCompleted | None] = []

        async def read_then_overtaken(conn: AsyncConnection, run_id: str) -> Loaded | None:
            loaded = await load(conn, run_id)
            if not raced:
                # The sweep has read the run, still running; before it writes, the last step succeeds.
                raced.append(None)
                raced[0] = await store.apply(success)
            return loaded

        monkeypatch.setattr(writes, "_load", read_then_overtaken)
        ended = await store.fail_stalled(utcnow() + 2 * QUIET, QUIET)

        assert ended == []
        [completed] = raced
        assert completed is not None
        assert completed.status is RunStatus.SUCCEEDED
        await _assert_succeeded(store, "run-race")
    finally:
        await store.close()
