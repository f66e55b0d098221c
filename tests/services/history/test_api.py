"""The run-history API over real HTTP, on a SQLite store."""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from common.blobs import FolderBlobStore
from common.broker import InProcessBroker
from common.config import Settings
from common.connections import Connections
from common.contracts import (
    SERVICE_OF,
    RunInfo,
    StatusEvent,
    Step,
    StepKind,
    StepStatus,
    TriggerKind,
)
from common.http import HttpServer
from common.runtime import Runtime
from common.topology import Topology
from services.history.api import create_app
from services.history.dead_letters import DeadLetterStore
from services.history.store import HistoryStore

ITINERARY = [Step(id=kind.value, kind=kind) for kind in StepKind]
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
    await store.create_schema()
    letters = DeadLetterStore(f"sqlite+aiosqlite:///{tmp_path / 'h.db'}")
    await letters.create_schema()
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


async def seed_run(client: Client, run_id: str, minute: int, *, fail: bool = False) -> None:
    submitted = T0 + dt.timedelta(minutes=minute)
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
    for index, kind in enumerate(StepKind):
        at = submitted + dt.timedelta(seconds=index)
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
    assert status == 200
    assert ready["checks"] == {"broker": True, "database": True, "blob_store": True}
