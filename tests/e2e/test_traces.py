"""The five services as separate processes, exporting OTLP/HTTP to a receiver this test runs:
one run is one trace, its steps in order under the trigger's root span, with the Kusto request,
blob I/O, the SMTP send and SQL under them, and history showing the same trace id."""

from __future__ import annotations

import os
import re
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from services.embedded.kusto.database import ensure_database
from services.embedded.kusto.endpoint import LocalKusto
from services.embedded.outbox import Outbox
from tests.e2e.conftest import System
from tests.e2e.test_processes import SERVICES, Deployment, _delete_topology, free_port
from tests.otlp import OtlpReceiver, ReceivedSpan

#: The services' names in the trace, in the order a report job passes through them.
SERVICE_NAMES = {
    "trigger": "adxflow-trigger",
    "query": "adxflow-query-worker",
    "render": "adxflow-render",
    "notify": "adxflow-notifier",
    "record": "adxflow-history",
}
TRACE_UI = "https://traces.example/trace/{trace_id}"


def _environment(**settings: str) -> dict[str, str]:
    # The test's own OTEL_* settings, if any, stay out: only what each test sets counts.
    return {key: value for key, value in os.environ.items() if not key.startswith("OTEL_")} | settings


@pytest.fixture
async def receiver() -> AsyncIterator[OtlpReceiver]:
    async with OtlpReceiver() as running:
        yield running


async def _deploy(tmp_path: Path, namespace: str, amqp_url: str, wait_until: Any, **settings: str) -> Any:
    stack = AsyncExitStack()
    database = ensure_database(tmp_path / "kusto")
    kusto = stack.enter_context(LocalKusto(database, writable=True))
    smtp = await stack.enter_async_context(Outbox(tmp_path / "smtp"))
    connections = tmp_path / "connections.yaml"
    connections.write_text(f'connections:\n  local: {{cluster: "{kusto.url}", auth: none}}\n')
    trigger_port, history_port = free_port(), free_port()
    env = _environment(
        ADXFLOW_AMQP_URL=amqp_url,
        ADXFLOW_NAMESPACE=namespace,
        ADXFLOW_DATA_DIR=str(tmp_path / "data"),
        ADXFLOW_CONNECTIONS_FILE=str(connections),
        ADXFLOW_SMTP_PORT=str(smtp.port),
        ADXFLOW_TRIGGER_PORT=str(trigger_port),
        ADXFLOW_HISTORY_PORT=str(history_port),
        ADXFLOW_LOG_LEVEL="INFO",
        **settings,
    )
    system = Deployment(
        env,
        f"http://127.0.0.1:{trigger_port}",
        f"http://127.0.0.1:{history_port}",
        smtp,
        log_dir=tmp_path,
    )
    stack.push_async_callback(_delete_topology, amqp_url, namespace)
    stack.push_async_callback(system.stop_all)
    for service in SERVICES:
        await system.start(service)
    async with aiohttp.ClientSession() as session:

        async def ready() -> bool:
            return await system.ready(session)

        await wait_until(ready, timeout=60, what="the services to be ready")
    return system, stack


JOB = {
    "connection": "local",
    "database": "Samples",
    "query": "StormEvents | summarize Events = count() by State | top 5 by Events",
    "parameters": {},
    "chart": "columnchart",
    "email": {"to": ["secret.person@example.com"], "subject": "Storms"},
}


async def _submit_and_finish(system: Deployment, wait_until: Any) -> tuple[str, dict[str, Any], str]:
    async with aiohttp.ClientSession() as session:
        async with session.post(f"{system.trigger_url}/v1/jobs", json=JOB) as response:
            assert response.status == 202
            run_id = str((await response.json())["run_id"])
        finished: dict[str, Any] = {}

        async def ended() -> bool:
            async with session.get(f"{system.history_url}/v1/runs/{run_id}") as response:
                if response.status != 200:
                    return False
                finished.update(await response.json())
                return finished["status"] in ("succeeded", "failed")

        await wait_until(ended, timeout=90, what=f"run {run_id} to end")
        async with session.get(f"{system.history_url}/ui/runs/{run_id}") as response:
            assert response.status == 200
            page = await response.text()
    return run_id, finished, page


def _step_spans(spans: list[ReceivedSpan], run_id: str) -> dict[str, ReceivedSpan]:
    return {
        str(span.attributes["adxflow.step_kind"]): span
        for span in spans
        if span.name.startswith("step ") and span.attributes.get("adxflow.run_id") == run_id
    }


@pytest.mark.rabbitmq
@pytest.mark.timeout(240)
async def test_one_run_through_five_processes_is_one_trace_in_order_with_its_children(
    tmp_path: Path, namespace: str, amqp_url: str, wait_until: Any, receiver: OtlpReceiver
) -> None:
    system, stack = await _deploy(
        tmp_path,
        namespace,
        amqp_url,
        wait_until,
        OTEL_EXPORTER_OTLP_ENDPOINT=receiver.endpoint,
        OTEL_BSP_SCHEDULE_DELAY="100",
        ADXFLOW_TRACE_URL_TEMPLATE=TRACE_UI,
    )
    async with stack:
        run_id, run, page = await _submit_and_finish(system, wait_until)
        assert run["status"] == "succeeded", run

        def whole(spans: list[ReceivedSpan]) -> bool:
            return set(_step_spans(spans, run_id)) == set(SERVICE_NAMES)

        spans = await receiver.wait_for(whole, timeout=60)

    steps = _step_spans(spans, run_id)
    root = steps["trigger"]
    trace_id = root.trace_id
    # One trace for the run: every step span, from five processes, is in it.
    assert {span.trace_id for span in steps.values()} == {trace_id}
    assert {kind: span.service for kind, span in steps.items()} == SERVICE_NAMES
    assert root.parent_id == ""
    assert [kind for kind, _ in sorted(steps.items(), key=lambda item: item[1].start_ns)] == [
        "trigger",
        "query",
        "render",
        "notify",
        "record",
    ]
    assert all(span.parent_id == root.span_id for kind, span in steps.items() if kind != "trigger")
    for kind, span in steps.items():
        assert span.attributes["adxflow.run_id"] == run_id
        assert span.attributes["adxflow.flow"] == "adhoc"
        assert span.attributes["adxflow.step_id"]
        assert span.status != 2, f"step {kind} failed"
    assert steps["query"].attributes["adxflow.row_count"] == 5

    in_trace = [span for span in spans if span.trace_id == trace_id]
    by_id = {span.span_id: span for span in in_trace}

    def step_of(span: ReceivedSpan) -> str | None:
        """The step kind whose span *span* descends from, following parents inside the trace."""
        seen = span
        while seen.parent_id in by_id:
            seen = by_id[seen.parent_id]
            if seen.name.startswith("step "):
                return str(seen.attributes["adxflow.step_kind"])
        return None

    kusto = [span for span in in_trace if span.name == "kusto query"]
    assert [step_of(span) for span in kusto] == ["query"]
    assert kusto[0].parent_id == steps["query"].span_id
    assert kusto[0].kind == 3  # client
    assert kusto[0].attributes["adxflow.row_count"] == 5
    assert kusto[0].attributes["db.namespace"] == "Samples"
    smtp = [span for span in in_trace if span.name == "smtp send"]
    assert [step_of(span) for span in smtp] == ["notify"]
    assert smtp[0].attributes["adxflow.smtp.recipients"] == 1
    blob_steps = {step_of(span) for span in in_trace if span.name.startswith("blob ")}
    assert {"query", "render", "notify"} <= blob_steps
    sql = [span for span in in_trace if "db.query.text" in span.attributes]
    assert sql, "no SQL span in the run's trace"
    assert all(step_of(span) in SERVICE_NAMES for span in sql)
    assert all(span.attributes["db.system.name"] == "sqlite" for span in sql)

    # No secret in any attribute: not the recipient's address.
    values = repr([span.attributes for span in spans])
    assert "secret.person" not in values

    # History shows the same trace id, linked to the trace UI.
    assert run["trace_id"] == trace_id
    link = TRACE_UI.format(trace_id=trace_id)
    assert re.search(rf'<a href="{re.escape(link)}"[^>]*data-trace-id><code>{trace_id}</code></a>', page)

    # Log lines written inside a step carry its trace and span ids.
    logged = (tmp_path / "query_worker.log").read_text()
    assert f'"trace_id": "{trace_id}"' in logged
    assert f'"span_id": "{steps["query"].span_id}"' in logged


@pytest.mark.rabbitmq
@pytest.mark.timeout(240)
async def test_without_otel_settings_runs_carry_no_trace_and_nothing_fails(
    tmp_path: Path, namespace: str, amqp_url: str, wait_until: Any
) -> None:
    system, stack = await _deploy(
        tmp_path, namespace, amqp_url, wait_until, ADXFLOW_TRACE_URL_TEMPLATE=TRACE_UI
    )
    async with stack:
        run_id, run, page = await _submit_and_finish(system, wait_until)
        assert system.processes["trigger"].returncode is None
    assert run["status"] == "succeeded", run
    assert run["trace_id"] is None
    assert "data-trace-id" not in page
    logged = (tmp_path / "query_worker.log").read_text()
    assert run_id in logged
    assert "trace_id" not in logged


@pytest.fixture
def exporting(monkeypatch: pytest.MonkeyPatch, receiver: OtlpReceiver) -> OtlpReceiver:
    """OTEL_* pointing at the receiver, for an embedded system started after it."""
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.endpoint)
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "100")
    monkeypatch.delenv("OTEL_SDK_DISABLED", raising=False)
    monkeypatch.delenv("OTEL_SERVICE_NAME", raising=False)
    return receiver


@pytest.mark.parametrize("system", ["in_process"], indirect=True)
async def test_embedded_mode_traces_a_run_as_one_service_named_adxflow(
    exporting: OtlpReceiver, system: System
) -> None:
    run_id = (await system.submit(JOB))["run_id"]
    run = await system.finished(run_id)
    assert run["status"] == "succeeded", run

    def whole(spans: list[ReceivedSpan]) -> bool:
        return set(_step_spans(spans, run_id)) == set(SERVICE_NAMES)

    spans = await exporting.wait_for(whole, timeout=30)
    steps = _step_spans(spans, run_id)
    root = steps["trigger"]
    assert run["trace_id"] == root.trace_id
    assert {span.service for span in steps.values()} == {"adxflow"}
    assert {kind: span.attributes["adxflow.service"] for kind, span in steps.items()} == {
        "trigger": "trigger",
        "query": "query_worker",
        "render": "render",
        "notify": "notifier",
        "record": "history",
    }
    assert all(span.parent_id == root.span_id for kind, span in steps.items() if kind != "trigger")
    [kusto] = [span for span in spans if span.name == "kusto query" and span.trace_id == root.trace_id]
    assert kusto.parent_id == steps["query"].span_id
    [smtp] = [span for span in spans if span.name == "smtp send" and span.trace_id == root.trace_id]
    assert smtp.parent_id == steps["notify"].span_id

    # A resend starts from the run's kept slip: its step joins the run's trace, under the same root.
    status, body = await system.post(f"/v1/runs/{run_id}/resend")
    assert status == 202, body

    def notifies(spans: list[ReceivedSpan]) -> list[ReceivedSpan]:
        return [s for s in spans if s.name == "step notify" and s.attributes.get("adxflow.run_id") == run_id]

    spans = await exporting.wait_for(lambda spans: len(notifies(spans)) == 2, timeout=30)
    first, resent = sorted(notifies(spans), key=lambda span: span.start_ns)
    assert (resent.trace_id, resent.parent_id) == (root.trace_id, root.span_id)
    assert resent.span_id != first.span_id
