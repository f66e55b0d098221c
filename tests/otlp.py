"""An OTLP/HTTP trace receiver on aiohttp, for tests that check what the services export.

It takes ``POST /v1/traces`` as an exporter sends it (protobuf, maybe gzip),
parses each body with opentelemetry-proto's ``ExportTraceServiceRequest`` and
keeps every span with its resource's ``service.name``. Tests wait on
:meth:`OtlpReceiver.wait_for`, which wakes at each export.
"""

from __future__ import annotations

import asyncio
import gzip
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Self

from aiohttp import web
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue

from common.platform.http import HttpServer


@dataclass(frozen=True)
class ReceivedSpan:
    service: str
    trace_id: str
    span_id: str
    #: Empty for a root span.
    parent_id: str
    name: str
    #: opentelemetry.proto's Span.SpanKind number (1 internal, 2 server, 3 client, 4 producer, 5 consumer).
    kind: int
    start_ns: int
    end_ns: int
    #: opentelemetry.proto's Status.StatusCode number (0 unset, 1 ok, 2 error).
    status: int
    attributes: dict[str, Any]


def _value(value: AnyValue) -> Any:
    which = value.WhichOneof("value")
    if which == "array_value":
        return [_value(item) for item in value.array_value.values]
    return getattr(value, which) if which else None


def spans_of(request: ExportTraceServiceRequest) -> list[ReceivedSpan]:
    found = []
    for resource_spans in request.resource_spans:
        resource = {item.key: _value(item.value) for item in resource_spans.resource.attributes}
        for scope_spans in resource_spans.scope_spans:
            for span in scope_spans.spans:
                found.append(
                    ReceivedSpan(
                        service=str(resource.get("service.name", "")),
                        trace_id=span.trace_id.hex(),
                        span_id=span.span_id.hex(),
                        parent_id=span.parent_span_id.hex(),
                        name=span.name,
                        kind=span.kind,
                        start_ns=span.start_time_unix_nano,
                        end_ns=span.end_time_unix_nano,
                        status=span.status.code,
                        attributes={item.key: _value(item.value) for item in span.attributes},
                    )
                )
    return found


class OtlpReceiver:
    """Listens on a free loopback port; an async context manager. ``endpoint`` is its base URL."""

    def __init__(self) -> None:
        self.spans: list[ReceivedSpan] = []
        #: Bodies received, parsed or not (a test of "nothing sent" counts these).
        self.requests = 0
        self._arrived = asyncio.Condition()
        app = web.Application()
        app.router.add_post("/v1/traces", self._traces)
        self._server = HttpServer(app, "127.0.0.1", 0)

    @property
    def endpoint(self) -> str:
        return self._server.url

    async def _traces(self, request: web.Request) -> web.Response:
        body = await request.read()
        if request.headers.get("Content-Encoding") == "gzip":
            body = gzip.decompress(body)
        if request.content_type != "application/x-protobuf":
            return web.Response(status=415, text=f"protobuf only, not {request.content_type}")
        parsed = ExportTraceServiceRequest()
        parsed.ParseFromString(body)
        async with self._arrived:
            self.requests += 1
            self.spans.extend(spans_of(parsed))
            self._arrived.notify_all()
        return web.Response(
            body=ExportTraceServiceResponse().SerializeToString(), content_type="application/x-protobuf"
        )

    async def wait_for(
        self, done: Callable[[list[ReceivedSpan]], bool], timeout: float
    ) -> list[ReceivedSpan]:
        """The spans received so far, once *done* says they are enough; TimeoutError after *timeout* s."""
        async with asyncio.timeout(timeout), self._arrived:
            await self._arrived.wait_for(lambda: done(self.spans))
            return list(self.spans)

    async def __aenter__(self) -> Self:
        await self._server.__aenter__()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self._server.__aexit__(exc_type, exc, tb)
