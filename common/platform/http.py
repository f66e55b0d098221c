"""What the HTTP servers share: auth, reading request bodies, the probes, serving.

The APIs require a bearer token unless they are bound to loopback; a service
asked to listen beyond loopback without a token refuses to start. ``/healthz``
and ``/readyz`` are always open, for probes; ``/metrics`` asks for the token
when one is set. The worker services, which have no API, serve these three on
a health server of their own (:func:`health_app`).
"""

from __future__ import annotations

import asyncio
import hmac
import json
import math
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Literal, NoReturn, Protocol

import yaml
from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError

from common.contracts.actions import field_path
from common.contracts.errors import ConfigurationError
from common.platform.config import is_loopback
from common.platform.metrics import metrics
from common.platform.routes import (
    OPEN_PATHS,
    Answer,
    FieldProblem,
    Refusal,
    Reply,
    Route,
    add_routes,
    error_body,
)

#: A readiness check: whether it passes. One that can say why it fails raises :class:`NotReady`.
Check = Callable[[], Awaitable[bool]]


class NotReady(Exception):
    """Raised by a readiness check that fails, with why (shown under ``reasons`` in ``/readyz``)."""


_LEADING_FIELD = re.compile(r"^([A-Za-z_][\w.\[\]]*): (.*)$", re.DOTALL)


def field_errors(exc: ValidationError) -> list[tuple[str, str, str]]:
    """Every error of *exc* as its field (empty for the document itself), message and pydantic type.

    Rules that span several fields are checked on the whole document (or the
    whole step) and say which field they mean at the start of their message
    (``steps[1].subject: ...``, ``key_columns: ...``); that field, within the
    document or the step, is reported as the field.
    """
    errors = []
    for error in exc.errors():
        location = field_path(error["loc"])
        message = error["msg"].removeprefix("Value error, ")
        named = _LEADING_FIELD.match(message)
        if named is not None:
            location = f"{location}.{named.group(1)}" if location else named.group(1)
            message = named.group(2)
        elif (
            error["type"] == "unknown_step"
            and isinstance(error.get("input"), dict)
            and "action" in error["input"]
        ):
            # A step that names an action this release does not have: the action is what is wrong.
            location = f"{location}.action"
            message = f"{error['input']['action']!r:.60} is not an action: {message}"
        errors.append((location, message, error["type"]))
    return errors


def invalid_request(exc: ValidationError) -> Refusal:
    """A 400 that names every bad field (as :func:`field_errors` does) and what is wrong with it."""
    fields = [FieldProblem(field=field or "body", message=message) for field, message, _ in field_errors(exc)]
    summary = "; ".join(f"{f.field}: {f.message}" for f in fields)
    return Refusal(400, f"invalid request: {summary}", code="InvalidRequest", fields=fields)


#: The content types a body is read as YAML by.
YAML_TYPES = ("application/yaml", "application/x-yaml", "text/yaml", "text/x-yaml")


def _bad_request(message: str) -> Refusal:
    return Refusal(400, message, code="InvalidRequest")


#: Deeper than any document the APIs take; refused before the parser spends seconds on it.
_MAX_DEPTH = 64


class _DocumentLoader(yaml.SafeLoader):
    """Safe YAML without aliases, at most :data:`_MAX_DEPTH` levels deep.

    A document has no need of aliases, and a few nested ones (a "billion
    laughs") expand into more data than any request should carry.
    """

    _depth = 0

    def compose_node(self, parent: yaml.Node | None, index: int) -> yaml.Node | None:
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent):
            _refuse(f"alias *{event.anchor} is not accepted; write the value out", event)
        if self._depth >= _MAX_DEPTH:
            _refuse(f"the document is nested deeper than {_MAX_DEPTH} levels", event)
        self._depth += 1
        try:
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


def _refuse(problem: str, event: yaml.Event) -> NoReturn:
    mark = event.start_mark
    raise yaml.composer.ComposerError(
        problem=problem, problem_mark=mark if isinstance(mark, yaml.error.Mark) else None
    )


def _decoded(body: bytes, charset: str | None) -> str:
    charset = charset or "utf-8"
    try:
        return body.decode(charset)
    except LookupError:
        raise _bad_request(f"charset {charset!r} is unknown; send the body as UTF-8") from None
    except UnicodeDecodeError as exc:
        raise _bad_request(f"body is not valid {charset}: {exc.reason} at byte {exc.start}") from None


def checked_document(document: Any) -> Any:
    """*document*, unless it is nested too deeply or holds a number JSON cannot answer with."""
    pending = [(document, 0)]
    while pending:
        node, depth = pending.pop()
        if depth >= _MAX_DEPTH:
            raise _bad_request(f"body is nested deeper than {_MAX_DEPTH} levels")
        if isinstance(node, float) and not math.isfinite(node):
            raise _bad_request(f"body holds the number {node}; numbers must be finite")
        if isinstance(node, dict):
            pending.extend((value, depth + 1) for value in node.values())
        elif isinstance(node, list):
            pending.extend((item, depth + 1) for item in node)
    return document


def compose_yaml(text: str) -> tuple[Any, yaml.Node | None]:
    """A YAML text's document, read as :func:`read_document` reads it, and the nodes it was built from.

    The nodes carry where each value is in the text. ``yaml.YAMLError`` when the text is not
    YAML (with the mark of the problem), :class:`Refusal` when it holds a value no document may.
    """
    loader = _DocumentLoader(text)
    try:
        node = loader.get_single_node()
        document = loader.construct_document(node) if node is not None else None
    finally:
        loader.dispose()
    return checked_document(document), node


async def read_text(request: web.Request) -> tuple[str, bool]:
    """The body as text, and whether it is YAML (JSON otherwise, as :func:`read_document` decides).

    415 when the content type is neither, 400 when the body cannot be decoded.
    """
    body = await request.read()
    is_yaml = request.content_type in YAML_TYPES
    if not is_yaml and request.content_type != "application/json" and body.strip():
        raise Refusal(415, "send the body as application/json or YAML", code="InvalidRequest")
    return _decoded(body, request.charset), is_yaml


async def read_document(request: web.Request) -> Any:
    """The body as JSON, or as YAML when the content type says so; an empty body is ``{}``."""
    body = await request.read()
    if request.content_type in YAML_TYPES:
        text = _decoded(body, request.charset)
        try:
            # Pure-Python parsing: off the event loop, so an awkward body delays only itself.
            return checked_document(await asyncio.to_thread(yaml.load, text, Loader=_DocumentLoader) or {})
        except yaml.YAMLError as exc:
            raise _bad_request(f"body is not valid YAML: {exc}") from None
        except ValueError as exc:  # an integer longer than Python converts
            raise _bad_request(f"body holds a value that cannot be read: {exc}") from None
    if request.content_type != "application/json" and body.strip():
        raise Refusal(415, "send the body as application/json or YAML", code="InvalidRequest")
    text = _decoded(body, request.charset)
    try:
        return checked_document(json.loads(text)) if text.strip() else {}
    except RecursionError:
        raise _bad_request(f"body is nested deeper than {_MAX_DEPTH} levels") from None
    except ValueError as exc:
        raise _bad_request(f"body is not valid JSON: {exc}") from None


async def sent_yaml(request: web.Request) -> str | None:
    """The body's text when it was sent as YAML (as :func:`read_document` read it), else None."""
    if request.content_type not in YAML_TYPES:
        return None
    return _decoded(await request.read(), request.charset)


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class BrowserGate(Protocol):
    """Another way in besides the bearer token: the history pages' login cookie.

    Called for every request when a token is configured, with whether the
    request carried the right bearer token; it answers the request.
    """

    async def __call__(
        self, request: web.Request, handler: Handler, bearer_ok: bool
    ) -> web.StreamResponse: ...


BROWSER_GATE = web.AppKey("browser_gate", BrowserGate)


def unauthorized() -> web.Response:
    return error_body(
        401,
        "a valid bearer token is required",
        code="Unauthorized",
        headers={"WWW-Authenticate": 'Bearer realm="adxflow"'},
    )


def bearer_auth(token: SecretStr | None) -> Any:
    expected = token.get_secret_value().encode() if token is not None else None

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        # The routes marked open (the probes, the document) hold no data.
        if expected is None or request.path in request.app.get(OPEN_PATHS, ()):
            return await handler(request)
        header = request.headers.get("Authorization", "")
        scheme, _, supplied = header.partition(" ")
        bearer_ok = scheme.lower() == "bearer" and hmac.compare_digest(supplied.encode(), expected)
        gate = request.app.get(BROWSER_GATE)
        if gate is not None:
            return await gate(request, handler, bearer_ok)
        if not bearer_ok:
            return unauthorized()
        return await handler(request)

    return middleware


def require_token_off_loopback(host: str, token: SecretStr | None, setting: str) -> None:
    if token is None and not is_loopback(host):
        raise ConfigurationError(
            f"{setting}={host!r} listens beyond loopback; "
            "set ADXFLOW_API_TOKEN so the API requires a bearer token"
        )


class Health(BaseModel):
    model_config = ConfigDict(extra="forbid")

    status: Literal["ok"]


class Readiness(BaseModel):
    model_config = ConfigDict(extra="forbid")

    ready: bool
    checks: dict[str, bool]
    #: Why a failing check fails, where it says.
    reasons: dict[str, str] = Field(default_factory=dict, exclude_if=lambda reasons: not reasons)


@dataclass(frozen=True)
class Probes:
    """``/healthz`` (the process answers), ``/readyz`` (every check passes) and ``/metrics``."""

    checks: dict[str, Check]

    async def healthz(self, _: web.Request) -> Health:
        return Health(status="ok")

    async def readyz(self, _: web.Request) -> Reply:
        results: dict[str, bool] = {}
        reasons: dict[str, str] = {}
        for name, check in self.checks.items():
            try:
                results[name] = await check()
            except NotReady as exc:
                results[name], reasons[name] = False, str(exc)
        ready = all(results.values())
        return Reply(Readiness(ready=ready, checks=results, reasons=reasons), status=200 if ready else 503)

    async def metrics(self, request: web.Request) -> web.Response:
        return await metrics(request)


#: Every service serves these, the APIs among their own routes.
PROBES: list[Route[Probes]] = [
    Route(
        "GET",
        "/healthz",
        "health",
        Probes.healthz,
        "Whether the process answers",
        {200: Answer("Alive.", Health)},
        open=True,
    ),
    Route(
        "GET",
        "/readyz",
        "readiness",
        Probes.readyz,
        "Whether the broker, the database and the blob store answer, and the service's loops keep ticking",
        {200: Answer("Ready.", Readiness), 503: Answer("Not ready; the checks say what is away.", Readiness)},
        open=True,
    ),
    Route(
        "GET",
        "/metrics",
        "metrics",
        Probes.metrics,
        "Counters and histograms in Prometheus' text format",
        {200: Answer("The metrics.", media={"text/plain": {"schema": {"type": "string"}}})},
    ),
]


def health_app(checks: dict[str, Check], token: SecretStr | None) -> web.Application:
    """The health server of a service without an API: health, readiness and metrics only."""
    app = web.Application(middlewares=[bearer_auth(token)])
    add_routes(app, PROBES, Probes(checks))
    return app


#: How long requests still in progress get to finish when a server closes (aiohttp waits 60 s by
#: default, which would outlast the grace of a shutdown; every API answers well within this).
HTTP_CLOSE_SECONDS = 5.0


class HttpServer:
    """An aiohttp application on a socket, as an async context manager."""

    def __init__(self, app: web.Application, host: str, port: int) -> None:
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=HTTP_CLOSE_SECONDS)
        self._host = host
        self._port = port
        self.port = port

    async def start(self) -> None:
        await self._runner.setup()
        await web.TCPSite(self._runner, self._host, self._port).start()
        # Port 0 asks for any free port; report the one the socket got.
        self.port = int(self._runner.addresses[0][1])

    @property
    def url(self) -> str:
        return f"http://{self._host}:{self.port}"

    async def close(self) -> None:
        await self._runner.cleanup()

    async def __aenter__(self) -> HttpServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
