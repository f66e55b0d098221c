"""The run-history API over real HTTP, on a SQLite store."""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from common.contracts.messages import (
    SERVICE_OF,
    RunInfo,
    StatusEvent,
    Step,
    StepKind,
    StepStatus,
    TriggerKind,
)
from common.contracts.topology import Topology
from common.platform.blobs.folder import FolderBlobStore
from common.platform.broker.memory import InProcessBroker
from common.platform.config import Settings
from common.platform.connections import Connections
from common.platform.http import HttpServer
from common.platform.runtime import Runtime
from services.history.api import create_app
from services.history.dead_letters import DeadLetterStore
from services.history.store import HistoryStore

# The kinds of a run without scope or alert steps, in itinerary order.
#: A run's steps from its start to its record, as a flow of a query, its chart and an email has them.
KINDS = [StepKind.TRIGGER, StepKind.QUERY, StepKind.RENDER, StepKind.NOTIFY, StepKind.RECORD]

ITINERARY = [Step(id=kind.value, kind=kind) for kind in KINDS]
T0 = dt.datetime(2026, 3, 1, 6, 0, tzinfo=dt.UTC)


class Client:
    def __init__(self, url: str, session: aiohttp.ClientSession, store: HistoryStore, blobs: FolderBlobStore):
        self.url = url
        self.session = session
        self.store = store
        self.blobs = blobs

    async def get(self, path: str) -> tuple[int, Any]:
        async with self.session.get(self.url + path) as response:
            if response.content_type == "application/json":
                return response.status, await response.json()
            return response.status, await response.read()

    async def post(self, path: str, body: Any = None) -> tuple[int, Any]:
        async with self.session.post(self.url + path, json=body) as response:
            return response.status, await response.json()


@pytest.fixture
async def client(tmp_path: Path) -> AsyncIterator[Client]:
    settings = Settings(data_dir=tmp_path)
    blobs = FolderBlobStore(tmp_path / "blobs")
    runtime = Runtime(
        settings=settings,
        broker=InProcessBroker(Topology("history-api")),
        blobs=blobs,
        connections=Connections(),
    )
    store = HistoryStore(f"sqlite+aiosqlite:///{tmp_path / 'h.db'}")
    await store.ensure_schema()
    letters = DeadLetterStore(f"sqlite+aiosqlite:///{tmp_path / 'h.db'}")
    await letters.ensure_schema()
    try:
        async with (
            runtime,
            HttpServer(create_app(runtime, store, letters), "127.0.0.1", 0) as server,
            aiohttp.ClientSession() as session,
        ):
            yield Client(server.url, session, store, blobs)
    finally:
        await letters.close()
        await store.close()


async def seed_run(
    client: Client,
    run_id: str,
    minute: int,
    *,
    fail: bool = False,
    start: dt.datetime = T0,
    step_seconds: float = 1.0,
) -> None:
    submitted = start + dt.timedelta(minutes=minute)
    info = RunInfo(
        flow="storms",
        description=f"run {run_id}",
        trigger=TriggerKind.MANUAL,
        connection="local",
        database="Samples",
        parameters={},
        itinerary=ITINERARY,
        submitted_at=submitted,
    )
    chart = await client.blobs.put(f"runs/{run_id}/render/1/chart.png", b"\x89PNG...", "image/png")
    for index, kind in enumerate(KINDS):
        at = submitted + dt.timedelta(seconds=index * step_seconds)
        failed = fail and kind is StepKind.QUERY
        await client.store.apply(
            StatusEvent(
                run_id=run_id,
                step_id=kind.value,
                kind=kind,
                service=SERVICE_OF[kind],
                status=StepStatus.FAILED if failed else StepStatus.SUCCEEDED,
                started_at=at,
                finished_at=at + dt.timedelta(milliseconds=500),
                artifacts={"chart_png": chart} if kind is StepKind.RENDER else {},
                run=info if kind is StepKind.TRIGGER else None,
            )
        )
        if failed:
            return


async def test_a_run_has_its_steps_and_artifact_links(client: Client) -> None:
    await seed_run(client, "r1", 0)
    status, run = await client.get("/v1/runs/r1")

    assert status == 200
    assert run["status"] == "succeeded"
    assert len(run["steps"]) == 5
    assert all(step["duration_ms"] == 500.0 for step in run["steps"])
    link = run["steps"][2]["artifacts"]["chart_png"]
    assert link["content_type"] == "image/png"
    status, body = await client.get(link["href"])
    assert status == 200
    assert body == b"\x89PNG..."


async def test_a_big_artifact_is_streamed_from_the_blob_store_whole(client: Client) -> None:
    # Three and a half of the store's chunks, so the answer is several writes.
    data = bytes(range(256)) * (14 * 1024 * 1024 // 256)
    await client.blobs.put("runs/big/query/1/result.csv", data, "text/csv")
    async with client.session.get(f"{client.url}/v1/artifacts/runs/big/query/1/result.csv") as response:
        body = await response.read()
        assert response.status == 200
        assert response.content_type == "text/csv"
        assert response.headers["X-Content-Type-Options"] == "nosniff"
        # Streamed as the store hands it over, not loaded and then sent with its length.
        assert response.headers.get("Transfer-Encoding") == "chunked"
    assert body == data


async def test_runs_are_filtered_and_paged(client: Client) -> None:
    for minute in range(3):
        await seed_run(client, f"ok{minute}", minute)
    await seed_run(client, "bad", 10, fail=True)

    status, page = await client.get("/v1/runs?limit=2")
    assert status == 200
    assert [r["run_id"] for r in page["runs"]] == ["bad", "ok2"]
    status, rest = await client.get(f"/v1/runs?limit=2&cursor={page['next_cursor']}")
    assert [r["run_id"] for r in rest["runs"]] == ["ok1", "ok0"]
    assert rest["next_cursor"] is None
    status, failed = await client.get("/v1/runs?status=failed")
    assert [r["run_id"] for r in failed["runs"]] == ["bad"]
    assert failed["runs"][0]["failed_step"] == "query"


@pytest.mark.parametrize(
    ("path", "field"),
    [("/v1/runs?status=lost", "status"), ("/v1/runs?limit=0", "limit"), ("/v1/runs?cursor=@@", "cursor")],
)
async def test_bad_query_parameters_are_named(client: Client, path: str, field: str) -> None:
    status, body = await client.get(path)
    assert status == 400
    assert body["error"]["message"].startswith(f"{field}:")


async def test_unknown_runs_and_artifacts_are_404(client: Client) -> None:
    assert (await client.get("/v1/runs/nope"))[0] == 404
    assert (await client.get("/v1/artifacts/runs/nope/x.png"))[0] == 404
    assert (await client.get("/v1/artifacts/runs/../../etc/passwd"))[0] == 404
    assert (await client.get("/v1/artifacts/other/key"))[0] == 404


async def test_health_and_readiness(client: Client) -> None:
    assert (await client.get("/healthz")) == (200, {"status": "ok"})
    status, ready = await client.get("/readyz")
    # Nothing consumes the fixture's broker: a history that records no events is not ready.
    assert status == 503
    assert ready["checks"] == {"broker": True, "consumers": False, "blob_store": True, "database": True}


async def test_runs_are_filtered_by_time_and_paged_both_ways(client: Client) -> None:
    for minute in range(5):
        await seed_run(client, f"r{minute}", minute)
    since = (T0 + dt.timedelta(minutes=1)).isoformat().replace("+00:00", "Z")
    until = (T0 + dt.timedelta(minutes=4)).isoformat()

    window = f"since={since}&until={until.replace('+', '%2B')}"
    status, page = await client.get(f"/v1/runs?{window}&order=asc&limit=2")
    assert status == 200
    assert [r["run_id"] for r in page["runs"]] == ["r1", "r2"]
    status, rest = await client.get(f"/v1/runs?{window}&order=asc&limit=2&cursor={page['next_cursor']}")
    assert [r["run_id"] for r in rest["runs"]] == ["r3"]
    assert rest["next_cursor"] is None

    status, newest = await client.get(f"/v1/runs?{window}&limit=2")
    assert [r["run_id"] for r in newest["runs"]] == ["r3", "r2"]
    status, older = await client.get(f"/v1/runs?{window}&limit=2&cursor={newest['next_cursor']}")
    assert [r["run_id"] for r in older["runs"]] == ["r1"]

    status, body = await client.get(f"/v1/runs?order=asc&cursor={newest['next_cursor']}")
    assert status == 400
    assert body["error"]["message"].startswith("cursor:")
    status, naive = await client.get("/v1/runs?since=2026-03-01T06:02:00&order=asc")
    assert [r["run_id"] for r in naive["runs"]] == ["r2", "r3", "r4"]


@pytest.mark.parametrize(
    ("path", "field"),
    [
        ("/v1/runs?since=yesterday", "since"),
        ("/v1/runs?until=2026-13-01", "until"),
        ("/v1/runs?order=up", "order"),
        ("/v1/flows/storms/stats?window=7w", "window"),
        ("/v1/flows/storms/stats?window=400d", "window"),
    ],
)
async def test_bad_times_orders_and_windows_are_named(client: Client, path: str, field: str) -> None:
    status, body = await client.get(path)
    assert status == 400
    assert body["error"]["message"].startswith(f"{field}:")


async def test_a_run_shows_when_each_attempt_was_queued_and_what_it_ran(client: Client) -> None:
    await seed_run(client, "r1", 0)
    status, run = await client.get("/v1/runs/r1")

    assert status == 200
    queued = [step["queued_at"] for step in run["steps"]]
    assert queued[0] == run["submitted_at"]
    assert queued[1] == run["steps"][0]["finished_at"]
    assert all(step["query"] is None and step["truncated"] is False for step in run["steps"])


async def test_flow_stats_count_outcomes_and_duration_percentiles(client: Client) -> None:
    now = dt.datetime.now(dt.UTC)
    for index, seconds in enumerate([1.0, 2.0, 3.0, 4.0]):
        await seed_run(client, f"ok{index}", -10 - index, start=now, step_seconds=seconds)
    await seed_run(client, "bad", -5, start=now, fail=True)
    await seed_run(client, "old", -3 * 24 * 60, start=now)

    status, day = await client.get("/v1/flows/storms/stats?window=24h")
    assert status == 200
    assert (day["runs"], day["succeeded"], day["failed"], day["unfinished"]) == (5, 4, 1, 0)
    assert day["success_rate"] == 0.8
    # Durations: 4.5, 8.5, 12.5 and 16.5 s (steps 1-4 s apart), the failed run 1.5 s.
    assert day["duration_ms"] == {"p50": 8500.0, "p95": 15700.0}
    status, week = await client.get("/v1/flows/storms/stats")
    assert (week["window"], week["runs"]) == ("7d", 6)
    status, other = await client.get("/v1/flows/other/stats?window=1h")
    assert (other["runs"], other["success_rate"], other["duration_ms"]["p50"]) == (0, None, None)


async def test_resend_and_rerun_refuse_what_they_cannot_do(client: Client) -> None:
    await seed_run(client, "ok", 0)
    await seed_run(client, "bad", 1, fail=True)

    assert (await client.post("/v1/runs/nope/resend"))[0] == 404
    assert (await client.post("/v1/runs/nope/rerun"))[0] == 404
    status, body = await client.post("/v1/runs/ok/rerun")
    assert status == 409
    assert "only a failed run can be re-run" in body["error"]["message"]
    status, body = await client.post("/v1/runs/bad/rerun")
    assert status == 409
    assert "no message of run bad was kept" in body["error"]["message"]
    status, body = await client.post("/v1/runs/ok/resend", {"step": 3})
    assert status == 400
    assert body["error"]["message"].startswith("step:")
