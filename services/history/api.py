"""The run-history HTTP API."""

from __future__ import annotations

import base64
import datetime as dt
import json
import re
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from aiohttp import web

from common.contracts.errors import ArtifactMissing
from common.contracts.messages import RunStatus, TriggerKind, utcnow
from common.platform.http import bearer_auth, error_body, health_routes, read_document
from common.platform.runtime import Runtime
from services.history.dead_letters import DeadLetterStore
from services.history.openapi import OPENAPI
from services.history.reruns import Redo, RedoRefused
from services.history.store import HistoryStore
from services.history.web.pages import add_pages

STORE_KEY = web.AppKey("store", HistoryStore)
RUNTIME_KEY = web.AppKey("runtime", Runtime)
LETTERS_KEY = web.AppKey("dead_letters", DeadLetterStore)
REDO_KEY = web.AppKey("redo", Redo)


class _Invalid(ValueError):
    """A query parameter that is wrong; the message starts with its name."""


def _cursor(run: dict[str, object], order: str) -> str:
    raw = json.dumps([run["submitted_at"], run["run_id"], order]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _parse_cursor(value: str, order: str) -> tuple[dt.datetime, str]:
    try:
        padded = value + "=" * (-len(value) % 4)
        at, run_id, issued_for = json.loads(base64.urlsafe_b64decode(padded))
        moment = dt.datetime.fromisoformat(at.replace("Z", "+00:00"))
    except (ValueError, TypeError, AttributeError) as exc:
        raise ValueError("cursor is not one this API returned") from exc
    if issued_for != order or moment.tzinfo is None:
        raise ValueError(f"cursor was returned for order={issued_for}, not order={order}")
    return moment, str(run_id)


def _instant(query: Mapping[str, str], name: str) -> dt.datetime | None:
    """An ISO 8601 time from the query string; without a zone it is UTC."""
    if name not in query:
        return None
    try:
        moment = dt.datetime.fromisoformat(query[name].replace("Z", "+00:00").replace(" ", "+"))
    except ValueError:
        raise _Invalid(f"{name}: must be an ISO 8601 time, such as 2026-03-01T06:00:00Z") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=dt.UTC)


def _artifact_links(run: dict[str, Any]) -> None:
    for step in run.get("steps", []):
        links = {}
        for name, ref in step["artifacts"].items():
            links[name] = {
                "href": f"/v1/artifacts/{ref['key']}",
                "content_type": ref["content_type"],
                "size": ref["size"],
            }
        step["artifacts"] = links


async def list_runs(request: web.Request) -> web.Response:
    store = request.app[STORE_KEY]
    query = request.query
    try:
        status = RunStatus(query["status"]) if "status" in query else None
    except ValueError:
        allowed = ", ".join(s.value for s in RunStatus)
        return error_body(400, f"status: must be one of {allowed}", code="InvalidRequest")
    try:
        limit = int(query.get("limit", "50"))
        if not 1 <= limit <= 500:
            raise ValueError
    except ValueError:
        return error_body(400, "limit: must be an integer from 1 to 500", code="InvalidRequest")
    order = query.get("order", "desc")
    if order not in ("desc", "asc"):
        return error_body(400, "order: must be desc or asc", code="InvalidRequest")
    try:
        after = _parse_cursor(query["cursor"], order) if "cursor" in query else None
    except ValueError as exc:
        return error_body(400, f"cursor: {exc}", code="InvalidRequest")
    try:
        since, until = _instant(query, "since"), _instant(query, "until")
    except _Invalid as exc:
        return error_body(400, str(exc), code="InvalidRequest")
    flow = request.match_info.get("name") or query.get("flow")
    trigger = query.get("trigger")
    if trigger is not None and trigger not in {kind.value for kind in TriggerKind}:
        allowed = ", ".join(kind.value for kind in TriggerKind)
        return error_body(400, f"trigger: must be one of {allowed}", code="InvalidRequest")
    page = await store.list_runs(
        status=status,
        flow=flow,
        trigger=trigger,
        since=since,
        until=until,
        limit=limit + 1,
        ascending=order == "asc",
        after=after,
    )
    more = len(page) > limit
    page = page[:limit]
    next_cursor = _cursor(page[-1], order) if more and page else None
    return web.json_response({"runs": page, "next_cursor": next_cursor})


async def get_run(request: web.Request) -> web.Response:
    run = await request.app[STORE_KEY].get_run(request.match_info["run_id"])
    if run is None:
        return error_body(404, f"run {request.match_info['run_id']!r} not found", code="NotFound")
    _artifact_links(run)
    return web.json_response(run)


_WINDOW = re.compile(r"^([1-9][0-9]{0,4})([mhd])$")
_UNITS = {"m": "minutes", "h": "hours", "d": "days"}
#: The longest window a stats request may ask for.
MAX_WINDOW = dt.timedelta(days=366)


def parse_window(value: str) -> dt.timedelta:
    match = _WINDOW.match(value)
    window = dt.timedelta(**{_UNITS[match.group(2)]: int(match.group(1))}) if match else None
    if window is None or window > MAX_WINDOW:
        raise _Invalid("window: must be a number and a unit m, h or d (such as 1h, 24h, 7d), at most 366d")
    return window


def percentile(ordered: list[float], fraction: float) -> float | None:
    """The *fraction* percentile of sorted values, interpolating between the nearest two."""
    if not ordered:
        return None
    position = (len(ordered) - 1) * fraction
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return round(ordered[low] + (ordered[high] - ordered[low]) * (position - low), 1)


async def flow_stats(request: web.Request) -> web.Response:
    flow = request.match_info["name"]
    text = request.query.get("window", "7d")
    try:
        window = parse_window(text)
    except _Invalid as exc:
        return error_body(400, str(exc), code="InvalidRequest")
    until = utcnow()
    since = until - window
    runs = await request.app[STORE_KEY].flow_runs(flow, since, until)
    succeeded = sum(status == RunStatus.SUCCEEDED.value for status, _ in runs)
    failed = sum(status == RunStatus.FAILED.value for status, _ in runs)
    durations = sorted(ms for status, ms in runs if ms is not None and RunStatus(status).terminal)
    body = {
        "flow": flow,
        "window": text,
        "since": since.isoformat().replace("+00:00", "Z"),
        "until": until.isoformat().replace("+00:00", "Z"),
        "runs": len(runs),
        "succeeded": succeeded,
        "failed": failed,
        "unfinished": len(runs) - succeeded - failed,
        "success_rate": round(succeeded / (succeeded + failed), 4) if succeeded + failed else None,
        "duration_ms": {"p50": percentile(durations, 0.5), "p95": percentile(durations, 0.95)},
    }
    return web.json_response(body)


async def _redo(request: web.Request, action: Callable[[], Awaitable[dict[str, Any]]]) -> web.Response:
    try:
        queued = await action()
    except RedoRefused as exc:
        return error_body(exc.status, exc.message, code=exc.code)
    run = await request.app[STORE_KEY].get_run(queued["run_id"])
    assert run is not None
    _artifact_links(run)
    location = f"/v1/runs/{queued['run_id']}"
    return web.json_response({"queued": queued, "run": run}, status=202, headers={"Location": location})


async def resend(request: web.Request) -> web.Response:
    document = await read_document(request)
    step = document.get("step") if isinstance(document, dict) else None
    if not isinstance(document, dict) or set(document) - {"step"} or not isinstance(step, str | None):
        return error_body(
            400, 'step: the body is {} or {"step": "<send_email step id>"}', code="InvalidRequest"
        )
    run_id = request.match_info["run_id"]
    return await _redo(request, lambda: request.app[REDO_KEY].resend(run_id, step))


async def rerun(request: web.Request) -> web.Response:
    document = await read_document(request)
    if document != {}:
        return error_body(400, "body: a re-run takes no body", code="InvalidRequest")
    run_id = request.match_info["run_id"]
    return await _redo(request, lambda: request.app[REDO_KEY].rerun(run_id))


async def openapi_document(_: web.Request) -> web.Response:
    return web.json_response(OPENAPI)


async def get_artifact(request: web.Request) -> web.StreamResponse:
    runtime = request.app[RUNTIME_KEY]
    key = request.match_info["key"]
    if not key.startswith("runs/"):
        return error_body(404, "no such artifact", code="NotFound")
    try:
        data = await runtime.blobs.get(key)
    except (ArtifactMissing, ValueError):
        return error_body(404, f"artifact {key!r} not found", code="NotFound")
    content_type = _content_type(key)
    # Artifacts are user data: never let a browser run them as active content here.
    headers = {
        "X-Content-Type-Options": "nosniff",
        "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; img-src 'self'",
    }
    return web.Response(body=data, content_type=content_type, headers=headers)


def _content_type(key: str) -> str:
    suffix = key.rsplit(".", 1)[-1]
    return {
        "json": "application/json",
        "html": "text/html",
        "txt": "text/plain",
        "csv": "text/csv",
        "svg": "image/svg+xml",
        "png": "image/png",
        "eml": "message/rfc822",
    }.get(suffix, "application/octet-stream")


async def list_dead_letters(request: web.Request) -> web.Response:
    return web.json_response({"dead_letters": await request.app[LETTERS_KEY].all()})


async def replay_dead_letter(request: web.Request) -> web.Response:
    letters = request.app[LETTERS_KEY]
    replayed = await letters.replay(request.match_info["id"], request.app[RUNTIME_KEY].broker)
    if replayed is None:
        return error_body(404, f"dead letter {request.match_info['id']!r} not found", code="NotFound")
    return web.json_response({"replayed": replayed}, status=202)


async def delete_dead_letter(request: web.Request) -> web.Response:
    if not await request.app[LETTERS_KEY].delete(request.match_info["id"]):
        return error_body(404, f"dead letter {request.match_info['id']!r} not found", code="NotFound")
    return web.Response(status=204)


def create_app(
    runtime: Runtime, store: HistoryStore, letters: DeadLetterStore, redo: Redo | None = None
) -> web.Application:
    app = web.Application(middlewares=[bearer_auth(runtime.settings.api_token)])
    app[STORE_KEY] = store
    app[RUNTIME_KEY] = runtime
    app[LETTERS_KEY] = letters
    app[REDO_KEY] = redo or Redo(store, letters, runtime)
    app.router.add_get("/openapi.json", openapi_document)
    app.router.add_get("/v1/runs", list_runs)
    app.router.add_get("/v1/runs/{run_id}", get_run)
    app.router.add_post("/v1/runs/{run_id}/resend", resend)
    app.router.add_post("/v1/runs/{run_id}/rerun", rerun)
    app.router.add_get("/v1/flows/{name}/runs", list_runs)
    app.router.add_get("/v1/flows/{name}/stats", flow_stats)
    app.router.add_get("/v1/artifacts/{key:.+}", get_artifact)
    app.router.add_get("/v1/dead-letters", list_dead_letters)
    app.router.add_post("/v1/dead-letters/{id}/replay", replay_dead_letter)
    app.router.add_delete("/v1/dead-letters/{id}", delete_dead_letter)
    add_pages(app, runtime, store)
    health_routes(app, {**runtime.checks(), "database": store.ping})
    return app
