"""Structured logs: JSON lines bound with service, run_id, step_id and flow.

Run context is carried in contextvars, so every line a handler writes names
the run it belongs to without passing a logger around. A line written inside a
span (:mod:`common.platform.tracing`) carries its ``trace_id`` and ``span_id``.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator, MutableMapping
from contextlib import contextmanager
from typing import Any

import structlog
from opentelemetry import trace


def add_trace_ids(_logger: Any, _method: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """structlog processor: the current span's ``trace_id`` and ``span_id``, when there is one."""
    span_context = trace.get_current_span().get_span_context()
    if span_context.is_valid:
        event.setdefault("trace_id", trace.format_trace_id(span_context.trace_id))
        event.setdefault("span_id", trace.format_span_id(span_context.span_id))
    return event


def configure_logging(service: str, *, level: str = "INFO", fmt: str = "json") -> None:
    """Log as *service* at *level*: adxflow's own lines and the libraries' alike, one format."""
    renderer: structlog.typing.Processor = (
        structlog.processors.JSONRenderer() if fmt == "json" else structlog.dev.ConsoleRenderer(colors=False)
    )
    shared: list[structlog.typing.Processor] = [
        structlog.contextvars.merge_contextvars,
        add_trace_ids,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    # Lines from the standard library's loggers (aio-pika, aiohttp, azure, ...) get the same
    # fields and format, and the run context of the task that wrote them.
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[*shared, structlog.stdlib.add_logger_name],
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.format_exc_info,
                renderer,
            ],
        )
    )
    logging.basicConfig(handlers=[handler], level=level.upper(), force=True)
    # azure-core writes two INFO lines for every request of the blob store and credentials.
    logging.getLogger("azure.core.pipeline.policies.http_logging_policy").setLevel(
        logging.DEBUG if level.upper() == "DEBUG" else logging.WARNING
    )
    # Alembic says at INFO how it set itself up, at every start; what it migrated, the schema logs.
    logging.getLogger("alembic").setLevel(logging.DEBUG if level.upper() == "DEBUG" else logging.WARNING)
    structlog.configure(
        processors=[*shared, structlog.processors.format_exc_info, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level.upper())),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=False,
    )
    structlog.contextvars.bind_contextvars(service=service)


@contextmanager
def run_context(
    run_id: str, step_id: str, attempt: int, *, flow: str | None = None, service: str | None = None
) -> Iterator[None]:
    """Bind a run's identity to every log line written inside the block.

    *service* names the service handling the run; in embedded mode, where one
    process runs all five, it replaces the process-wide ``embedded``.
    """
    bound: dict[str, object] = {"run_id": run_id, "step_id": step_id, "attempt": attempt}
    if flow is not None:
        bound["flow"] = flow
    if service is not None:
        bound["service"] = service
    with structlog.contextvars.bound_contextvars(**bound):
        yield
