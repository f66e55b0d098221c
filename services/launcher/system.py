"""All five services in one process, on embedded defaults.

The local Kusto endpoint (duckdb-kql, loopback only) stands in for a
cluster, an aiosmtpd server writes every email to an outbox folder (and a webhook
outbox every post to a webhook name not configured), history
lives in SQLite and blobs in a folder. The broker is in-process unless
``ADXFLOW_AMQP_URL`` is set, in which case the same services talk through
RabbitMQ. The services themselves are the deployed ones, unchanged.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass

from common.platform import tracing
from common.platform.config import Settings
from common.platform.runtime import Runtime, load_connections
from services.embedded.hook_outbox import HookOutbox
from services.embedded.kusto.endpoint import LocalKusto, start_local_kusto
from services.embedded.outbox import Outbox
from services.history import service as history
from services.notifier import service as notifier
from services.query_worker import service as query_worker
from services.render import service as render
from services.trigger import service as trigger

#: The connection name embedded mode gives its local endpoint.
LOCAL_CONNECTION = "local"


@dataclass
class EmbeddedSystem:
    runtime: Runtime
    kusto: LocalKusto
    outbox: Outbox | None
    #: Where posts to webhook names the operator did not configure go.
    hooks: HookOutbox
    trigger_url: str
    history_url: str


@asynccontextmanager
async def embedded_system(settings: Settings) -> AsyncIterator[EmbeddedSystem]:
    async with AsyncExitStack() as stack:
        # One tracer provider for the five services, as service.name adxflow; each step's span
        # names its service (adxflow.service).
        await stack.enter_async_context(tracing.configured(""))
        kusto = await asyncio.to_thread(start_local_kusto, settings.data_dir, settings.local_kusto_port)
        stack.enter_context(kusto)
        outbox = None
        if settings.embedded_smtp:
            outbox = Outbox(settings.resolved_outbox_dir, port=settings.smtp_port)
            await stack.enter_async_context(outbox)
            settings = settings.model_copy(update={"smtp_host": "127.0.0.1", "smtp_port": outbox.port})

        hooks = await stack.enter_async_context(HookOutbox(settings.data_dir / "webhooks"))
        connections = load_connections(settings)
        connections.add_local(LOCAL_CONNECTION, kusto.url)
        connections.add_webhook_sink(hooks.url)
        runtime = Runtime.build(settings, name="embedded", connections=connections)
        await stack.enter_async_context(runtime)

        history_server = await stack.enter_async_context(history.running(runtime))
        runtime.history_url = settings.history_public_url or history_server.url
        for service in (query_worker, render, notifier):
            await stack.enter_async_context(service.running(runtime))
        trigger_server = await stack.enter_async_context(trigger.running(runtime))
        runtime.trigger_url = settings.trigger_public_url or trigger_server.url
        try:
            yield EmbeddedSystem(
                runtime=runtime,
                kusto=kusto,
                outbox=outbox,
                hooks=hooks,
                trigger_url=trigger_server.url,
                history_url=runtime.history_url,
            )
        finally:
            # Stop consuming and let in-flight steps finish (or cancel them) before
            # the services they need are torn down; the broker closes last.
            await runtime.broker.stop_consuming(grace=settings.shutdown_grace_seconds)
