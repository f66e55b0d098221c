"""The flow document: a trigger plus steps, saved once and run many times.

The same structure in YAML files, the HTTP API and the CLI. A flow names a
connection the operator configured; it never carries a cluster URL or a
credential. Structural rules are checked here (step ids, references between
steps, template syntax, parameter types); what depends on the operator's
configuration (connections, webhook allowlist, schedule limits) is checked by
the trigger service when the flow is saved. A run of a flow starts from its
itinerary, the routing slip worked out here.

Steps nest: a ``for_each`` or ``parallel`` step holds steps that run as child
runs (each with an itinerary of its own, ending in a ``join`` back into the
parent), an ``if`` holds a ``then`` and an ``else`` list that stay in the run's
own itinerary, each step guarded by the branch it sits in. Step ids are unique
across the whole flow, so ``steps.<id>`` means one step wherever it is read.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import Field, field_validator, model_validator

from common.contracts.actions import (
    KUSTO_STEPS,
    RENDERING_STEPS,
    CopyToDatabase,
    ExportToFile,
    ForEach,
    If,
    IngestToKusto,
    Parallel,
    PostWebhook,
    RunAsyncControlCommand,
    SendEmail,
    StepSpec,
    check_text,
    inner_steps,
)
from common.contracts.documents import READ_BACK, Document, known_zone
from common.contracts.messages import (
    DRY_RUN_MAJOR,
    TRANSFER_MAJOR,
    RunContext,
    RunMessage,
    RunStatus,
    Step,
    StepKind,
    utcnow,
)
from common.contracts.parameters import Identifier, ParameterSpec, coerce_parameter
from common.contracts.templates import TemplateSyntaxProblem, check_template, template_references

_FLOW_NAME = r"^[a-z0-9][a-z0-9_-]{0,63}$"
#: Slip step ids the service uses itself.
RESERVED_STEP_IDS = frozenset({"trigger", "record", "run", "row", "join"})
#: The slip step that ends every child run, back in the parent's scope.
JOIN = "join"


@dataclass(frozen=True)
class Place:
    """Where a step sits in its flow."""

    spec: StepSpec
    #: Its field path, such as ``steps[2].steps[0]``.
    where: str
    #: The innermost ``for_each`` or ``parallel`` step around it (its run is a child run of that
    #: scope), and the branch of a ``parallel`` it is in.
    scope: str | None
    branch: str | None
    #: The ``if`` branches it sits in, outermost first: ``(if step id, "then" or "else")``.
    guards: tuple[tuple[str, str], ...]
    #: Inside a ``for_each`` (at any depth): ``row`` is defined.
    in_row_scope: bool
    #: Its position in a walk of the flow in document order.
    order: int


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
        return known_zone(value)

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
        places = self.places
        _check_steps(self.steps, places, visible={}, in_row_scope=False)
        return self

    @functools.cached_property
    def places(self) -> dict[str, Place]:
        """Every step of the flow by id, nested ones too, in document order.

        ValueError naming the field when an id is used twice or is reserved.
        """
        found: dict[str, Place] = {}
        for place in _walk(self.steps, "steps", None, None, (), False):
            step = place.spec
            if step.id in found:
                raise ValueError(f"{place.where}.id: {step.id!r} is used by an earlier step")
            if step.id in RESERVED_STEP_IDS:
                raise ValueError(f"{place.where}.id: {step.id!r} is reserved; choose another id")
            found[step.id] = dataclasses.replace(place, order=len(found))
        return found

    def step(self, step_id: str) -> StepSpec:
        place = self.places.get(step_id)
        if place is None:
            raise LookupError(f"flow {self.name!r} has no step {step_id!r}")
        return place.spec

    def every_step(self) -> list[StepSpec]:
        """Every step, nested ones too, in document order."""
        return [place.spec for place in self.places.values()]

    @functools.cached_property
    def slips(self) -> dict[str, Step]:
        """Every routing-slip step of every run of the flow (the parent's and its children's), by id."""
        return {
            slip_id: slip_step(spec, slip_id, kind)
            for spec in self.every_step()
            for slip_id, kind in slip_steps(spec)
        }

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


def _walk(
    steps: Sequence[StepSpec],
    field: str,
    scope: str | None,
    branch: str | None,
    guards: tuple[tuple[str, str], ...],
    in_row_scope: bool,
) -> Iterator[Place]:
    """Every step of *steps* and the steps they hold, in document order (``order`` left at -1)."""
    for index, step in enumerate(steps):
        where = f"{field}[{index}]"
        yield Place(step, where, scope, branch, guards, in_row_scope, order=-1)
        if isinstance(step, ForEach):
            yield from _walk(step.steps, f"{where}.steps", step.id, None, guards, True)
        elif isinstance(step, Parallel):
            for number, lane in enumerate(step.parallel):
                yield from _walk(
                    lane.steps, f"{where}.parallel[{number}].steps", step.id, lane.id, guards, in_row_scope
                )
        elif isinstance(step, If):
            for name, inner in inner_steps(step):
                yield from _walk(
                    inner, f"{where}.{name}", scope, branch, (*guards, (step.id, name)), in_row_scope
                )


def _check_steps(
    steps: Sequence[StepSpec], places: dict[str, Place], *, visible: dict[str, StepSpec], in_row_scope: bool
) -> dict[str, StepSpec]:
    """Check each step of one list against the steps it can see; returns what the steps after see.

    A step sees the steps before it in its own list and in every list around it, never those of
    another branch of the same ``if`` or ``parallel``. After an ``if`` its branches' steps are seen
    (those of the branch that did not run as skipped); after a ``parallel`` every branch's steps;
    after a ``for_each`` only the ``for_each`` itself, whose steps ran once per row.
    """
    visible = dict(visible)
    for step in steps:
        where = places[step.id].where
        check_text(step, where)
        if isinstance(step, KUSTO_STEPS) and step.alert is not None and places[step.id].scope is not None:
            raise ValueError(
                f"{where}.alert: an alert belongs to a step of the flow itself, not inside a for_each or "
                "parallel (whose child runs would share it); put the query before the scope"
            )
        per_row = in_row_scope or (isinstance(step, SendEmail | PostWebhook) and step.for_each is not None)
        for name, text in step.templates().items():
            try:
                check_template(text)
                names, references = template_references(text)
            except TemplateSyntaxProblem as exc:
                raise ValueError(f"{where}.{name}: {exc}") from None
            # An alert's condition is asked after its own step ran, of each row with key columns.
            own = name.startswith("alert.") and isinstance(step, KUSTO_STEPS) and step.alert is not None
            keyed = own and isinstance(step, KUSTO_STEPS) and bool(step.alert and step.alert.key_columns)
            if "row" in names and not (per_row or keyed):
                raise ValueError(
                    f"{where}.{name}: 'row' is defined only inside a for_each step's steps "
                    "(or in a delivery with for_each, or an alert with key_columns)"
                )
            for reference in references:
                if reference not in visible and not (own and reference == step.id):
                    raise ValueError(f"{where}.{name}: {_unseen(reference, step, places)}")
        source = step.for_each if isinstance(step, SendEmail | PostWebhook | ForEach) else None
        if isinstance(step, CopyToDatabase | ExportToFile) and step.source is not None:
            source = step.source
        if source is not None and not isinstance(visible.get(source), KUSTO_STEPS):
            field = f"{where}.{'source' if isinstance(step, CopyToDatabase | ExportToFile) else 'for_each'}"
            if source in places and source not in visible:
                raise ValueError(f"{field}: {_unseen(source, step, places)}")
            raise ValueError(f"{field}: {source!r} is not an earlier query step")
        if isinstance(step, ExportToFile) and isinstance(visible.get(step.source), RunAsyncControlCommand):
            raise ValueError(
                f"{where}.source: {step.source!r} is an async control command, whose result is its "
                "operation, not rows; export a query step"
            )
        if isinstance(step, SendEmail):
            for attachment in step.attachments:
                if isinstance(visible.get(attachment), ExportToFile):
                    raise ValueError(
                        f"{where}.attachments: {attachment!r} is an export: every email of the run "
                        "links its file by itself (files are linked, never attached)"
                    )
                if not isinstance(visible.get(attachment), RENDERING_STEPS):
                    raise ValueError(
                        f"{where}.attachments: {attachment!r} is not an earlier step that renders a result"
                    )
        if isinstance(step, ForEach):
            # Its iterations run before it has an outcome: they do not see the for_each itself.
            _check_steps(step.steps, places, visible=visible, in_row_scope=True)
        elif isinstance(step, If | Parallel):
            # Each branch sees what was before the step, not the other branches: a parallel's run at
            # the same time, and only one of an if's runs. An if has decided when its branch runs;
            # a parallel has no outcome before its branches end.
            before = {**visible, step.id: step} if isinstance(step, If) else visible
            after = dict(visible)
            for _, inner in inner_steps(step):
                after.update(_check_steps(inner, places, visible=before, in_row_scope=in_row_scope))
            visible = after
        visible[step.id] = step
    return visible


def _unseen(reference: str, step: StepSpec, places: dict[str, Place]) -> str:
    """Why a step cannot use the step *reference*."""
    place = places.get(reference)
    if place is None:
        return f"refers to step {reference!r}, which the flow does not have"
    if reference == step.id:
        return f"refers to step {reference!r} itself (a step can use only the steps before it)"
    here = places[step.id]
    holder = here
    while holder.scope is not None:
        if holder.scope == reference:
            return (
                f"refers to step {reference!r}, which it runs inside: {place.spec.action} {reference!r} "
                "has an outcome only once its child runs end (the steps after it can use it)"
            )
        holder = places[holder.scope]
    mine = _branches(here, places)
    for around, branch in _branches(place, places).items():
        if mine.get(around, branch) != branch:
            if isinstance(places[around].spec, Parallel):
                return (
                    f"refers to step {reference!r}, which runs at the same time in branch {branch!r} "
                    f"of parallel {around!r}; the steps after {around!r} can use it"
                )
            return (
                f"refers to step {reference!r}, which is in the {branch} branch of if {around!r}: "
                "only one of the two runs"
            )
    if place.order > here.order:
        return (
            f"refers to step {reference!r}, which runs after it (a step can use only the steps before "
            "it; a step that used a later one would make a cycle)"
        )
    if place.scope is not None and place.scope != here.scope:
        outer = places[place.scope].spec
        if isinstance(outer, ForEach):
            return (
                f"refers to step {reference!r}, which runs once per row inside for_each {outer.id!r}; "
                f"use steps.{outer.id}.iterations"
            )
        return (
            f"refers to step {reference!r}, which runs at the same time in branch "
            f"{place.branch!r} of {outer.id!r}"
        )
    return f"refers to step {reference!r}, which has not run at this point"


def _branches(place: Place, places: dict[str, Place]) -> dict[str, str]:
    """The ``if`` and ``parallel`` steps around *place*, each with the branch of it *place* is in."""
    found = dict(place.guards)
    while place.scope is not None:
        if place.branch is not None:
            found[place.scope] = place.branch
        place = places[place.scope]
    return found


def slip_steps(step: StepSpec) -> list[tuple[str, StepKind]]:
    """The routing-slip steps one flow step becomes: (slip step id, kind)."""
    if isinstance(step, KUSTO_STEPS):
        slips = [(step.id, StepKind.QUERY)]
        if isinstance(step, RENDERING_STEPS):
            slips.append((f"{step.id}.render", StepKind.RENDER))
        if step.alert is not None:
            slips.append((f"{step.id}.alert", StepKind.ALERT))
        return slips
    if isinstance(step, ForEach | If | Parallel):
        return [(step.id, StepKind.SCOPE)]
    if isinstance(step, CopyToDatabase):
        return [(step.id, StepKind.COPY)]
    if isinstance(step, IngestToKusto):
        return [(step.id, StepKind.INGEST)]
    if isinstance(step, ExportToFile):
        return [(step.id, StepKind.EXPORT)]
    return [(step.id, StepKind.NOTIFY)]


def slip_step(spec: StepSpec, slip_id: str, kind: StepKind) -> Step:
    """The routing-slip step *slip_id* of flow step *spec*, with the major it needs above its kind's:
    a copy with a query of its own came after the copy's major, whose readers would not run it."""
    needs = TRANSFER_MAJOR if isinstance(spec, CopyToDatabase) and spec.query is not None else None
    return Step(id=slip_id, kind=kind, flow_step=spec.id, needs=needs)


def _slip(steps: Sequence[StepSpec]) -> Iterator[Step]:
    """The slip steps of one list of flow steps: an ``if`` keeps its branches in line, after it."""
    for spec in steps:
        yield from (slip_step(spec, slip_id, kind) for slip_id, kind in slip_steps(spec))
        if isinstance(spec, If):
            yield from _slip(spec.then)
            yield from _slip(spec.otherwise)


def itinerary(flow: Flow) -> list[Step]:
    """The routing slip of a run of *flow*: trigger, every flow step, record."""
    return [
        Step(id="trigger", kind=StepKind.TRIGGER),
        *_slip(flow.steps),
        Step(id="record", kind=StepKind.RECORD),
    ]


def child_itinerary(flow: Flow, scope: str, branch: str | None = None) -> list[Step]:
    """The routing slip of an iteration of the ``for_each`` *scope*, or of its *branch* (``parallel``)."""
    spec = flow.step(scope)
    if isinstance(spec, ForEach):
        steps = spec.steps
    elif isinstance(spec, Parallel):
        lane = next((lane for lane in spec.parallel if lane.id == branch), None)
        if lane is None:
            raise LookupError(f"parallel step {scope!r} of flow {flow.name!r} has no branch {branch!r}")
        steps = lane.steps
    else:
        raise LookupError(f"step {scope!r} of flow {flow.name!r} runs no child runs")
    return [
        Step(id="trigger", kind=StepKind.TRIGGER),
        *_slip(steps),
        Step(id=JOIN, kind=StepKind.SCOPE),
        Step(id="record", kind=StepKind.RECORD),
    ]


def for_context(slip: list[Step], context: RunContext) -> list[Step]:
    """The routing slip *slip* as a run of *context* travels it: a test run's steps each need
    :data:`DRY_RUN_MAJOR`, so that no release before test runs performs one for real."""
    if not context.dry_run:
        return slip
    return [step.model_copy(update={"needs": max(step.needs or 1, DRY_RUN_MAJOR)}) for step in slip]


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
            itinerary=for_context(self.itinerary, context),
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
