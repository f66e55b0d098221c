"""The run-history HTTP API."""

from __future__ import annotations

import base64
import datetime as dt
import json

from aiohttp import web

from common.contracts import RunStatus, TriggerKind
from common.errors import ArtifactMissing
from common.http import bearer_auth, error_body, health_routes
from common.runtime import Runtime
from services.history.dead_letters import DeadLetterStore
from services.history.store import HistoryStore

STORE_KEY = web.AppKey("store", HistoryStore)
RUNTIME_KEY = web.AppKey("runtime", Runtime)
LETTERS_KEY = web.AppKey("dead_letters", DeadLetterStore)


def _cursor(run: dict[str, object]) -> str:
    raw = json.dumps([run["submitted_at"], run["run_id"]]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _parse_cursor(value: str) -> tuple[dt.datetime, str]:
    try:
        padded = value + "=" * (-len(value) % 4)
        at, run_id = json.loads(base64.urlsafe_b64decode(padded))
        return dt.datetime.fromisoformat(at.replace("Z", "+00:00")), str(run_id)
    except (ValueError, TypeError) as exc:
        raise ValueError("cursor is not one this API returned") from exc


def _artifact_links(request: web.Request, run: dict[str, object]) -> None:
    for step in run.get("steps", []):  # type: ignore[attr-defined]
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
    try:
        before = _parse_cursor(query["cursor"]) if "cursor" in query else None
    except ValueError as exc:
        return error_body(400, f"cursor: {exc}", code="InvalidRequest")
    flow = request.match_info.get("name") or query.get("flow")
    trigger = query.get("trigger")
    if trigger is not None and trigger not in {kind.value for kind in TriggerKind}:
        allowed = ", ".join(kind.value for kind in TriggerKind)
        return error_body(400, f"trigger: must be one of {allowed}", code="InvalidRequest")
    page = await store.list_runs(status=status, flow=flow, trigger=trigger, limit=limit + 1, before=before)
    more = len(page) > limit
    page = page[:limit]
    body: dict[str, object] = {"runs": page, "next_cursor": _cursor(page[-1]) if more and page else None}
    return web.json_response(body)


async def get_run(request: web.Request) -> web.Response:
    run = await request.app[STORE_KEY].get_run(request.match_info["run_id"])
    if run is None:
        return error_body(404, f"run {request.match_info['run_id']!r} not found", code="NotFound")
    _artifact_links(request, run)
    return web.json_response(run)


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


def create_app(runtime: Runtime, store: HistoryStore, letters: DeadLetterStore) -> web.Application:
    app = web.Application(middlewares=[bearer_auth(runtime.settings.api_token)])
    app[STORE_KEY] = store
    app[RUNTIME_KEY] = runtime
    app[LETTERS_KEY] = letters
    app.router.add_get("/v1/runs", list_runs)
    app.router.add_get("/v1/runs/{run_id}", get_run)
    app.router.add_get("/v1/flows/{name}/runs", list_runs)
    app.router.add_get("/v1/artifacts/{key:.+}", get_artifact)
    app.router.add_get("/v1/dead-letters", list_dead_letters)
    app.router.add_post("/v1/dead-letters/{id}/replay", replay_dead_letter)
    app.router.add_delete("/v1/dead-letters/{id}", delete_dead_letter)
    health_routes(
        app, {"broker": runtime.broker.ping, "database": store.ping, "blob_store": runtime.blobs.ping}
    )
    return app
