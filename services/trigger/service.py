"""The trigger service: the flow and job API, the scheduler, and chained flows."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from common.platform.http import HttpServer, require_token_off_loopback
from common.platform.runtime import Runtime
from common.platform.webhooks import policy_for
from services.trigger.api import create_app
from services.trigger.scheduler import Chainer, Scheduler
from services.trigger.store import FlowStore


@asynccontextmanager
async def running(runtime: Runtime) -> AsyncIterator[HttpServer]:
    settings = runtime.settings
    require_token_off_loopback(settings.trigger_host, settings.api_token, "ADXFLOW_TRIGGER_HOST")
    store = FlowStore(settings.resolved_database_url)
    stop = asyncio.Event()
    scheduler_task: asyncio.Task[None] | None = None
    try:
        await store.ensure_schema(settings.migrate)
        chainer = Chainer(store, runtime.broker)
        await runtime.broker.consume(
            runtime.broker.topology.run_completed_queue, chainer.on_completed, prefetch=1
        )
        scheduler = Scheduler(
            store,
            runtime.broker,
            poll_seconds=settings.scheduler_poll_seconds,
            keep_chained=dt.timedelta(days=settings.retention_days),
        )
        scheduler_task = asyncio.create_task(scheduler.run(stop))
        app = create_app(runtime, store, policy_for(runtime.connections, runtime.settings))
        async with HttpServer(app, settings.trigger_host, settings.trigger_port) as server:
            yield server
    finally:
        stop.set()
        if scheduler_task is not None:
            await scheduler_task
        await store.close()
