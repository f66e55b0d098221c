"""The history service: records every status event and serves the run history.

It also performs a run's last step, ``record``, like any other step (its
status events travel through the same queue, after those of the steps before
it): when the routing slip reaches it, every earlier step has succeeded, and
once it checks that their artifacts are all in the blob store the run is
complete.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import structlog
from pydantic import ValidationError

from common.broker import Delivery
from common.contracts import RunMessage, StatusEvent, StepKind, StepOutput
from common.errors import ArtifactMissing, DeadLetter
from common.http import HttpServer, require_token_off_loopback
from common.logs import run_context
from common.runtime import Runtime
from common.steps import StepWorker
from services.history.api import create_app
from services.history.store import HistoryStore

log = structlog.get_logger(__name__)


class Recorder:
    def __init__(self, store: HistoryStore, runtime: Runtime) -> None:
        self.store = store
        self.runtime = runtime

    async def on_status(self, delivery: Delivery) -> None:
        try:
            event = StatusEvent.model_validate_json(delivery.body)
        except ValidationError as exc:
            log.error("unreadable status event", error=str(exc), message_id=delivery.message_id)
            raise DeadLetter from exc
        with run_context(event.run_id, event.step_id, event.attempt):
            completed = await self.store.apply(event)
            if completed is not None:
                broker = self.runtime.broker
                await broker.publish_model(
                    broker.topology.run_completed_key, completed, message_id=f"{completed.run_id}:completed"
                )

    async def record(self, message: RunMessage) -> StepOutput:
        """Close the run's archive: every artifact an earlier step produced must be there."""
        count = 0
        for output in message.outputs.values():
            for ref in output.artifacts.values():
                if not await self.runtime.blobs.exists(ref.key):
                    raise ArtifactMissing(f"artifact {ref.key!r} recorded by this run is missing")
                count += 1
        return StepOutput(detail={"artifacts": count})


@asynccontextmanager
async def running(runtime: Runtime) -> AsyncIterator[HttpServer]:
    settings = runtime.settings
    require_token_off_loopback(settings.history_host, settings.api_token, "ADXFLOW_HISTORY_HOST")
    store = HistoryStore(settings.resolved_database_url)
    try:
        await store.create_schema()
        recorder = Recorder(store, runtime)
        topology = runtime.broker.topology
        # One at a time keeps a run's events in the order they were published.
        await runtime.broker.consume(topology.status_queue, recorder.on_status, prefetch=1)
        await StepWorker(runtime.broker, StepKind.RECORD, recorder.record).start(settings.prefetch)
        async with HttpServer(
            create_app(runtime, store), settings.history_host, settings.history_port
        ) as server:
            yield server
    finally:
        await store.close()
