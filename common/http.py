"""What the trigger and history HTTP APIs share: auth, errors, health, serving.

The APIs require a bearer token unless they are bound to loopback; a service
asked to listen beyond loopback without a token refuses to start.
"""

from __future__ import annotations

import hmac
import json
import re
from collections.abc import Awaitable, Callable
from typing import Any

import yaml
from aiohttp import web
from pydantic import SecretStr, ValidationError

from common.config import is_loopback
from common.errors import ConfigurationError

Check = Callable[[], Awaitable[bool]]
_OPEN_PATHS = ("/healthz", "/readyz")


def error_body(
    status: int, message: str, *, code: str, fields: list[dict[str, str]] | None = None
) -> web.Response:
    payload: dict[str, Any] = {"error": {"code": code, "message": message}}
    if fields:
        payload["error"]["fields"] = fields
    return web.json_response(payload, status=status)


_LEADING_FIELD = re.compile(r"^([A-Za-z_][\w.\[\]]*): (.*)$", re.DOTALL)


def validation_error(exc: ValidationError) -> web.Response:
    """A 400 that names every bad field and what is wrong with it.

    Rules that span several fields are checked on the whole document and say
    which field they mean at the start of their message (``steps[1].subject:
    ...``); that field is reported as the field.
    """
    fields = []
    for error in exc.errors():
        location = ".".join(str(part) for part in error["loc"])
        message = error["msg"].removeprefix("Value error, ")
        named = _LEADING_FIELD.match(message)
        if named is not None and not location:
            location, message = named.group(1), named.group(2)
        fields.append({"field": location or "body", "message": message})
    summary = "; ".join(f"{f['field']}: {f['message']}" for f in fields)
    return error_body(400, f"invalid request: {summary}", code="InvalidRequest", fields=fields)


_YAML_TYPES = ("application/yaml", "application/x-yaml", "text/yaml", "text/x-yaml")


def _bad_request(message: str) -> web.HTTPBadRequest:
    return web.HTTPBadRequest(
        text=json.dumps({"error": {"code": "InvalidRequest", "message": message}}),
        content_type="application/json",
    )


async def read_document(request: web.Request) -> Any:
    """The body as JSON, or as YAML when the content type says so; an empty body is ``{}``."""
    text = await request.text()
    if request.content_type in _YAML_TYPES:
        try:
            return yaml.safe_load(text) or {}
        except yaml.YAMLError as exc:
            raise _bad_request(f"body is not valid YAML: {exc}") from None
    if request.content_type != "application/json" and text.strip():
        raise web.HTTPUnsupportedMediaType(
            text=json.dumps(
                {"error": {"code": "InvalidRequest", "message": "send the body as application/json or YAML"}}
            ),
            content_type="application/json",
        )
    try:
        return json.loads(text) if text.strip() else {}
    except ValueError as exc:
        raise _bad_request(f"body is not valid JSON: {exc}") from None


def bearer_auth(token: SecretStr | None) -> Any:
    expected = token.get_secret_value().encode() if token is not None else None

    @web.middleware
    async def middleware(request: web.Request, handler: Any) -> web.StreamResponse:
        if expected is None or request.path in _OPEN_PATHS:
            return await handler(request)
        header = request.headers.get("Authorization", "")
        scheme, _, supplied = header.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(supplied.encode(), expected):
            return web.json_response(
                {"error": {"code": "Unauthorized", "message": "a valid bearer token is required"}},
                status=401,
                headers={"WWW-Authenticate": 'Bearer realm="adxflow"'},
            )
        return await handler(request)

    return middleware


def require_token_off_loopback(host: str, token: SecretStr | None, setting: str) -> None:
    if token is None and not is_loopback(host):
        raise ConfigurationError(
            f"{setting}={host!r} listens beyond loopback; "
            "set ADXFLOW_API_TOKEN so the API requires a bearer token"
        )


def health_routes(app: web.Application, checks: dict[str, Check]) -> None:
    async def healthz(_: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def readyz(_: web.Request) -> web.Response:
        results = {name: await check() for name, check in checks.items()}
        ready = all(results.values())
        return web.json_response({"ready": ready, "checks": results}, status=200 if ready else 503)

    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)


class HttpServer:
    """An aiohttp application on a socket, as an async context manager."""

    def __init__(self, app: web.Application, host: str, port: int) -> None:
        self._runner = web.AppRunner(app, access_log=None)
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
