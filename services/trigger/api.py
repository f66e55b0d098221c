"""The trigger's HTTP API: flows, their runs on demand, ad-hoc jobs, alerts and their silences.

:data:`API` is the one table of its routes: what :func:`create_app` serves and
what ``/openapi.json`` describes.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import importlib.metadata
from dataclasses import dataclass
from typing import Any

import structlog
import yaml
from aiohttp import web
from pydantic import ValidationError

from common.contracts.flows import Flow, RunTemplate
from common.contracts.messages import ErrorCode, JobRequest, RunContext, TriggerKind, new_id, utcnow
from common.platform.broker.interface import BrokerError
from common.platform.http import bearer_auth, invalid_request, read_document, read_text, sent_yaml
from common.platform.logs import run_context
from common.platform.openapi import HttpApi
from common.platform.routes import (
    Answer,
    Body,
    ErrorBody,
    FieldProblem,
    InvalidParameter,
    Parameter,
    Refusal,
    Reply,
    Route,
)
from common.platform.runtime import Runtime
from common.platform.webhooks import WebhookPolicy, ingest_policy
from services.trigger.alert_board import MAX_SILENCES, AlertBoard, invalid
from services.trigger.alert_store import AlertStore
from services.trigger.bodies import (
    EXAMPLE_FLOW,
    EXAMPLE_JOB,
    EXAMPLE_RUN,
    EXAMPLE_SILENCE,
    ConnectionList,
    DraftTestRequest,
    FlowAlerts,
    FlowDetail,
    FlowList,
    FlowReplacement,
    FlowView,
    RunAccepted,
    RunRequest,
    SilenceList,
    SilenceRequest,
    SilenceView,
    VersionDiff,
    VersionEntry,
    VersionList,
    VersionView,
)
from services.trigger.drafts import DraftProblem, DraftReport, Examined, examine, next_fires, trigger_words
from services.trigger.dry_runs import DraftRefused, TestSendRefused, run_draft, test_address
from services.trigger.flow_templates import FlowTemplate, FlowTemplates, flow_templates
from services.trigger.preconditions import IfMatch, PreconditionFailed, etag
from services.trigger.silences import LISTINGS, SilenceStore
from services.trigger.starter import launch
from services.trigger.store import FlowExists, FlowStore, RequestState, StoredFlow
from services.trigger.validation import FlowInvalid, Problem, check_flow
from services.trigger.versions import FlowVersion, SavedVersion, definition, unified_diff

log = structlog.get_logger(__name__)

#: How long a request's Idempotency-Key waits for its run to be started before another request
#: with the same key takes it over (two publishes, each riding out a broker reconnection), and how
#: often such a request looks again at first.
REQUEST_LEASE = dt.timedelta(minutes=2)
_REQUEST_PAUSE = 0.02


def _not_found(name: str) -> Refusal:
    return Refusal(404, f"flow {name!r} not found", code="NotFound")


def _no_version(name: str, number: int, kept: list[int]) -> Refusal:
    if not kept:
        return _not_found(name)
    held = f"{kept[0]}" if len(kept) == 1 else f"{min(kept)} to {max(kept)}"
    return Refusal(404, f"flow {name!r} has no version {number} (its versions: {held})", code="NotFound")


def _number(name: str, value: str | None) -> int:
    """A version number given in the path or the query, or `InvalidParameter` naming *name*."""
    if value is None:
        raise InvalidParameter(name, "required: a version number, as GET /v1/flows/{name}/versions lists")
    if not value.isdigit() or not 1 <= int(value) <= 2**31 - 1:
        raise InvalidParameter(name, f"{value!r} is not a version number (a whole number from 1)")
    return int(value)


def _prefers(request: web.Request, media: tuple[str, ...]) -> bool:
    """Whether the request's Accept ranks one of *media* above JSON (JSON wins a tie and by default)."""
    ranks: dict[str, float] = {}
    for entry in request.headers.get("Accept", "").split(","):
        kind, *options = (part.strip() for part in entry.split(";"))
        quality = 1.0
        for option in options:
            key, _, value = option.partition("=")
            if key.strip() == "q":
                try:
                    quality = float(value)
                except ValueError:
                    quality = 0.0
        if kind:
            ranks[kind.lower()] = max(quality, ranks.get(kind.lower(), 0.0))
    json_rank = ranks.get("application/json", ranks.get("*/*", 0.0))
    return max(ranks.get(kind, 0.0) for kind in media) > json_rank


def _precondition_failed(exc: PreconditionFailed) -> Refusal:
    headers = {"ETag": etag(exc.current)} if exc.current is not None else {}
    fields = [FieldProblem(field="If-Match", message=exc.message.removeprefix("If-Match: "))]
    return Refusal(412, exc.message, code="PreconditionFailed", fields=fields, headers=headers)


@dataclass
class TriggerApi:
    runtime: Runtime
    store: FlowStore
    policy: WebhookPolicy
    board: AlertBoard

    # -- helpers -----------------------------------------------------------

    def _accepted(self, run_id: str, *, repeated: bool = False) -> Reply:
        location = f"{self.runtime.history_url}/v1/runs/{run_id}"
        body = RunAccepted(run_id=run_id, status="queued", location=location, repeated=repeated)
        return Reply(body, status=202, headers={"Location": location})

    async def _start(self, flow: Flow, context: RunContext, run_id: str) -> None:
        with run_context(run_id, "trigger", 1, flow=flow.name, service="trigger"):
            try:
                await launch(self.runtime.broker, RunTemplate.of(flow), context, run_id)
            except BrokerError as exc:
                log.error("could not start run", error=str(exc))
                raise Refusal(
                    503, "the broker did not accept the run; try again", code="Unavailable"
                ) from exc

    async def _start_once(self, request: web.Request, flow: Flow, context: RunContext) -> Reply:
        """Start a run; with an Idempotency-Key, a repeated request answers with the first run."""
        key = request.headers.get("Idempotency-Key")
        if key is None:
            run_id = new_id()
            await self._start(flow, context, run_id)
            return self._accepted(run_id)
        if not 0 < len(key) <= 255:
            raise InvalidParameter("Idempotency-Key", "1 to 255 characters")
        # The key is recorded (leased) before the run is handed to the broker and settled after, with
        # no transaction open meanwhile. A request finding it being started waits for the outcome.
        candidate = new_id()
        pause = _REQUEST_PAUSE
        while True:
            run_id, state = await self.store.request(flow.name, key, candidate, lease=REQUEST_LEASE)
            if state is RequestState.STARTED:
                return self._accepted(run_id, repeated=True)
            if state is RequestState.STARTING:
                await asyncio.sleep(pause)
                pause = min(pause * 2, 1.0)
                continue
            try:
                await self._start(flow, context, run_id)
            except Exception:
                # The key stays unspent: the client's retry can start the run. (Cancelled, the request
                # leaves it leased: whether the broker took the run is unknown, and a retry once the
                # lease ran out starts it again under the same run id.)
                await self.store.release_request(flow.name, key)
                raise
            await self.store.settle_request(flow.name, key)
            return self._accepted(run_id, repeated=state is RequestState.TAKEN_OVER)

    def _view(self, stored: StoredFlow) -> FlowView:
        flow = stored.flow
        trigger = flow.trigger
        described, schedule = trigger_words(flow)
        next_fire = schedule.next_after(dt.datetime.now(dt.UTC)).isoformat() if schedule else None
        return FlowView(
            name=flow.name,
            version=stored.version,
            enabled=flow.enabled,
            created_at=stored.created_at.isoformat(),
            updated_at=stored.updated_at.isoformat(),
            document=flow,
            trigger=trigger.kind,
            schedule=described,
            next_fire=next_fire,
        )

    async def _check(self, flow: Flow) -> None:
        problems = await self._problems(flow)
        if problems:
            fields = [FieldProblem(field=field, message=problem) for field, problem in problems]
            raise Refusal(400, f"invalid flow: {FlowInvalid(problems)}", code="InvalidFlow", fields=fields)

    async def _problems(self, flow: Flow) -> list[Problem]:
        """What keeps *flow* from being saved on this server, beyond its own document."""
        followed_by = {
            stored.flow.name: stored.flow.trigger.after.flow if stored.flow.trigger.after else None
            for stored in await self.store.all()
        }
        settings = self.runtime.settings
        try:
            check_flow(
                flow,
                connections=self.runtime.connections,
                policy=self.policy,
                minimum_interval=dt.timedelta(seconds=settings.minimum_schedule_seconds),
                maximum_timeout=settings.query_timeout_max_seconds,
                maximum_rows=settings.max_result_rows_limit,
                maximum_bytes=settings.max_result_bytes_limit,
                allowed_operators=settings.allowed_operators,
                allowed_domains=settings.email_allowed_domains,
                followed_by=followed_by,
                maximum_concurrency=settings.scope_max_concurrency,
                maximum_items=settings.scope_max_items,
                ingest_urls=ingest_policy(settings),
            )
        except FlowInvalid as exc:
            return exc.problems
        return []

    # -- flows -------------------------------------------------------------

    async def list_flows(self, request: web.Request) -> FlowList:
        return FlowList(flows=[self._view(stored) for stored in await self.store.all()])

    async def get_flow(self, request: web.Request) -> Reply:
        stored = await self.store.get(request.match_info["name"])
        if stored is None:
            raise _not_found(request.match_info["name"])
        view = self._view(stored)
        _, schedule = trigger_words(stored.flow)
        fires = next_fires(schedule, dt.datetime.now(dt.UTC)) if schedule is not None else []
        return Reply(FlowDetail(**dict(view), next_fires=fires), headers={"ETag": etag(stored.version)})

    async def create_flow(self, request: web.Request) -> Reply:
        return await self._save(request, name=None)

    async def put_flow(self, request: web.Request) -> Reply:
        return await self._save(request, name=request.match_info["name"])

    def _saved_by(self) -> str:
        # Behind the bearer middleware: with a token configured, the request carried it.
        return "local" if self.runtime.settings.api_token is None else "token"

    async def _save(self, request: web.Request, *, name: str | None) -> Reply:
        document = await read_document(request)
        # Kept before the name from the URL is filled in: the version is the document as it came.
        kept = definition(document, await sent_yaml(request))
        if name is not None and isinstance(document, dict):
            document.setdefault("name", name)
        try:
            flow = Flow.model_validate(document)
        except ValidationError as exc:
            raise invalid_request(exc) from exc
        if name is not None and flow.name != name:
            raise Refusal(
                400, f"name: the document names {flow.name!r}, the URL {name!r}", code="InvalidFlow"
            )
        if_match = IfMatch.of(request.headers.get("If-Match")) if name is not None else None
        await self._check(flow)
        return await self._stored(flow, kept, if_match=if_match, create_only=name is None)

    async def _stored(
        self,
        flow: Flow,
        kept: str,
        *,
        if_match: IfMatch | None,
        create_only: bool = False,
        restored_from: int | None = None,
    ) -> Reply:
        """Save *flow* (checked already) as a new version with its definition *kept*; the flow as saved."""
        try:
            stored, created = await self.store.save(
                flow,
                create_only=create_only,
                if_match=if_match,
                definition=kept,
                saved_by=self._saved_by(),
                restored_from=restored_from,
            )
        except FlowExists as exc:
            raise Refusal(409, f"{exc}; PUT /v1/flows/{exc.name} replaces it", code="Conflict") from exc
        except PreconditionFailed as exc:
            raise _precondition_failed(exc) from exc
        log.info(
            "flow saved", flow=flow.name, version=stored.version, created=created, restored=restored_from
        )
        return Reply(
            self._view(stored), status=201 if created else 200, headers={"ETag": etag(stored.version)}
        )

    async def validate_flow(self, request: web.Request) -> DraftReport:
        """Every problem a save of the body would refuse, each placed in the text; nothing saved."""
        try:
            text, is_yaml = await read_text(request)
        except Refusal as refusal:
            if refusal.status != 400:
                raise
            return DraftReport(valid=False, problems=[DraftProblem(field="", message=refusal.message)])
        # Pure-Python parsing: off the event loop, as read_document does.
        examined = await asyncio.to_thread(examine, text, is_yaml=is_yaml)
        await self._examined_here(examined)
        return examined.report(dt.datetime.now(dt.UTC))

    async def _examined_here(self, examined: Examined) -> None:
        """Add to a draft that keeps its own rules what this server would refuse of it on a save."""
        if examined.flow is not None:
            for field, problem in await self._problems(examined.flow):
                examined.add(field, problem)

    # -- versions ----------------------------------------------------------

    async def _version(self, name: str, number: int) -> FlowVersion:
        found = await self.store.version(name, number)
        if found is None:
            raise _no_version(name, number, [kept.version for kept in await self.store.versions(name)])
        return found

    async def list_versions(self, request: web.Request) -> VersionList:
        name = request.match_info["name"]
        kept = await self.store.versions(name)
        if not kept:
            raise _not_found(name)
        current = await self.store.get(name)
        return VersionList(
            flow=name,
            current=current.version if current else None,
            versions=[VersionEntry.model_validate(_entry(version)) for version in kept],
        )

    async def get_version(self, request: web.Request) -> VersionView | web.Response:
        name = request.match_info["name"]
        found = await self._version(name, _number("version", request.match_info["version"]))
        if _prefers(request, _YAML_MEDIA):
            return web.Response(text=found.definition, content_type="application/yaml", charset="utf-8")
        return VersionView.model_validate(
            {**_entry(found), "flow": name, "definition": found.definition, "document": found.document}
        )

    async def diff_versions(self, request: web.Request) -> VersionDiff | web.Response:
        name = request.match_info["name"]
        older = await self._version(name, _number("from", request.query.get("from")))
        newer = await self._version(name, _number("to", request.query.get("to")))
        lines = unified_diff(name, older, newer)
        if _prefers(request, ("text/plain",)):
            return web.Response(text="".join(f"{line}\n" for line in lines), content_type="text/plain")
        return VersionDiff(flow=name, from_version=older.version, to_version=newer.version, lines=lines)

    async def restore_version(self, request: web.Request) -> Reply:
        """Save a version's definition again as a new version, checked as any save is."""
        name = request.match_info["name"]
        if_match = IfMatch.of(request.headers.get("If-Match"))
        found = await self._version(name, _number("version", request.match_info["version"]))
        # Pure-Python parsing, off the event loop, as the definition's first reading was.
        document = await asyncio.to_thread(yaml.safe_load, found.definition) or {}
        if isinstance(document, dict):
            document.setdefault("name", name)
        try:
            flow = Flow.model_validate(document)
        except ValidationError as exc:
            refused = invalid_request(exc)
            raise Refusal(
                400,
                f"version {found.version} no longer passes today's checks; {refused.message}",
                code="InvalidFlow",
                fields=refused.fields,
            ) from exc
        try:
            await self._check(flow)
        except Refusal as refused:
            raise Refusal(
                400,
                f"version {found.version} no longer passes today's checks; {refused.message}",
                code=refused.code,
                fields=refused.fields,
            ) from refused
        return await self._stored(flow, found.definition, if_match=if_match, restored_from=found.version)

    async def delete_flow(self, request: web.Request) -> Reply:
        name = request.match_info["name"]
        if_match = IfMatch.of(request.headers.get("If-Match"))
        try:
            deleted = await self.store.delete(name, if_match=if_match)
        except PreconditionFailed as exc:
            raise _precondition_failed(exc) from exc
        if not deleted:
            raise _not_found(name)
        return Reply(None, status=204)

    async def run_flow(self, request: web.Request) -> Reply:
        stored = await self.store.get(request.match_info["name"])
        if stored is None:
            raise _not_found(request.match_info["name"])
        body = await read_document(request) if request.can_read_body else {}
        try:
            asked = RunRequest.model_validate(body)
        except ValidationError as exc:
            raise invalid_request(exc) from None
        flow = stored.flow
        try:
            parameters = flow.bind_parameters(asked.parameters)
        except ValueError as exc:
            field, _, problem = str(exc).partition(": ")
            fields = [FieldProblem(field=field, message=problem)]
            raise Refusal(400, str(exc), code=ErrorCode.INVALID_PARAMETERS.value, fields=fields) from exc
        try:
            recipient = test_address(self.runtime.settings, asked.send_test_to, dry_run=asked.dry_run)
        except TestSendRefused as exc:
            fields = [FieldProblem(field="send_test_to", message=str(exc).removeprefix("send_test_to: "))]
            raise Refusal(400, str(exc), code="InvalidRequest", fields=fields) from exc
        context = RunContext(
            flow=flow.name,
            trigger=TriggerKind.MANUAL,
            parameters=parameters,
            timezone=flow.trigger.timezone,
            dry_run=asked.dry_run,
            test_recipient=recipient,
        )
        return await self._start_once(request, flow, context)

    # -- ad-hoc jobs -------------------------------------------------------

    async def submit_job(self, request: web.Request) -> Reply:
        body = await read_document(request)
        try:
            job = JobRequest.model_validate(body)
            flow = Flow.model_validate(job.flow_document())
        except ValidationError as exc:
            raise invalid_request(exc) from exc
        if job.connection not in self.runtime.connections:
            known = ", ".join(self.runtime.connections.names()) or "none are configured"
            raise Refusal(
                400,
                f"connection: {job.connection!r} is not a configured connection (known: {known})",
                code=ErrorCode.UNKNOWN_CONNECTION.value,
                fields=[FieldProblem(field="connection", message=f"{job.connection!r} is not configured")],
            )
        context = RunContext(flow=flow.name, trigger=TriggerKind.JOB, parameters=job.parameters)
        return await self._start_once(request, flow, context)

    async def list_connections(self, request: web.Request) -> ConnectionList:
        return ConnectionList(connections=self.runtime.connections.names())

    # -- templates ---------------------------------------------------------

    async def list_templates(self, request: web.Request) -> FlowTemplates:
        return FlowTemplates(templates=list(flow_templates().values()))

    async def get_template(self, request: web.Request) -> FlowTemplate:
        name = request.match_info["name"]
        template = flow_templates().get(name)
        if template is None:
            raise Refusal(404, f"flow template {name!r} not found", code="NotFound")
        return template

    # -- alerts and silences -----------------------------------------------

    async def flow_alerts(self, request: web.Request) -> FlowAlerts:
        alerts = await self.board.of_flow(request.match_info["name"], utcnow())
        if alerts is None:
            raise _not_found(request.match_info["name"])
        return alerts

    async def create_silence(self, request: web.Request) -> Reply:
        try:
            asked = SilenceRequest.model_validate(await read_document(request))
        except ValidationError as exc:
            raise invalid_request(exc) from exc
        # Behind the bearer middleware: with a token configured, the request carried it.
        created_by = "local" if self.runtime.settings.api_token is None else "token"
        silence = await self.board.silence(asked, created_by=created_by, now=utcnow())
        log.info("silence set", flow=silence.flow, step=silence.step, key=silence.key, silence=silence.id)
        return Reply(silence, status=201, headers={"Location": f"/v1/silences/{silence.id}"})

    async def list_silences(self, request: web.Request) -> SilenceList:
        query = request.query
        state = next((one for one in LISTINGS if one == query.get("state", "active")), None)
        if state is None:
            raise invalid("state", f"must be {', '.join(LISTINGS)}")
        try:
            limit = int(query.get("limit", "100"))
        except ValueError:
            limit = 0
        if not 1 <= limit <= MAX_SILENCES:
            raise invalid("limit", f"must be a whole number from 1 to {MAX_SILENCES}")
        return await self.board.listed(flow=query.get("flow"), state=state, limit=limit, now=utcnow())

    async def get_silence(self, request: web.Request) -> SilenceView:
        return await self.board.one(request.match_info["id"], utcnow())

    async def end_silence(self, request: web.Request) -> Reply:
        await self.board.end(request.match_info["id"], utcnow())
        log.info("silence ended", silence=request.match_info["id"])
        return Reply(None, status=204)


def _entry(version: SavedVersion) -> dict[str, Any]:
    return {
        "version": version.version,
        "saved_at": version.saved_at,
        "saved_by": version.saved_by,
        "summary": version.summary,
        "restored_from": version.restored_from,
    }


_YAML_MEDIA = ("application/yaml", "application/x-yaml", "text/yaml")

# -- the table ---------------------------------------------------------------

_NAME = Parameter(
    "name",
    "path",
    "The flow's name.",
    {"type": "string", "pattern": Flow.model_json_schema()["properties"]["name"]["pattern"]},
    example=EXAMPLE_FLOW["name"],
)
_IDEMPOTENCY_KEY = Parameter(
    "Idempotency-Key",
    "header",
    "A repeated request with the same key answers with the run the first one started.",
    {"type": "string", "minLength": 1, "maxLength": 255},
)
_IF_MATCH = Parameter(
    "If-Match",
    "header",
    "Change the flow only if it is still at this version: the ETag GET /v1/flows/{name} answered "
    '(`"3"`), or `*` for any version of an existing flow. Otherwise 412 names the version it is at.',
    {"type": "string", "minLength": 1},
    example='"3"',
)
_ETAG = {
    "ETag": 'The flow\'s version as an entity tag (`"3"`); send it back in If-Match to change this version.'
}
_ACCEPTED = Answer(
    "The run is queued; Location is where its history will be.",
    RunAccepted,
    headers={"Location": "Where the history API reports on the run."},
)
_VERSION = Parameter(
    "version",
    "path",
    "A version of the flow, as GET /v1/flows/{name}/versions lists them.",
    {"type": "integer", "minimum": 1, "maximum": 2**31 - 1},
    example=1,
)
_SILENCE_ID = Parameter("id", "path", "The silence's id, as its creation answered.")
#: What a route that reads a body may refuse besides its own refusals.
_BODY = (400, 413, 415)


ROUTES: list[Route[TriggerApi]] = [
    Route(
        "POST",
        "/v1/jobs",
        "submitJob",
        TriggerApi.submit_job,
        "Run one query (or control command) once, render it and email it",
        {202: _ACCEPTED},
        parameters=[_IDEMPOTENCY_KEY],
        body=Body(JobRequest, EXAMPLE_JOB, yaml=True),
        refusals=(*_BODY, 503),
    ),
    Route(
        "GET",
        "/v1/flows",
        "listFlows",
        TriggerApi.list_flows,
        "Every saved flow, by name",
        {200: Answer("The flows.", FlowList)},
    ),
    Route(
        "POST",
        "/v1/flows",
        "createFlow",
        TriggerApi.create_flow,
        "Save a new flow",
        {201: Answer("The flow, saved.", FlowView, headers=_ETAG)},
        body=Body(Flow, EXAMPLE_FLOW, yaml=True),
        refusals=(*_BODY, 409),
    ),
    Route(
        "POST",
        "/v1/flows:validate",
        "validateFlow",
        TriggerApi.validate_flow,
        "Check a flow as a save would, saving nothing: each problem with its field and its place in the text",
        {
            200: Answer(
                "The problems (none: a save would accept it), even for a body that is not YAML or "
                "JSON; lines and columns count from 1 in the text sent.",
                DraftReport,
            )
        },
        body=Body(
            Flow,
            EXAMPLE_FLOW,
            yaml=True,
            description="A flow document, as PUT /v1/flows/{name} takes it (naming itself).",
        ),
        refusals=(413, 415),
    ),
    Route(
        "POST",
        "/v1/flows:test",
        "testFlow",
        run_draft,
        "Start a test run of a flow that is not saved: its queries run, nothing is delivered or saved",
        {
            202: _ACCEPTED,
            400: Answer(
                "The draft as a save would refuse it (the problems of POST /v1/flows:validate), or "
                "parameters or send_test_to that do not fit: each problem with its field.",
                DraftRefused,
            ),
        },
        body=Body(
            DraftTestRequest,
            {"flow": EXAMPLE_FLOW, "parameters": {}},
            yaml=True,
            description="JSON: the draft with its parameters; YAML (application/yaml): the flow document.",
        ),
        refusals=(413, 415, 503),
    ),
    Route(
        "GET",
        "/v1/flow-templates",
        "listFlowTemplates",
        TriggerApi.list_templates,
        "The example flows adxflow ships, as templates to start a flow from",
        {200: Answer("The templates, by name.", FlowTemplates)},
    ),
    Route(
        "GET",
        "/v1/flow-templates/{name}",
        "getFlowTemplate",
        TriggerApi.get_template,
        "One template: its YAML, what it does and what the operator configures for it",
        {200: Answer("The template.", FlowTemplate)},
        parameters=[
            Parameter("name", "path", "The template's name.", example="daily-storm-report"),
        ],
        refusals=(404,),
    ),
    Route(
        "GET",
        "/v1/flows/{name}",
        "getFlow",
        TriggerApi.get_flow,
        "One flow, with its next fire times",
        {200: Answer("The flow.", FlowDetail, headers=_ETAG)},
        parameters=[_NAME],
        refusals=(404,),
    ),
    Route(
        "PUT",
        "/v1/flows/{name}",
        "putFlow",
        TriggerApi.put_flow,
        "Create or replace a flow",
        {
            200: Answer("The flow, replaced.", FlowView, headers=_ETAG),
            201: Answer("The flow, created.", FlowView, headers=_ETAG),
        },
        parameters=[_NAME, _IF_MATCH],
        body=Body(FlowReplacement, EXAMPLE_FLOW, yaml=True),
        refusals=(*_BODY, 412),
    ),
    Route(
        "DELETE",
        "/v1/flows/{name}",
        "deleteFlow",
        TriggerApi.delete_flow,
        "Delete a flow, its fired slots and its idempotency keys",
        {204: Answer("Deleted.")},
        parameters=[_NAME, _IF_MATCH],
        refusals=(400, 404, 412),
    ),
    Route(
        "POST",
        "/v1/flows/{name}/runs",
        "runFlow",
        TriggerApi.run_flow,
        "Start a run of a flow now, or a test run of it (dry_run) that delivers nothing",
        {202: _ACCEPTED},
        parameters=[_NAME, _IDEMPOTENCY_KEY],
        body=Body(
            RunRequest,
            EXAMPLE_RUN,
            yaml=True,
            required=False,
            description="Without a body the defaults apply.",
        ),
        refusals=(*_BODY, 404, 503),
    ),
    Route(
        "GET",
        "/v1/flows/{name}/versions",
        "listFlowVersions",
        TriggerApi.list_versions,
        "Every save of a flow, newest first: its version, when, by whom, what changed; kept after a delete",
        {200: Answer("The flow's versions.", VersionList)},
        parameters=[_NAME],
        refusals=(404,),
    ),
    Route(
        "GET",
        "/v1/flows/{name}/versions/{version}",
        "getFlowVersion",
        TriggerApi.get_version,
        "One version of a flow: its definition as saved (YAML with Accept: application/yaml)",
        {
            200: Answer(
                "The version; with Accept: application/yaml, its definition alone.",
                VersionView,
                media={"application/yaml": {"schema": {"type": "string"}}},
            )
        },
        parameters=[_NAME, _VERSION],
        refusals=(400, 404),
    ),
    Route(
        "GET",
        "/v1/flows/{name}/diff",
        "diffFlowVersions",
        TriggerApi.diff_versions,
        "The unified diff of two versions' definitions (text with Accept: text/plain)",
        {
            200: Answer(
                "The diff; with Accept: text/plain, as a unified diff's text.",
                VersionDiff,
                media={"text/plain": {"schema": {"type": "string"}}},
            )
        },
        parameters=[
            _NAME,
            Parameter(
                "from",
                "query",
                "The older version (required).",
                {"type": "integer", "minimum": 1, "maximum": 2**31 - 1},
                example=1,
            ),
            Parameter(
                "to",
                "query",
                "The newer version (required).",
                {"type": "integer", "minimum": 1, "maximum": 2**31 - 1},
                example=2,
            ),
        ],
        refusals=(400, 404),
    ),
    Route(
        "POST",
        "/v1/flows/{name}/versions/{version}/restore",
        "restoreFlowVersion",
        TriggerApi.restore_version,
        "Save a version's definition again as a new version, checked as any save (recreates a deleted flow)",
        {
            200: Answer("The flow, restored as a new version.", FlowView, headers=_ETAG),
            201: Answer("The flow, created again from the version.", FlowView, headers=_ETAG),
        },
        parameters=[_NAME, _VERSION, _IF_MATCH],
        refusals=(400, 404, 412),
    ),
    Route(
        "GET",
        "/v1/flows/{name}/alerts",
        "getFlowAlerts",
        TriggerApi.flow_alerts,
        "The flow's alerts: each one's state, instances and latest transitions, and its silences in force",
        {200: Answer("The flow's alerts.", FlowAlerts)},
        parameters=[_NAME],
        refusals=(404,),
    ),
    Route(
        "POST",
        "/v1/silences",
        "createSilence",
        TriggerApi.create_silence,
        "Silence a flow's alerts (one step's, one instance's) until a time or for a while, saying why",
        {
            201: Answer(
                "The silence, in force.", SilenceView, headers={"Location": "Where the silence is read."}
            )
        },
        body=Body(SilenceRequest, EXAMPLE_SILENCE, yaml=True),
        refusals=_BODY,
    ),
    Route(
        "GET",
        "/v1/silences",
        "listSilences",
        TriggerApi.list_silences,
        "Silences, newest first: those in force, those over (ended or expired), or all",
        {200: Answer("The silences.", SilenceList)},
        parameters=[
            Parameter("flow", "query", "Only this flow's.", example=EXAMPLE_SILENCE["flow"]),
            Parameter(
                "state",
                "query",
                "active (the default), ended (ended early or expired) or all.",
                {"type": "string", "enum": ["active", "ended", "all"]},
            ),
            Parameter(
                "limit",
                "query",
                "At most this many (100 unless given).",
                {"type": "integer", "minimum": 1, "maximum": MAX_SILENCES},
            ),
        ],
        refusals=(400,),
    ),
    Route(
        "GET",
        "/v1/silences/{id}",
        "getSilence",
        TriggerApi.get_silence,
        "One silence, whether in force or over",
        {200: Answer("The silence.", SilenceView)},
        parameters=[_SILENCE_ID],
        refusals=(404,),
    ),
    Route(
        "DELETE",
        "/v1/silences/{id}",
        "endSilence",
        TriggerApi.end_silence,
        "End a silence now; it stays listed as ended",
        {204: Answer("Ended.")},
        parameters=[_SILENCE_ID],
        refusals=(404, 409),
    ),
    Route(
        "GET",
        "/v1/connections",
        "listConnections",
        TriggerApi.list_connections,
        "The names of the connections the operator configured",
        {200: Answer("Connection names.", ConnectionList)},
    ),
]

API = HttpApi(
    title="adxflow trigger API",
    version=importlib.metadata.version("adxflow"),
    description=(
        "Flows that run Kusto queries and control commands on a schedule or on demand, "
        "and ad-hoc report jobs. Bodies are JSON, or YAML with Content-Type application/yaml. "
        "A bearer token is required unless the service listens on loopback without one."
    ),
    routes=ROUTES,
    refusals={
        400: Answer("The request is malformed or invalid; `fields` names what is wrong.", ErrorBody),
        401: Answer(
            "A valid bearer token is required.",
            ErrorBody,
            headers={"WWW-Authenticate": "The scheme to authenticate with."},
        ),
        404: Answer(
            "No flow (or flow template) has this name, no version this number, or no silence this id.",
            ErrorBody,
        ),
        409: Answer(
            "A flow with this name exists (PUT replaces it), or the silence is over already.", ErrorBody
        ),
        412: Answer(
            "If-Match matches no version of the flow as it is now; the message and the ETag header "
            "name the version it is at.",
            ErrorBody,
        ),
        413: Answer("The body is over 1 MiB.", media={"text/plain": {"schema": {"type": "string"}}}),
        415: Answer("The body is neither JSON nor YAML.", ErrorBody),
        503: Answer("The broker did not accept the run; retrying can help.", ErrorBody),
    },
)


def create_app(
    runtime: Runtime, store: FlowStore, policy: WebhookPolicy, alerts: AlertStore, silences: SilenceStore
) -> web.Application:
    app = web.Application(middlewares=[bearer_auth(runtime.settings.api_token)], client_max_size=1024**2)
    api = TriggerApi(runtime, store, policy, AlertBoard(store, alerts, silences))
    API.serve(app, api, {**runtime.checks(), "database": store.ping})
    return app
