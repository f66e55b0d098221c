"""The flow document: a trigger plus steps, saved once and run many times.

The same structure in YAML files, the HTTP API and the CLI. A flow names a
connection the operator configured; it never carries a cluster URL or a
credential. Structural rules are checked here (step ids, references between
steps, template syntax, parameter types); what depends on the operator's
configuration (connections, webhook allowlist, schedule limits) is checked by
the trigger service when the flow is saved. A run of a flow starts from its
itinerary, the routing slip worked out here.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import Field, field_validator, model_validator

from common.contracts.actions import (
    KUSTO_STEPS,
    RENDERING_STEPS,
    PostWebhook,
    SendEmail,
    StepSpec,
    check_text,
)
from common.contracts.documents import READ_BACK, Document
from common.contracts.messages import RunContext, RunMessage, RunStatus, Step, StepKind, utcnow
from common.contracts.parameters import Identifier, ParameterSpec, coerce_parameter
from common.contracts.templates import TemplateSyntaxProblem, check_template

_FLOW_NAME = r"^[a-z0-9][a-z0-9_-]{0,63}$"
#: Slip step ids the service uses itself.
RESERVED_STEP_IDS = frozenset({"trigger", "record", "run", "row"})


class AfterTrigger(Document):
    flow: Annotated[str, Field(pattern=_FLOW_NAME)]
    status: Annotated[list[RunStatus], Field(min_length=1)] = [RunStatus.SUCCEEDED]

    @field_validator("status")
    @classmethod
    def _terminal(cls, value: list[RunStatus]) -> list[RunStatus]:
        for status in value:
            if not status.terminal:
                raise ValueError(f"a flow can follow another only when it ends: {status.value} is not an end")
        return value


class TriggerSpec(Document):
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


class Flow(Document):
    name: Annotated[str, Field(pattern=_FLOW_NAME)]
    description: str | None = None
    connection: Annotated[str, Field(min_length=1, max_length=128)]
    database: Annotated[str, Field(min_length=1, max_length=256)]
    enabled: bool = True
    parameters: dict[Identifier, ParameterSpec] = {}
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
            check_text(step, where)
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
    flow handed back is shared, so it is read, never changed. A key a newer
    release wrote is left out (:mod:`common.contracts.documents`); the message
    keeps it.
    """
    return _validated(json.dumps(message.flow, sort_keys=True, separators=(",", ":")))


@functools.lru_cache(maxsize=256)
def _validated(document: str) -> Flow:
    return Flow.model_validate_json(document, context=READ_BACK)


def read_back(document: dict[str, Any]) -> Flow:
    """A flow document this or a newer release saved, as this release understands it."""
    return Flow.model_validate(document, context=READ_BACK)


def step_spec(message: RunMessage, flow: Flow | None = None) -> StepSpec:
    """The flow step the message's current slip step belongs to."""
    step = message.step
    if step.flow_step is None:
        raise LookupError(f"slip step {step.id!r} belongs to no flow step")
    return (flow or flow_of(message)).step(step.flow_step)
