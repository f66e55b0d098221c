"""One service in its own process, against RabbitMQ: what a container runs.

A service package's ``__main__`` and ``adxflow serve NAME`` both come here
with the service's ``running`` context. A service with an HTTP API serves its
own health routes; a worker without one gets a small health server
(``ADXFLOW_HEALTH_PORT``) for ``/healthz``, ``/readyz`` and ``/metrics``.
Traces are exported while it runs when the ``OTEL_*`` variables say where
(:mod:`common.platform.tracing`), and flushed when it stops.
"""

from __future__ import annotations

import asyncio
import signal
import sys
import time
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager, AsyncExitStack
from typing import Any

import structlog

from common.contracts.errors import AdxflowError
from common.platform import tracing
from common.platform.config import Settings, load_settings
from common.platform.http import HttpServer, health_app
from common.platform.logs import configure_logging
from common.platform.runtime import Runtime

log = structlog.get_logger(__name__)

#: What a service package exports as ``running``: its lifespan over a runtime.
Running = Callable[[Runtime], AbstractAsyncContextManager[Any]]


async def until_stopped() -> None:
    """Wait for SIGINT or SIGTERM."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()


async def serve(name: str, running: Running, settings: Settings) -> None:
    """Run the service *name* in this process until a signal stops it."""
    if settings.amqp_url is None:
        raise AdxflowError(
            f"serve {name}: set ADXFLOW_AMQP_URL; a single service cannot share the in-process "
            "broker with the others (use 'adxflow up' for everything in one process)"
        )
    async with AsyncExitStack() as stack:
        # Opened first, closed last: spans of the whole shutdown are flushed before the process ends.
        await stack.enter_async_context(tracing.configured(name))
        runtime = await stack.enter_async_context(Runtime.build(settings, name=name))
        served = await stack.enter_async_context(running(runtime))
        if isinstance(served, HttpServer):
            print(f"adxflow {name} running", file=sys.stderr)
        else:
            # A worker has no API: its health, readiness and metrics get a small server of their own.
            app = health_app(served, settings.api_token)
            health = await stack.enter_async_context(
                HttpServer(app, settings.health_host, settings.health_port)
            )
            print(f"adxflow {name} running; health on {health.url}", file=sys.stderr)
        await until_stopped()
        # In-flight steps get the grace, then are cancelled and awaited; only then does
        # the stack close what they used, in reverse order of opening: the service's own
        # resources (its database, ledger, SMTP pool, Kusto clients), then the broker.
        log.info("stopping", grace_seconds=settings.shutdown_grace_seconds)
        stopping = time.monotonic()
        await runtime.broker.stop_consuming(grace=settings.shutdown_grace_seconds)
    log.info("stopped", seconds=round(time.monotonic() - stopping, 3))


def main(name: str, running: Running) -> None:
    """``python -m services.NAME``: configure logging from the settings and serve until stopped."""
    try:
        settings = load_settings()
        configure_logging(name, level=settings.log_level, fmt=settings.log_format)
        asyncio.run(serve(name, running, settings))
    except AdxflowError as exc:
        print(f"adxflow: {exc.message}", file=sys.stderr)
        raise SystemExit(2) from None
