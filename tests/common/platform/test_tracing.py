"""Traces: off unless OTEL_* ask, one trace per run, exported over OTLP/HTTP to a real receiver."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import sqlalchemy as sa
import structlog

from common.contracts.errors import AdxflowError, ConfigurationError, KustoError
from common.contracts.flows import Flow, RunTemplate
from common.contracts.messages import (
    ErrorCode,
    RunContext,
    RunMessage,
    StatusEvent,
    StepOutput,
    TriggerKind,
)
from common.contracts.topology import Topology
from common.platform import tracing
from common.platform.blobs.folder import FolderBlobStore
from common.platform.broker.interface import BrokerError
from common.platform.broker.memory import InProcessBroker
from common.platform.config import load_settings
from common.platform.database import connect
from common.platform.logs import add_trace_ids
from services.trigger.starter import launch
from tests.common.platform.test_steps import FLOW, Collected, run_step
from tests.otlp import OtlpReceiver, ReceivedSpan

_OTEL = (
    "OTEL_SDK_DISABLED",
    "OTEL_TRACES_EXPORTER",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    "OTEL_EXPORTER_OTLP_PROTOCOL",
    "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
    "OTEL_SERVICE_NAME",
)


@pytest.fixture(autouse=True)
def no_otel_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in _OTEL:
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
async def receiver() -> AsyncIterator[OtlpReceiver]:
    async with OtlpReceiver() as running:
        yield running


@pytest.fixture
def exporting(monkeypatch: pytest.MonkeyPatch, receiver: OtlpReceiver) -> OtlpReceiver:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.endpoint)
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "50")
    return receiver


@pytest.mark.parametrize(
    ("environ", "on"),
    [
        ({}, False),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318"}, True),
        ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://127.0.0.1:4318/v1/traces"}, True),
        ({"OTEL_TRACES_EXPORTER": "otlp"}, True),
        ({"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318"}, False),
        ({"OTEL_SDK_DISABLED": "true", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318"}, False),
        ({"OTEL_SDK_DISABLED": "false", "OTEL_TRACES_EXPORTER": "otlp"}, True),
        ({"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf"}, True),
        # Metrics or logs alone configured: no traces.
        ({"OTEL_METRICS_EXPORTER": "otlp"}, False),
    ],
)
def test_traces_are_exported_only_when_the_standard_variables_ask(environ: dict[str, str], on: bool) -> None:
    assert tracing.exporter_configured(environ) is on


@pytest.mark.parametrize(
    ("environ", "named"),
    [
        ({"OTEL_TRACES_EXPORTER": "zipkin"}, "OTEL_TRACES_EXPORTER='zipkin'"),
        (
            {"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"},
            "OTEL_EXPORTER_OTLP_PROTOCOL='grpc'",
        ),
        (
            {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://x", "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "http/json"},
            "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL='http/json'",
        ),
    ],
)
def test_an_exporter_this_build_cannot_send_with_is_refused_naming_the_variable(
    environ: dict[str, str], named: str
) -> None:
    with pytest.raises(AdxflowError, match=named):
        tracing.exporter_configured(environ)


def _run(flow_changes: dict[str, str] | None = None) -> tuple[RunTemplate, RunContext]:
    flow = Flow.model_validate({**FLOW, **(flow_changes or {})})
    return RunTemplate.of(flow), RunContext(flow=flow.name, trigger=TriggerKind.MANUAL)


async def _launch(broker: InProcessBroker) -> tuple[RunMessage, StatusEvent]:
    statuses = Collected()
    await broker.consume(broker.topology.status_queue, statuses.add)
    template, context = _run()
    message = await launch(broker, template, context, "r1")
    await statuses.arrived.wait()
    return message, StatusEvent.model_validate_json(statuses.items[0])


async def test_off_by_default_nothing_is_traced_sent_or_carried(receiver: OtlpReceiver) -> None:
    async with tracing.configured("trigger") as on, InProcessBroker(Topology("trace-off")) as broker:
        assert on is False
        assert tracing.active() is False
        message, started = await _launch(broker)
        with tracing.step_span(message) as span:
            assert not span.is_recording()
    assert message.trace is None
    assert started.run is not None
    assert started.run.trace_id is None
    assert receiver.requests == 0


async def test_disabled_sdk_sends_nothing_even_with_an_endpoint(
    monkeypatch: pytest.MonkeyPatch, exporting: OtlpReceiver
) -> None:
    monkeypatch.setenv("OTEL_SDK_DISABLED", "true")
    async with tracing.configured("trigger") as on, InProcessBroker(Topology("trace-disabled")) as broker:
        message, _ = await _launch(broker)
    assert on is False
    assert message.trace is None
    assert exporting.requests == 0


def _one(spans: list[ReceivedSpan], name: str) -> ReceivedSpan:
    [found] = [span for span in spans if span.name == name]
    return found


async def test_a_run_is_one_trace_whose_steps_are_children_of_its_root(
    exporting: OtlpReceiver, tmp_path: Path
) -> None:
    blobs = FolderBlobStore(tmp_path / "blobs")

    async def perform(message: RunMessage) -> StepOutput:
        with tracing.client_span("kusto query", {"adxflow.connection": "local"}):
            ref = await blobs.put(f"{message.run_id}/result", b"rows", "application/json")
        return StepOutput(row_count=3, artifacts={"result": ref})

    async def refuse(_message: RunMessage) -> StepOutput:
        raise KustoError("no such table", code=ErrorCode.KUSTO_SEMANTIC_ERROR)

    async with tracing.configured("trigger") as on, blobs:
        assert on is True
        async with InProcessBroker(Topology("trace-on")) as broker:
            message, started = await _launch(broker)
        at_query = message.model_copy(update={"step_id": "query"})
        async with InProcessBroker(Topology("trace-on-query")) as broker:
            events, _ = await run_step(broker, perform, message=at_query)
        async with InProcessBroker(Topology("trace-on-fail")) as broker:
            await run_step(broker, refuse, message=at_query.model_copy(update={"attempt": 2}))
    assert events[-1].row_count == 3

    # The slip carries the root's context; history hears of its trace id with the run.
    assert message.trace is not None
    trace_id = message.trace["traceparent"].split("-")[1]
    assert started.run is not None
    assert started.run.trace_id == trace_id
    spans = await exporting.wait_for(lambda spans: len(spans) >= 5, timeout=10)
    assert {span.trace_id for span in spans} == {trace_id}
    assert {span.service for span in spans} == {"adxflow-trigger"}
    root = _one(spans, "step trigger")
    assert root.parent_id == ""
    assert root.attributes["adxflow.run_id"] == "r1"
    assert root.attributes["adxflow.flow"] == "steps-test"
    steps = sorted((span for span in spans if span.name == "step query"), key=lambda span: span.start_ns)
    assert [span.parent_id for span in steps] == [root.span_id, root.span_id]
    done, refused = steps
    assert done.kind == 5  # consumer
    assert done.attributes["adxflow.step_id"] == "query"
    assert done.attributes["adxflow.row_count"] == 3
    assert done.status == 0
    assert "adxflow.error_code" not in done.attributes
    assert refused.attributes["adxflow.attempt"] == 2
    assert refused.attributes["adxflow.error_code"] == "KustoSemanticError"
    assert refused.status == 2  # error
    kusto = _one(spans, "kusto query")
    assert (kusto.parent_id, kusto.kind) == (done.span_id, 3)
    put = _one(spans, "blob put")
    assert put.parent_id == kusto.span_id
    assert put.attributes == {"adxflow.blob.key": "r1/result", "adxflow.blob.size": 4}


async def test_a_failed_client_call_marks_its_span_with_the_error_code(exporting: OtlpReceiver) -> None:
    async with tracing.configured("query_worker"):
        with (
            tracing.tracer().start_as_current_span("outer"),
            pytest.raises(KustoError),
            tracing.client_span("kusto query", {}),
        ):
            raise KustoError("down", code=ErrorCode.KUSTO_UNAVAILABLE)
    spans = await exporting.wait_for(lambda spans: len(spans) >= 2, timeout=10)
    kusto = _one(spans, "kusto query")
    assert kusto.service == "adxflow-query-worker"
    assert kusto.status == 2
    assert kusto.attributes["adxflow.error_code"] == "KustoUnavailable"
    assert kusto.parent_id == _one(spans, "outer").span_id


async def test_log_lines_inside_a_span_carry_its_trace_and_span_ids(exporting: OtlpReceiver) -> None:
    outside = add_trace_ids(None, "info", {"event": "x"})
    assert "trace_id" not in outside
    async with tracing.configured("render"):
        with tracing.tracer().start_as_current_span("outer") as span:
            inside = add_trace_ids(None, "info", {"event": "x"})
            with structlog.testing.capture_logs(processors=[add_trace_ids]) as captured:
                structlog.get_logger().info("inside")
    context = span.get_span_context()
    assert inside["trace_id"] == f"{context.trace_id:032x}"
    assert inside["span_id"] == f"{context.span_id:016x}"
    assert captured[0]["trace_id"] == inside["trace_id"]


@pytest.mark.parametrize(
    "template",
    [
        "https://jaeger.example/trace/{trace_id}",
        "http://127.0.0.1:16686/trace/{trace_id}?uiFind=x",
    ],
)
def test_a_trace_url_template_with_only_its_trace_id_is_taken(
    monkeypatch: pytest.MonkeyPatch, template: str
) -> None:
    monkeypatch.setenv("ADXFLOW_TRACE_URL_TEMPLATE", template)
    assert load_settings().trace_url_template == template


@pytest.mark.parametrize(
    ("template", "why"),
    [
        ("javascript:alert(1)//{trace_id}", "http:// or https://"),
        ("https://jaeger.example/trace/", "exactly once"),
        ("https://jaeger.example/{trace_id}/{span_id}", "exactly once"),
        ("https://jaeger.example/{trace_id}/{trace_id}", "exactly once"),
        ("https://jaeger.example/{0}", "exactly once"),
        ("https://jaeger.example/{trace_id", "not a URL template"),
    ],
)
def test_a_bad_trace_url_template_is_refused_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, template: str, why: str
) -> None:
    monkeypatch.setenv("ADXFLOW_TRACE_URL_TEMPLATE", template)
    with pytest.raises(ConfigurationError, match="ADXFLOW_TRACE_URL_TEMPLATE") as refused:
        load_settings()
    assert why in refused.value.message


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path / 'traced.db'}"
    url: str = request.getfixturevalue("postgres_url")
    return url


async def test_sql_statements_in_a_span_are_its_children_and_outside_one_are_not_traced(
    exporting: OtlpReceiver, database_url: str
) -> None:
    engine = connect(database_url)
    try:
        async with tracing.configured("history"):
            async with engine.begin() as conn:
                # Outside any span (a poll, an event merged): no trace of its own.
                await conn.execute(sa.text("CREATE TABLE traced (n INTEGER)"))
            with tracing.tracer().start_as_current_span("step record"):
                async with engine.begin() as conn:
                    await conn.execute(sa.text("INSERT INTO traced (n) VALUES (:n)"), {"n": 4242})
                    with pytest.raises(sa.exc.DBAPIError):
                        await conn.execute(sa.text("SELECT * FROM missing_table"))
    finally:
        await engine.dispose()
    spans = await exporting.wait_for(lambda spans: any(span.name == "step record" for span in spans), 10)
    step = _one(spans, "step record")
    insert = _one(spans, f"INSERT {engine.dialect.name}")
    assert insert.parent_id == step.span_id
    # The statement's text as prepared, its values bound apart and never in the span.
    assert insert.attributes["db.query.text"].startswith("INSERT INTO traced (n) VALUES (")
    assert "4242" not in repr(insert.attributes)
    assert insert.attributes["adxflow.sql.rowcount"] == 1
    failed = _one(spans, f"SELECT {engine.dialect.name}")
    assert (failed.parent_id, failed.status) == (step.span_id, 2)
    assert not [span for span in spans if span.name.startswith("CREATE")]


async def test_a_run_whose_start_the_broker_refused_has_a_failed_root_span(exporting: OtlpReceiver) -> None:
    template, context = _run()
    async with tracing.configured("trigger"):
        broker = InProcessBroker(Topology("trace-refused"))
        async with broker:
            pass
        with pytest.raises(BrokerError):
            await launch(broker, template, context, "r2")
    spans = await exporting.wait_for(lambda spans: len(spans) >= 1, timeout=10)
    root = _one(spans, "step trigger")
    assert (root.parent_id, root.status) == ("", 2)
    assert root.attributes["adxflow.error_code"] == "BrokerError"
    assert root.attributes["adxflow.run_id"] == "r2"
