"""Every message, status and error code that crosses a service boundary.

JSON on the wire, one schema version for the whole set. A run travels as one
:class:`RunMessage` that carries its own itinerary (a routing slip): each
service does the step the message names, records what it produced in
``outputs`` and forwards the message to the service of the next step. Large
payloads never ride along: they are :class:`BlobRef` claim checks.

Rolling upgrades: for a while, old and new replicas of every service read
each other's messages. The rules of ``schema_version``:

* Every message read from the broker or the blob store (an :class:`Envelope`,
  made of :class:`WireModel` parts) carries ``schema_version``, the *major*,
  and ``schema_minor``. A change a reader that does not know it can safely
  ignore -- a new optional field with a default, a new error code, a new
  optional key of a flow document -- is *additive*: it bumps
  :data:`SCHEMA_MINOR` and keeps the major. (The minor has a field of its own
  because releases before it read ``schema_version`` as exactly 1 and ignore
  unknown fields: they read this release's messages too.)
* A reader ignores the fields it does not know, and keeps them: a message an
  older service forwards (the routing slip, the run kept for a re-run, a dead
  letter replayed) still carries the newer writer's fields for the newer
  services after it. A newer reader given an older message fills the fields
  it lacks with their defaults.
* ``schema_minor`` is the minor of the newest writer the message went
  through (a message without one was written before minors were counted, and
  reads as 0). Nobody refuses a message for its minor.
* Anything else is *breaking*: a field removed, renamed or made required, a
  meaning changed, a new value of a status, step kind or action (a reader
  would not know what to do with it). It bumps :data:`SCHEMA_VERSION`. A
  reader accepts its own major and refuses a higher one, naming both, and the
  message goes to the dead-letter queue with that reason, whole, to be
  replayed once the reader is upgraded. A release that bumps the major reads
  the previous one too, and writes the new one only where a message needs it
  (major 2: a run of a flow with a scope step, which only a release that has
  scopes could have saved and can perform; major 3: a run with an alert's
  evaluation); every other message stays on the oldest major that can say
  it, so that an older replica still reads it.
* Error codes are open: a reader keeps a code it does not know as it came.

What arrives from outside -- the HTTP APIs' bodies, a job, a flow file -- stays
strict: an unknown field there is refused, naming it (see
:mod:`common.contracts.documents` for flow documents).
"""

from __future__ import annotations

import datetime as dt
import re
import uuid
from enum import StrEnum
from typing import Annotated, Any, TypeVar

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    EmailStr,
    Field,
    ValidationError,
    field_serializer,
    field_validator,
    model_validator,
)

#: The newest major of the message schema this release reads: a reader refuses a message of a
#: higher one. A message is written with the lowest major that can say what it says (see
#: :meth:`Envelope.needed_major`): a run of a flow with no scope step is major 1, which every
#: earlier release reads.
SCHEMA_VERSION = 6
#: Additive changes since the first major; readers never refuse a message for its minor.
#: 1: ``schema_minor`` itself, unknown fields kept when a message is forwarded, open error codes.
#: 2: the error code ``DeliveryLimit`` (a run whose message the broker dead-lettered).
#: 3: ``RunMessage.trace`` (the run's W3C trace context) and ``RunInfo.trace_id``.
#: 4: ``RunContext.scope`` and ``RunInfo.scope`` (an iteration or a branch of a parent run), the
#: error code ``TooManyItems``.
#: 5: ``Step.needs`` (a slip step whose flow step a lower major cannot run, such as a copy with a
#: query of its own).
#: 6: ``RunContext.dry_run`` and ``test_recipient``, ``RunInfo.dry_run`` and ``test_recipient`` (a
#: test run, which delivers nothing, or only to the operator's allowed test address).
SCHEMA_MINOR = 6
#: Major 2: the step kind ``scope`` (for_each, if and parallel steps, and the join of an
#: iteration or branch), which a major-1 reader would not know where to send.
SCOPE_MAJOR = 2
#: Major 3: the step kind ``alert`` (an alert's evaluation after its Kusto step).
ALERT_MAJOR = 3
#: Major 4: the step kind ``copy`` (a result written into a table of the operator's database).
COPY_MAJOR = 4
#: Major 5: the step kinds ``ingest`` (rows ingested into a Kusto table) and ``export`` (a result
#: written as a file into the blob store).
TRANSFER_MAJOR = 5
#: Major 6: a test run (``RunContext.dry_run``). Every slip step of a test run needs it: a release
#: before it would read the mark as an unknown field and ignore it, sending the run's emails and
#: writing its tables for real; refused instead, the run dead-letters, visibly, until upgraded.
DRY_RUN_MAJOR = 6
#: The major a message needs for each step kind it holds.
_KIND_MAJOR = {
    "scope": SCOPE_MAJOR,
    "alert": ALERT_MAJOR,
    "copy": COPY_MAJOR,
    "ingest": TRANSFER_MAJOR,
    "export": TRANSFER_MAJOR,
}

_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def new_id() -> str:
    return uuid.uuid4().hex


class Service(StrEnum):
    TRIGGER = "trigger"
    QUERY_WORKER = "query_worker"
    RENDER = "render"
    NOTIFIER = "notifier"
    HISTORY = "history"


class StepKind(StrEnum):
    """What a step does; the topology maps each kind to one queue."""

    TRIGGER = "trigger"
    QUERY = "query"
    RENDER = "render"
    NOTIFY = "notify"
    RECORD = "record"
    #: The structure of a flow: an ``if`` decided, a ``for_each`` or ``parallel`` fanned out to child
    #: runs and joined again, and each child's ``join`` back into its parent.
    SCOPE = "scope"
    #: An alert's evaluation after its Kusto step: its instances' states, and whether to deliver.
    ALERT = "alert"
    #: An earlier query step's result written into a table of the operator's database.
    COPY = "copy"
    #: Rows of the operator's database (or a file) ingested into a Kusto table.
    INGEST = "ingest"
    #: A result written as a CSV or Parquet file into the blob store.
    EXPORT = "export"


#: The service that performs each kind of step.
SERVICE_OF: dict[StepKind, Service] = {
    StepKind.TRIGGER: Service.TRIGGER,
    StepKind.QUERY: Service.QUERY_WORKER,
    StepKind.RENDER: Service.RENDER,
    StepKind.NOTIFY: Service.NOTIFIER,
    StepKind.RECORD: Service.HISTORY,
    StepKind.SCOPE: Service.TRIGGER,
    StepKind.ALERT: Service.TRIGGER,
    StepKind.COPY: Service.QUERY_WORKER,
    StepKind.INGEST: Service.QUERY_WORKER,
    StepKind.EXPORT: Service.QUERY_WORKER,
}


class RunStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"

    @property
    def terminal(self) -> bool:
        return self in (RunStatus.SUCCEEDED, RunStatus.FAILED)


class StepStatus(StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    SKIPPED = "skipped"

    @property
    def terminal(self) -> bool:
        return self in (StepStatus.SUCCEEDED, StepStatus.FAILED, StepStatus.SKIPPED)


class Action(StrEnum):
    QUERY = "query"
    CONTROL_COMMAND = "control_command"


class ChartKind(StrEnum):
    """A job's chart: the seed's four, and every kind a flow step draws."""

    HTML_TABLE = "html_table"
    PIECHART = "piechart"
    TIMECHART = "timechart"
    BARCHART = "barchart"
    COLUMNCHART = "columnchart"
    LINECHART = "linechart"
    AREACHART = "areachart"
    STACKEDBARCHART = "stackedbarchart"
    STACKEDCOLUMNCHART = "stackedcolumnchart"
    STACKEDAREACHART = "stackedareachart"
    FROM_QUERY = "from_query"


class Importance(StrEnum):
    LOW = "low"
    NORMAL = "normal"
    HIGH = "high"


class ErrorCode(StrEnum):
    """Stable codes a user (or a retry policy) can act on."""

    INVALID_JOB = "InvalidJob"
    UNKNOWN_CONNECTION = "UnknownConnection"
    KUSTO_SYNTAX_ERROR = "KustoSyntaxError"
    KUSTO_SEMANTIC_ERROR = "KustoSemanticError"
    KUSTO_REQUEST_DENIED = "KustoRequestDenied"
    KUSTO_THROTTLED = "KustoThrottled"
    KUSTO_SERVICE_ERROR = "KustoServiceError"
    KUSTO_UNAVAILABLE = "KustoUnavailable"
    REQUEST_TIMEOUT = "RequestTimeout"
    RESULT_TOO_LARGE = "ResultTooLarge"
    UNSUPPORTED_OPERATOR = "UnsupportedOperator"
    RENDER_FAILED = "RenderFailed"
    SMTP_REJECTED = "SmtpRejected"
    SMTP_UNAVAILABLE = "SmtpUnavailable"
    EMAIL_TOO_LARGE = "EmailTooLarge"
    RECIPIENT_NOT_ALLOWED = "RecipientNotAllowed"
    WEBHOOK_REJECTED = "WebhookRejected"
    WEBHOOK_UNAVAILABLE = "WebhookUnavailable"
    TEMPLATE_ERROR = "TemplateError"
    ASYNC_OPERATION_FAILED = "AsyncOperationFailed"
    INVALID_PARAMETERS = "InvalidParameters"
    STALLED = "Stalled"
    DELIVERY_LIMIT = "DeliveryLimit"
    ARTIFACT_MISSING = "ArtifactMissing"
    TOO_MANY_ITEMS = "TooManyItems"
    ITERATIONS_FAILED = "IterationsFailed"
    TABLE_NOT_ALLOWED = "TableNotAllowed"
    TABLE_MISMATCH = "TableMismatch"
    UNKNOWN_COLUMN = "UnknownColumn"
    DATABASE_UNAVAILABLE = "DatabaseUnavailable"
    DATABASE_ERROR = "DatabaseError"
    FILE_UNAVAILABLE = "FileUnavailable"
    INTERNAL = "Internal"

    @classmethod
    def _missing_(cls, value: object) -> ErrorCode | None:
        # A code a newer release added: kept as it came (history shows it), rather than
        # refusing the whole message that reports the failure.
        if not isinstance(value, str) or not value:
            return None
        member = str.__new__(cls, value)
        member._name_ = value
        member._value_ = value
        return member


class WireModel(BaseModel):
    """A part of a message read back from the broker or the blob store.

    Fields this release does not know (written by a newer one) are kept, so
    that forwarding the message passes them on; they are never read here.
    """

    model_config = ConfigDict(extra="allow")


def _readable_major(version: int) -> int:
    if version > SCHEMA_VERSION:
        raise ValueError(
            f"schema_version {version} is newer than this reader's {SCHEMA_VERSION}: the message was "
            f"written by a newer release; upgrade this service, then replay the dead letter"
        )
    if version < 1:
        raise ValueError(f"schema_version {version} is not a version (they start at 1)")
    return version


class Envelope(WireModel):
    """A whole message: its schema version, then what it says (see the module's rules)."""

    #: In memory: the major the message was read with (1 when built here). Written out: the lowest
    #: major that says what it says, as every major up to this release's is known here.
    schema_version: Annotated[int, AfterValidator(_readable_major)] = 1
    #: In memory: the minor the message was read with (0: none, or built here). Written out: the
    #: newer of that and this writer's.
    schema_minor: Annotated[int, Field(ge=0)] = 0

    @field_serializer("schema_minor")
    def _written_minor(self, minor: int) -> int:
        return max(minor, SCHEMA_MINOR)

    @field_serializer("schema_version")
    def _written_major(self, major: int) -> int:
        return self.needed_major()

    def needed_major(self) -> int:
        """The lowest major that can say what this message says (1 unless it holds a scope or an alert)."""
        return 1


M = TypeVar("M", bound=Envelope)


class UnreadableMessage(Exception):
    """A message body that is not a message of the expected kind for this release; says why."""

    def __init__(self, kind: str, reason: str) -> None:
        super().__init__(f"unreadable {kind}: {reason}")
        self.reason = f"unreadable {kind}: {reason}"


def read_message(model: type[M], body: bytes | str) -> M:
    """*body* as a *model*, or `UnreadableMessage` saying why (a newer major first of all)."""
    try:
        return model.model_validate_json(body)
    except ValidationError as exc:
        errors = exc.errors(include_url=False)
        newer = [error for error in errors if error["loc"] == ("schema_version",)]
        shown = newer or errors[:3]
        reason = "; ".join(
            f"{'.'.join(str(part) for part in error['loc']) or 'body'}: {error['msg']}" for error in shown
        )
        if not newer and len(errors) > len(shown):
            reason += f" (and {len(errors) - len(shown)} more)"
        raise UnreadableMessage(model.__name__, reason) from exc


class ErrorInfo(WireModel):
    code: ErrorCode
    message: str
    retryable: bool = False


# ---------------------------------------------------------------------------
# The job a user submits
# ---------------------------------------------------------------------------

ParameterValue = bool | int | float | str


def _single_line(value: str, field: str) -> str:
    if "\r" in value or "\n" in value:
        raise ValueError(f"{field} must be a single line (line breaks are refused in email headers)")
    return value


class EmailSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    to: Annotated[list[EmailStr], Field(min_length=1, max_length=100)]
    cc: Annotated[list[EmailStr], Field(max_length=100)] = []
    subject: Annotated[str, Field(min_length=1, max_length=255)]
    importance: Importance = Importance.NORMAL

    @field_validator("subject")
    @classmethod
    def _subject_single_line(cls, value: str) -> str:
        return _single_line(value, "subject")


class JobRequest(BaseModel):
    """An ad-hoc report job: run one query, render it, mail it."""

    model_config = ConfigDict(extra="forbid")

    connection: Annotated[str, Field(min_length=1, max_length=128)]
    database: Annotated[str, Field(min_length=1, max_length=256)]
    action: Action = Action.QUERY
    query: Annotated[str, Field(min_length=1, max_length=65_536)]
    parameters: dict[str, ParameterValue] = {}
    chart: ChartKind = ChartKind.HTML_TABLE
    title: Annotated[str | None, Field(max_length=255)] = None
    email: EmailSpec

    @field_validator("parameters")
    @classmethod
    def _parameter_names(cls, value: dict[str, ParameterValue]) -> dict[str, ParameterValue]:
        for name in value:
            if not _IDENTIFIER.match(name):
                raise ValueError(f"parameter name {name!r} is not a KQL identifier")
        return value

    @field_validator("title")
    @classmethod
    def _title_single_line(cls, value: str | None) -> str | None:
        return None if value is None else _single_line(value, "title")

    @model_validator(mode="after")
    def _action_matches_text(self) -> JobRequest:
        is_command = self.query.lstrip().startswith(".")
        if self.action is Action.QUERY and is_command:
            raise ValueError(
                "query: text starting with '.' is a control command; submit it with action 'control_command'"
            )
        if self.action is Action.CONTROL_COMMAND and not is_command:
            raise ValueError("query: a control command starts with '.'; use action 'query' for a query")
        if self.action is Action.CONTROL_COMMAND and self.parameters:
            raise ValueError("parameters: control commands take no query parameters")
        return self

    def flow_document(self) -> dict[str, Any]:
        """This job as a one-off flow: a rendered query (or command) and an email."""
        kusto: dict[str, Any] = {"id": "query", "chart": self.chart.value, "title": self.title}
        if self.action is Action.QUERY:
            kusto.update(action="run_query_and_render_chart", query=self.query)
        else:
            kusto.update(action="run_control_command_and_render_chart", command=self.query)
        types = {bool: "bool", int: "long", float: "real", str: "string"}
        return {
            "name": "adhoc",
            "description": self.title or self.email.subject,
            "connection": self.connection,
            "database": self.database,
            "parameters": {name: {"type": types[type(value)]} for name, value in self.parameters.items()},
            "steps": [
                kusto,
                {
                    "id": "notify",
                    "action": "send_email",
                    "to": self.email.to,
                    "cc": self.email.cc,
                    "subject": self.email.subject,
                    "attachments": ["query"],
                    "importance": self.email.importance.value,
                },
            ],
        }


# ---------------------------------------------------------------------------
# The routing slip
# ---------------------------------------------------------------------------


class TriggerKind(StrEnum):
    MANUAL = "manual"
    SCHEDULE = "schedule"
    AFTER = "after"
    JOB = "job"


class BlobRef(WireModel):
    """A claim check for a payload kept in the blob store."""

    key: str
    content_type: str
    size: int


class Step(WireModel):
    """One stop of the routing slip. ``flow_step`` names the flow step it belongs to."""

    id: str
    kind: StepKind
    flow_step: str | None = None
    #: The lowest major that can run this step's flow step, when it is above its kind's (a copy
    #: with a query of its own: `TRANSFER_MAJOR`).
    needs: int | None = None

    @property
    def service(self) -> Service:
        return SERVICE_OF[self.kind]


class StepOutput(WireModel):
    status: StepStatus = StepStatus.SUCCEEDED
    row_count: int | None = None
    columns: list[str] = []
    #: The first rows, for conditions and templates; the full result is an artifact.
    preview: list[dict[str, Any]] = []
    artifacts: dict[str, BlobRef] = {}
    detail: dict[str, Any] = {}
    error: ErrorInfo | None = None


class ScopeRef(WireModel):
    """Where a child run belongs: one iteration of a ``for_each``, or one branch of a ``parallel``."""

    #: The parent run and its scope step.
    run_id: str
    step_id: str
    #: The iteration's row number in the scope's source (0-based), or the branch's position.
    index: int
    #: The branch's id, for a branch of a ``parallel`` step.
    branch: str | None = None
    #: The iteration's row, for templates (``row``) and query parameters; None in a branch (and in
    #: what history keeps of a run).
    row: dict[str, Any] | None = None


class RunContext(WireModel):
    """What started a run, and with which parameter values."""

    flow: str
    trigger: TriggerKind
    scheduled_for: dt.datetime | None = None
    parameters: dict[str, Any] = {}
    parent_run_id: str | None = None
    timezone: str = "UTC"
    #: Set on a child run: the parent's scope step it is an iteration or a branch of.
    scope: ScopeRef | None = None
    #: A test run: its Kusto queries run and its steps render, but nothing is delivered or
    #: written (see :data:`DRY_RUN_MAJOR`); kept apart in the history. Child runs inherit it.
    dry_run: bool = False
    #: A test run's one real recipient ("send a test"): its emails go to this address only.
    test_recipient: EmailStr | None = None


class RunMessage(Envelope):
    run_id: str
    step_id: str
    attempt: int = 1
    submitted_at: dt.datetime
    #: The flow document as it was when the run started (see common.contracts.flows).
    flow: dict[str, Any]
    context: RunContext
    itinerary: list[Step]
    outputs: dict[str, StepOutput] = {}
    #: State a step keeps between its own deliveries (an async operation being awaited).
    pending: dict[str, Any] | None = None
    #: Set on a deliberate resend of a delivery step (``resend<attempt>``): the notifier's
    #: ledger counts it as a delivery of its own, and the run goes no further than that step.
    resend: Annotated[str | None, Field(pattern=r"^[a-z0-9]{1,16}$")] = None
    #: The run's W3C trace context (``traceparent``, maybe ``tracestate``) of the root span the
    #: trigger started; every step carries it unchanged, so a re-run stays in the run's trace.
    #: None when the trigger did not trace (see common.platform.tracing).
    trace: dict[str, str] | None = None

    def needed_major(self) -> int:
        return _major_of(self.itinerary)

    @property
    def step(self) -> Step:
        for step in self.itinerary:
            if step.id == self.step_id:
                return step
        raise LookupError(f"step {self.step_id!r} is not in the itinerary of run {self.run_id}")

    def following(self, step_id: str) -> Step | None:
        ids = [step.id for step in self.itinerary]
        index = ids.index(step_id) + 1
        return self.itinerary[index] if index < len(ids) else None

    def next_step(self) -> Step | None:
        return self.following(self.step_id)

    def forwarded(self, output: StepOutput, to: Step) -> RunMessage:
        """This run, with the current step's output recorded, addressed to *to*."""
        outputs = {**self.outputs, self.step_id: output}
        return self.model_copy(update={"outputs": outputs, "step_id": to.id, "attempt": 1, "pending": None})


# ---------------------------------------------------------------------------
# Events: status of steps (consumed by history), completed runs (by trigger)
# ---------------------------------------------------------------------------


class RunInfo(WireModel):
    """What history needs to list a run before any step has finished."""

    flow: str
    description: str | None = None
    trigger: TriggerKind
    scheduled_for: dt.datetime | None = None
    parent_run_id: str | None = None
    connection: str
    database: str
    parameters: dict[str, Any]
    itinerary: list[Step]
    submitted_at: dt.datetime
    #: The run's trace id (32 hex digits), when its trigger traced it.
    trace_id: str | None = None
    #: A child run's place in its parent (without the row).
    scope: ScopeRef | None = None
    #: A test run, and the address its emails went to (if any): see RunContext.
    dry_run: bool = False
    test_recipient: str | None = None

    @classmethod
    def of(cls, message: RunMessage) -> RunInfo:
        flow = message.flow
        context = message.context
        scope = context.scope.model_copy(update={"row": None}) if context.scope else None
        return cls(
            flow=context.flow,
            description=flow.get("description"),
            trigger=context.trigger,
            scheduled_for=context.scheduled_for,
            parent_run_id=context.parent_run_id,
            connection=flow["connection"],
            database=flow["database"],
            parameters=context.parameters,
            itinerary=message.itinerary,
            submitted_at=message.submitted_at,
            trace_id=_trace_id(message.trace),
            scope=scope,
            dry_run=context.dry_run,
            test_recipient=context.test_recipient,
        )


def _major_of(itinerary: list[Step]) -> int:
    return max((max(_KIND_MAJOR.get(step.kind.value, 1), step.needs or 1) for step in itinerary), default=1)


_TRACEPARENT = re.compile(r"^[0-9a-f]{2}-([0-9a-f]{32})-[0-9a-f]{16}-[0-9a-f]{2}$")


def _trace_id(carrier: dict[str, str] | None) -> str | None:
    """The trace id of a W3C ``traceparent`` in *carrier*, or None (none, malformed or all zeros)."""
    match = _TRACEPARENT.match((carrier or {}).get("traceparent", "").strip())
    if match is None or match.group(1) == "0" * 32:
        return None
    return match.group(1)


class StatusEvent(Envelope):
    event_id: str = Field(default_factory=new_id)
    run_id: str
    step_id: str
    attempt: int = 1
    #: The run's flow, for the logs of whoever handles the event.
    flow: str | None = None
    kind: StepKind
    service: Service
    status: StepStatus
    started_at: dt.datetime | None = None
    finished_at: dt.datetime | None = None
    row_count: int | None = None
    artifacts: dict[str, BlobRef] = {}
    detail: dict[str, Any] = {}
    error: ErrorInfo | None = None
    #: A failed step whose flow goes on (``on_failure: continue``): the run is not over yet.
    continues: bool = False
    #: A failed attempt that will be tried again (the next attempt's events follow).
    retrying: bool = False
    run: RunInfo | None = None
    #: The run as it stood at a failure that ends it, kept by history so the run can be re-run.
    message: RunMessage | None = None

    def needed_major(self) -> int:
        majors = [_KIND_MAJOR.get(self.kind.value, 1)]
        majors += [_major_of(part.itinerary) for part in (self.run, self.message) if part is not None]
        return max(majors)


class DeadLetterRecord(Envelope):
    """A run message that could not be processed, with why: what an operator replays."""

    run_id: str
    step_id: str
    attempt: int
    routing_key: str
    error: ErrorInfo
    message: RunMessage
    dead_at: dt.datetime = Field(default_factory=utcnow)

    def needed_major(self) -> int:
        return self.message.needed_major()


class RunCompleted(Envelope):
    """Published by history when a run ends; chained flows start from it."""

    run_id: str
    flow: str
    status: RunStatus
    finished_at: dt.datetime


def chart_content_id(run_id: str, flow_step: str) -> str:
    """The Content-ID under which a rendered chart travels inline in an email.

    Render writes ``cid:`` references to it into the step's HTML body; the
    notifier attaches the PNG under the same id.
    """
    return f"chart.{flow_step}.{run_id}@adxflow"
