"""The trigger service: the flow and job API, the scheduler, and chained flows."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from common.contracts.messages import StepKind
from common.platform.http import HttpServer, require_token_off_loopback
from common.platform.runtime import Runtime
from common.platform.steps import RetryPolicy, StepWorker
from common.platform.webhooks import policy_for
from services.trigger.alert_store import AlertStore
from services.trigger.alerting import Alerts
from services.trigger.api import create_app
from services.trigger.mute_ends import INTERVAL_SECONDS as MUTE_ENDS_SECONDS
from services.trigger.mute_ends import MuteEnds
from services.trigger.scheduler import Chainer, Scheduler
from services.trigger.scope_store import ScopeStore
from services.trigger.scopes import Scopes
from services.trigger.silences import SilenceStore
from services.trigger.store import FlowStore

#: The scheduler's interval as its supervision sees it, at least: a round firing a burst of slots
#: may take seconds, and must not make the trigger look stuck.
SCHEDULER_TICK_SECONDS = 10.0


@asynccontextmanager
async def running(runtime: Runtime) -> AsyncIterator[HttpServer]:
    settings = runtime.settings
    require_token_off_loopback(settings.trigger_host, settings.api_token, "ADXFLOW_TRIGGER_HOST")
    store = FlowStore(settings.resolved_database_url)
    scope_store = ScopeStore(settings.resolved_database_url)
    alert_store = AlertStore(settings.resolved_database_url)
    silence_store = SilenceStore(settings.resolved_database_url)
    stop = asyncio.Event()
    scheduler_task: asyncio.Task[None] | None = None
    tidy_task: asyncio.Task[None] | None = None
    forget_task: asyncio.Task[None] | None = None
    ends_task: asyncio.Task[None] | None = None
    try:
        await store.ensure_schema(settings.migrate)
        scopes = Scopes(scope_store, runtime)
        await StepWorker(runtime.broker, StepKind.SCOPE, scopes.perform, RetryPolicy.of(settings)).start(
            settings.prefetch
        )
        alerts = Alerts(alert_store, runtime, silence_store)
        await StepWorker(runtime.broker, StepKind.ALERT, alerts.perform, RetryPolicy.of(settings)).start(
            settings.prefetch
        )
        mute_ends = MuteEnds(alert_store, store, runtime)
        ending = runtime.loops.loop("mute_window_ends", MUTE_ENDS_SECONDS)
        ends_task = asyncio.create_task(ending.every(mute_ends.tick, stop))
        forgetting = runtime.loops.loop("alert_retention", settings.retention_interval_seconds)
        forget_task = asyncio.create_task(forgetting.every(alerts.tidy, stop))
        tidying = runtime.loops.loop("scope_retention", settings.retention_interval_seconds)
        tidy_task = asyncio.create_task(tidying.every(scopes.tidy, stop))
        chainer = Chainer(store, runtime.broker)
        chaining = runtime.loops.consumer("chainer")
        await runtime.broker.consume(
            runtime.broker.topology.run_completed_queue, chaining.handler(chainer.on_completed), prefetch=1
        )
        scheduler = Scheduler(
            store,
            runtime.broker,
            poll_seconds=settings.scheduler_poll_seconds,
            keep_chained=dt.timedelta(days=settings.retention_days),
        )
        # A burst of thousands of slots is one round: it counts as stale only well past a poll.
        every = max(settings.scheduler_poll_seconds, SCHEDULER_TICK_SECONDS)
        scheduling = runtime.loops.loop("scheduler", every)
        scheduler_task = asyncio.create_task(
            scheduling.run(lambda: scheduler.run(stop, scheduling.ticked), stop)
        )
        policy = policy_for(runtime.connections, runtime.settings)
        app = create_app(runtime, store, policy, alert_store, silence_store)
        async with HttpServer(app, settings.trigger_host, settings.trigger_port) as server:
            yield server
    finally:
        stop.set()
        if scheduler_task is not None:
            await scheduler_task
        if tidy_task is not None:
            await tidy_task
        if forget_task is not None:
            await forget_task
        if ends_task is not None:
            await ends_task
        await alert_store.close()
        await silence_store.close()
        await scope_store.close()
        await store.close()
