"""How every service performs a step: events, forwarding, failures."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from common.contracts.errors import KustoError
from common.contracts.flows import Flow, new_run
from common.contracts.messages import (
    SCHEMA_MINOR,
    SCHEMA_VERSION,
    DeadLetterRecord,
    ErrorCode,
    RunContext,
    RunMessage,
    StatusEvent,
    StepKind,
    StepOutput,
    StepStatus,
    TriggerKind,
)
from common.contracts.topology import Topology
from common.platform.broker.interface import REASON_HEADER, Delivery
from common.platform.broker.memory import InProcessBroker
from common.platform.steps import Perform, RetryPolicy, StepPending, StepWorker, forward


class Collected:
    def __init__(self) -> None:
        self.items: list[bytes] = []
        self.arrived = asyncio.Event()

    async def add(self, delivery: Delivery) -> None:
        self.items.append(delivery.body)
        self.arrived.set()


@pytest.fixture
async def broker() -> AsyncIterator[InProcessBroker]:
    async with InProcessBroker(Topology("steps-test")) as in_process:
        yield in_process


FLOW: dict[str, Any] = {
    "name": "steps-test",
    "connection": "local",
    "database": "Samples",
    "steps": [
        {"id": "query", "action": "run_query_and_render_chart", "query": "StormEvents | count"},
        {"id": "mail", "action": "send_email", "to": ["a@example.com"], "subject": "s"},
    ],
}


def query_message(**flow_changes: Any) -> RunMessage:
    flow = Flow.model_validate({**FLOW, **flow_changes})
    message = new_run(flow, RunContext(flow=flow.name, trigger=TriggerKind.MANUAL), "r1")
    return message.model_copy(update={"step_id": "query"})


async def run_step(
    broker: InProcessBroker,
    perform: Perform,
    body: bytes | None = None,
    message: RunMessage | None = None,
    policy: RetryPolicy | None = None,
) -> tuple[list[StatusEvent], int]:
    """Perform one query step; return its status events and how many slips went on to render."""
    topology = broker.topology
    statuses, dead = Collected(), Collected()
    await broker.consume(topology.status_queue, statuses.add)
    await broker.consume(topology.dead_letter_queue, dead.add)
    await StepWorker(broker, StepKind.QUERY, perform, policy).start(prefetch=1)
    message = message or query_message()
    await broker.publish(topology.step_key(StepKind.QUERY), body or message.model_dump_json().encode())
    if body is not None:
        await asyncio.wait_for(dead.arrived.wait(), 5)
        return [], 0

    def finished() -> bool:
        # The step is over when its last event is terminal and does not let the flow go on;
        # a flow that goes on next reports the step after it, which is skipped here.
        if not statuses.items:
            return False
        last = StatusEvent.model_validate_json(statuses.items[-1])
        return last.status.terminal and not last.continues

    async def terminal() -> None:
        while not finished():
            statuses.arrived.clear()
            await statuses.arrived.wait()

    await asyncio.wait_for(terminal(), 5)
    # Closing waits for the handler to return, so anything it forwards is queued by then.
    await broker.close()
    events = [StatusEvent.model_validate_json(item) for item in statuses.items]
    return events, broker.depth(topology.step_queue(StepKind.RENDER))


async def test_a_successful_step_reports_and_forwards_its_output(broker: InProcessBroker) -> None:
    async def perform(message: RunMessage) -> StepOutput:
        return StepOutput(row_count=3, detail={"columns": ["n:long"]})

    events, forwarded = await run_step(broker, perform)

    # Quicker than the report delay: one event says how it ended, and when it started.
    assert [e.status for e in events] == [StepStatus.SUCCEEDED]
    assert events[0].row_count == 3
    assert events[0].started_at is not None
    assert events[0].finished_at is not None
    assert events[0].started_at <= events[0].finished_at
    assert forwarded == 1


async def test_a_step_still_running_after_the_report_delay_says_so_once_then_ends(
    broker: InProcessBroker,
) -> None:
    events: list[StatusEvent] = []
    reported, ended = asyncio.Event(), asyncio.Event()

    async def take(delivery: Delivery) -> None:
        event = StatusEvent.model_validate_json(delivery.body)
        events.append(event)
        (ended if event.status.terminal else reported).set()

    async def perform(message: RunMessage) -> StepOutput:
        # Runs until history has heard that it runs.
        await asyncio.wait_for(reported.wait(), 5)
        return StepOutput(row_count=1)

    await broker.consume(broker.topology.status_queue, take)
    policy = RetryPolicy(report_after_seconds=0.01, heartbeat_seconds=60)
    await StepWorker(broker, StepKind.QUERY, perform, policy).start(prefetch=1)
    await broker.publish(broker.topology.step_key(StepKind.QUERY), query_message().model_dump_json().encode())
    await asyncio.wait_for(ended.wait(), 5)

    assert [e.status for e in events] == [StepStatus.RUNNING, StepStatus.SUCCEEDED]
    assert events[1].started_at == events[0].started_at


async def test_a_report_delay_of_zero_reports_running_before_the_step_starts(
    broker: InProcessBroker,
) -> None:
    async def perform(message: RunMessage) -> StepOutput:
        return StepOutput(row_count=1)

    events, _ = await run_step(broker, perform, policy=RetryPolicy(report_after_seconds=0))

    assert [e.status for e in events] == [StepStatus.RUNNING, StepStatus.SUCCEEDED]


async def test_a_classified_failure_is_recorded_and_not_forwarded(broker: InProcessBroker) -> None:
    async def perform(message: RunMessage) -> StepOutput:
        raise KustoError("Syntax error: unexpected 'by'", code=ErrorCode.KUSTO_SYNTAX_ERROR)

    events, forwarded = await run_step(broker, perform)

    assert [e.status for e in events] == [StepStatus.FAILED]
    assert events[0].started_at is not None
    assert events[0].error is not None
    assert events[0].error.code is ErrorCode.KUSTO_SYNTAX_ERROR
    assert events[0].error.message == "Syntax error: unexpected 'by'"
    assert forwarded == 0


async def test_an_unexpected_exception_still_ends_the_step(broker: InProcessBroker) -> None:
    async def perform(message: RunMessage) -> StepOutput:
        raise ZeroDivisionError("division by zero")

    events, forwarded = await run_step(broker, perform)

    assert events[-1].status is StepStatus.FAILED
    assert events[-1].error is not None
    assert events[-1].error.code is ErrorCode.INTERNAL
    assert "query_worker" in events[-1].error.message
    assert "ZeroDivisionError" in events[-1].error.message
    assert forwarded == 0


async def test_an_unreadable_message_is_dead_lettered(broker: InProcessBroker) -> None:
    async def perform(message: RunMessage) -> StepOutput:
        raise AssertionError("must not run")

    await run_step(broker, perform, body=b'{"run_id": 1}')


async def refused(broker: InProcessBroker, body: bytes) -> Delivery:
    """The dead letter a query step's worker makes of *body*, which it never performs."""
    dead: asyncio.Queue[Delivery] = asyncio.Queue()

    async def perform(message: RunMessage) -> StepOutput:
        raise AssertionError("must not run")

    await broker.consume(broker.topology.dead_letter_queue, dead.put)
    await StepWorker(broker, StepKind.QUERY, perform).start(prefetch=1)
    await broker.publish(broker.topology.step_key(StepKind.QUERY), body)
    return await asyncio.wait_for(dead.get(), 5)


async def test_a_message_of_a_higher_major_is_dead_lettered_whole_saying_why(
    broker: InProcessBroker,
) -> None:
    body = json.loads(query_message().model_dump_json())
    body["schema_version"] = SCHEMA_VERSION + 1
    sent = json.dumps(body).encode()

    letter = await refused(broker, sent)

    assert letter.body == sent
    reason = str(letter.headers[REASON_HEADER])
    assert reason.startswith("unreadable RunMessage: schema_version: ")
    assert f"{SCHEMA_VERSION + 1} is newer than this reader's {SCHEMA_VERSION}" in reason
    assert letter.routing_key == broker.topology.step_key(StepKind.QUERY)


async def test_a_malformed_message_is_dead_lettered_naming_its_fields(broker: InProcessBroker) -> None:
    letter = await refused(broker, b'{"run_id": 1}')

    assert "run_id: Input should be a valid string" in str(letter.headers[REASON_HEADER])


async def test_a_message_of_a_newer_minor_is_performed_and_forwarded_with_what_it_added(
    broker: InProcessBroker,
) -> None:
    """This release as the older worker: a newer trigger wrote the run."""
    body = json.loads(query_message().model_dump_json())
    body["schema_minor"] = SCHEMA_MINOR + 1
    body["trace_parent"] = "00-abc-01"
    body["flow"]["steps"][0]["cache_minutes"] = 5
    body["flow"]["steps"][1]["priority"] = "urgent"
    seen: list[RunMessage] = []
    rendered: asyncio.Queue[Delivery] = asyncio.Queue()

    async def perform(message: RunMessage) -> StepOutput:
        seen.append(message)
        return StepOutput(row_count=1)

    await broker.consume(broker.topology.step_queue(StepKind.RENDER), rendered.put)
    await StepWorker(broker, StepKind.QUERY, perform).start(prefetch=1)
    await broker.publish(broker.topology.step_key(StepKind.QUERY), json.dumps(body).encode())
    forwarded = json.loads((await asyncio.wait_for(rendered.get(), 5)).body)

    assert [message.step_id for message in seen] == ["query"]
    assert forwarded["step_id"] == "query.render"
    assert forwarded["trace_parent"] == "00-abc-01"
    assert forwarded["flow"]["steps"][0]["cache_minutes"] == 5
    assert forwarded["schema_minor"] == SCHEMA_MINOR + 1


async def test_a_failure_the_flow_continues_past_skips_the_render_half_and_goes_on(
    broker: InProcessBroker,
) -> None:
    async def perform(message: RunMessage) -> StepOutput:
        raise KustoError(".set-or-append failed", code=ErrorCode.KUSTO_SEMANTIC_ERROR)

    steps = [{**FLOW["steps"][0], "on_failure": "continue"}, FLOW["steps"][1]]
    mail: list[RunMessage] = []

    async def take(delivery: Delivery) -> None:
        mail.append(RunMessage.model_validate_json(delivery.body))

    await broker.consume(broker.topology.step_queue(StepKind.NOTIFY), take)
    events, _ = await run_step(broker, perform, message=query_message(steps=steps))

    failed = events[0]
    assert (failed.step_id, failed.status) == ("query", StepStatus.FAILED)
    assert failed.continues is True
    skipped = [e for e in events if e.status is StepStatus.SKIPPED]
    assert [e.step_id for e in skipped] == ["query.render"]
    assert skipped[0].detail == {"reason": "its query failed"}


async def test_a_false_condition_skips_the_step_and_says_why(broker: InProcessBroker) -> None:
    steps = [FLOW["steps"][0], {**FLOW["steps"][1], "when": "{{ steps.query.row_count > 0 }}"}]
    message = query_message(steps=steps)
    statuses: list[StatusEvent] = []
    done = asyncio.Event()

    async def take(delivery: Delivery) -> None:
        statuses.append(StatusEvent.model_validate_json(delivery.body))
        if statuses[-1].step_id == "mail":
            done.set()

    await broker.consume(broker.topology.status_queue, take)
    render = message.forwarded(StepOutput(row_count=0), message.itinerary[2])
    await forward(broker, render, StepOutput(row_count=0))
    await asyncio.wait_for(done.wait(), 5)

    [mail] = [event for event in statuses if event.step_id == "mail"]
    assert mail.status is StepStatus.SKIPPED
    assert "when was false" in mail.detail["reason"]
    assert broker.depth(broker.topology.step_queue(StepKind.NOTIFY)) == 0
    assert broker.depth(broker.topology.step_queue(StepKind.RECORD)) == 1


async def test_a_waiting_step_comes_back_to_itself_with_its_state(broker: InProcessBroker) -> None:
    seen: list[dict[str, Any] | None] = []

    async def perform(message: RunMessage) -> StepOutput:
        seen.append(message.pending)
        if message.pending is None:
            raise StepPending({"operation_id": "op-1"}, delay=0.01)
        return StepOutput(detail={"operation": {"state": "Completed"}})

    events, forwarded = await run_step(broker, perform)

    assert seen[0] is None
    assert seen[1] is not None
    assert seen[1]["operation_id"] == "op-1"
    # The waiting step says it runs before it waits, however quick its first delivery was.
    assert [e.status for e in events] == [StepStatus.RUNNING, StepStatus.SUCCEEDED]
    assert events[1].started_at == events[0].started_at
    assert seen[1]["beat_at"] is not None
    assert forwarded == 1


async def collect_until(
    broker: InProcessBroker, done: Callable[[list[StatusEvent]], bool]
) -> list[StatusEvent]:
    events: list[StatusEvent] = []
    finished = asyncio.Event()

    async def take(delivery: Delivery) -> None:
        events.append(StatusEvent.model_validate_json(delivery.body))
        if done(events):
            finished.set()

    await broker.consume(broker.topology.status_queue, take)
    await asyncio.wait_for(finished.wait(), 10)
    return events


async def test_a_transient_failure_is_tried_again_and_each_attempt_is_reported(
    broker: InProcessBroker,
) -> None:
    async def flaky(message: RunMessage) -> StepOutput:
        if message.attempt == 1:
            raise KustoError("throttled", code=ErrorCode.KUSTO_THROTTLED, retryable=True)
        return StepOutput(row_count=1)

    policy = RetryPolicy(max_attempts=3, base_seconds=0.01, max_seconds=0.05)
    await StepWorker(broker, StepKind.QUERY, flaky, policy).start(prefetch=1)
    await broker.publish(broker.topology.step_key(StepKind.QUERY), query_message().model_dump_json().encode())
    events = await collect_until(broker, lambda seen: seen[-1].status is StepStatus.SUCCEEDED)

    assert [(e.attempt, e.status, e.retrying) for e in events] == [
        (1, StepStatus.FAILED, True),
        (2, StepStatus.SUCCEEDED, False),
    ]


async def test_exhausted_attempts_fail_the_step_and_dead_letter_the_message(broker: InProcessBroker) -> None:
    async def down(message: RunMessage) -> StepOutput:
        raise KustoError("cluster unreachable", code=ErrorCode.KUSTO_UNAVAILABLE, retryable=True)

    dead: list[Delivery] = []
    dead_arrived = asyncio.Event()

    async def keep(delivery: Delivery) -> None:
        dead.append(delivery)
        dead_arrived.set()

    await broker.consume(broker.topology.dead_letter_queue, keep)
    policy = RetryPolicy(max_attempts=2, base_seconds=0.01, max_seconds=0.05)
    await StepWorker(broker, StepKind.QUERY, down, policy).start(prefetch=1)
    await broker.publish(broker.topology.step_key(StepKind.QUERY), query_message().model_dump_json().encode())
    events = await collect_until(
        broker, lambda seen: seen[-1].status is StepStatus.FAILED and not seen[-1].retrying
    )
    await asyncio.wait_for(dead_arrived.wait(), 5)

    assert [(e.attempt, e.status) for e in events if e.status is StepStatus.FAILED] == [
        (1, StepStatus.FAILED),
        (2, StepStatus.FAILED),
    ]
    record = DeadLetterRecord.model_validate_json(dead[0].body)
    assert (record.run_id, record.step_id, record.attempt) == ("r1", "query", 2)
    assert record.error.code is ErrorCode.KUSTO_UNAVAILABLE
    assert record.message.run_id == "r1"


def test_backoff_grows_exponentially_with_jitter_and_a_ceiling() -> None:
    policy = RetryPolicy(base_seconds=2, max_seconds=30)
    for attempt, ceiling in [(1, 2), (2, 4), (3, 8), (4, 16), (5, 30), (9, 30)]:
        delays = [policy.delay(attempt) for _ in range(50)]
        assert all(ceiling / 2 <= delay <= ceiling for delay in delays)
        assert len(set(delays)) > 1


async def test_a_message_an_older_release_wrote_is_performed_with_the_defaults_of_what_it_lacks(
    broker: InProcessBroker,
) -> None:
    """This release as the newer worker: the run was written before schema_minor, resend and pending."""
    body = json.loads(query_message().model_dump_json())
    for added in ("schema_minor", "resend", "pending"):
        del body[added]
    seen: list[RunMessage] = []
    rendered: asyncio.Queue[Delivery] = asyncio.Queue()

    async def perform(message: RunMessage) -> StepOutput:
        seen.append(message)
        return StepOutput(row_count=1)

    await broker.consume(broker.topology.step_queue(StepKind.RENDER), rendered.put)
    await StepWorker(broker, StepKind.QUERY, perform).start(prefetch=1)
    await broker.publish(broker.topology.step_key(StepKind.QUERY), json.dumps(body).encode())
    forwarded = json.loads((await asyncio.wait_for(rendered.get(), 5)).body)

    assert [(message.step_id, message.resend, message.pending) for message in seen] == [("query", None, None)]
    assert forwarded["step_id"] == "query.render"
    assert forwarded["outputs"]["query"]["row_count"] == 1
    assert forwarded["schema_minor"] == SCHEMA_MINOR
