"""Running one step of a routing slip, the same way in every service.

A :class:`StepWorker` takes a :class:`~common.contracts.messages.RunMessage` from its
queue, performs it, and then either records the failure (a run never stays
``running`` because a service raised) or records the success and forwards the
slip. A step still running after a moment (``report_after_seconds``) tells
history so, and then keeps saying it now and then; a quicker step sends only
the event of its end, which carries its start time too. The message is acknowledged
only after those publishes were confirmed, so a crash in between redelivers
it; steps are idempotent on ``(run_id, step_id, attempt)``.

Forwarding decides what comes next: a step whose ``when`` is false is skipped
(and history is told so), the second half of a flow step whose first half was
skipped or failed is skipped with it, and a step waiting on something (an
async Kusto operation) comes back to itself after a delay.

Each step is a span (:mod:`common.platform.tracing`), a child of the run's
root span whose context the slip carries; what the step calls (Kusto, the
blob store, SMTP, SQL) are its children.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import random
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, TypeVar, cast

import structlog

from common.contracts.actions import KUSTO_STEPS, PostWebhook, SendEmail
from common.contracts.errors import AdxflowError, Requeue
from common.contracts.flows import flow_of
from common.contracts.messages import (
    SERVICE_OF,
    DeadLetterRecord,
    ErrorCode,
    ErrorInfo,
    RunInfo,
    RunMessage,
    StatusEvent,
    Step,
    StepKind,
    StepOutput,
    StepStatus,
    UnreadableMessage,
    read_message,
    utcnow,
)
from common.contracts.templates import TemplateError, evaluate_condition, template_context
from common.platform import metrics, tracing
from common.platform.broker.interface import Broker, BrokerError, Delivery
from common.platform.config import Settings
from common.platform.database import is_outage
from common.platform.logs import run_context

log = structlog.get_logger(__name__)

Perform = Callable[[RunMessage], Awaitable[StepOutput]]
T = TypeVar("T")


async def all_of(*awaitables: Awaitable[T]) -> list[T]:
    """Await *awaitables* at once; once every one has ended, raise the first failure, if any."""
    outcomes = await asyncio.gather(*awaitables, return_exceptions=True)
    for outcome in outcomes:
        if isinstance(outcome, BaseException):
            raise outcome
    return cast(list[T], outcomes)


class StepParked(Exception):
    """Raised by a step that goes on elsewhere (a scope waiting for its child runs).

    The step is reported running with *detail*; the slip is not forwarded, and the message is
    acknowledged: whoever finishes the step later forwards the run.
    """

    def __init__(self, detail: dict[str, Any], *, report: bool = True) -> None:
        super().__init__("parked")
        self.detail = detail
        #: False for a step whose outcome was reported already (a delivery handled again late).
        self.report = report


class StepPending(Exception):
    """Raised by a step that must wait: come back to the same step after *delay* seconds."""

    def __init__(self, state: dict[str, Any], delay: float) -> None:
        super().__init__(f"waiting {delay:g} s")
        self.state = state
        self.delay = delay


async def emit(
    broker: Broker,
    message: RunMessage,
    status: StepStatus,
    *,
    step: Step | None = None,
    started_at: dt.datetime | None = None,
    output: StepOutput | None = None,
    error: ErrorInfo | None = None,
    continues: bool = False,
    retrying: bool = False,
    with_run: bool = False,
    keep_message: bool = False,
    detail: dict[str, Any] | None = None,
) -> None:
    """Publish a status event for *step* (the message's current step by default).

    *keep_message* sends the run message along, for a failure that ends the run:
    history keeps it, so the run can be re-run from that step.
    """
    step = step or message.step
    event = StatusEvent(
        run_id=message.run_id,
        step_id=step.id,
        attempt=message.attempt,
        flow=message.context.flow,
        kind=step.kind,
        service=SERVICE_OF[step.kind],
        status=status,
        started_at=started_at,
        finished_at=utcnow() if status.terminal else None,
        row_count=output.row_count if output else None,
        artifacts=output.artifacts if output else {},
        detail=output.detail if output else (detail or {}),
        error=error,
        continues=continues,
        retrying=retrying,
        run=RunInfo.of(message) if with_run else None,
        message=message if keep_message else None,
    )
    await broker.publish_model(broker.topology.status_key, event, message_id=event.event_id)


#: Set on the output of a failed step whose failure ends a child run: the rest of the
#: iteration is skipped, and the slip goes on only to the join.
ENDS_ITERATION = "ends_iteration"


def _skip_reason(message: RunMessage, step: Step, came_from: Step) -> str | None:
    """Why *step* should not run, given the slip so far; None when it should."""
    if step.flow_step is None:
        return None
    stopped = next((slip for slip, out in message.outputs.items() if out.detail.get(ENDS_ITERATION)), None)
    if stopped is not None:
        return f"the iteration stopped when step {stopped!r} failed"
    if step.kind is StepKind.ALERT:
        # An alert is evaluated whatever its query did (a failure is its error state), unless the
        # step did not run at all.
        query = message.outputs.get(step.flow_step)
        if query is not None and query.status is StepStatus.SKIPPED:
            return str(query.detail.get("reason", "skipped"))
        return None
    previous = message.outputs.get(came_from.id)
    if came_from.flow_step == step.flow_step:
        # The render half of a query step follows its query half.
        if previous is not None and previous.status is StepStatus.SKIPPED:
            return str(previous.detail.get("reason", "skipped"))
        if previous is not None and previous.status is StepStatus.FAILED:
            return "its query failed"
        return None
    flow = flow_of(message)
    place = flow.places[step.flow_step]
    for condition, branch in place.guards:
        decided = message.outputs.get(condition)
        if decided is None or decided.status is not StepStatus.SUCCEEDED:
            return f"its if step {condition!r} did not decide (it was skipped or failed)"
        if decided.detail.get("branch") != branch:
            taken = decided.detail.get("branch")
            return f"in the {branch} branch of {condition!r}, which took the {taken} branch"
    spec = place.spec
    if isinstance(spec, SendEmail | PostWebhook) and (quiet := _alert_quiet(message)) is not None:
        return quiet
    if spec.when is None or (isinstance(spec, SendEmail | PostWebhook) and spec.for_each):
        # A per-row delivery evaluates its condition for each row itself.
        return None
    field = f"steps.{spec.id}.when"
    if evaluate_condition(spec.when, template_context(message), field=field):
        return None
    return f"when was false: {spec.when}"


async def forward(broker: Broker, message: RunMessage, output: StepOutput) -> None:
    """Record *output* and send the slip on to the next step that should run."""
    if message.resend is not None:
        # A resend redoes one delivery; what came after it has run already.
        return
    came_from = message.step
    following = message.next_step()
    onward = message
    while following is not None:
        onward = onward.forwarded(output, following)
        try:
            reason = _skip_reason(onward, following, came_from)
        except TemplateError as exc:
            await emit(
                broker, onward, StepStatus.FAILED, started_at=utcnow(), error=exc.info(), keep_message=True
            )
            return
        if reason is None:
            await broker.publish_model(
                broker.topology.step_key(following.kind),
                onward,
                message_id=f"{onward.run_id}:{onward.step_id}:{onward.attempt}",
            )
            return
        output = StepOutput(status=StepStatus.SKIPPED, detail={"reason": reason})
        await emit(broker, onward, StepStatus.SKIPPED, output=output)
        came_from, following = following, onward.following(following.id)


async def fail_step(
    broker: Broker,
    message: RunMessage,
    error: ErrorInfo,
    *,
    started_at: dt.datetime | None = None,
    detail: dict[str, Any] | None = None,
    output: StepOutput | None = None,
) -> bool:
    """Report the message's step failed for good, and go on where the flow says; whether the run stops.

    With ``on_failure: continue`` the slip goes on. In a child run, a failure ends the iteration
    but not yet the child run: the slip goes on to the join, which tells the parent, with the steps
    in between skipped (history ends the child run failed when it is recorded). *output* is what
    the step produced all the same (a scope's counts).
    """
    continues = _continues(message)
    ends_iteration = not continues and message.context.scope is not None
    await emit(
        broker,
        message,
        StepStatus.FAILED,
        started_at=started_at,
        output=output,
        error=error,
        continues=continues or ends_iteration,
        keep_message=not continues,
        detail=detail,
    )
    if not (continues or ends_iteration):
        return True
    base = output or StepOutput()
    marks = {ENDS_ITERATION: True} if ends_iteration else {}
    failed = base.model_copy(
        update={"status": StepStatus.FAILED, "error": error, "detail": {**base.detail, **marks}}
    )
    await forward(broker, message, failed)
    return False


def _alert_quiet(message: RunMessage) -> str | None:
    """Why a delivery after the run's alerts is not due: none of them has news; None if one has
    (or the run has no alert)."""
    told = [
        out.detail["alert"]
        for slip, out in message.outputs.items()
        if slip.endswith(".alert") and "alert" in out.detail
    ]
    if not told or any(alert.get("deliver") for alert in told):
        return None
    return "the alert has nothing new to tell: " + "; ".join(map(_quiet_because, told))


def _quiet_because(alert: dict[str, Any]) -> str:
    """An alert's summary, and what it holds back: a mute window's hold, silenced notices."""
    said = [str(alert.get("summary", ""))]
    muted = alert.get("muted")
    if muted:
        until = f" until {muted['until']}" if muted.get("until") else ""
        said.append(f"{muted.get('held', 0)} held by mute window {muted.get('window')}{until}")
    silenced = (alert.get("counts") or {}).get("silenced")
    if silenced:
        said.append(f"{silenced} silenced")
    return ", ".join(said)


def _continues(message: RunMessage) -> bool:
    step = message.step
    if step.flow_step is None:
        return False
    spec = flow_of(message).step(step.flow_step)
    if step.kind in (StepKind.QUERY, StepKind.RENDER) and isinstance(spec, KUSTO_STEPS) and spec.alert:
        # The step's alert evaluates the failure (its error state), and its deliveries may tell it.
        return True
    return spec.on_failure == "continue"


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how far apart a transient failure is tried again."""

    max_attempts: int = 3
    base_seconds: float = 2.0
    max_seconds: float = 300.0
    heartbeat_seconds: float = 30.0
    #: How long a step runs before it tells history it is running (0: at once).
    report_after_seconds: float = 1.0

    @classmethod
    def of(cls, settings: Settings, *, max_attempts: int | None = None) -> RetryPolicy:
        """The settings' policy; *max_attempts* replaces theirs (a service whose steps need more)."""
        return cls(
            max_attempts=settings.max_attempts if max_attempts is None else max_attempts,
            base_seconds=settings.retry_base_seconds,
            max_seconds=settings.retry_max_seconds,
            heartbeat_seconds=settings.heartbeat_seconds,
            report_after_seconds=settings.report_running_after_seconds,
        )

    def ceiling(self, attempt: int) -> float:
        """The longest wait after failed *attempt*; the jitter makes it between half of this and this."""
        return min(self.max_seconds, self.base_seconds * 2 ** (attempt - 1))

    def delay(self, attempt: int) -> float:
        """Exponential backoff with full jitter in its upper half, after failed *attempt*."""
        return self.ceiling(attempt) * random.uniform(0.5, 1.0)


@dataclass
class _Reported:
    """When a step last told history that it is running; None while it has not."""

    at: dt.datetime | None

    def due(self, every: float) -> bool:
        return self.at is None or (utcnow() - self.at).total_seconds() >= every


class StepWorker:
    """Consumes the queue of one step kind and performs each step with *perform*."""

    def __init__(
        self, broker: Broker, kind: StepKind, perform: Perform, policy: RetryPolicy | None = None
    ) -> None:
        self.broker = broker
        self.kind = kind
        self.perform = perform
        self.policy = policy or RetryPolicy()

    async def start(self, prefetch: int) -> None:
        await self.broker.consume(self.broker.topology.step_queue(self.kind), self.handle, prefetch=prefetch)

    async def handle(self, delivery: Delivery) -> None:
        try:
            message = read_message(RunMessage, delivery.body)
        except UnreadableMessage as exc:
            # Kept whole with why (a newer major, say), for replay once this service is upgraded.
            log.error("unreadable run message", error=exc.reason, message_id=delivery.message_id)
            await self.broker.refuse(delivery, exc.reason)
            return
        service = SERVICE_OF[self.kind].value
        with (
            run_context(
                message.run_id, message.step_id, message.attempt, flow=message.context.flow, service=service
            ),
            tracing.step_span(message),
        ):
            await self._run(message)

    def _observe(self, started: dt.datetime, status: StepStatus) -> None:
        seconds = max(0.0, (utcnow() - started).total_seconds())
        service = SERVICE_OF[self.kind].value
        metrics.STEP_DURATION.labels(self.kind.value, service, status.value).observe(seconds)

    async def _run(self, message: RunMessage) -> None:
        pending = message.pending or {}
        started = dt.datetime.fromisoformat(pending["started_at"]) if "started_at" in pending else utcnow()
        reported = _Reported(dt.datetime.fromisoformat(pending["beat_at"]) if "beat_at" in pending else None)
        if reported.at is None and self.policy.report_after_seconds <= 0:
            await self._report_running(message, started, reported)
        try:
            async with self._heartbeat(message, started, reported):
                output = await self.perform(message)
        except Requeue:
            # The step's own outcome is recorded, but what it caused was not all published: handled
            # again, it publishes the rest.
            raise
        except StepParked as parked:
            if parked.report:
                await emit(self.broker, message, StepStatus.RUNNING, started_at=started, detail=parked.detail)
                log.info("step waits for its child runs", children=parked.detail.get("total"))
            return
        except StepPending as waiting:
            # A step that waits shows as running while it waits, and keeps saying so.
            if reported.due(self.policy.heartbeat_seconds):
                await self._report_running(message, started, reported)
            assert reported.at is not None
            state = {**waiting.state, "started_at": started.isoformat(), "beat_at": reported.at.isoformat()}
            again = message.model_copy(update={"pending": state})
            tracing.step_waits(waiting.delay)
            await self.broker.publish_model(
                self.broker.topology.step_key(self.kind), again, delay=waiting.delay
            )
            return
        except AdxflowError as exc:
            log.warning("step failed", code=exc.code.value, error=exc.message)
            await self._fail(message, started, exc.info(), exc.detail)
            return
        except Exception as exc:
            if is_outage(exc):
                # The service's own database is away for a moment: worth another try.
                log.warning("step failed on a database outage", error=str(exc)[:200])
                error = ErrorInfo(
                    code=ErrorCode.INTERNAL,
                    message=f"{SERVICE_OF[self.kind].value} could not reach its database: {exc}"[:2000],
                    retryable=True,
                )
                await self._fail(message, started, error)
                return
            log.exception("step failed unexpectedly")
            error = ErrorInfo(
                code=ErrorCode.INTERNAL,
                message=f"{SERVICE_OF[self.kind].value} failed unexpectedly: {type(exc).__name__}: {exc}",
                retryable=False,
            )
            await self._fail(message, started, error)
            return
        # The slip goes on while history hears of the success: neither waits for the other's
        # confirm. History settles a run by what its events say, in whatever order they come.
        await all_of(
            forward(self.broker, message, output),
            emit(self.broker, message, StepStatus.SUCCEEDED, started_at=started, output=output),
        )
        self._observe(started, StepStatus.SUCCEEDED)
        tracing.step_succeeded(output.row_count)
        log.info("step succeeded", row_count=output.row_count)

    async def _report_running(self, message: RunMessage, started: dt.datetime, reported: _Reported) -> None:
        await emit(self.broker, message, StepStatus.RUNNING, started_at=started)
        reported.at = utcnow()

    @asynccontextmanager
    async def _heartbeat(
        self, message: RunMessage, started: dt.datetime, reported: _Reported
    ) -> AsyncIterator[None]:
        """While the step runs, tell history it is running (once it has run a moment), then now and then."""

        async def beat() -> None:
            if reported.at is None:
                wait = self.policy.report_after_seconds
            else:
                wait = self.policy.heartbeat_seconds - (utcnow() - reported.at).total_seconds()
            while True:
                await asyncio.sleep(max(0.0, wait))
                try:
                    await self._report_running(message, started, reported)
                except BrokerError:
                    log.warning("heartbeat not delivered")
                wait = self.policy.heartbeat_seconds

        task = asyncio.create_task(beat())
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _fail(
        self,
        message: RunMessage,
        started: dt.datetime,
        error: ErrorInfo,
        detail: dict[str, Any] | None = None,
    ) -> None:
        self._observe(started, StepStatus.FAILED)
        retrying = error.retryable and message.attempt < self.policy.max_attempts
        tracing.step_failed(error.code.value, retrying=retrying)
        if retrying:
            delay = self.policy.delay(message.attempt)
            log.info("retrying step", next_attempt=message.attempt + 1, delay_seconds=round(delay, 2))
            metrics.STEP_RETRIES.labels(self.kind.value, error.code.value).inc()
            await emit(
                self.broker,
                message,
                StepStatus.FAILED,
                started_at=started,
                error=error,
                retrying=True,
                detail=detail,
            )
            again = message.model_copy(update={"attempt": message.attempt + 1, "pending": None})
            await self.broker.publish_model(
                self.broker.topology.step_key(self.kind),
                again,
                message_id=f"{again.run_id}:{again.step_id}:{again.attempt}",
                delay=delay,
            )
            return
        if error.retryable:
            # Out of attempts: the run fails, and the message waits in the dead-letter
            # queue, with why, for an operator to replay.
            record = DeadLetterRecord(
                run_id=message.run_id,
                step_id=message.step_id,
                attempt=message.attempt,
                routing_key=self.broker.topology.step_key(self.kind),
                error=error,
                message=message,
            )
            await self.broker.dead_letter(
                record.routing_key, record.model_dump_json().encode(), message_id=f"{message.run_id}:dead"
            )
            metrics.DEAD_LETTERS.labels(self.kind.value, error.code.value).inc()
        await fail_step(self.broker, message, error, started_at=started, detail=detail)
