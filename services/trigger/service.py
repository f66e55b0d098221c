"""The trigger service: the job API."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from common.http import HttpServer, require_token_off_loopback
from common.runtime import Runtime
from services.trigger.api import create_app


@asynccontextmanager
async def running(runtime: Runtime) -> AsyncIterator[HttpServer]:
    settings = runtime.settings
    require_token_off_loopback(settings.trigger_host, settings.api_token, "ADXFLOW_TRIGGER_HOST")
    async with HttpServer(create_app(runtime), settings.trigger_host, settings.trigger_port) as server:
        yield server
