"""The flow document: a trigger plus steps, saved once and run many times.

The same structure in YAML files, the HTTP API and the CLI. A flow names a
connection the operator configured; it never carries a cluster URL or a
credential. Structural rules are checked here (step ids, actions, references
between steps, template syntax, parameter types); what depends on the
operator's configuration (connections, webhook allowlist, schedule limits) is
checked by the trigger service when the flow is saved.

Names differ from the seed where it helps a reader: control-command actions
take ``command`` rather than ``query``, because the text is not a query.
"""

from __future__ import annotations

import datetime as dt
import functools
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict, EmailStr, Field, field_validator, model_validator

from common.contracts.messages import (
    ChartKind,
    Importance,
    RunContext,
    RunMessage,
    RunStatus,
    Step,
    StepKind,
    utcnow,
)
from common.contracts.templates import TemplateSyntaxProblem, check_template

_IDENTIFIER = r"^[A-Za-z_][A-Za-z0-9_]{0,63}$"
_FLOW_NAME = r"^[a-z0-9][a-z0-9_-]{0,63}$"
#: Slip step ids the service uses itself.
RESERVED_STEP_IDS = frozenset({"trigger", "record", "run", "row"})
_ASYNC_KEYWORD = re.compile(r"^\s*\.[A-Za-z-]+(\s+[A-Za-z-]+)?\s+async\b", re.IGNORECASE)


class ParameterType(StrEnum):
    STRING = "string"
    INT = "int"
    LONG = "long"
    REAL = "real"
    BOOL = "bool"
    DATETIME = "datetime"
    TIMESPAN = "timespan"


#: What a rendering step draws: the same kinds an ad-hoc job can ask for.
Chart = ChartKind


class ParameterSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: ParameterType
    default: Any = None
    description: str | None = None

    @model_validator(mode="after")
    def _default_has_the_type(self) -> ParameterSpec:
        if self.default is not None:
            self.default = coerce_parameter(self.type, self.default, "default")
        return self


_TIMESPAN = re.compile(r"^(\d+(?:\.\d+)?)(ms|s|m|h|d)$|^(\d+\.)?\d{1,2}:\d{2}(:\d{2}(\.\d+)?)?$")


def coerce_parameter(kind: ParameterType, value: Any, field: str) -> Any:
    """*value* as a JSON-safe value of *kind*; ValueError naming *field* otherwise."""

    def wrong() -> ValueError:
        return ValueError(f"{field}: expected a {kind.value}, got {value!r:.60}")

    if kind is ParameterType.STRING:
        if not isinstance(value, str):
            raise wrong()
        return value
    if kind is ParameterType.BOOL:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
        raise wrong()
    if kind in (ParameterType.INT, ParameterType.LONG):
        if isinstance(value, str) and re.fullmatch(r"[+-]?\d+", value.strip()):
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            raise wrong()
        bound = 2**31 if kind is ParameterType.INT else 2**63
        if not -bound <= value < bound:
            raise ValueError(f"{field}: {value} is out of range for {kind.value}")
        return value
    if kind is ParameterType.REAL:
        if isinstance(value, str):
            try:
                value = float(value)
            except ValueError:
                raise wrong() from None
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise wrong()
        return float(value)
    if kind is ParameterType.DATETIME:
        if isinstance(value, dt.datetime):
            parsed = value
        elif isinstance(value, str):
            try:
                parsed = dt.datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
            except ValueError:
                raise wrong() from None
        else:
            raise wrong()
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=dt.UTC)
        return parsed.astimezone(dt.UTC).isoformat().replace("+00:00", "Z")
    if isinstance(value, str) and _TIMESPAN.match(value.strip()):
        return value.strip()
    raise wrong()


class AfterTrigger(BaseModel):
    model_config = ConfigDict(extra="forbid")

    flow: Annotated[str, Field(pattern=_FLOW_NAME)]
    status: Annotated[list[RunStatus], Field(min_length=1)] = [RunStatus.SUCCEEDED]

    @field_validator("status")
    @classmethod
    def _terminal(cls, value: list[RunStatus]) -> list[RunStatus]:
        for status in value:
            if not status.terminal:
                raise ValueError(f"a flow can follow another only when it ends: {status.value} is not an end")
        return value


class TriggerSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    cron: str | None = None
    every: str | None = None
    after: AfterTrigger | None = None
    timezone: str = "UTC"
    #: After downtime: fire the latest missed slot once, or skip what was missed.
    missed: Literal["latest", "skip"] = "latest"

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError, OSError):
            raise ValueError(f"{value!r} is not an IANA time zone (such as Europe/Berlin)") from None
        if value == "localtime":
            raise ValueError("'localtime' depends on the server; name the zone, such as Europe/Berlin")
        return value

    @model_validator(mode="after")
    def _one_kind(self) -> TriggerSpec:
        given = [name for name in ("cron", "every", "after") if getattr(self, name) is not None]
        if len(given) > 1:
            raise ValueError(f"a trigger is one of cron, every or after; got {' and '.join(given)}")
        return self

    @property
    def kind(self) -> str:
        if self.cron is not None:
            return "cron"
        if self.every is not None:
            return "every"
        if self.after is not None:
            return "after"
        return "manual"


#: The text of a query or a control command.
KqlText = Annotated[str, Field(min_length=1, max_length=65_536)]


class _Step(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: Annotated[str, Field(pattern=_IDENTIFIER)]
    when: str | None = None
    #: A failed step normally ends the run; with ``continue`` the later steps run
    #: (and can report the failure), and the run still ends failed.
    on_failure: Literal["fail", "continue"] = "fail"

    def templates(self) -> dict[str, str]:
        """Template fields by name, for syntax checks."""
        return {"when": self.when} if self.when else {}


class _KustoStep(_Step):
    connection: str | None = None
    database: str | None = None
    #: How long the query may run (the server is told too); the operator's default and maximum apply.
    timeout_seconds: Annotated[float | None, Field(gt=0)] = None
    #: Result caps, enforced while reading (rows, and bytes of the rows' JSON); the operator's
    #: defaults and maxima apply.
    max_rows: Annotated[int | None, Field(gt=0)] = None
    max_bytes: Annotated[int | None, Field(gt=0)] = None
    #: At a cap (or at Kusto's own result limit): fail with ResultTooLarge, or keep the rows read and
    #: flag the result as truncated.
    on_too_large: Literal["fail", "truncate"] = "fail"


class RunQuery(_KustoStep):
    """Rows become the step's output for conditions, templates and per-row delivery."""

    action: Literal["run_query"]
    query: KqlText


class _RenderingStep(_KustoStep):
    """A Kusto step whose result is also drawn: a chart (unless html_table), a table and a CSV."""

    chart: Chart = Chart.HTML_TABLE
    title: Annotated[str | None, Field(max_length=200)] = None
    #: The chart's size in pixels (the PNG in the email, the SVG on the web) and its colours.
    width: Annotated[int, Field(ge=320, le=2400)] = 800
    height: Annotated[int, Field(ge=200, le=1600)] = 450
    theme: Literal["light", "dark"] = "light"
    #: Rows in the HTML table (the CSV always has them all); 0 leaves the table out.
    #: Defaults to the operator's ``table_max_rows``.
    table_rows: Annotated[int | None, Field(ge=0, le=100_000)] = None


class RunQueryAndRenderChart(_RenderingStep):
    action: Literal["run_query_and_render_chart"]
    query: KqlText


class RunControlCommandAndRenderChart(_RenderingStep):
    action: Literal["run_control_command_and_render_chart"]
    command: KqlText


class RunShowCommand(_RenderingStep):
    action: Literal["run_show_command"]
    command: KqlText


class RunAsyncControlCommand(_KustoStep):
    action: Literal["run_async_control_command"]
    command: KqlText
    #: How long to wait for the operation, and how often to ask about it.
    timeout_minutes: Annotated[float, Field(gt=0, le=24 * 60)] = 60
    poll_seconds: Annotated[float, Field(ge=0.05, le=600)] = 10


class _Delivery(_Step):
    #: One delivery per row of this earlier step's result.
    for_each: str | None = None
    max_deliveries: Annotated[int, Field(ge=1, le=10_000)] = 100


class SendEmail(_Delivery):
    action: Literal["send_email"]
    to: Annotated[list[EmailStr], Field(min_length=1, max_length=100)]
    cc: Annotated[list[EmailStr], Field(max_length=100)] = []
    bcc: Annotated[list[EmailStr], Field(max_length=100)] = []
    subject: Annotated[str, Field(min_length=1, max_length=500)]
    #: Defaults to the bodies of every rendered step, in order.
    body_html: str | None = None
    attachments: list[str] = []
    #: Send the attachments as one .zip (they are zipped anyway when the email is over its size budget).
    zip_attachments: bool = False
    importance: Importance = Importance.NORMAL
    #: The sender's display name; the address is the operator's (``ADXFLOW_MAIL_FROM``).
    from_name: Annotated[str | None, Field(min_length=1, max_length=100)] = None

    @field_validator("from_name")
    @classmethod
    def _one_line(cls, value: str | None) -> str | None:
        if value is not None and ("\r" in value or "\n" in value or '"' in value):
            raise ValueError("a display name is one line without double quotes")
        return value

    def templates(self) -> dict[str, str]:
        found = {**super().templates(), "subject": self.subject}
        if self.body_html is not None:
            found["body_html"] = self.body_html
        return found

    def recipients_outside(self, domains: Sequence[str]) -> list[tuple[str, str]]:
        """``(field, address)`` of every recipient outside *domains*, such as ``("cc[0]", ...)``.

        ``example.com`` admits itself and its subdomains (``a.example.com``), not
        ``badexample.com``; case does not matter. Empty *domains* admit everyone.
        """
        allowed = [domain for domain in map(_domain, domains) if domain]
        if not allowed:
            return []
        outside = []
        for name in ("to", "cc", "bcc"):
            for index, address in enumerate(getattr(self, name)):
                domain = _domain(address.rpartition("@")[2])
                if not any(domain == entry or domain.endswith(f".{entry}") for entry in allowed):
                    outside.append((f"{name}[{index}]", address))
        return outside


def _domain(text: str) -> str:
    """A domain as compared: lower case, ASCII (punycode), without ``*.``, ``@`` or the root's dot."""
    name = text.strip().lower().removeprefix("*.").lstrip("@.").rstrip(".")
    try:
        return name.encode("idna").decode("ascii")
    except UnicodeError:
        return name


class PostWebhook(_Delivery):
    action: Literal["post_webhook"]
    #: A target the operator configured (may carry secret headers), or a URL on the allowlist.
    webhook: str | None = None
    url: str | None = None
    #: A JSON template; without one, the payload is made for the receiver named by ``format``.
    body: str | None = None
    #: ``json``: run, step, row count and artifact links; ``slack``: an incoming-webhook message;
    #: ``teams``: a Microsoft Teams message with an Adaptive Card.
    format: Literal["json", "slack", "teams"] = "json"
    #: The message's heading, a text template (``Incident {{ row.EventId }}``); defaults to the
    #: flow's description or name.
    title: Annotated[str | None, Field(min_length=1, max_length=500)] = None

    @model_validator(mode="after")
    def _one_target(self) -> PostWebhook:
        if (self.webhook is None) == (self.url is None):
            raise ValueError("post_webhook names exactly one of 'webhook' (configured) or 'url'")
        return self

    def templates(self) -> dict[str, str]:
        found = super().templates()
        if self.body is not None:
            found["body"] = self.body
        if self.title is not None:
            found["title"] = self.title
        return found


StepSpec = Annotated[
    RunQuery
    | RunQueryAndRenderChart
    | RunControlCommandAndRenderChart
    | RunShowCommand
    | RunAsyncControlCommand
    | SendEmail
    | PostWebhook,
    Field(discriminator="action"),
]

KUSTO_STEPS = (
    RunQuery,
    RunQueryAndRenderChart,
    RunControlCommandAndRenderChart,
    RunShowCommand,
    RunAsyncControlCommand,
)
RENDERING_STEPS = (RunQueryAndRenderChart, RunControlCommandAndRenderChart, RunShowCommand)
COMMAND_STEPS = (RunControlCommandAndRenderChart, RunShowCommand, RunAsyncControlCommand)
DELIVERY_STEPS = (SendEmail, PostWebhook)


class Flow(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: Annotated[str, Field(pattern=_FLOW_NAME)]
    description: str | None = None
    connection: Annotated[str, Field(min_length=1, max_length=128)]
    database: Annotated[str, Field(min_length=1, max_length=256)]
    enabled: bool = True
    parameters: dict[Annotated[str, Field(pattern=_IDENTIFIER)], ParameterSpec] = {}
    trigger: TriggerSpec = TriggerSpec()
    steps: Annotated[list[StepSpec], Field(min_length=1, max_length=50)]

    @model_validator(mode="after")
    def _steps_fit_together(self) -> Flow:
        seen: dict[str, Any] = {}
        for index, step in enumerate(self.steps):
            where = f"steps[{index}]"
            if step.id in seen:
                raise ValueError(f"{where}.id: {step.id!r} is used by an earlier step")
            if step.id in RESERVED_STEP_IDS:
                raise ValueError(f"{where}.id: {step.id!r} is reserved; choose another id")
            _check_text(step, where)
            for name, text in step.templates().items():
                try:
                    check_template(text)
                except TemplateSyntaxProblem as exc:
                    raise ValueError(f"{where}.{name}: {exc}") from None
            source = step.for_each if isinstance(step, SendEmail | PostWebhook) else None
            if source is not None and not isinstance(seen.get(source), KUSTO_STEPS):
                raise ValueError(f"{where}.for_each: {source!r} is not an earlier query step")
            if isinstance(step, SendEmail):
                for attachment in step.attachments:
                    if not isinstance(seen.get(attachment), RENDERING_STEPS):
                        raise ValueError(
                            f"{where}.attachments: {attachment!r} is not an earlier step "
                            "that renders a result"
                        )
            seen[step.id] = step
        return self

    def step(self, step_id: str) -> StepSpec:
        for step in self.steps:
            if step.id == step_id:
                return step
        raise LookupError(f"flow {self.name!r} has no step {step_id!r}")

    def bind_parameters(self, supplied: dict[str, Any]) -> dict[str, Any]:
        """Run parameters checked against the declarations, defaults filled in."""
        unknown = sorted(set(supplied) - set(self.parameters))
        if unknown:
            declared = ", ".join(sorted(self.parameters)) or "none"
            raise ValueError(
                f"parameters.{unknown[0]}: not a parameter of flow {self.name!r} (declared: {declared})"
            )
        bound: dict[str, Any] = {}
        for name, spec in self.parameters.items():
            if name in supplied:
                bound[name] = coerce_parameter(spec.type, supplied[name], f"parameters.{name}")
            elif spec.default is not None:
                bound[name] = spec.default
            else:
                raise ValueError(f"parameters.{name}: required (the flow declares no default)")
        return bound


def _check_text(step: Any, where: str) -> None:
    if isinstance(step, RunQuery | RunQueryAndRenderChart) and step.query.lstrip().startswith("."):
        raise ValueError(
            f"{where}.query: text starting with '.' is a control command; use "
            "run_control_command_and_render_chart, run_show_command or run_async_control_command"
        )
    if isinstance(step, COMMAND_STEPS) and not step.command.lstrip().startswith("."):
        raise ValueError(f"{where}.command: a control command starts with '.'; use run_query for a query")
    if isinstance(step, RunShowCommand) and not re.match(r"^\s*\.show\b", step.command, re.IGNORECASE):
        raise ValueError(f"{where}.command: run_show_command runs '.show ...' commands only")
    if isinstance(step, RunAsyncControlCommand) and not _ASYNC_KEYWORD.match(step.command):
        raise ValueError(
            f"{where}.command: run_async_control_command needs the 'async' keyword, "
            "as in '.set-or-append async T <| ...'"
        )


def slip_steps(step: StepSpec) -> list[tuple[str, StepKind]]:
    """The routing-slip steps one flow step becomes: (slip step id, kind)."""
    if isinstance(step, RENDERING_STEPS):
        return [(step.id, StepKind.QUERY), (f"{step.id}.render", StepKind.RENDER)]
    if isinstance(step, KUSTO_STEPS):
        return [(step.id, StepKind.QUERY)]
    return [(step.id, StepKind.NOTIFY)]


def itinerary(flow: Flow) -> list[Step]:
    """The routing slip of a run of *flow*: trigger, every flow step, record."""
    steps = [Step(id="trigger", kind=StepKind.TRIGGER)]
    for spec in flow.steps:
        steps.extend(Step(id=slip_id, kind=kind, flow_step=spec.id) for slip_id, kind in slip_steps(spec))
    steps.append(Step(id="record", kind=StepKind.RECORD))
    return steps


@dataclass(frozen=True)
class RunTemplate:
    """What every run of one version of a flow starts from, worked out once for all of them."""

    flow: Flow
    document: dict[str, Any]
    itinerary: list[Step]

    @classmethod
    def of(cls, flow: Flow) -> RunTemplate:
        return cls(flow, flow.model_dump(mode="json", exclude_none=True), itinerary(flow))

    def new_run(self, context: RunContext, run_id: str) -> RunMessage:
        """A run of the flow, at its trigger step."""
        return RunMessage(
            run_id=run_id,
            step_id="trigger",
            submitted_at=utcnow(),
            flow=self.document,
            context=context,
            itinerary=self.itinerary,
        )


def new_run(flow: Flow, context: RunContext, run_id: str) -> RunMessage:
    """A run of *flow*, at its trigger step."""
    return RunTemplate.of(flow).new_run(context, run_id)


def flow_of(message: RunMessage) -> Flow:
    """The flow of *message*'s run, as validated when it started.

    Every step of a run carries the same document, and a service asks for it
    several times a step: each document is validated once per process. The
    flow handed back is shared, so it is read, never changed.
    """
    return _validated(json.dumps(message.flow, sort_keys=True, separators=(",", ":")))


@functools.lru_cache(maxsize=256)
def _validated(document: str) -> Flow:
    return Flow.model_validate_json(document)


def step_spec(message: RunMessage, flow: Flow | None = None) -> StepSpec:
    """The flow step the message's current slip step belongs to."""
    step = message.step
    if step.flow_step is None:
        raise LookupError(f"slip step {step.id!r} belongs to no flow step")
    return (flow or flow_of(message)).step(step.flow_step)
