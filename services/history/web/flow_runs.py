"""A flow's runs on its page: its trigger in words with the next fire times, its numbers over the last
week, its latest runs, and the run-now form built from its typed parameters.

The form's fields follow the flow's ``parameters:`` (string, int, long, real,
bool, datetime, timespan), defaults filled in. A datetime is entered as a wall
time in the flow's own time zone (its trigger's ``timezone``) and sent to the
trigger API as the instant it names; a wall time the clocks skip is refused, one
they pass twice is the first of the two. The handler checks every value with
the contracts' :func:`~common.contracts.parameters.coerce_parameter` and shows
what is wrong next to each field, keeping what was typed.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import re
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote
from zoneinfo import ZoneInfo

import structlog
from aiohttp import web
from multidict import MultiMapping
from pydantic import ValidationError

from common.contracts.parameters import TIMESPAN_PATTERN, ParameterSpec, ParameterType, coerce_parameter
from common.platform.routes import error_body
from services.history.bodies import FlowStats, RunSummary
from services.history.runs import RunFilters, find_run, flow_stats, list_runs
from services.history.store import HistoryStore
from services.history.web.session import CSRF_HEADER, csrf_refusal
from services.history.web.trigger import TriggerClient, TriggerUnavailable

log = structlog.get_logger(__name__)

#: The window of the numbers a flow's page shows, and how many of its latest runs it lists.
STATS_WINDOW = "7d"
RECENT_RUNS = 10
#: How long a started run may take to reach the history before its page is shown anyway.
RECORDED_WITHIN = 5.0

#: The form's own fields, named so that no parameter (an identifier) can be called the same.
REQUEST_FIELD = "adxflow:request"
MODE_FIELD = "adxflow:mode"
TEST_RECIPIENT_FIELD = "adxflow:send_test_to"

_BOUNDS = {ParameterType.INT: 2**31, ParameterType.LONG: 2**63}
_REFUSED_PARAMETER = re.compile(r"parameters\.([A-Za-z_][A-Za-z0-9_]*): (.*)", re.DOTALL)


@dataclass
class FormField:
    """One parameter as the run-now form shows it: its input, its value, and what is wrong with it."""

    name: str
    kind: ParameterType
    description: str | None
    value: str
    required: bool
    error: str | None = None
    help: str | None = None

    @property
    def input(self) -> str:
        return {
            ParameterType.INT: "number",
            ParameterType.LONG: "number",
            ParameterType.REAL: "number",
            ParameterType.BOOL: "checkbox",
            ParameterType.DATETIME: "datetime-local",
        }.get(self.kind, "text")

    @property
    def attributes(self) -> dict[str, str]:
        """The input's own constraints: a whole number's range, any real, a timespan's pattern."""
        if self.kind in _BOUNDS:
            bound = _BOUNDS[self.kind]
            return {"step": "1", "min": str(-bound), "max": str(bound - 1)}
        if self.kind is ParameterType.REAL:
            return {"step": "any"}
        if self.kind is ParameterType.DATETIME:
            return {"step": "1"} if len(self.value) > len("2026-01-01T00:00") else {}
        if self.kind is ParameterType.TIMESPAN:
            return {"pattern": TIMESPAN_PATTERN}
        return {}

    @property
    def checked(self) -> bool:
        return self.value == "true"

    @property
    def described_by(self) -> str:
        ids = [f"param-{self.name}-{part}" for part, shown in self._notes() if shown]
        return " ".join(ids)

    def _notes(self) -> list[tuple[str, bool]]:
        return [
            ("description", bool(self.description)),
            ("help", bool(self.help)),
            ("error", bool(self.error)),
        ]


@dataclass
class RunForm:
    """The run-now form: a field per declared parameter, in the flow's order."""

    zone: str
    fields: list[FormField]
    #: Sent as the run request's Idempotency-Key: the same form submitted twice starts one run.
    request: str = field(default_factory=lambda: uuid.uuid4().hex)
    #: A refusal that names no one field.
    problem: str | None = None

    @property
    def invalid(self) -> bool:
        return self.problem is not None or any(entry.error for entry in self.fields)


@dataclass(frozen=True)
class TriggerView:
    """A flow's trigger as its page says it."""

    kind: str
    words: str
    zone: str
    enabled: bool
    next_fires: list[str]
    after: str | None


Render = Callable[[web.Request, str, RunForm, int], Awaitable[web.Response]]


@dataclass(frozen=True)
class FlowPages:
    """What the run-now handler takes from the pages: the store, a trigger client, the flow's page."""

    store: HistoryStore
    trigger: Callable[[web.Request], TriggerClient]
    render: Render


PAGES = web.AppKey("flow_run_pages", FlowPages)


# -- reading the flow --------------------------------------------------------


def declared(view: Mapping[str, Any]) -> tuple[dict[str, ParameterSpec], ZoneInfo]:
    """The flow's parameters, as its document declares them, and its time zone."""
    document = view["document"]
    zone = ZoneInfo(document.get("trigger", {}).get("timezone", "UTC"))
    specs = {
        name: ParameterSpec.model_validate(spec) for name, spec in document.get("parameters", {}).items()
    }
    return specs, zone


def trigger_view(view: Mapping[str, Any]) -> TriggerView:
    trigger = view["document"].get("trigger", {})
    after = trigger.get("after")
    return TriggerView(
        kind=view["trigger"],
        words=view["schedule"],
        zone=trigger.get("timezone", "UTC"),
        enabled=view["enabled"],
        next_fires=list(view.get("next_fires", [])),
        after=after["flow"] if after else None,
    )


def wall_time(instant: str, zone: ZoneInfo) -> str:
    """An ISO instant as a ``datetime-local`` value in *zone* (seconds only when it has some)."""
    local = dt.datetime.fromisoformat(instant.replace("Z", "+00:00")).astimezone(zone)
    return local.strftime("%Y-%m-%dT%H:%M:%S" if local.second else "%Y-%m-%dT%H:%M")


def local_instant(text: str, zone: ZoneInfo, name: str) -> str:
    """A wall time in *zone* as the UTC instant it names; ValueError naming *name* if it names none.

    A wall time the clocks skip (spring forward) does not exist and is refused; one they
    pass twice (fall back) is the first of the two, fold 0.
    """
    try:
        local = dt.datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(
            f"{name}: expected a date and time such as 2026-03-01T08:00, got {text!r:.60}"
        ) from None
    if local.tzinfo is not None:
        return str(coerce_parameter(ParameterType.DATETIME, local, name))
    placed = local.replace(tzinfo=zone)
    if placed.astimezone(dt.UTC).astimezone(zone).replace(tzinfo=None) != local:
        raise ValueError(
            f"{name}: {local:%Y-%m-%d %H:%M} does not exist in {zone.key} (the clocks skip it); "
            "choose a time outside the change"
        )
    return str(coerce_parameter(ParameterType.DATETIME, placed, name))


# -- the form ----------------------------------------------------------------


def _shown_default(spec: ParameterSpec, zone: ZoneInfo) -> str:
    if spec.default is None:
        return ""
    if spec.type is ParameterType.DATETIME:
        return wall_time(spec.default, zone)
    if spec.type is ParameterType.BOOL:
        return "true" if spec.default else "false"
    return str(spec.default)


def _help(spec: ParameterSpec, zone: ZoneInfo) -> str | None:
    if spec.type is ParameterType.DATETIME:
        return (
            f"In {zone.key}. A time the clocks skip is refused; a time they pass twice "
            "is the first of the two."
        )
    if spec.type is ParameterType.TIMESPAN:
        return "Such as 30s, 30m, 1h, 2d, or 1.02:03:04 (days.hours:minutes:seconds)."
    return None


def _typed(form: MultiMapping[Any], name: str, kind: ParameterType) -> str | None:
    """What the form sent for *name*: a checkbox's last value (its hidden false comes first)."""
    values = [value for value in form.getall(name, []) if isinstance(value, str)]
    if not values:
        return None
    return values[-1] if kind is ParameterType.BOOL else values[0]


def run_form(
    view: Mapping[str, Any],
    form: MultiMapping[Any] | None = None,
    errors: Mapping[str, str] | None = None,
    problem: str | None = None,
) -> RunForm:
    """The run-now form for the flow *view*: its defaults, or what *form* sent with its *errors*."""
    specs, zone = declared(view)
    fields = []
    for name, spec in specs.items():
        typed = _typed(form, name, spec.type) if form is not None else None
        fields.append(
            FormField(
                name=name,
                kind=spec.type,
                description=spec.description,
                value=typed if typed is not None else _shown_default(spec, zone),
                required=spec.default is None and spec.type is not ParameterType.BOOL,
                error=(errors or {}).get(name),
                help=_help(spec, zone),
            )
        )
    request = form.get(REQUEST_FIELD) if form is not None else None
    built = RunForm(zone=zone.key, fields=fields, problem=problem)
    if isinstance(request, str) and request:
        built.request = request
    return built


def read_form(
    specs: Mapping[str, ParameterSpec], zone: ZoneInfo, form: MultiMapping[Any]
) -> tuple[dict[str, Any], dict[str, str]]:
    """The run's parameters from the form, and what is wrong with them, by parameter.

    An empty field leaves the parameter's default; without one, it is required.
    """
    parameters: dict[str, Any] = {}
    errors: dict[str, str] = {}
    for name, spec in specs.items():
        typed = _typed(form, name, spec.type)
        if typed is None or not typed.strip():
            if spec.default is None:
                errors[name] = f"{name}: required (the flow declares no default)"
            continue
        try:
            if spec.type is ParameterType.DATETIME:
                parameters[name] = local_instant(typed, zone, name)
            else:
                parameters[name] = coerce_parameter(spec.type, typed, name)
        except ValueError as exc:
            errors[name] = str(exc)
    return parameters, errors


# -- the page's sections -----------------------------------------------------


@dataclass(frozen=True)
class FlowRuns:
    trigger: TriggerView
    stats: FlowStats
    recent: list[RunSummary]
    form: RunForm


async def flow_runs(store: HistoryStore, view: Mapping[str, Any], form: RunForm | None = None) -> FlowRuns:
    """What the flow's page shows of its runs: *form* as given, or the flow's defaults."""
    name = view["name"]
    recent = await list_runs(store, RunFilters(flow=name, limit=RECENT_RUNS))
    return FlowRuns(
        trigger=trigger_view(view),
        stats=await flow_stats(store, name, STATS_WINDOW),
        recent=recent.runs,
        form=form if form is not None else run_form(view),
    )


# -- run now -----------------------------------------------------------------


async def run_now(request: web.Request) -> web.StreamResponse:
    """Start a run with the form's parameters and show it; the form again, with its errors, if refused."""
    if request.headers.get(CSRF_HEADER) != "1":
        return csrf_refusal()
    pages = request.app[PAGES]
    name = request.match_info["name"]
    trigger = pages.trigger(request)
    form = await request.post()
    try:
        view = await trigger.flow(name)
        specs, zone = declared(view)
    except TriggerUnavailable as exc:
        status = exc.status if exc.status == 404 else 502
        return error_body(status, exc.message, code="NotFound" if status == 404 else "Unavailable")
    except (ValidationError, KeyError, ValueError) as exc:
        return error_body(502, f"the flow's parameters could not be read: {exc}", code="Unavailable")
    parameters, errors = read_form(specs, zone, form)
    if errors:
        return await pages.render(request, name, run_form(view, form, errors), 400)
    body: dict[str, Any] = {"parameters": parameters}
    testing = form.get(MODE_FIELD) == "test"
    if testing:
        body["dry_run"] = True
        recipient = form.get(TEST_RECIPIENT_FIELD)
        if isinstance(recipient, str) and recipient.strip():
            body["send_test_to"] = recipient.strip()
    try:
        key = form.get(REQUEST_FIELD)
        # One form sent twice starts one run; its test run and its run are two.
        key = f"{key}-{'test' if testing else 'run'}" if isinstance(key, str) and key else None
        accepted = await trigger.run(name, body, key=key)
    except TriggerUnavailable as exc:
        errors, problem = _refused(exc, specs)
        status = 400 if exc.status == 400 else 502
        return await pages.render(request, name, run_form(view, form, errors, problem), status)
    run_id = str(accepted["run_id"])
    log.info("run started from the history pages", flow=name, run_id=run_id, dry_run=testing)
    await recorded(pages.store, run_id)
    raise web.HTTPSeeOther(f"/ui/runs/{quote(run_id, safe='')}")


def _refused(
    exc: TriggerUnavailable, specs: Mapping[str, ParameterSpec]
) -> tuple[dict[str, str], str | None]:
    """A trigger refusal at the field it names, or for the whole form."""
    said = exc.message.removeprefix("the trigger API refused: ")
    named = _REFUSED_PARAMETER.fullmatch(said)
    if exc.status == 400 and named and named[1] in specs:
        return {named[1]: f"{named[1]}: {named[2]}"}, None
    return {}, exc.message


async def recorded(store: HistoryStore, run_id: str) -> None:
    """Wait (a little) for the history to hear of the run, so that its page finds it."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + RECORDED_WITHIN
    pause = 0.02
    while await find_run(store, run_id) is None and loop.time() < deadline:
        await asyncio.sleep(pause)
        pause = min(pause * 2, 0.25)


def add_run_routes(app: web.Application, pages: FlowPages) -> None:
    app[PAGES] = pages
    app.router.add_post("/ui/flows/{name}/runs", run_now)
