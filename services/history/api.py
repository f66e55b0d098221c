"""The run-history HTTP API.

:data:`API` is the one table of its routes: what :func:`create_app` serves and
what ``/openapi.json`` describes. The run-history pages are served beside it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from pydantic import ValidationError

from common.contracts.errors import ArtifactMissing
from common.contracts.messages import RunStatus, TriggerKind
from common.platform.http import bearer_auth, read_document
from common.platform.openapi import HttpApi
from common.platform.routes import Answer, Body, ErrorBody, Parameter, Refusal, Reply, Route
from common.platform.runtime import Runtime
from services.history.bodies import (
    DeadLetterList,
    FlowStats,
    IterationPage,
    Queued,
    RedoAccepted,
    Replayed,
    ResendRequest,
    RunDetail,
    RunPage,
)
from services.history.dead_letters import DeadLetterStore
from services.history.reruns import Redo, RedoRefused
from services.history.runs import MAX_LIMIT, RunFilters, find_run, flow_stats, list_iterations, list_runs
from services.history.store import HistoryStore
from services.history.web.pages import add_pages

_CONTENT_TYPES = {
    "json": "application/json",
    "html": "text/html",
    "txt": "text/plain",
    "csv": "text/csv",
    "svg": "image/svg+xml",
    "png": "image/png",
    "eml": "message/rfc822",
    "parquet": "application/vnd.apache.parquet",
    "gz": "application/gzip",
}


def _run_not_found(run_id: str) -> Refusal:
    return Refusal(404, f"run {run_id!r} not found", code="NotFound")


def _dead_letter_not_found(letter_id: str) -> Refusal:
    return Refusal(404, f"dead letter {letter_id!r} not found", code="NotFound")


@dataclass
class HistoryApi:
    runtime: Runtime
    store: HistoryStore
    letters: DeadLetterStore
    redo: Redo

    async def list_runs(self, request: web.Request) -> RunPage:
        filters = RunFilters.parse(request.query, flow=request.match_info.get("name"))
        return await list_runs(self.store, filters)

    async def get_run(self, request: web.Request) -> RunDetail:
        run = await find_run(self.store, request.match_info["run_id"])
        if run is None:
            raise _run_not_found(request.match_info["run_id"])
        return run

    async def list_iterations(self, request: web.Request) -> IterationPage:
        run_id, step_id = request.match_info["run_id"], request.match_info["step_id"]
        page = await list_iterations(self.store, run_id, step_id, request.query)
        if page is None:
            if await self.store.get_run(run_id) is None:
                raise _run_not_found(run_id)
            raise Refusal(404, f"run {run_id} has no step {step_id!r}", code="NotFound")
        return page

    async def flow_stats(self, request: web.Request) -> FlowStats:
        return await flow_stats(self.store, request.match_info["name"], request.query.get("window", "7d"))

    async def _redo(self, action: Callable[[], Awaitable[dict[str, Any]]]) -> Reply:
        try:
            queued = Queued.model_validate(await action())
        except RedoRefused as exc:
            raise Refusal(exc.status, exc.message, code=exc.code) from exc
        run = await find_run(self.store, queued.run_id)
        assert run is not None
        location = f"/v1/runs/{queued.run_id}"
        return Reply(RedoAccepted(queued=queued, run=run), status=202, headers={"Location": location})

    async def resend(self, request: web.Request) -> Reply:
        try:
            step = ResendRequest.model_validate(await read_document(request)).step
        except ValidationError:
            raise Refusal(
                400, 'step: the body is {} or {"step": "<send_email step id>"}', code="InvalidRequest"
            ) from None
        run_id = request.match_info["run_id"]
        return await self._redo(lambda: self.redo.resend(run_id, step))

    async def rerun(self, request: web.Request) -> Reply:
        if await read_document(request) != {}:
            raise Refusal(400, "body: a re-run takes no body", code="InvalidRequest")
        run_id = request.match_info["run_id"]
        return await self._redo(lambda: self.redo.rerun(run_id))

    async def get_artifact(self, request: web.Request) -> web.StreamResponse:
        key = request.match_info["key"]
        if not key.startswith("runs/"):
            raise Refusal(404, "no such artifact", code="NotFound")
        # Artifacts are user data: never let a browser run them as active content here.
        headers = {
            "X-Content-Type-Options": "nosniff",
            "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; img-src 'self'",
        }
        # Streamed from the blob store: a result or CSV of many megabytes is never whole in memory.
        async with contextlib.AsyncExitStack() as stack:
            try:
                blob = await stack.enter_async_context(self.runtime.blobs.open(key))
            except (ArtifactMissing, ValueError):
                raise Refusal(404, f"artifact {key!r} not found", code="NotFound") from None
            response = web.StreamResponse(headers=headers)
            response.content_type = _CONTENT_TYPES.get(key.rsplit(".", 1)[-1], "application/octet-stream")
            await response.prepare(request)
            async for chunk in blob:
                await response.write(chunk)
            await response.write_eof()
        return response

    async def list_dead_letters(self, request: web.Request) -> DeadLetterList:
        return DeadLetterList.model_validate({"dead_letters": await self.letters.all()})

    async def replay_dead_letter(self, request: web.Request) -> Reply:
        replayed = await self.letters.replay(request.match_info["id"], self.runtime.broker)
        if replayed is None:
            raise _dead_letter_not_found(request.match_info["id"])
        return Reply(Replayed(replayed=replayed), status=202)

    async def delete_dead_letter(self, request: web.Request) -> Reply:
        if not await self.letters.delete(request.match_info["id"]):
            raise _dead_letter_not_found(request.match_info["id"])
        return Reply(None, status=204)


# -- the table ---------------------------------------------------------------


def _query(name: str, schema: dict[str, Any], description: str) -> Parameter:
    return Parameter(name, "query", description, schema)


_RUN_ID = Parameter("run_id", "path", "The run.")
_FLOW = Parameter("name", "path", "The flow.")
_LETTER = Parameter("id", "path", "The dead letter.")
_RUN_FILTERS = [
    _query(
        "status",
        {"type": "string", "enum": [status.value for status in RunStatus]},
        "Only runs with this status.",
    ),
    _query(
        "trigger", {"type": "string", "enum": [kind.value for kind in TriggerKind]}, "Only runs started so."
    ),
    _query(
        "since",
        {"type": "string", "format": "date-time"},
        "Submitted at or after (ISO 8601; UTC if no zone).",
    ),
    _query(
        "until", {"type": "string", "format": "date-time"}, "Submitted before (ISO 8601; UTC if no zone)."
    ),
    _query("order", {"type": "string", "enum": ["desc", "asc"], "default": "desc"}, "By submitted time."),
    _query("limit", {"type": "integer", "minimum": 1, "maximum": MAX_LIMIT, "default": 50}, "Runs per page."),
    _query("cursor", {"type": "string"}, "The next_cursor of the previous page, for the same order."),
]
_LIST_FILTERS = [
    *_RUN_FILTERS,
    _query(
        "children",
        {"type": "boolean", "default": False},
        "Also the child runs of for_each and parallel steps (listed under their step otherwise).",
    ),
    _query(
        "dry_run",
        {"type": "boolean"},
        "Only test runs (true) or only real runs (false); both unless given.",
    ),
]
_WINDOW = _query(
    "window",
    {"type": "string", "pattern": "^[1-9][0-9]{0,4}[mhd]$", "default": "7d"},
    "How far back from now: minutes, hours or days (1h, 24h, 7d, 28d), at most 366d.",
)
_RUNS = {200: Answer("A page of runs.", RunPage)}
_REDONE = {
    202: Answer("Queued: the new attempt, and the run as it is now.", RedoAccepted, {"Location": "The run."})
}
_REDO_REFUSALS = (400, 404, 409, 415, 503)

ROUTES: list[Route[HistoryApi]] = [
    Route(
        "GET",
        "/v1/runs",
        "listRuns",
        HistoryApi.list_runs,
        "Runs, newest first, filtered and paged",
        _RUNS,
        parameters=[_query("flow", {"type": "string"}, "Only runs of this flow."), *_LIST_FILTERS],
        refusals=(400,),
    ),
    Route(
        "GET",
        "/v1/runs/{run_id}",
        "getRun",
        HistoryApi.get_run,
        "One run with every attempt of every step",
        {200: Answer("The run.", RunDetail)},
        parameters=[_RUN_ID],
        refusals=(404,),
    ),
    Route(
        "GET",
        "/v1/runs/{run_id}/steps/{step_id}/iterations",
        "listIterations",
        HistoryApi.list_iterations,
        "The child runs of a for_each or parallel step, by iteration, paged",
        {200: Answer("A page of the step's iterations.", IterationPage)},
        parameters=[
            _RUN_ID,
            Parameter("step_id", "path", "The run's for_each or parallel step."),
            _query(
                "status",
                {"type": "string", "enum": [status.value for status in RunStatus]},
                "Only iterations whose latest run has this status (failed: the ones to re-run).",
            ),
            _query(
                "limit", {"type": "integer", "minimum": 1, "maximum": MAX_LIMIT, "default": 50}, "Per page."
            ),
            _query("cursor", {"type": "string"}, "The next_cursor of the previous page."),
        ],
        refusals=(400, 404),
    ),
    Route(
        "POST",
        "/v1/runs/{run_id}/resend",
        "resendEmail",
        HistoryApi.resend,
        "Send a finished run's email again, as a new attempt of its send_email step",
        _REDONE,
        parameters=[_RUN_ID],
        body=Body(ResendRequest, required=False),
        refusals=_REDO_REFUSALS,
    ),
    Route(
        "POST",
        "/v1/runs/{run_id}/rerun",
        "rerunRun",
        HistoryApi.rerun,
        "Run a failed run again from its failed step, reusing earlier steps' outputs",
        _REDONE,
        parameters=[_RUN_ID],
        refusals=_REDO_REFUSALS,
    ),
    Route(
        "GET",
        "/v1/flows/{name}/runs",
        "listFlowRuns",
        HistoryApi.list_runs,
        "The runs of one flow",
        _RUNS,
        parameters=[_FLOW, *_LIST_FILTERS],
        refusals=(400,),
    ),
    Route(
        "GET",
        "/v1/flows/{name}/stats",
        "flowStats",
        HistoryApi.flow_stats,
        "Runs, outcomes and duration percentiles of a flow over a window",
        {200: Answer("The flow's numbers.", FlowStats)},
        parameters=[_FLOW, _WINDOW],
        refusals=(400,),
    ),
    Route(
        "GET",
        "/v1/artifacts/{key:.+}",
        "getArtifact",
        HistoryApi.get_artifact,
        "An artifact a run produced (runs/...), as its own content type",
        {200: Answer("The artifact.", media={"*/*": {"schema": {"type": "string", "format": "binary"}}})},
        parameters=[Parameter("key", "path", "The artifact's key, as linked from a run.")],
        refusals=(404,),
    ),
    Route(
        "GET",
        "/v1/dead-letters",
        "listDeadLetters",
        HistoryApi.list_dead_letters,
        "Messages no step could process, newest first",
        {200: Answer("The dead letters.", DeadLetterList)},
    ),
    Route(
        "POST",
        "/v1/dead-letters/{id}/replay",
        "replayDeadLetter",
        HistoryApi.replay_dead_letter,
        "Send a dead letter back to its step as a new attempt",
        {202: Answer("Sent back.", Replayed)},
        parameters=[_LETTER],
        refusals=(404,),
    ),
    Route(
        "DELETE",
        "/v1/dead-letters/{id}",
        "deleteDeadLetter",
        HistoryApi.delete_dead_letter,
        "Forget a dead letter",
        {204: Answer("Forgotten.")},
        parameters=[_LETTER],
        refusals=(404,),
    ),
]

API = HttpApi(
    title="adxflow run history",
    version="1",
    description="Runs, their steps and artifacts; resending and re-running; dead letters.",
    routes=ROUTES,
    refusals={
        400: Answer("A bad parameter or body; the message names it.", ErrorBody),
        401: Answer(
            "A bearer token is required (off loopback).",
            ErrorBody,
            headers={"WWW-Authenticate": "The scheme to authenticate with."},
        ),
        404: Answer("Not found.", ErrorBody),
        409: Answer("The run is not in a state that allows it.", ErrorBody),
        415: Answer("The body is neither JSON nor YAML.", ErrorBody),
        503: Answer("The broker did not take the message; nothing was queued.", ErrorBody),
    },
    # A bearer token, except on loopback where the API has none.
    security=[{"bearer": []}, {}],
)


def create_app(
    runtime: Runtime, store: HistoryStore, letters: DeadLetterStore, redo: Redo | None = None
) -> web.Application:
    app = web.Application(middlewares=[bearer_auth(runtime.settings.api_token)])
    api = HistoryApi(runtime, store, letters, redo or Redo(store, letters, runtime))
    API.serve(app, api, {**runtime.checks(), "database": store.ping})
    add_pages(app, runtime, store)
    return app
