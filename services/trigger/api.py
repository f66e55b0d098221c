"""The trigger's HTTP API: accept a job, start its run, point at its history."""

from __future__ import annotations

import structlog
from aiohttp import web
from pydantic import ValidationError

from common.broker import BrokerError
from common.contracts import (
    ErrorCode,
    ErrorInfo,
    JobRequest,
    RunMessage,
    StepOutput,
    StepStatus,
    new_id,
    report_itinerary,
    utcnow,
)
from common.http import bearer_auth, error_body, health_routes, read_json, validation_error
from common.logs import run_context
from common.runtime import Runtime
from common.steps import emit, forward

log = structlog.get_logger(__name__)

RUNTIME_KEY = web.AppKey("runtime", Runtime)


async def submit_job(request: web.Request) -> web.Response:
    runtime = request.app[RUNTIME_KEY]
    body = await read_json(request)
    try:
        job = JobRequest.model_validate(body)
    except ValidationError as exc:
        return validation_error(exc)
    if job.connection not in runtime.connections:
        known = ", ".join(runtime.connections.names()) or "none are configured"
        return error_body(
            400,
            f"connection: {job.connection!r} is not a configured connection (known: {known})",
            code=ErrorCode.UNKNOWN_CONNECTION.value,
            fields=[{"field": "connection", "message": f"{job.connection!r} is not configured"}],
        )

    submitted = utcnow()
    message = RunMessage(
        run_id=new_id(),
        step_id="trigger",
        submitted_at=submitted,
        job=job,
        itinerary=report_itinerary(),
    )
    with run_context(message.run_id, message.step_id, message.attempt):
        try:
            await emit(runtime.broker, message, StepStatus.RUNNING, started_at=submitted, with_run=True)
            output = StepOutput(detail={"source": "http"})
            await forward(runtime.broker, message, output)
            await emit(runtime.broker, message, StepStatus.SUCCEEDED, started_at=submitted, output=output)
        except BrokerError as exc:
            log.error("could not start run", error=str(exc))
            await _record_refusal(runtime, message, str(exc))
            return error_body(503, "the broker did not accept the job; try again", code="Unavailable")
        log.info("run accepted", connection=job.connection, chart=job.chart.value)

    location = f"{runtime.history_url}/v1/runs/{message.run_id}"
    return web.json_response(
        {"run_id": message.run_id, "status": "queued", "location": location},
        status=202,
        headers={"Location": location},
    )


async def _record_refusal(runtime: Runtime, message: RunMessage, reason: str) -> None:
    error = ErrorInfo(
        code=ErrorCode.INTERNAL, message=f"the run could not be queued: {reason}", retryable=True
    )
    try:
        await emit(runtime.broker, message, StepStatus.FAILED, started_at=message.submitted_at, error=error)
    except BrokerError:
        log.error("could not record the refused run either")


async def list_connections(request: web.Request) -> web.Response:
    return web.json_response({"connections": request.app[RUNTIME_KEY].connections.names()})


def create_app(runtime: Runtime) -> web.Application:
    app = web.Application(middlewares=[bearer_auth(runtime.settings.api_token)], client_max_size=1024**2)
    app[RUNTIME_KEY] = runtime
    app.router.add_post("/v1/jobs", submit_job)
    app.router.add_get("/v1/connections", list_connections)
    health_routes(app, {"broker": runtime.broker.ping, "blob_store": runtime.blobs.ping})
    return app
