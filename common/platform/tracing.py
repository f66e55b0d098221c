"""Traces: one per run, across every service, exported over OTLP/HTTP when configured.

Off unless the standard ``OTEL_*`` variables ask for an exporter:
``OTEL_TRACES_EXPORTER=otlp``, or ``OTEL_EXPORTER_OTLP_ENDPOINT`` /
``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``; ``OTEL_SDK_DISABLED=true`` wins over
both. Off, the tracer is OpenTelemetry's no-op one: a span costs a function
call, nothing is recorded or sent. On, a `TracerProvider` with resource
``service.name=adxflow-<service>`` (``OTEL_SERVICE_NAME`` replaces it) batches
spans to the OTLP/HTTP exporter, which reads the endpoint, headers, timeout and
compression from the environment itself, as the batch processor reads
``OTEL_BSP_*`` and the provider ``OTEL_TRACES_SAMPLER``.

The trace context travels on the routing slip (``RunMessage.trace``, a W3C
``traceparent``/``tracestate`` carrier), not in AMQP headers: history keeps
the slip of a failed run and re-runs it, a dead letter is replayed as it was
kept, and both stay in the run's trace. The trigger starts the run's root span
and writes the carrier once; every later step's span is a child of that root,
the carrier going unchanged from step to step.

No attribute carries a secret: ids, names, counts and error codes only, never
a query's parameter values, an email address or a connection string.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Iterator, Mapping
from contextlib import asynccontextmanager, contextmanager
from typing import Any

import structlog
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import Span, SpanKind, Status, StatusCode, Tracer
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from common.contracts.errors import AdxflowError
from common.contracts.messages import SERVICE_OF, RunMessage

log = structlog.get_logger(__name__)

_PROPAGATOR = TraceContextTextMapPropagator()
_NO_OP: Tracer = trace.NoOpTracer()
_SCOPE = "adxflow"


class _State:
    tracer: Tracer = _NO_OP
    active: bool = False


_state = _State()


def _flag(environ: Mapping[str, str], name: str) -> bool:
    return environ.get(name, "").strip().lower() == "true"


def exporter_configured(environ: Mapping[str, str]) -> bool:
    """Whether the ``OTEL_*`` variables in *environ* ask for traces to be exported.

    Raises `AdxflowError` naming the variable for an exporter or protocol this
    build cannot send with (only ``otlp`` over ``http/protobuf``).
    """
    if _flag(environ, "OTEL_SDK_DISABLED"):
        return False
    named = environ.get("OTEL_TRACES_EXPORTER")
    if named is not None:
        exporters = {part.strip().lower() for part in named.split(",") if part.strip()}
        unknown = exporters - {"otlp", "none"}
        if unknown:
            raise AdxflowError(
                f"OTEL_TRACES_EXPORTER={named!r}: adxflow exports traces with 'otlp' (over HTTP) or 'none'"
            )
        if "otlp" not in exporters:
            return False
    elif not (
        environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") or environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    ):
        return False
    for variable in ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL"):
        protocol = environ.get(variable)
        if protocol:
            if protocol.strip() != "http/protobuf":
                raise AdxflowError(f"{variable}={protocol!r}: adxflow exports OTLP as 'http/protobuf' only")
            break
    return True


def tracer() -> Tracer:
    """The process's tracer: the no-op one unless `configured` turned tracing on."""
    return _state.tracer


def active() -> bool:
    """Whether spans are recorded and exported in this process."""
    return _state.active


@asynccontextmanager
async def configured(service: str) -> AsyncIterator[bool]:
    """Trace this process as ``adxflow-<service>`` (``adxflow`` for *service* ``""``) while inside.

    The service's name is written with hyphens: ``adxflow-query-worker``.

    Yields whether tracing is on. Leaving flushes what is still batched and
    shuts the exporter down. Off (no exporter configured), nothing is imported
    beyond the API and nothing is started.
    """
    environ = os.environ
    if not exporter_configured(environ) or _state.active:
        # Tracing off, or already set up by an enclosing lifespan of this process.
        yield _state.active
        return
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import SERVICE_NAME, Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    name = f"adxflow-{service.replace('_', '-')}" if service else "adxflow"
    attributes: dict[str, Any] = {} if environ.get("OTEL_SERVICE_NAME") else {SERVICE_NAME: name}
    provider = TracerProvider(resource=Resource.create(attributes))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    _state.tracer, _state.active = provider.get_tracer(_SCOPE), True
    log.info("tracing on", service_name=provider.resource.attributes.get(SERVICE_NAME))
    try:
        yield True
    finally:
        _state.tracer, _state.active = _NO_OP, False
        # The exporter posts with a blocking client: flushing runs beside the event loop.
        await asyncio.to_thread(provider.shutdown)


# ---------------------------------------------------------------------------
# The run's trace on the routing slip
# ---------------------------------------------------------------------------


def carrier() -> dict[str, str] | None:
    """The current span's W3C trace context (``traceparent``, maybe ``tracestate``), or None."""
    if not trace.get_current_span().get_span_context().is_valid:
        return None
    found: dict[str, str] = {}
    _PROPAGATOR.inject(found)
    return found or None


def parent_of(message: RunMessage) -> Context | None:
    """The run's root span as a parent context, from the slip's carrier; None without one."""
    if not message.trace:
        return None
    return _PROPAGATOR.extract(message.trace)


def _step_attributes(message: RunMessage) -> dict[str, Any]:
    step = message.step
    return {
        "adxflow.run_id": message.run_id,
        "adxflow.step_id": message.step_id,
        "adxflow.step_kind": step.kind.value,
        "adxflow.service": SERVICE_OF[step.kind].value,
        "adxflow.flow": message.context.flow,
        "adxflow.attempt": message.attempt,
        "adxflow.trigger": message.context.trigger.value,
    }


@contextmanager
def run_started(message: RunMessage) -> Iterator[RunMessage]:
    """The root span of a run starting at its trigger step; yields *message* carrying its context.

    A new trace whatever the caller is in (an API request, the scheduler's
    loop): one trace is one run.
    """
    with tracer().start_as_current_span(
        f"step {message.step.kind.value}",
        context=Context(),
        kind=SpanKind.PRODUCER,
        attributes=_step_attributes(message),
        record_exception=False,
        set_status_on_exception=False,
    ) as span:
        found = carrier()
        try:
            yield message if found is None else message.model_copy(update={"trace": found})
        except Exception as exc:
            # The broker did not take the start (BrokerError): the run's trace says so.
            failed(span, code_of(exc))
            raise


@contextmanager
def step_span(message: RunMessage) -> Iterator[Span]:
    """The span of one step a service performs, a child of the run's root span."""
    with tracer().start_as_current_span(
        f"step {message.step.kind.value}",
        context=parent_of(message),
        kind=SpanKind.CONSUMER,
        attributes=_step_attributes(message),
        record_exception=False,
        set_status_on_exception=False,
    ) as span:
        yield span


def code_of(exc: BaseException) -> str:
    """An exception's stable error code, or its type's name when it has none."""
    return exc.code.value if isinstance(exc, AdxflowError) else type(exc).__name__


def failed(span: Span, code: str) -> None:
    """Mark *span* as failed with the stable error *code* (never the message, which may quote values)."""
    span.set_attribute("adxflow.error_code", code)
    span.set_attribute("error.type", code)
    span.set_status(Status(StatusCode.ERROR, code))


def step_failed(code: str, *, retrying: bool) -> None:
    """The current step's span: failed with *code* (and whether another attempt follows)."""
    span = trace.get_current_span()
    failed(span, code)
    span.set_attribute("adxflow.retrying", retrying)


def step_succeeded(row_count: int | None) -> None:
    """The current step's span: succeeded, with the rows it produced when it counts them."""
    if row_count is not None:
        trace.get_current_span().set_attribute("adxflow.row_count", row_count)


def step_waits(delay: float) -> None:
    """The current step's span: it ended waiting, to come back after *delay* seconds."""
    trace.get_current_span().set_attribute("adxflow.pending_seconds", delay)


@contextmanager
def client_span(name: str, attributes: Mapping[str, Any]) -> Iterator[Span]:
    """A span of a call to another system (Kusto, the blob store, SMTP) under the current one.

    An `AdxflowError` leaving it marks it failed with its code; any other
    exception with its type's name.
    """
    with tracer().start_as_current_span(
        name,
        kind=SpanKind.CLIENT,
        attributes=attributes,
        record_exception=False,
        set_status_on_exception=False,
    ) as span:
        try:
            yield span
        except BaseException as exc:
            failed(span, code_of(exc))
            raise
