"""The metrics every service exports: what moves them, and that their labels stay bounded."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import structlog
from prometheus_client.parser import text_string_to_metric_families

from common.contracts.errors import KustoError
from common.contracts.flows import Flow, new_run
from common.contracts.messages import (
    ErrorCode,
    RunContext,
    RunMessage,
    StatusEvent,
    StepKind,
    StepOutput,
    TriggerKind,
)
from common.contracts.topology import Topology
from common.platform import metrics
from common.platform.broker.interface import Delivery
from common.platform.broker.memory import InProcessBroker
from common.platform.http import HttpServer, health_app
from common.platform.steps import RetryPolicy, StepWorker
from services.trigger.scheduler import Scheduler
from services.trigger.store import FlowStore

FLOW: dict[str, Any] = {
    "name": "metrics-test",
    "connection": "local",
    "database": "Samples",
    "steps": [
        {"id": "query", "action": "run_query_and_render_chart", "query": "StormEvents | count"},
        {"id": "mail", "action": "send_email", "to": ["a@example.com"], "subject": "s"},
    ],
}


def sample(name: str, **labels: str) -> float:
    return metrics.REGISTRY.get_sample_value(name, labels) or 0.0


def query_message(run_id: str) -> RunMessage:
    flow = Flow.model_validate(FLOW)
    message = new_run(flow, RunContext(flow=flow.name, trigger=TriggerKind.MANUAL), run_id)
    return message.model_copy(update={"step_id": "query"})


@pytest.fixture
async def broker() -> AsyncIterator[InProcessBroker]:
    async with InProcessBroker(Topology("metrics-test")) as in_process:
        yield in_process


async def perform_once(broker: InProcessBroker, worker: StepWorker, run_id: str) -> list[StatusEvent]:
    """Publish one query step and return its events once the step is over, retries included."""
    events: list[StatusEvent] = []
    over = asyncio.Event()

    async def collect(delivery: Delivery) -> None:
        event = StatusEvent.model_validate_json(delivery.body)
        events.append(event)
        if event.status.terminal and not event.retrying:
            over.set()

    await broker.consume(broker.topology.status_queue, collect)
    await worker.start(prefetch=1)
    body = query_message(run_id).model_dump_json().encode()
    await broker.publish(broker.topology.step_key(StepKind.QUERY), body)
    await asyncio.wait_for(over.wait(), 5)
    # Closing waits for the handler to return, so it has counted what it counts by then.
    await broker.close()
    return events


async def test_a_step_observes_its_duration_by_kind_service_and_status(broker: InProcessBroker) -> None:
    labels = {"kind": "query", "service": "query_worker", "status": "succeeded"}
    before = sample("adxflow_step_duration_seconds_count", **labels)

    async def perform(message: RunMessage) -> StepOutput:
        return StepOutput(row_count=1)

    await perform_once(broker, StepWorker(broker, StepKind.QUERY, perform), "m1")

    assert sample("adxflow_step_duration_seconds_count", **labels) == before + 1


async def test_retries_and_dead_letters_are_counted_by_kind_and_code(broker: InProcessBroker) -> None:
    code = ErrorCode.KUSTO_UNAVAILABLE.value
    retries = sample("adxflow_step_retries_total", kind="query", code=code)
    dead = sample("adxflow_dead_letters_total", kind="query", code=code)
    failures = {"kind": "query", "service": "query_worker", "status": "failed"}
    failed = sample("adxflow_step_duration_seconds_count", **failures)

    async def down(message: RunMessage) -> StepOutput:
        raise KustoError("cluster unreachable", code=ErrorCode.KUSTO_UNAVAILABLE, retryable=True)

    policy = RetryPolicy(max_attempts=3, base_seconds=0.01, max_seconds=0.02)
    await perform_once(broker, StepWorker(broker, StepKind.QUERY, down, policy), "m2")

    assert sample("adxflow_step_retries_total", kind="query", code=code) == retries + 2
    assert sample("adxflow_dead_letters_total", kind="query", code=code) == dead + 1
    assert sample("adxflow_step_duration_seconds_count", **failures) == failed + 3


async def test_every_log_line_of_a_step_names_its_run_step_flow_and_service(broker: InProcessBroker) -> None:
    bound: dict[str, Any] = {}

    async def perform(message: RunMessage) -> StepOutput:
        bound.update(structlog.contextvars.get_contextvars())
        return StepOutput()

    await perform_once(broker, StepWorker(broker, StepKind.QUERY, perform), "m3")

    assert bound["run_id"] == "m3"
    assert bound["step_id"] == "query"
    assert bound["flow"] == "metrics-test"
    assert bound["service"] == "query_worker"


async def test_the_scheduler_observes_how_late_it_fired_a_slot(
    tmp_path: Path, broker: InProcessBroker
) -> None:
    store = FlowStore(f"sqlite+aiosqlite:///{tmp_path / 'flows.db'}")
    await store.ensure_schema()
    saved = dt.datetime(2026, 3, 26, 12, 0, tzinfo=dt.UTC)
    flow = Flow.model_validate({**FLOW, "name": "late", "trigger": {"every": "15m"}})
    count = sample("adxflow_scheduler_lateness_seconds_count")
    total = sample("adxflow_scheduler_lateness_seconds_sum")
    try:
        await store.save(flow, now=saved)
        fired = await Scheduler(store, broker).tick(saved + dt.timedelta(minutes=15, seconds=3))
    finally:
        await store.close()

    assert len(fired) == 1
    assert sample("adxflow_scheduler_lateness_seconds_count") == count + 1
    # Three seconds late when the scheduler took the slot up, plus the moment starting the run took.
    assert sample("adxflow_scheduler_lateness_seconds_sum") == pytest.approx(total + 3, abs=0.5)


def test_no_metric_is_labelled_with_an_unbounded_value() -> None:
    allowed = {"flow", "status", "kind", "service", "code", "connection", "le"}
    for family in metrics.REGISTRY.collect():
        for series in family.samples:
            assert set(series.labels) <= allowed, (family.name, series.labels)


async def test_metrics_are_served_in_the_prometheus_text_format() -> None:
    metrics.EMAILS_SENT.inc()
    app = health_app({}, None)
    async with (
        HttpServer(app, "127.0.0.1", 0) as server,
        aiohttp.ClientSession() as session,
        session.get(f"{server.url}/metrics") as response,
    ):
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        text = await response.text()
    names = {family.name for family in text_string_to_metric_families(text)}
    assert {
        "adxflow_runs",
        "adxflow_step_duration_seconds",
        "adxflow_step_retries",
        "adxflow_dead_letters",
        "adxflow_kusto_query_duration_seconds",
        "adxflow_kusto_rows_read",
        "adxflow_kusto_bytes_read",
        "adxflow_emails_sent",
        "adxflow_webhooks_posted",
        "adxflow_scheduler_lateness_seconds",
    } <= names
    assert "adxflow_emails_sent_total" in text
