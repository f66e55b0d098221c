"""The routes of an HTTP API: what each takes and answers, and its answers on the wire.

A route's handler returns a pydantic model, or a :class:`Reply` with a status
and headers, and raises :class:`Refusal` to refuse with an error body. The
route serializes what it returns only if it documents that status with that
model, so the OpenAPI document written from the same table
(:mod:`common.platform.openapi`) cannot drift from the responses.

This is our own table and serializer over pydantic rather than
aiohttp-pydantic: that library answers a request it cannot parse with a list
of pydantic errors where ours name the field in an ``{"error": ...}`` body,
works with class-based views only, reads no YAML bodies, and still leaves the
handler to serialize its answer.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, Literal, TypeVar

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field

Owner = TypeVar("Owner")


def absent_if_none(description: str, **schema: Any) -> Any:
    """A field left out of the answer when it is None, rather than written as null; documented so."""
    return Field(None, description=description, exclude_if=_is_none, json_schema_extra=_not_null(schema))


def _is_none(value: object) -> bool:
    return value is None


def _not_null(extra: dict[str, Any]) -> Callable[[dict[str, Any]], None]:
    def rewrite(schema: dict[str, Any]) -> None:
        branches = [branch for branch in schema.pop("anyOf", []) if branch != {"type": "null"}]
        if len(branches) == 1:
            schema.update(branches[0])
        schema.pop("default", None)
        schema.update(extra)

    return rewrite


class FieldProblem(BaseModel):
    model_config = ConfigDict(extra="forbid")

    field: str
    message: str


class ErrorDetail(BaseModel):
    model_config = ConfigDict(extra="forbid")

    code: str = Field(
        description="A stable code: InvalidRequest, InvalidFlow, NotFound, Conflict, Unauthorized, ...",
        examples=["InvalidRequest", "InvalidFlow", "NotFound"],
    )
    message: str = Field(description="What is wrong; a bad parameter is named first (`limit: ...`).")
    fields: list[FieldProblem] | None = absent_if_none(
        "One entry per field at fault, such as `steps[1].subject`."
    )


class ErrorBody(BaseModel):
    """Every refusal: a stable code, a message a person can act on, and the fields at fault."""

    model_config = ConfigDict(extra="forbid")

    error: ErrorDetail


def error_body(
    status: int,
    message: str,
    *,
    code: str,
    fields: Sequence[FieldProblem] = (),
    headers: Mapping[str, str] | None = None,
) -> web.Response:
    body = ErrorBody(error=ErrorDetail(code=code, message=message, fields=list(fields) or None))
    return web.json_response(body.model_dump(mode="json"), status=status, headers=headers)


class Refusal(Exception):
    """Raised by a handler: answer with this status and error body instead."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        code: str,
        fields: Sequence[FieldProblem] = (),
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.fields = fields
        self.headers = headers

    def response(self) -> web.Response:
        return error_body(self.status, self.message, code=self.code, fields=self.fields, headers=self.headers)


class InvalidParameter(Refusal):
    """A query, path or header parameter that is wrong; the message starts with its name."""

    def __init__(self, name: str, problem: str) -> None:
        super().__init__(400, f"{name}: {problem}", code="InvalidRequest")
        self.name = name


@dataclass(frozen=True)
class Reply:
    """A handler's answer with a status other than 200, headers, or no body (``body=None``)."""

    body: BaseModel | None
    status: int = 200
    headers: Mapping[str, str] = field(default_factory=dict)


Result = BaseModel | Reply | web.StreamResponse


@dataclass(frozen=True)
class Answer:
    """One documented response: a JSON *model*, other *media* (type → schema), or no body."""

    description: str
    model: type[BaseModel] | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    media: Mapping[str, dict[str, Any]] = field(default_factory=dict)


@dataclass(frozen=True)
class Parameter:
    name: str
    where: Literal["query", "path", "header"]
    description: str
    schema: dict[str, Any] = field(default_factory=lambda: {"type": "string"})
    example: Any = None


@dataclass(frozen=True)
class Body:
    """A request body: *model*'s document, as JSON or also as YAML, with an example."""

    model: type[BaseModel]
    example: dict[str, Any] | None = None
    yaml: bool = False
    required: bool = True
    description: str = ""


@dataclass(frozen=True)
class Route(Generic[Owner]):
    """One operation: served by calling *handler* with the owner bound at :func:`add_routes`."""

    method: str
    path: str
    operation_id: str
    handler: Callable[[Owner, web.Request], Awaitable[Result]]
    summary: str
    answers: Mapping[int, Answer]
    parameters: Sequence[Parameter] = ()
    body: Body | None = None
    #: Error statuses the handler may refuse with, described once per API.
    refusals: Sequence[int] = ()
    #: Served without a token (probes and the document, which hold no data).
    open: bool = False

    def respond(self, result: Result) -> web.StreamResponse:
        """*result* on the wire, if it is what this route documents for its status."""
        if isinstance(result, web.StreamResponse):
            documented = self.answers.get(result.status)
            # A response of its own is one of the other media documented beside the model, if any.
            if documented is None or (
                documented.model is not None and result.content_type not in documented.media
            ):
                raise self._undocumented(result.status, "a response of its own")
            return result
        reply = result if isinstance(result, Reply) else Reply(result)
        documented = self.answers.get(reply.status)
        model = type(reply.body) if reply.body is not None else None
        if documented is None or documented.model is not model:
            raise self._undocumented(reply.status, model.__name__ if model else "no body")
        missing = set(documented.headers) - set(reply.headers)
        if missing:
            raise self._undocumented(reply.status, f"no {', '.join(sorted(missing))} header")
        if reply.body is None:
            return web.Response(status=reply.status, headers=reply.headers)
        # json.dumps of the model's JSON values, as every other answer of these APIs is written.
        return web.json_response(
            reply.body.model_dump(mode="json"), status=reply.status, headers=reply.headers
        )

    def _undocumented(self, status: int, what: str) -> TypeError:
        return TypeError(f"{self.operation_id} answered {status} with {what}, which it does not document")


#: The paths of an app's routes that are served without a token, gathered as they are added.
OPEN_PATHS = web.AppKey("open_paths", set[str])


def add_routes(app: web.Application, routes: Sequence[Route[Owner]], owner: Owner) -> None:
    """Serve *routes* from *app*, each handler called with *owner*."""
    open_paths = app.setdefault(OPEN_PATHS, set())
    for route in routes:
        if route.open:
            open_paths.add(route.path)
        handler = _handler(route, owner)
        if route.method == "GET":
            app.router.add_get(route.path, handler)
        else:
            app.router.add_route(route.method, route.path, handler)


def _handler(route: Route[Owner], owner: Owner) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    async def handle(request: web.Request) -> web.StreamResponse:
        try:
            result = await route.handler(owner, request)
        except Refusal as refusal:
            return refusal.response()
        return route.respond(result)

    return handle
