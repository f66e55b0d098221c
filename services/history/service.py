"""The history service: records every status event and serves the run history.

It also performs a run's last step, ``record``, like any other step: when the
routing slip reaches it, every earlier step has succeeded, and once it checks
that their artifacts are all in the blob store the run is complete.

Status events are merged by what they say, not by when they arrive (a step's
success and the slip it forwards go out together, and replicas share the
queue), so several are taken at once and those that arrive while one
transaction commits are merged together in the next.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import sqlalchemy as sa
import structlog

from common.contracts.errors import ArtifactMissing, Requeue
from common.contracts.messages import (
    RunCompleted,
    RunMessage,
    StatusEvent,
    StepKind,
    StepOutput,
    UnreadableMessage,
    read_message,
    utcnow,
)
from common.platform.broker.interface import BrokerError, Delivery
from common.platform.database import is_outage
from common.platform.http import HttpServer, require_token_off_loopback
from common.platform.logs import run_context
from common.platform.runtime import Runtime
from common.platform.steps import RetryPolicy, StepWorker
from services.history.api import create_app
from services.history.dead_letters import DeadLetterStore
from services.history.reruns import Redo
from services.history.retention import Retention
from services.history.store import HistoryStore

log = structlog.get_logger(__name__)

#: Status events taken from the queue at once, and merged in one transaction at most.
STATUS_PREFETCH = 32


class Recorder:
    def __init__(self, store: HistoryStore, runtime: Runtime, redo: Redo) -> None:
        self.store = store
        self.runtime = runtime
        self.redo = redo
        #: Events waiting for the next transaction, each with whoever awaits its outcome.
        self._waiting: list[tuple[StatusEvent, asyncio.Future[RunCompleted | None]]] = []
        self._merging: asyncio.Task[None] | None = None

    async def on_status(self, delivery: Delivery) -> None:
        try:
            event = read_message(StatusEvent, delivery.body)
        except UnreadableMessage as exc:
            log.error("unreadable status event", error=exc.reason, message_id=delivery.message_id)
            await self.runtime.broker.refuse(delivery, exc.reason)
            return
        with run_context(event.run_id, event.step_id, event.attempt, flow=event.flow, service="history"):
            if event.message is not None:
                # A failure that ends the run: keep the run as it stood, to re-run it from here.
                await self.redo.keep(event.message)
            completed = await self._apply(event)
            if completed is not None:
                await self.announce(completed)

    async def _apply(self, event: StatusEvent) -> RunCompleted | None:
        """Record *event*, waiting out a database that is briefly away.

        The event is acknowledged only after it is committed. While the
        database is unreachable the handler keeps the message (rather than
        handing it back at once, which would burn through the broker's
        delivery limit in milliseconds) and tries again with backoff; after the
        wait it gives the message back for a later delivery.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.runtime.settings.database_outage_seconds
        pause = 0.2
        while True:
            try:
                return await self._merged(event)
            except Exception as exc:
                if not is_outage(exc):
                    raise
                if loop.time() + pause > deadline:
                    log.error("database unreachable; the event goes back to the queue", error=str(exc)[:200])
                    raise Requeue from exc
                log.warning("database unreachable; waiting", error=str(exc)[:200], retry_in=pause)
                await asyncio.sleep(pause)
                pause = min(pause * 2, 5.0)

    async def _merged(self, event: StatusEvent) -> RunCompleted | None:
        """Merge *event* together with the others waiting: one transaction for them all."""
        outcome: asyncio.Future[RunCompleted | None] = asyncio.get_running_loop().create_future()
        self._waiting.append((event, outcome))
        if self._merging is None or self._merging.done():
            self._merging = asyncio.create_task(self._merge_waiting())
        return await outcome

    async def _merge_waiting(self) -> None:
        while self._waiting:
            batch, self._waiting = self._waiting[:STATUS_PREFETCH], self._waiting[STATUS_PREFETCH:]
            try:
                results = await self.store.apply_all([event for event, _ in batch])
            except Exception as exc:
                if len(batch) == 1 or is_outage(exc):
                    for _, outcome in batch:
                        _settle(outcome, error=exc)
                    continue
                # One event the database refuses must not fail the others: each on its own.
                for event, outcome in batch:
                    try:
                        _settle(outcome, await self.store.apply(event))
                    except Exception as alone:
                        _settle(outcome, error=alone)
                continue
            for (_, outcome), completed in zip(batch, results, strict=True):
                _settle(outcome, completed)

    async def announce(self, completed: RunCompleted) -> None:
        broker = self.runtime.broker
        await broker.publish_model(
            broker.topology.run_completed_key, completed, message_id=f"{completed.run_id}:completed"
        )

    async def watch_stalled(self, stop: asyncio.Event) -> None:
        """Fail runs that stopped making progress; every replica may do it, the update is idempotent."""
        settings = self.runtime.settings
        quiet_for = dt.timedelta(seconds=settings.query_timeout_seconds + settings.stall_grace_seconds)
        every = min(60.0, quiet_for.total_seconds() / 4)
        while not stop.is_set():
            try:
                for completed in await self.store.fail_stalled(utcnow(), quiet_for):
                    log.warning("run stalled", run_id=completed.run_id, flow=completed.flow)
                    await self.announce(completed)
            except (BrokerError, sa.exc.SQLAlchemyError, OSError):
                log.exception("stalled-run check failed; retrying")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), every)

    async def record(self, message: RunMessage) -> StepOutput:
        """Close the run's archive: every artifact an earlier step produced must be there."""
        keys = [ref.key for output in message.outputs.values() for ref in output.artifacts.values()]
        missing = await self.runtime.blobs.missing(keys)
        if missing:
            raise ArtifactMissing(f"artifact {missing[0]!r} recorded by this run is missing")
        await self.redo.keep(message)
        return StepOutput(detail={"artifacts": len(keys)})


def _settle(
    outcome: asyncio.Future[RunCompleted | None],
    completed: RunCompleted | None = None,
    *,
    error: BaseException | None = None,
) -> None:
    # A handler taken away meanwhile (its delivery cancelled) no longer waits for its outcome.
    if outcome.done():
        return
    if error is not None:
        outcome.set_exception(error)
    else:
        outcome.set_result(completed)


@asynccontextmanager
async def running(runtime: Runtime) -> AsyncIterator[HttpServer]:
    settings = runtime.settings
    require_token_off_loopback(settings.history_host, settings.api_token, "ADXFLOW_HISTORY_HOST")
    store = HistoryStore(settings.resolved_database_url)
    letters = DeadLetterStore(settings.resolved_database_url)
    stop = asyncio.Event()
    tasks: list[asyncio.Task[None]] = []
    try:
        await store.ensure_schema(settings.migrate)
        await letters.ensure_schema(settings.migrate)
        redo = Redo(store, letters, runtime)
        recorder = Recorder(store, runtime, redo)
        topology = runtime.broker.topology
        await runtime.broker.consume(topology.status_queue, recorder.on_status, prefetch=STATUS_PREFETCH)
        await runtime.broker.consume(topology.dead_letter_queue, letters.keep, prefetch=1)
        retention = Retention(store, letters, runtime.blobs, settings)
        tasks += [asyncio.create_task(recorder.watch_stalled(stop)), asyncio.create_task(retention.run(stop))]
        await StepWorker(
            runtime.broker, StepKind.RECORD, recorder.record, RetryPolicy.of(runtime.settings)
        ).start(settings.prefetch)
        app = create_app(runtime, store, letters, redo)
        async with HttpServer(app, settings.history_host, settings.history_port) as server:
            yield server
    finally:
        stop.set()
        for task in tasks:
            await task
        await letters.close()
        await store.close()
