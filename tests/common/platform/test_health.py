"""Health, readiness and metrics on a service's health server; consumers count towards readiness."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from pydantic import SecretStr

from common.platform import http
from common.platform.broker.interface import Broker, Delivery
from common.platform.http import HttpServer, health_app


async def get(session: aiohttp.ClientSession, url: str, **headers: str) -> tuple[int, Any]:
    async with session.get(url, headers=headers) as response:
        if response.content_type == "application/json":
            return response.status, await response.json()
        return response.status, await response.text()


async def test_readiness_is_every_check_and_health_is_only_being_alive() -> None:
    database_up = True

    async def database() -> bool:
        return database_up

    async def always() -> bool:
        return True

    app = health_app({"broker": always, "database": database}, None)
    async with HttpServer(app, "127.0.0.1", 0) as server, aiohttp.ClientSession() as session:
        assert await get(session, f"{server.url}/healthz") == (200, {"status": "ok"})
        assert await get(session, f"{server.url}/readyz") == (
            200,
            {"ready": True, "checks": {"broker": True, "database": True}},
        )
        database_up = False
        assert await get(session, f"{server.url}/readyz") == (
            503,
            {"ready": False, "checks": {"broker": True, "database": False}},
        )
        assert await get(session, f"{server.url}/healthz") == (200, {"status": "ok"})


async def test_with_a_token_metrics_need_it_and_probes_do_not() -> None:
    async def always() -> bool:
        return True

    app = health_app({"broker": always}, SecretStr("s3cret-token"))
    async with HttpServer(app, "127.0.0.1", 0) as server, aiohttp.ClientSession() as session:
        assert (await get(session, f"{server.url}/healthz"))[0] == 200
        assert (await get(session, f"{server.url}/readyz"))[0] == 200
        assert (await get(session, f"{server.url}/metrics"))[0] == 401
        status, text = await get(session, f"{server.url}/metrics", Authorization="Bearer s3cret-token")
        assert status == 200
        assert "adxflow_runs_total" in text or "# TYPE adxflow_runs counter" in text


async def test_a_broker_is_consuming_only_while_its_consumers_are_attached(broker: Broker) -> None:
    async def ignore(delivery: Delivery) -> None:
        return None

    # Connected but consuming nothing: a service in this state does no work.
    assert await broker.ping() is True
    assert await broker.consuming() is False
    await broker.consume(broker.topology.status_queue, ignore)
    assert await broker.consuming() is True
    await broker.close()
    assert await broker.ping() is False
    assert await broker.consuming() is False


async def test_a_server_closing_gives_a_request_in_progress_its_bounded_time_not_aiohttp_s_minute(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(http, "HTTP_CLOSE_SECONDS", 0.2)
    entered, cancelled = asyncio.Event(), asyncio.Event()

    async def endless(request: web.Request) -> web.Response:
        entered.set()
        try:
            await asyncio.Event().wait()
        finally:
            cancelled.set()
        return web.Response()

    app = web.Application()
    app.router.add_get("/endless", endless)
    server = HttpServer(app, "127.0.0.1", 0)
    await server.start()
    async with aiohttp.ClientSession() as session:
        request = asyncio.create_task(session.get(f"{server.url}/endless"))
        await asyncio.wait_for(entered.wait(), 10)
        # aiohttp's own default would hold close() for 60 s, past this test's wait.
        await asyncio.wait_for(server.close(), 10)
        assert cancelled.is_set()
        with pytest.raises(aiohttp.ClientError):
            await request
