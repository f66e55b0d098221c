"""Running one step of a routing slip, the same way in every service.

A :class:`StepWorker` takes a :class:`~common.contracts.RunMessage` from its
queue, tells history the step is running, performs it, and then either
records the failure (a run never stays ``running`` because a service raised)
or records the success and forwards the slip to the next step's queue. The
message is acknowledged only after those publishes were confirmed, so a crash
in between redelivers it; steps are idempotent on ``(run_id, step_id,
attempt)``.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Awaitable, Callable

import structlog
from pydantic import ValidationError

from common.broker import Broker, Delivery
from common.contracts import (
    SERVICE_OF,
    ErrorCode,
    ErrorInfo,
    RunInfo,
    RunMessage,
    StatusEvent,
    StepKind,
    StepOutput,
    StepStatus,
    utcnow,
)
from common.errors import AdxflowError, DeadLetter
from common.logs import run_context

log = structlog.get_logger(__name__)

Perform = Callable[[RunMessage], Awaitable[StepOutput]]


async def emit(
    broker: Broker,
    message: RunMessage,
    status: StepStatus,
    *,
    started_at: dt.datetime | None = None,
    output: StepOutput | None = None,
    error: ErrorInfo | None = None,
    with_run: bool = False,
) -> None:
    """Publish a status event for the message's current step."""
    step = message.step
    event = StatusEvent(
        run_id=message.run_id,
        step_id=message.step_id,
        attempt=message.attempt,
        kind=step.kind,
        service=SERVICE_OF[step.kind],
        status=status,
        started_at=started_at,
        finished_at=utcnow() if status.terminal else None,
        row_count=output.row_count if output else None,
        artifacts=output.artifacts if output else {},
        error=error,
        run=RunInfo.of(message) if with_run else None,
    )
    await broker.publish_model(broker.topology.status_key, event, message_id=event.event_id)


async def forward(broker: Broker, message: RunMessage, output: StepOutput) -> None:
    """Send the slip on to its next step, if there is one."""
    following = message.next_step()
    if following is None:
        return
    onward = message.forwarded(output, following)
    await broker.publish_model(
        broker.topology.step_key(following.kind),
        onward,
        message_id=f"{onward.run_id}:{onward.step_id}:{onward.attempt}",
    )


class StepWorker:
    """Consumes the queue of one step kind and performs each step with *perform*."""

    def __init__(self, broker: Broker, kind: StepKind, perform: Perform) -> None:
        self.broker = broker
        self.kind = kind
        self.perform = perform

    async def start(self, prefetch: int) -> None:
        await self.broker.consume(self.broker.topology.step_queue(self.kind), self.handle, prefetch=prefetch)

    async def handle(self, delivery: Delivery) -> None:
        try:
            message = RunMessage.model_validate_json(delivery.body)
        except ValidationError as exc:
            log.error("unreadable run message", error=str(exc), message_id=delivery.message_id)
            raise DeadLetter from exc
        with run_context(message.run_id, message.step_id, message.attempt):
            await self._run(message)

    async def _run(self, message: RunMessage) -> None:
        started = utcnow()
        await emit(self.broker, message, StepStatus.RUNNING, started_at=started)
        try:
            output = await self.perform(message)
        except AdxflowError as exc:
            log.warning("step failed", code=exc.code.value, error=exc.message)
            await emit(self.broker, message, StepStatus.FAILED, started_at=started, error=exc.info())
            return
        except Exception as exc:
            log.exception("step failed unexpectedly")
            error = ErrorInfo(
                code=ErrorCode.INTERNAL,
                message=f"{SERVICE_OF[self.kind].value} failed unexpectedly: {type(exc).__name__}: {exc}",
                retryable=False,
            )
            await emit(self.broker, message, StepStatus.FAILED, started_at=started, error=error)
            return
        await emit(self.broker, message, StepStatus.SUCCEEDED, started_at=started, output=output)
        await forward(self.broker, message, output)
        log.info("step succeeded", row_count=output.row_count)
