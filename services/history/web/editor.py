"""Creating and editing flows in the browser: a YAML editor checked while typing, saved over the
version it was loaded at.

The pages never read flow content as anything but text: the definition goes
into a ``<textarea>`` (autoescaped), the checks and the saves are the trigger
API's (``POST /v1/flows:validate``, ``POST /v1/flows``, ``PUT /v1/flows/{name}``
with ``If-Match``), called with the server's token. ``static/editor.js`` adds
the line gutter, checking while typing and marking the problems; every POST
here demands the :data:`~services.history.web.session.CSRF_HEADER`, the check
and the test run too, so a cross-site form reaches none of them.
"""

from __future__ import annotations

import json
import re
from typing import Any
from urllib.parse import quote

import structlog
from aiohttp import web

from common.platform.routes import error_body
from services.history.web.flow_runs import recorded
from services.history.web.pages import STORE, page, trigger_client
from services.history.web.session import csrf_ok, csrf_refusal
from services.history.web.trigger import TriggerUnavailable

log = structlog.get_logger(__name__)

#: Where a flow starts when no template is chosen: the fields every flow has, to fill in.
BLANK = """\
# A new flow. Without a trigger it runs on demand; the templates show schedules and more steps.
name: my-flow
description: ""
connection: local
database: Samples
steps:
  - id: rows
    action: run_query
    query: StormEvents | take 10
"""

#: The largest definition the pages pass on (the trigger API has its own limit too).
MAX_TEXT = 1024 * 1024


def _flow_href(name: str) -> str:
    return f"/ui/flows/{quote(name, safe='')}"


def line_of(text: str, field: str) -> int | None:
    """The line (from 1) of a top-level *field*'s key in the YAML *text*, for a problem that came
    without one (the save's own refusals name only the field)."""
    key = field.split(".", 1)[0].split("[", 1)[0]
    if not key:
        return None
    pattern = re.compile(rf"^{re.escape(key)}\s*:")
    for number, line in enumerate(text.splitlines(), start=1):
        if pattern.match(line):
            return number
    return None


def _located(text: str, problems: list[dict[str, Any]]) -> list[dict[str, Any]]:
    placed = []
    for problem in problems:
        problem = dict(problem)
        if not problem.get("line"):
            line = line_of(text, str(problem.get("field", "")))
            if line is not None:
                problem.update(line=line, column=1)
        placed.append(problem)
    return placed


def _editor(
    request: web.Request,
    *,
    text: str,
    name: str | None,
    version: int | None,
    status: int = 200,
    **context: Any,
) -> web.Response:
    """The editor page for flow *name* at *version* (a new flow: both None) holding *text*."""
    problems = _located(text, context.pop("problems", []))
    invalid_lines = {problem["line"] for problem in problems if problem.get("line")}
    context.setdefault("templates", None)
    context.setdefault("chosen", None)
    return page(
        request,
        "editor.html",
        status=status,
        text=text,
        name=name,
        version=version,
        action=f"{_flow_href(name)}/definition" if name is not None else "/ui/flows",
        lines=range(1, text.count("\n") + 2),
        invalid_lines=invalid_lines,
        problems=problems,
        conflict=context.pop("conflict", None),
        notice=context.pop("notice", None),
        **context,
    )


# -- the pages -------------------------------------------------------------


async def new_flow_page(request: web.Request) -> web.Response:
    """A new flow: the templates to start from (``?template=NAME`` fills the editor), or blank."""
    trigger = trigger_client(request)
    chosen = request.query.get("template", "")
    try:
        templates = await trigger.templates()
    except TriggerUnavailable as exc:
        return _editor(request, text=BLANK, name=None, version=None, status=502, notice=exc.message)
    template = next((entry for entry in templates if entry["name"] == chosen), None)
    if chosen and template is None:
        notice = f"template: there is no template {chosen!r}; choose one of the list"
        return _editor(
            request, text=BLANK, name=None, version=None, status=404, templates=templates, notice=notice
        )
    text = template["yaml"] if template is not None else BLANK
    return _editor(request, text=text, name=None, version=None, templates=templates, chosen=template)


async def edit_flow_page(request: web.Request) -> web.Response:
    """A flow's current version as saved, in the editor, with the version it was loaded at."""
    name = request.match_info["name"]
    trigger = trigger_client(request)
    try:
        current = (await trigger.versions(name))["current"]
        if current is None:
            return page(request, "missing.html", status=404, what=f"flow {name}")
        definition = (await trigger.version(name, current))["definition"]
    except TriggerUnavailable as exc:
        if exc.status == 404:
            return page(request, "missing.html", status=404, what=f"flow {name}")
        return _editor(request, text="", name=name, version=None, status=502, notice=exc.message)
    return _editor(request, text=definition, name=name, version=current)


# -- saving ----------------------------------------------------------------


def _form_text(form: Any) -> str | None:
    text = form.get("definition")
    if not isinstance(text, str) or len(text) > MAX_TEXT:
        return None
    # Browsers send a textarea's lines with CRLF.
    return text.replace("\r\n", "\n")


def _no_definition() -> web.Response:
    return error_body(400, f"definition: the flow's YAML, at most {MAX_TEXT} bytes", code="InvalidRequest")


async def create_flow(request: web.Request) -> web.Response:
    """Save a new flow from the editor; one whose name exists already is refused, not replaced."""
    if not csrf_ok(request):
        return csrf_refusal()
    text = _form_text(await request.post())
    if text is None:
        return _no_definition()
    return await _save(request, text, name=None, version=None)


async def save_flow(request: web.Request) -> web.Response:
    """Save a flow's definition over the version the editor was loaded at (the form's ``version``)."""
    if not csrf_ok(request):
        return csrf_refusal()
    name = request.match_info["name"]
    form = await request.post()
    text = _form_text(form)
    if text is None:
        return _no_definition()
    version = form.get("version")
    if not (isinstance(version, str) and version.isdigit() and int(version) >= 1):
        problem = "version: the version the editor was loaded at, 1 or more"
        return error_body(400, problem, code="InvalidRequest")
    return await _save(request, text, name=name, version=int(version))


async def _save(request: web.Request, text: str, *, name: str | None, version: int | None) -> web.Response:
    trigger = trigger_client(request)

    def again(status: int, **context: Any) -> web.Response:
        return _editor(request, text=text, name=name, version=version, status=status, **context)

    try:
        report = await trigger.validate(text)
        if not report["valid"]:
            return again(400, problems=report["problems"], notice="Not saved: the flow has problems.")
        named = report["flow"]["name"]
        if name is not None and named != name:
            problem = {
                "field": "name",
                "message": f"the document names flow {named!r}, this page edits flow {name!r}; "
                "a flow is renamed by saving it as a new flow",
            }
            return again(400, problems=[problem], notice="Not saved: the name does not match.")
        status, body = await trigger.save_definition(text, name=name, version=version)
    except TriggerUnavailable as exc:
        return again(502, notice=f"Not saved: {exc.message}")
    if status in (200, 201):
        created = status == 201
        log.info("flow saved from the editor", flow=body["name"], version=body["version"], created=created)
        raise web.HTTPSeeOther(_flow_href(body["name"]))
    error = body.get("error", {}) if isinstance(body, dict) else {}
    message = error.get("message") or f"HTTP {status}"
    if status == 412:
        return again(412, conflict={"name": name, "loaded": version})
    if status == 409:
        return again(409, conflict={"name": named, "exists": True})
    if status == 400:
        fields = error.get("fields") or [{"field": "", "message": message}]
        return again(400, problems=fields, notice="Not saved: the flow has problems.")
    return again(502 if status >= 500 else status, notice=f"Not saved: the trigger API refused: {message}")


# -- checking and test runs ------------------------------------------------


async def validate_draft(request: web.Request) -> web.Response:
    """The trigger's check of the YAML body, for the editor while typing; changes nothing."""
    if not csrf_ok(request):
        return csrf_refusal()
    text = await request.text()
    if len(text) > MAX_TEXT:
        return error_body(413, f"body: at most {MAX_TEXT} bytes of YAML", code="InvalidRequest")
    try:
        status, body = await trigger_client(request).forward("POST", "/v1/flows:validate", yaml_text=text)
    except TriggerUnavailable as exc:
        return error_body(502, exc.message, code="Unavailable")
    return web.json_response(body, status=status)


async def test_draft(request: web.Request) -> web.Response:
    """A test run of the draft in the body (``{"flow": text, "parameters": {...}}``): the trigger's
    answer as it came, its status and body (202 with the run's id, or its refusal)."""
    if not csrf_ok(request):
        return csrf_refusal()
    try:
        asked = json.loads(await request.text())
        if not isinstance(asked, dict) or not isinstance(asked.get("flow"), str):
            raise TypeError
        parameters = asked.get("parameters", {})
        if not isinstance(parameters, dict):
            return error_body(400, "parameters: an object of the run's parameters", code="InvalidRequest")
    except (ValueError, TypeError):
        return error_body(400, 'flow: send {"flow": "<the YAML text>"}', code="InvalidRequest")
    try:
        status, body = await trigger_client(request).forward(
            "POST", "/v1/flows:test", json={"flow": asked["flow"], "parameters": parameters}
        )
    except TriggerUnavailable as exc:
        return error_body(502, exc.message, code="Unavailable")
    if status == 202 and isinstance(body, dict) and isinstance(body.get("run_id"), str):
        # The page goes to the run's page next, which should find the run.
        await recorded(request.app[STORE], body["run_id"])
    return web.json_response(body, status=status)


def add_editor_pages(app: web.Application) -> None:
    """The editor's routes; before the flow page's, so ``/ui/flows/new`` is not a flow's name."""
    app.router.add_get("/ui/flows/new", new_flow_page)
    app.router.add_post("/ui/flows", create_flow)
    app.router.add_post("/ui/flows:validate", validate_draft)
    app.router.add_post("/ui/flows:test", test_draft)
    app.router.add_get("/ui/flows/{name}/edit", edit_flow_page)
    app.router.add_post("/ui/flows/{name}/definition", save_flow)
