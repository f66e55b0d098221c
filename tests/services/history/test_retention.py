"""Retention and re-run bookkeeping on SQLite and on the machine's PostgreSQL."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from common.contracts.messages import ErrorCode, ErrorInfo, StepKind, StepStatus, new_id, utcnow
from common.platform.blobs.folder import FolderBlobStore
from common.platform.config import Settings
from services.history.dead_letters import DeadLetterStore, dead_letters
from services.history.retention import Retention
from services.history.store import HistoryStore
from tests.services.history.test_store import complete_run, event, run_info

NOW = dt.datetime(2026, 3, 1, 12, 0, tzinfo=dt.UTC)


@dataclass
class Stores:
    history: HistoryStore
    letters: DeadLetterStore
    blobs: FolderBlobStore

    def retention(self, days: int = 28) -> Retention:
        return Retention(self.history, self.letters, self.blobs, Settings(retention_days=days))

    async def dead_letter(self, run_id: str | None, dead_at: dt.datetime) -> None:
        async with self.letters.engine.begin() as conn:
            await conn.execute(
                dead_letters.insert().values(
                    id=new_id(), run_id=run_id, routing_key="steps.notify", body="{}", dead_at=dead_at
                )
            )


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def stores(
    request: pytest.FixtureRequest, tmp_path: Path, postgres_database: Any
) -> AsyncIterator[Stores]:
    async with AsyncExitStack() as stack:
        if request.param == "sqlite":
            url = f"sqlite+aiosqlite:///{tmp_path / 'history.db'}"
        else:
            url = await stack.enter_async_context(postgres_database())
        history, letters = HistoryStore(url), DeadLetterStore(url)
        stack.push_async_callback(history.close)
        stack.push_async_callback(letters.close)
        await history.ensure_schema()
        await letters.ensure_schema()
        yield Stores(history, letters, FolderBlobStore(tmp_path / "blobs"))


async def test_runs_past_retention_go_with_their_steps_dead_letters_and_blobs(stores: Stores) -> None:
    for index in range(5):
        await complete_run(
            stores.history, f"old-{index}", submitted=NOW - dt.timedelta(days=29, minutes=index)
        )
        await stores.blobs.put(f"runs/old-{index}/render/1/chart.png", b"png", "image/png")
        await stores.dead_letter(f"old-{index}", NOW - dt.timedelta(days=29))
    await complete_run(stores.history, "recent", submitted=NOW - dt.timedelta(days=27))
    await stores.blobs.put("runs/recent/render/1/chart.png", b"png", "image/png")
    await stores.dead_letter("recent", NOW - dt.timedelta(days=27))
    await stores.dead_letter(None, NOW - dt.timedelta(days=40))
    await stores.dead_letter(None, NOW - dt.timedelta(days=1))

    # Two replicas sweeping at once, in batches of two, delete each run once between them.
    deleted = await asyncio.gather(
        stores.retention().sweep(NOW, batch=2), stores.retention().sweep(NOW, batch=2)
    )

    assert sum(deleted) == 5
    for index in range(5):
        assert await stores.history.get_run(f"old-{index}") is None
        assert not await stores.blobs.exists(f"runs/old-{index}/render/1/chart.png")
    assert not (stores.blobs.root / "runs" / "old-0").exists()
    assert await stores.history.get_run("recent") is not None
    assert await stores.blobs.exists("runs/recent/render/1/chart.png")
    left = await stores.letters.all()
    assert sorted(str(letter["run_id"]) for letter in left) == ["None", "recent"]
    assert await stores.retention().sweep(NOW) == 0
    assert await stores.retention(days=1).sweep(NOW) == 1


async def test_test_runs_go_after_their_own_hours_and_real_runs_stay_their_days(stores: Stores) -> None:
    hours = dt.timedelta(hours=1)
    for run_id, ago, dry in (("tested", 49, True), ("tested-lately", 47, True), ("real", 49, False)):
        completed = await complete_run(stores.history, run_id, submitted=NOW - ago * hours, dry_run=dry)
        # A test run's end is not announced: no flow follows it.
        assert (completed is None) == dry
        await stores.blobs.put(f"runs/{run_id}/render/1/chart.png", b"png", "image/png")

    assert await stores.retention().sweep(NOW) == 1

    assert await stores.history.get_run("tested") is None
    assert not await stores.blobs.exists("runs/tested/render/1/chart.png")
    kept = await stores.history.get_run("tested-lately")
    assert kept is not None
    assert kept["dry_run"] is True
    assert await stores.history.get_run("real") is not None
    shorter = Retention(stores.history, stores.letters, stores.blobs, Settings(dry_run_retention_hours=1))
    assert await shorter.sweep(NOW) == 1
    assert await stores.history.get_run("tested-lately") is None


async def test_a_re_run_reopens_a_failed_run_once(stores: Stores) -> None:
    store = stores.history
    error = ErrorInfo(code=ErrorCode.KUSTO_SEMANTIC_ERROR, message="no such table")
    await store.apply(event("run-bad", StepKind.TRIGGER, StepStatus.RUNNING, 0, run=run_info()))
    await store.apply(event("run-bad", StepKind.TRIGGER, StepStatus.SUCCEEDED, 1))
    await store.apply(event("run-bad", StepKind.QUERY, StepStatus.FAILED, 2, error=error))

    assert await store.queue_attempt("run-bad", "render", reopen=True) is None
    assert await store.queue_attempt("run-bad", "query", reopen=True) == 2
    assert await store.queue_attempt("run-bad", "query", reopen=True) is None

    run = await store.get_run("run-bad")
    assert run is not None
    assert (run["status"], run["error"], run["failed_step"]) == ("running", None, None)
    statuses = [(s["step_id"], s["attempt"], s["status"]) for s in run["steps"]]
    assert statuses == [
        ("trigger", 1, "succeeded"),
        ("query", 1, "failed"),
        ("query", 2, "pending"),
        ("render", 1, "pending"),
        ("notify", 1, "pending"),
        ("record", 1, "pending"),
    ]
    assert run["steps"][2]["queued_at"] is not None

    await store.restore_failed(
        "run-bad", "query", 2, ErrorInfo(code=ErrorCode.INTERNAL, message="broker away")
    )
    again = await store.get_run("run-bad")
    assert again is not None
    assert (again["status"], again["failed_step"], again["error"]["message"]) == (
        "failed",
        "query",
        "broker away",
    )


async def test_a_resend_queues_an_attempt_of_an_ended_run_and_keeps_its_status(stores: Stores) -> None:
    store = stores.history
    await store.apply(event("run-on", StepKind.TRIGGER, StepStatus.RUNNING, 0, run=run_info()))
    assert await store.queue_attempt("run-on", "notify", reopen=False) is None
    await complete_run(store, "run-ok")

    assert await store.queue_attempt("run-ok", "notify", reopen=False) == 2
    assert await store.queue_attempt("run-nope", "notify", reopen=False) is None
    run = await store.get_run("run-ok")
    assert run is not None
    assert run["status"] == "succeeded"
    assert [(s["attempt"], s["status"]) for s in run["steps"] if s["step_id"] == "notify"] == [
        (1, "succeeded"),
        (2, "pending"),
    ]


async def test_blobs_no_run_leads_to_go_by_their_own_age(stores: Stores) -> None:
    await stores.blobs.put("runs/orphan/render/1/chart.png", b"png", "image/png")

    assert await stores.retention().sweep(utcnow()) == 0
    assert await stores.blobs.exists("runs/orphan/render/1/chart.png")

    assert await stores.retention().sweep(utcnow() + dt.timedelta(days=29)) == 0
    assert not await stores.blobs.exists("runs/orphan/render/1/chart.png")
    assert not (stores.blobs.root / "runs").exists()
