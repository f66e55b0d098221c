"""The trigger's HTTP API: flows, their runs on demand, and ad-hoc jobs."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

import structlog
from aiohttp import web
from pydantic import ValidationError

from common.contracts.flows import Flow, RunTemplate
from common.contracts.messages import ErrorCode, JobRequest, RunContext, TriggerKind, new_id
from common.platform.broker.interface import BrokerError
from common.platform.http import bearer_auth, error_body, health_routes, read_document, validation_error
from common.platform.logs import run_context
from common.platform.runtime import Runtime
from common.platform.webhooks import WebhookPolicy
from services.trigger import openapi
from services.trigger.launcher import launch
from services.trigger.store import FlowExists, FlowStore, StoredFlow
from services.trigger.timetable import schedule_of
from services.trigger.validation import FlowInvalid, check_flow

log = structlog.get_logger(__name__)


@dataclass
class TriggerApi:
    runtime: Runtime
    store: FlowStore
    policy: WebhookPolicy

    # -- helpers -----------------------------------------------------------

    def _location(self, run_id: str) -> str:
        return f"{self.runtime.history_url}/v1/runs/{run_id}"

    def _accepted(self, run_id: str, *, repeated: bool = False) -> web.Response:
        location = self._location(run_id)
        body = {"run_id": run_id, "status": "queued", "location": location, "repeated": repeated}
        return web.json_response(body, status=202, headers={"Location": location})

    async def _start(self, flow: Flow, context: RunContext, run_id: str) -> web.Response | None:
        with run_context(run_id, "trigger", 1, flow=flow.name, service="trigger"):
            try:
                await launch(self.runtime.broker, RunTemplate.of(flow), context, run_id)
            except BrokerError as exc:
                log.error("could not start run", error=str(exc))
                return error_body(503, "the broker did not accept the run; try again", code="Unavailable")
        return None

    async def _start_once(self, request: web.Request, flow: Flow, context: RunContext) -> web.Response:
        """Start a run; with an Idempotency-Key, a repeated request answers with the first run."""
        key = request.headers.get("Idempotency-Key")
        if key is None:
            run_id = new_id()
            return await self._start(flow, context, run_id) or self._accepted(run_id)
        if not 0 < len(key) <= 255:
            return error_body(400, "Idempotency-Key: 1 to 255 characters", code="InvalidRequest")
        async with self.store.request(flow.name, key, new_id()) as (run_id, new):
            if not new:
                return self._accepted(run_id, repeated=True)
            refused = await self._start(flow, context, run_id)
            if refused is not None:
                # Leave the key unrecorded, so the client's retry can start the run.
                raise _Refused(refused)
        return self._accepted(run_id)

    def _view(self, stored: StoredFlow) -> dict[str, Any]:
        view = stored.view()
        trigger = stored.flow.trigger
        view["trigger"] = trigger.kind
        if trigger.kind in ("cron", "every"):
            schedule = schedule_of(stored.flow)
            view["schedule"] = schedule.describe()
            view["next_fire"] = schedule.next_after(dt.datetime.now(dt.UTC)).isoformat()
        elif trigger.after is not None:
            statuses = ", ".join(status.value for status in trigger.after.status)
            view["schedule"] = f"after {trigger.after.flow} ({statuses})"
        else:
            view["schedule"] = "on demand"
        return view

    async def _check(self, flow: Flow) -> web.Response | None:
        followed_by = {
            stored.flow.name: stored.flow.trigger.after.flow if stored.flow.trigger.after else None
            for stored in await self.store.all()
        }
        try:
            check_flow(
                flow,
                connections=self.runtime.connections,
                policy=self.policy,
                minimum_interval=dt.timedelta(seconds=self.runtime.settings.minimum_schedule_seconds),
                maximum_timeout=self.runtime.settings.query_timeout_max_seconds,
                maximum_rows=self.runtime.settings.max_result_rows_limit,
                maximum_bytes=self.runtime.settings.max_result_bytes_limit,
                allowed_operators=self.runtime.settings.allowed_operators,
                allowed_domains=self.runtime.settings.email_allowed_domains,
                followed_by=followed_by,
            )
        except FlowInvalid as exc:
            fields = [{"field": field, "message": problem} for field, problem in exc.problems]
            return error_body(400, f"invalid flow: {exc}", code="InvalidFlow", fields=fields)
        return None

    # -- flows -------------------------------------------------------------

    async def list_flows(self, request: web.Request) -> web.Response:
        return web.json_response({"flows": [self._view(stored) for stored in await self.store.all()]})

    async def get_flow(self, request: web.Request) -> web.Response:
        stored = await self.store.get(request.match_info["name"])
        if stored is None:
            return error_body(404, f"flow {request.match_info['name']!r} not found", code="NotFound")
        return web.json_response(self._view(stored))

    async def create_flow(self, request: web.Request) -> web.Response:
        return await self._save(request, name=None)

    async def put_flow(self, request: web.Request) -> web.Response:
        return await self._save(request, name=request.match_info["name"])

    async def _save(self, request: web.Request, *, name: str | None) -> web.Response:
        document = await read_document(request)
        if name is not None and isinstance(document, dict):
            document.setdefault("name", name)
        try:
            flow = Flow.model_validate(document)
        except ValidationError as exc:
            return validation_error(exc)
        if name is not None and flow.name != name:
            return error_body(
                400, f"name: the document names {flow.name!r}, the URL {name!r}", code="InvalidFlow"
            )
        refused = await self._check(flow)
        if refused is not None:
            return refused
        try:
            stored, created = await self.store.save(flow, create_only=name is None)
        except FlowExists as exc:
            return error_body(409, f"{exc}; PUT /v1/flows/{exc.name} replaces it", code="Conflict")
        log.info("flow saved", flow=flow.name, version=stored.version, created=created)
        return web.json_response(self._view(stored), status=201 if created else 200)

    async def delete_flow(self, request: web.Request) -> web.Response:
        if not await self.store.delete(request.match_info["name"]):
            return error_body(404, f"flow {request.match_info['name']!r} not found", code="NotFound")
        return web.Response(status=204)

    async def run_flow(self, request: web.Request) -> web.Response:
        stored = await self.store.get(request.match_info["name"])
        if stored is None:
            return error_body(404, f"flow {request.match_info['name']!r} not found", code="NotFound")
        body = await read_document(request) if request.can_read_body else {}
        supplied = body.get("parameters", {}) if isinstance(body, dict) else None
        if not isinstance(supplied, dict):
            return error_body(400, "parameters: must be an object of name → value", code="InvalidRequest")
        flow = stored.flow
        try:
            parameters = flow.bind_parameters(supplied)
        except ValueError as exc:
            field, _, problem = str(exc).partition(": ")
            fields = [{"field": field, "message": problem}]
            return error_body(400, str(exc), code=ErrorCode.INVALID_PARAMETERS.value, fields=fields)
        context = RunContext(
            flow=flow.name, trigger=TriggerKind.MANUAL, parameters=parameters, timezone=flow.trigger.timezone
        )
        return await self._start_once(request, flow, context)

    # -- ad-hoc jobs -------------------------------------------------------

    async def submit_job(self, request: web.Request) -> web.Response:
        body = await read_document(request)
        try:
            job = JobRequest.model_validate(body)
            flow = Flow.model_validate(job.flow_document())
        except ValidationError as exc:
            return validation_error(exc)
        if job.connection not in self.runtime.connections:
            known = ", ".join(self.runtime.connections.names()) or "none are configured"
            return error_body(
                400,
                f"connection: {job.connection!r} is not a configured connection (known: {known})",
                code=ErrorCode.UNKNOWN_CONNECTION.value,
                fields=[{"field": "connection", "message": f"{job.connection!r} is not configured"}],
            )
        context = RunContext(flow=flow.name, trigger=TriggerKind.JOB, parameters=job.parameters)
        return await self._start_once(request, flow, context)

    async def list_connections(self, request: web.Request) -> web.Response:
        return web.json_response({"connections": self.runtime.connections.names()})


class _Refused(Exception):
    def __init__(self, response: web.Response) -> None:
        super().__init__("refused")
        self.response = response


@web.middleware
async def _refusals(request: web.Request, handler: Any) -> web.StreamResponse:
    try:
        response: web.StreamResponse = await handler(request)
    except _Refused as refused:
        return refused.response
    return response


def create_app(runtime: Runtime, store: FlowStore, policy: WebhookPolicy) -> web.Application:
    api = TriggerApi(runtime, store, policy)
    app = web.Application(
        middlewares=[bearer_auth(runtime.settings.api_token), _refusals], client_max_size=1024**2
    )
    app.router.add_post("/v1/jobs", api.submit_job)
    app.router.add_get("/v1/flows", api.list_flows)
    app.router.add_post("/v1/flows", api.create_flow)
    app.router.add_get("/v1/flows/{name}", api.get_flow)
    app.router.add_put("/v1/flows/{name}", api.put_flow)
    app.router.add_delete("/v1/flows/{name}", api.delete_flow)
    app.router.add_post("/v1/flows/{name}/runs", api.run_flow)
    app.router.add_get("/v1/connections", api.list_connections)
    openapi.add_route(app)
    health_routes(app, {**runtime.checks(), "database": store.ping})
    return app
