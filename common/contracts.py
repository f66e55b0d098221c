"""Every message, status and error code that crosses a service boundary.

JSON on the wire, one schema version for the whole set. A run travels as one
:class:`RunMessage` that carries its own itinerary (a routing slip): each
service does the step the message names, records what it produced in
``outputs`` and forwards the message to the service of the next step. Large
payloads never ride along: they are :class:`BlobRef` claim checks.
"""

from __future__ import annotations

import datetime as dt
import re
import uuid
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, EmailStr, Field, field_validator, model_validator

SCHEMA_VERSION: Literal[1] = 1

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


#: The service that performs each kind of step.
SERVICE_OF: dict[StepKind, Service] = {
    StepKind.TRIGGER: Service.TRIGGER,
    StepKind.QUERY: Service.QUERY_WORKER,
    StepKind.RENDER: Service.RENDER,
    StepKind.NOTIFY: Service.NOTIFIER,
    StepKind.RECORD: Service.HISTORY,
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
    HTML_TABLE = "html_table"
    PIECHART = "piechart"
    TIMECHART = "timechart"
    BARCHART = "barchart"


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
    ARTIFACT_MISSING = "ArtifactMissing"
    INTERNAL = "Internal"


class ErrorInfo(BaseModel):
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


# ---------------------------------------------------------------------------
# The routing slip
# ---------------------------------------------------------------------------


class BlobRef(BaseModel):
    """A claim check for a payload kept in the blob store."""

    key: str
    content_type: str
    size: int


class Step(BaseModel):
    id: str
    kind: StepKind

    @property
    def service(self) -> Service:
        return SERVICE_OF[self.kind]


class StepOutput(BaseModel):
    row_count: int | None = None
    artifacts: dict[str, BlobRef] = {}
    detail: dict[str, Any] = {}


def report_itinerary() -> list[Step]:
    """The five steps of an ad-hoc report job, one per service."""
    return [Step(id=kind.value, kind=kind) for kind in StepKind]


class RunMessage(BaseModel):
    schema_version: Literal[1] = SCHEMA_VERSION
    run_id: str
    step_id: str
    attempt: int = 1
    submitted_at: dt.datetime
    job: JobRequest
    itinerary: list[Step]
    outputs: dict[str, StepOutput] = {}

    @property
    def step(self) -> Step:
        for step in self.itinerary:
            if step.id == self.step_id:
                return step
        raise LookupError(f"step {self.step_id!r} is not in the itinerary of run {self.run_id}")

    def next_step(self) -> Step | None:
        ids = [step.id for step in self.itinerary]
        index = ids.index(self.step_id) + 1
        return self.itinerary[index] if index < len(ids) else None

    def output_of(self, kind: StepKind) -> StepOutput:
        for step in self.itinerary:
            if step.kind is kind and step.id in self.outputs:
                return self.outputs[step.id]
        raise LookupError(f"run {self.run_id} has no output from a {kind.value} step")

    def forwarded(self, output: StepOutput, to: Step) -> RunMessage:
        """This run, with the current step's output recorded, addressed to *to*."""
        outputs = {**self.outputs, self.step_id: output}
        return self.model_copy(update={"outputs": outputs, "step_id": to.id, "attempt": 1})


# ---------------------------------------------------------------------------
# Status events, consumed by history
# ---------------------------------------------------------------------------


class RunInfo(BaseModel):
    """What history needs to list a run before any step has finished."""

    connection: str
    database: str
    action: Action
    chart: ChartKind
    query: str
    parameters: dict[str, ParameterValue]
    recipients: list[str]
    subject: str
    itinerary: list[Step]
    submitted_at: dt.datetime

    @classmethod
    def of(cls, message: RunMessage) -> RunInfo:
        job = message.job
        return cls(
            connection=job.connection,
            database=job.database,
            action=job.action,
            chart=job.chart,
            query=job.query,
            parameters=job.parameters,
            recipients=[*job.email.to, *job.email.cc],
            subject=job.email.subject,
            itinerary=message.itinerary,
            submitted_at=message.submitted_at,
        )


class StatusEvent(BaseModel):
    schema_version: Literal[1] = SCHEMA_VERSION
    event_id: str = Field(default_factory=new_id)
    run_id: str
    step_id: str
    attempt: int = 1
    kind: StepKind
    service: Service
    status: StepStatus
    started_at: dt.datetime | None = None
    finished_at: dt.datetime | None = None
    row_count: int | None = None
    artifacts: dict[str, BlobRef] = {}
    error: ErrorInfo | None = None
    run: RunInfo | None = None
