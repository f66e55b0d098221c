"""How every service performs a step: events, forwarding, failures."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from common.broker import Delivery, InProcessBroker
from common.contracts import (
    ErrorCode,
    JobRequest,
    RunMessage,
    StatusEvent,
    StepKind,
    StepOutput,
    StepStatus,
    report_itinerary,
    utcnow,
)
from common.errors import KustoError
from common.steps import Perform, StepWorker
from common.topology import Topology


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


def query_message() -> RunMessage:
    job = JobRequest.model_validate(
        {
            "connection": "local",
            "database": "Samples",
            "query": "StormEvents | count",
            "email": {"to": ["a@example.com"], "subject": "s"},
        }
    )
    return RunMessage(
        run_id="r1", step_id="query", submitted_at=utcnow(), job=job, itinerary=report_itinerary()
    )


async def run_step(
    broker: InProcessBroker, perform: Perform, body: bytes | None = None
) -> tuple[list[StatusEvent], int]:
    """Perform one query step; return its status events and how many slips went on to render."""
    topology = broker.topology
    statuses, dead = Collected(), Collected()
    await broker.consume(topology.status_queue, statuses.add)
    await broker.consume(topology.dead_letter_queue, dead.add)
    await StepWorker(broker, StepKind.QUERY, perform).start(prefetch=1)
    await broker.publish(
        topology.step_key(StepKind.QUERY), body or query_message().model_dump_json().encode()
    )
    if body is not None:
        await asyncio.wait_for(dead.arrived.wait(), 5)
        return [], 0

    async def terminal() -> None:
        while not statuses.items or not StatusEvent.model_validate_json(statuses.items[-1]).status.terminal:
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

    assert [e.status for e in events] == [StepStatus.RUNNING, StepStatus.SUCCEEDED]
    assert events[1].row_count == 3
    assert events[1].started_at == events[0].started_at
    assert events[1].finished_at is not None
    assert forwarded == 1


async def test_a_classified_failure_is_recorded_and_not_forwarded(broker: InProcessBroker) -> None:
    async def perform(message: RunMessage) -> StepOutput:
        raise KustoError("Syntax error: unexpected 'by'", code=ErrorCode.KUSTO_SYNTAX_ERROR)

    events, forwarded = await run_step(broker, perform)

    assert [e.status for e in events] == [StepStatus.RUNNING, StepStatus.FAILED]
    assert events[1].error is not None
    assert events[1].error.code is ErrorCode.KUSTO_SYNTAX_ERROR
    assert events[1].error.message == "Syntax error: unexpected 'by'"
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
