"""The run history as web pages: runs, one run in detail, flows, a flow's definition, trigger, runs,
versions and alerts (its runs and the run-now form: :mod:`.flow_runs`), and the login form.

Server-rendered HTML (Jinja2, autoescaped, sandboxed) that reads without
JavaScript; ``static/app.js`` adds local times, refreshing of unfinished runs
and the buttons. Every page carries a Content-Security-Policy that allows
scripts, styles and frames from this service only.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

import aiohttp
import structlog
from aiohttp import web
from jinja2 import PackageLoader
from jinja2.sandbox import SandboxedEnvironment

from common.contracts.errors import ArtifactMissing
from common.contracts.messages import RunStatus, TriggerKind
from common.platform.http import BROWSER_GATE
from common.platform.routes import InvalidParameter, error_body
from common.platform.runtime import Runtime
from services.history.bodies import RunDetail, RunPage
from services.history.runs import RunFilters, find_run, list_iterations, list_runs
from services.history.store import HistoryStore
from services.history.web.email_preview import email_preview
from services.history.web.flow_runs import FlowPages, RunForm, add_run_routes, flow_runs
from services.history.web.session import (
    COOKIE,
    CSRF_HEADER,
    LOGIN_PATH,
    Sessions,
    csrf_ok,
    csrf_refusal,
    safe_next,
)
from services.history.web.trigger import TIMEOUT, TriggerClient, TriggerUnavailable
from services.history.web.views import (
    SILENCE_DURATIONS,
    UNFINISHED,
    Iterations,
    Lane,
    badge,
    duration_words,
    email_summary,
    place,
    pretty_payload,
    step_views,
    utc_text,
)

log = structlog.get_logger(__name__)

STATIC_DIR = Path(__file__).parent / "static"
PAGE_SIZE = 25
#: Iterations a scope step's section lists at once.
ITERATIONS_PAGE_SIZE = 50

PAGE_POLICY = (
    "default-src 'self'; img-src 'self' data:; frame-src 'self'; style-src 'self'; script-src 'self'; "
    "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
#: A sent email shown inside a run's page: its own styles and embedded images, nothing active.
EMAIL_POLICY = (
    "sandbox; default-src 'none'; img-src 'self' data:; style-src 'unsafe-inline'; frame-ancestors 'self'"
)

STORE = web.AppKey("pages_store", HistoryStore)
RUNTIME = web.AppKey("pages_runtime", Runtime)
SESSIONS = web.AppKey("pages_sessions", Sessions)
TRIGGER_SESSION = web.AppKey("pages_trigger_session", aiohttp.ClientSession)

_templates = SandboxedEnvironment(loader=PackageLoader("services.history.web", "templates"), autoescape=True)
_templates.filters["duration"] = duration_words
_templates.filters["utc"] = utc_text
_templates.globals.update(
    badge=badge, unfinished=UNFINISHED, csrf_header=CSRF_HEADER, silence_durations=SILENCE_DURATIONS
)


def page(request: web.Request, template: str, *, status: int = 200, **context: Any) -> web.Response:
    html = _templates.get_template(template).render(
        signed_in=request.app[SESSIONS].valid(request.cookies.get(COOKIE)),
        path=request.path,
        **context,
    )
    headers = {
        "Content-Security-Policy": PAGE_POLICY,
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "same-origin",
        "Cache-Control": "no-store",
    }
    return web.Response(text=html, status=status, content_type="text/html", headers=headers)


def trigger_client(request: web.Request) -> TriggerClient:
    # The trigger's address is known only once it runs, which may be after this app starts.
    runtime = request.app[RUNTIME]
    return TriggerClient(runtime.trigger_url, runtime.settings.api_token, request.app[TRIGGER_SESSION])


async def _trigger_session(app: web.Application) -> AsyncIterator[None]:
    async with aiohttp.ClientSession(timeout=TIMEOUT) as session:
        app[TRIGGER_SESSION] = session
        yield


# -- runs ------------------------------------------------------------------


async def home(request: web.Request) -> web.Response:
    raise web.HTTPSeeOther("/ui/runs")


async def runs_page(request: web.Request) -> web.Response:
    query = request.query
    filters = {name: query.get(name, "").strip() for name in ("flow", "status", "trigger")}
    chosen = {name: value for name, value in filters.items() if value}
    try:
        asked = RunFilters.parse({**chosen, **_cursor_of(query), "limit": str(PAGE_SIZE)})
    except InvalidParameter as exc:
        listed, problems = RunPage(runs=[], next_cursor=None), [exc.message]
    else:
        listed, problems = await list_runs(request.app[STORE], asked), []
    next_cursor = listed.next_cursor
    older = f"?{urlencode({**chosen, 'cursor': next_cursor})}" if next_cursor else None
    newest = f"?{urlencode(chosen)}" if query.get("cursor") else None
    try:
        flow_names = sorted(flow["name"] for flow in await trigger_client(request).flows())
    except TriggerUnavailable:
        flow_names = []
    return page(
        request,
        "runs.html",
        status=400 if problems else 200,
        runs=listed.runs,
        filters=filters,
        problems=problems,
        statuses=list(RunStatus),
        triggers=list(TriggerKind),
        flow_names=flow_names,
        older=older,
        newest=newest,
    )


def _cursor_of(query: Mapping[str, str]) -> dict[str, str]:
    return {"cursor": query["cursor"]} if query.get("cursor") else {}


async def run_page(request: web.Request) -> web.Response:
    run_id = request.match_info["run_id"]
    run = await find_run(request.app[STORE], run_id)
    if run is None:
        return page(request, "missing.html", status=404, what=f"run {run_id}")
    now = dt.datetime.now(dt.UTC)
    steps = step_views(run, now)
    problems = []
    for step in steps:
        if step.scope in ("for_each", "parallel"):
            try:
                step.iterations = await _iterations(request, run, step.step_id)
            except InvalidParameter as exc:
                problems.append(exc.message)
    place(steps, run, now)
    await _fill_from_flow(request, run, steps)
    blobs = request.app[RUNTIME].blobs
    for step in steps:
        for name, link in step.latest.artifacts.items():
            if run.dry_run and name.startswith("webhook") and link.key.endswith(".json"):
                with contextlib.suppress(ArtifactMissing):
                    shown = pretty_payload(await blobs.get(link.key))
                    step.payloads.append({"name": name, "href": link.href, "json": shown})
            if not name.startswith("email") or not link.key.endswith(".eml"):
                continue
            try:
                # Parsed off the event loop: an email with its attachments can be megabytes.
                headers = await asyncio.to_thread(email_summary, await blobs.get(link.key))
            except (ArtifactMissing, ValueError):
                headers = {}
            step.emails.append(
                {"name": name, "headers": headers, "preview": f"/ui/emails/{link.key}", "href": link.href}
            )
    failed = next((step for step in steps if step.failed), None)
    # A test run's emails are previews: there is nothing to send again.
    sent = any(step.emails for step in steps) and not run.dry_run
    template = request.app[RUNTIME].settings.trace_url_template
    trace_url = template.format(trace_id=run.trace_id) if template and run.trace_id else None
    return page(
        request,
        "run.html",
        status=400 if problems else 200,
        run=run,
        steps=steps,
        failed=failed,
        sent=sent,
        trace_url=trace_url,
        problems=problems,
    )


async def _iterations(request: web.Request, run: RunDetail, step_id: str) -> Iterations | None:
    """A page of *step_id*'s child runs; the page's ``step``, ``status`` and ``cursor`` page the one named."""
    query = request.query
    mine = query.get("step") == step_id
    status = query.get("status", "").strip() if mine else ""
    asked = {"limit": str(ITERATIONS_PAGE_SIZE)}
    if status:
        asked["status"] = status
    if mine and query.get("cursor"):
        asked["cursor"] = query["cursor"]
    listed = await list_iterations(request.app[STORE], run.run_id, step_id, asked)
    if listed is None:
        return None
    here = f"/ui/runs/{run.run_id}"

    def link(**values: str) -> str:
        return f"{here}?{urlencode({'step': step_id, **values})}#step-{step_id}"

    return Iterations(
        page=listed,
        lanes=[Lane(child) for child in listed.iterations],
        status=status or None,
        next_href=link(**({"status": status} if status else {}), cursor=listed.next_cursor)
        if listed.next_cursor
        else None,
        all_href=link() if status or (mine and query.get("cursor")) else None,
        failed_href=link(status="failed") if status != "failed" else None,
    )


async def _fill_from_flow(request: web.Request, run: RunDetail, steps: list[Any]) -> None:
    """Query text for query steps that did not report it (a step that failed): the flow's current text."""
    missing = [step for step in steps if step.kind == "query" and step.query_text is None]
    if not missing or not run.flow:
        return
    try:
        flow = await trigger_client(request).flow(run.flow)
    except TriggerUnavailable:
        return
    by_id = {step.get("id"): step for step in flow["document"].get("steps", [])}
    for step in missing:
        spec = by_id.get(step.flow_step or step.step_id, {})
        text = spec.get("query") or spec.get("command")
        if text:
            step.query_text = text
            step.query_source = f"from the flow's current version {flow.get('version')}"
            step.parameters = dict(run.parameters)


async def email_page(request: web.Request) -> web.Response:
    """A sent email as a page for a sandboxed frame: headers, HTML body, inline images embedded."""
    key = request.match_info["key"]
    if not key.startswith("runs/") or not key.endswith(".eml"):
        return error_body(404, "no such email", code="NotFound")
    try:
        raw = await request.app[RUNTIME].blobs.get(key)
    except (ArtifactMissing, ValueError):
        return error_body(404, f"email {key!r} not found", code="NotFound")
    headers = {"Content-Security-Policy": EMAIL_POLICY, "X-Content-Type-Options": "nosniff"}
    preview = await asyncio.to_thread(email_preview, raw)
    return web.Response(text=preview, content_type="text/html", headers=headers)


# -- flows -----------------------------------------------------------------


async def flows_page(request: web.Request) -> web.Response:
    store = request.app[STORE]
    try:
        flows = await trigger_client(request).flows()
        problem = None
    except TriggerUnavailable as exc:
        flows, problem = [], exc.message
    for flow in flows:
        latest = await list_runs(store, RunFilters(flow=flow["name"], limit=1))
        flow["last_run"] = latest.runs[0] if latest.runs else None
    return page(request, "flows.html", status=502 if problem else 200, flows=flows, problem=problem)


async def set_flow_enabled(request: web.Request) -> web.Response:
    if request.headers.get(CSRF_HEADER) != "1":
        return csrf_refusal()
    try:
        body = json.loads(await request.text() or "{}")
        if not isinstance(body, dict) or not isinstance(body["enabled"], bool):
            raise TypeError
        enabled, version = body["enabled"], body.get("version")
        unknown = sorted(set(body) - {"enabled", "version"})
        if unknown:
            return error_body(400, f"{unknown[0]}: not a field of this request", code="InvalidRequest")
        if version is not None and (isinstance(version, bool) or not isinstance(version, int) or version < 1):
            problem = "version: the flow's version the page shows, 1 or more"
            return error_body(400, problem, code="InvalidRequest")
    except (ValueError, KeyError, TypeError):
        return error_body(400, 'send {"enabled": true} or {"enabled": false}', code="InvalidRequest")
    name = request.match_info["name"]
    try:
        saved = await trigger_client(request).set_enabled(name, enabled, version=version)
    except TriggerUnavailable as exc:
        status = exc.status if 400 <= exc.status < 500 else 502
        codes = {404: "NotFound", 412: "PreconditionFailed"}
        return error_body(status, exc.message, code=codes.get(status, "Unavailable"))
    log.info("flow switched from the history pages", flow=name, enabled=enabled)
    return web.json_response({"name": saved["name"], "enabled": saved["enabled"]})


def _chosen(request: web.Request, name: str) -> int | None:
    """A version number the diff form asked for in the query (*name*: ``from`` or ``to``)."""
    value = request.query.get(name, "")
    if not value:
        return None
    if not value.isdigit():
        raise InvalidParameter(name, f"{value!r} is not a version number")
    return int(value)


async def flow_page(request: web.Request) -> web.Response:
    """A flow's definition, trigger and runs, versions (a diff of two of them), alerts and silences."""
    try:
        older, newer = _chosen(request, "from"), _chosen(request, "to")
    except InvalidParameter as exc:
        return error_body(400, exc.message, code="InvalidRequest")
    return await _flow_page(request, request.match_info["name"], older, newer)


async def _flow_page(
    request: web.Request,
    name: str,
    older: int | None = None,
    newer: int | None = None,
    *,
    form: RunForm | None = None,
    status: int = 200,
) -> web.Response:
    trigger = trigger_client(request)
    try:
        alerts = await trigger.alerts(name)
        over = await trigger.silences(name, "ended")
    except TriggerUnavailable as exc:
        if exc.status == 404:
            return page(request, "missing.html", status=404, what=f"flow {name}")
        return page(request, "flow.html", status=502, name=name, problem=exc.message)
    context: dict[str, Any] = {"alerts": alerts["alerts"], "silences": alerts["silences"], "over": over}
    try:
        context.update(await _versions(trigger, name, older, newer))
    except TriggerUnavailable as exc:
        # The alerts still show: a trigger of the release before versions has none to give.
        context.update(versions=[], versions_problem=exc.message)
    try:
        context.update(
            runs=await flow_runs(request.app[STORE], await trigger.flow(name), form), runs_problem=None
        )
    except TriggerUnavailable as exc:
        context.update(runs=None, runs_problem=exc.message)
    # Send-a-test is offered only where the operator allows addresses for tests.
    sends_tests = bool(request.app[RUNTIME].settings.test_recipients)
    return page(
        request, "flow.html", status=status, name=name, problem=None, sends_tests=sends_tests, **context
    )


async def _flow_page_with(request: web.Request, name: str, form: RunForm, status: int) -> web.Response:
    """The flow's page with the run-now form as it was sent, its errors inline."""
    return await _flow_page(request, name, form=form, status=status)


async def _versions(
    trigger: TriggerClient, name: str, older: int | None, newer: int | None
) -> dict[str, Any]:
    """What the page shows of the flow's versions: the definition, the list, the diff asked for."""
    history = await trigger.versions(name)
    current = history["current"]
    numbers = [entry["version"] for entry in history["versions"]]
    # By default the newest change: the version before the newest against it.
    newer = newer if newer is not None else numbers[0]
    older = older if older is not None else numbers[min(1, len(numbers) - 1)]
    diff: list[str] = []
    diff_problem = None
    if older not in numbers or newer not in numbers:
        diff_problem = f"flow {name} has no version {older if older not in numbers else newer}"
    else:
        diff = await trigger.diff(name, older, newer)
    return {
        "definition": (await trigger.version(name, current))["definition"] if current else None,
        "current": current,
        "versions": history["versions"],
        "versions_problem": None,
        "diff": [(_diff_kind(line), line) for line in diff],
        "diff_from": older,
        "diff_to": newer,
        "diff_problem": diff_problem,
    }


def _diff_kind(line: str) -> str:
    if line.startswith(("---", "+++")):
        return "head"
    return {"+": "added", "-": "removed", "@": "hunk"}.get(line[:1], "same")


async def restore_version(request: web.Request) -> web.Response:
    """Restore an older version from the flow's page, over the version the page showed."""
    if request.headers.get(CSRF_HEADER) != "1":
        return csrf_refusal()
    name = request.match_info["name"]
    version = request.match_info["version"]
    current = (await request.post()).get("current")
    if not version.isdigit() or not (isinstance(current, str) and current.isdigit()):
        return error_body(
            400, "current: the version the page shows, and a version to restore", code="InvalidRequest"
        )
    try:
        saved = await trigger_client(request).restore(name, int(version), current=int(current))
    except TriggerUnavailable as exc:
        return _flow_refusal(exc)
    log.info(
        "flow version restored from the history pages", flow=name, version=saved["version"], restored=version
    )
    raise web.HTTPSeeOther(f"/ui/flows/{quote(name, safe='')}#versions")


def _flow_refusal(exc: TriggerUnavailable) -> web.Response:
    status = exc.status if 400 <= exc.status < 500 else 502
    codes = {400: "InvalidRequest", 404: "NotFound", 409: "Conflict", 412: "PreconditionFailed"}
    return error_body(status, exc.message, code=codes.get(status, "Unavailable"))


def _back_to_flow(name: str) -> web.HTTPSeeOther:
    return web.HTTPSeeOther(f"/ui/flows/{quote(name, safe='')}#silences")


async def add_silence(request: web.Request) -> web.Response:
    """Silence a flow's alert (or one instance of it) from its page: the form's duration and comment."""
    if request.headers.get(CSRF_HEADER) != "1":
        return csrf_refusal()
    name = request.match_info["name"]
    form = await request.post()
    asked: dict[str, str] = {"flow": name}
    for field in ("step", "key", "for", "comment"):
        value = form.get(field)
        if isinstance(value, str) and value:
            asked[field] = value
    try:
        silence = await trigger_client(request).silence(asked)
    except TriggerUnavailable as exc:
        return _flow_refusal(exc)
    log.info("silence set from the history pages", flow=name, silence=silence["id"])
    raise _back_to_flow(name)


async def end_silence(request: web.Request) -> web.Response:
    if request.headers.get(CSRF_HEADER) != "1":
        return csrf_refusal()
    name, silence_id = request.match_info["name"], request.match_info["silence_id"]
    trigger = trigger_client(request)
    try:
        # Only a silence of the flow whose page this is: another flow's is not this page's to end.
        if (await trigger.get_silence(silence_id))["flow"] != name:
            return error_body(404, f"flow {name!r} has no silence {silence_id!r}", code="NotFound")
        await trigger.end_silence(silence_id)
    except TriggerUnavailable as exc:
        return _flow_refusal(exc)
    log.info("silence ended from the history pages", flow=name, silence=silence_id)
    raise _back_to_flow(name)


# -- login -----------------------------------------------------------------


async def login_form(request: web.Request) -> web.Response:
    if not request.app[SESSIONS].required:
        raise web.HTTPSeeOther("/ui/runs")
    return page(request, "login.html", next=safe_next(request.query.get("next")), refused=False)


async def login(request: web.Request) -> web.Response:
    sessions = request.app[SESSIONS]
    if not sessions.required:
        raise web.HTTPSeeOther("/ui/runs")
    form = await request.post()
    target = safe_next(str(form.get("next", "")))
    if not sessions.token_matches(str(form.get("token", ""))):
        log.warning("history pages: a login was refused", remote=request.remote)
        return page(request, "login.html", status=401, next=target, refused=True)
    response = web.HTTPSeeOther(target)
    sessions.set_cookie(request, response)
    raise response


async def logout(request: web.Request) -> web.Response:
    if not csrf_ok(request):
        return csrf_refusal()
    response = web.HTTPSeeOther(LOGIN_PATH)
    response.del_cookie(COOKIE, path="/")
    raise response


def add_pages(app: web.Application, runtime: Runtime, store: HistoryStore) -> None:
    """Serve the pages from the history API's application; with a token, admit the login cookie too."""
    # Imported here: the editor builds on this module's page helpers.
    from services.history.web.editor import add_editor_pages

    sessions = Sessions(runtime.settings.api_token)
    app[STORE] = store
    app[RUNTIME] = runtime
    app[SESSIONS] = sessions
    app[BROWSER_GATE] = sessions
    app.cleanup_ctx.append(_trigger_session)
    app.router.add_get("/", home)
    app.router.add_get("/ui/runs", runs_page)
    app.router.add_get("/ui/runs/{run_id}", run_page)
    app.router.add_get("/ui/emails/{key:.+}", email_page)
    app.router.add_get("/ui/flows", flows_page)
    add_editor_pages(app)
    app.router.add_post("/ui/flows/{name}/enabled", set_flow_enabled)
    app.router.add_get("/ui/flows/{name}", flow_page)
    app.router.add_post("/ui/flows/{name}/silences", add_silence)
    app.router.add_post("/ui/flows/{name}/silences/{silence_id}/end", end_silence)
    app.router.add_post("/ui/flows/{name}/versions/{version}/restore", restore_version)
    add_run_routes(app, FlowPages(store=store, trigger=trigger_client, render=_flow_page_with))
    app.router.add_get(LOGIN_PATH, login_form)
    app.router.add_post(LOGIN_PATH, login)
    app.router.add_post("/ui/logout", logout)
    app.router.add_static("/ui/static/", STATIC_DIR, append_version=False)
