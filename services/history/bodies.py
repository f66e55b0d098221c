"""What the history API takes and answers: its bodies as pydantic models.

The handlers and the pages build these from what the store reads, so a key
the store adds or drops fails loudly instead of reaching the wire unannounced.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from common.contracts.messages import RunStatus, Service, StepKind, StepStatus, TriggerKind

#: Where the API serves an artifact, by its key.
ARTIFACTS_PATH = "/v1/artifacts/"


class _Answer(BaseModel):
    model_config = ConfigDict(extra="forbid")


class RunError(_Answer):
    code: str
    message: str


class StepError(RunError):
    retryable: bool


class ArtifactLink(_Answer):
    href: str = Field(description="Where to fetch the artifact from this API.")
    content_type: str
    size: int

    @property
    def key(self) -> str:
        return self.href.removeprefix(ARTIFACTS_PATH)


class QueryText(_Answer):
    text: str = Field(description="The query or command as sent to the cluster.")
    parameters: dict[str, Any] = Field(description="The query parameters' values.")


class StepAttempt(_Answer):
    step_id: str
    flow_step: str | None
    attempt: int
    kind: StepKind
    service: Service
    status: StepStatus
    queued_at: str | None
    started_at: str | None
    finished_at: str | None
    duration_ms: float | None
    row_count: int | None
    query: QueryText | None = Field(description="For a query or command step.")
    truncated: bool = Field(description="Whether the result was cut at its cap.")
    error: StepError | None
    artifacts: dict[str, ArtifactLink] = Field(
        description="chart_png, chart_svg, table_html, csv, result, email (the sent .eml), ..."
    )
    detail: dict[str, Any]


class ScopePlace(_Answer):
    """Where a child run belongs in its parent."""

    run_id: str = Field(description="The parent run.")
    step_id: str = Field(description="The parent's for_each or parallel step.")
    index: int = Field(
        description="The iteration's row number in the source (0-based), or the branch's position."
    )
    branch: str | None = Field(description="The branch's id, for a branch of a parallel step.")


class RunSummary(_Answer):
    run_id: str
    flow: str | None
    description: str | None
    status: RunStatus
    trigger: TriggerKind | None
    scheduled_for: str | None
    parent_run_id: str | None
    connection: str | None
    database: str | None
    parameters: dict[str, Any]
    submitted_at: str | None
    started_at: str | None
    finished_at: str | None
    duration_ms: float | None
    failed_step: str | None
    error: RunError | None
    trace_id: str | None = Field(description="The run's OpenTelemetry trace id (32 hex digits), when traced.")
    scope: ScopePlace | None = Field(
        None, description="A child run's place: one iteration of a for_each, or one branch of a parallel."
    )
    dry_run: bool = Field(
        False, description="A test run: its queries ran, nothing was delivered or written (kept for hours)."
    )
    test_recipient: str | None = Field(
        None, description="The one address a test run sent its emails to (send a test), if any."
    )


class RunDetail(RunSummary):
    steps: list[StepAttempt] = Field(description="Every attempt of every step, in itinerary order.")
    truncated: bool


class RunPage(_Answer):
    runs: list[RunSummary]
    next_cursor: str | None = Field(description="Pass as `cursor` for the next page; null on the last.")


class IterationPage(_Answer):
    run_id: str = Field(description="The parent run.")
    step_id: str = Field(description="Its for_each or parallel step.")
    counts: dict[str, int] = Field(
        description="How the step's items stand by their latest runs: total, waiting, running, "
        "succeeded, failed, skipped (items that never ran: waiting while the step runs, skipped after)."
    )
    iterations: list[RunSummary] = Field(
        description="The child runs by iteration (or branch position); an iteration run again under "
        "a new id is listed by its latest run."
    )
    next_cursor: str | None = Field(description="Pass as `cursor` for the next page; null on the last.")


class Durations(_Answer):
    p50: float | None
    p95: float | None


class FlowStats(_Answer):
    flow: str
    window: str
    since: str
    until: str
    runs: int
    succeeded: int
    failed: int
    unfinished: int
    success_rate: float | None = Field(description="succeeded / (succeeded + failed); null without either.")
    duration_ms: Durations


class ResendRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    step: str | None = Field(
        None, description="The send_email step to resend; by default the first that sent."
    )


class Queued(_Answer):
    run_id: str
    step_id: str
    attempt: int


class RedoAccepted(_Answer):
    queued: Queued
    run: RunDetail


class DeadLetter(_Answer):
    id: str
    run_id: str | None
    step_id: str | None
    attempt: int | None
    routing_key: str
    error: RunError | None
    dead_at: str


class DeadLetterList(_Answer):
    dead_letters: list[DeadLetter]


class Replayed(_Answer):
    replayed: dict[str, Any]
