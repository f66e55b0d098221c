"""What the trigger API takes and answers: its bodies as pydantic models, and the documented examples.

The flow and job documents themselves are the contracts' :class:`~common.contracts.flows.Flow`
and :class:`~common.contracts.messages.JobRequest`; these are the rest.
"""

from __future__ import annotations

import datetime as dt
from typing import Any, Literal

from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    field_serializer,
    field_validator,
    model_validator,
)

from common.contracts.alerts import parse_duration
from common.contracts.flows import Flow
from common.platform.routes import absent_if_none
from services.trigger.alert_states import State
from services.trigger.silences import SilenceState

_TIMESTAMP: dict[str, Any] = {"format": "date-time"}


def _name_from_url(schema: dict[str, Any]) -> None:
    schema["required"] = [name for name in schema["required"] if name != "name"]


class FlowReplacement(Flow):
    """A flow document; `name` defaults to the name in the URL and must match it."""

    model_config = ConfigDict(json_schema_extra=_name_from_url)


class RunRequest(BaseModel):
    parameters: dict[Any, Any] = Field(
        default_factory=dict,
        description="Values for the flow's declared parameters, by name; defaults fill the rest.",
    )
    dry_run: bool = Field(
        False,
        description="A test run: its queries run and its steps render, nothing is delivered or written.",
    )
    send_test_to: str | None = Field(
        None,
        description="With dry_run: send the run's emails to this one address only (ADXFLOW_TEST_RECIPIENTS).",
    )


class DraftTestRequest(BaseModel):
    """A test run of a flow that is not saved (as JSON; a YAML body is the flow document alone)."""

    model_config = ConfigDict(extra="forbid")

    flow: dict[str, Any] | str = Field(description="The flow document, as an object or as YAML text.")
    parameters: dict[Any, Any] = Field(
        default_factory=dict,
        description="Values for the draft's declared parameters, by name; defaults fill the rest.",
    )
    send_test_to: str | None = Field(
        None, description="Send the run's emails to this one address only (ADXFLOW_TEST_RECIPIENTS)."
    )


class FlowView(BaseModel):
    """A saved flow: its document, its version, and its trigger in words."""

    model_config = ConfigDict(extra="forbid")

    name: str
    version: int = Field(ge=1, description="Counts every save of the flow.")
    enabled: bool
    created_at: str = Field(json_schema_extra=_TIMESTAMP)
    updated_at: str = Field(json_schema_extra=_TIMESTAMP)
    document: Flow
    trigger: str = Field(json_schema_extra={"enum": ["cron", "every", "after", "manual"]})
    schedule: str = Field(description="The trigger in words.")
    next_fire: str | None = absent_if_none(
        "The next scheduled run (cron and every triggers only).", **_TIMESTAMP
    )

    # Without a return type, the document stays described as a Flow.
    @field_serializer("document", mode="wrap")
    def _document(self, document: Flow, _: SerializerFunctionWrapHandler):
        # As saved: what the flow leaves out stays out.
        return document.model_dump(mode="json", exclude_none=True)


class FlowDetail(FlowView):
    """One saved flow as its own page reads it: the list's view, and its next few fire times."""

    next_fires: list[str] = Field(
        description="The next scheduled runs, oldest first (empty unless a cron or every trigger).",
        json_schema_extra={"items": _TIMESTAMP},
    )


class FlowList(BaseModel):
    model_config = ConfigDict(extra="forbid")

    flows: list[FlowView]


class VersionEntry(BaseModel):
    """One save of a flow: its number, when, by whom, and what it changed."""

    model_config = ConfigDict(extra="forbid")

    version: int = Field(ge=1, description="The flow's version (its ETag) this save made.")
    saved_at: dt.datetime
    saved_by: str | None = Field(
        description='"token" when saved with the API token, "local" without one; null where not '
        "recorded (the version a flow was at when versions began to be kept)."
    )
    summary: str = Field(description="What changed from the version before, in a few words.")
    restored_from: int | None = Field(description="The version this save restored, if it was a restore.")


class VersionList(BaseModel):
    """A flow's versions, newest first; kept when the flow is deleted."""

    model_config = ConfigDict(extra="forbid")

    flow: str
    current: int | None = Field(description="The version the flow is at; null when it was deleted.")
    versions: list[VersionEntry]


class VersionView(VersionEntry):
    """One version of a flow with its definition as saved."""

    flow: str
    definition: str = Field(
        description="The YAML as saved: a YAML body as it was sent, a JSON one dumped as YAML."
    )
    document: dict[str, Any] = Field(description="The flow document as stored.")


class VersionDiff(BaseModel):
    """The unified diff of two versions' definitions."""

    model_config = ConfigDict(extra="forbid")

    flow: str
    from_version: int
    to_version: int
    lines: list[str] = Field(description="The unified diff's lines, without line endings; empty: the same.")


class RunAccepted(BaseModel):
    """A run started by a flow or a job, queued for its first step."""

    model_config = ConfigDict(extra="forbid")

    run_id: str
    status: Literal["queued"]
    location: str = Field(description="Where the history API reports on the run.")
    repeated: bool = Field(
        description="True when an earlier request with the same Idempotency-Key started the run."
    )


class ConnectionList(BaseModel):
    model_config = ConfigDict(extra="forbid")

    connections: list[str]


class SilenceRequest(BaseModel):
    """A silence to set: over a flow's alerts (one step's, one instance's), until a time or for a while."""

    model_config = ConfigDict(extra="forbid")

    flow: str = Field(min_length=1, max_length=64, description="A saved flow.")
    step: str | None = Field(
        None, min_length=1, max_length=64, description="One step of the flow with an alert; without: all."
    )
    key: str | None = Field(
        None,
        min_length=1,
        max_length=1024,
        description="One instance, keyed as the alert keys it (`EventId=42`); without: every instance.",
    )
    until: AwareDatetime | None = Field(
        None, description="When it ends: ISO 8601 with an offset, in the next year. Or `for`."
    )
    lasts: str | None = Field(
        None, alias="for", max_length=32, description="How long it lasts: `30m`, `2h`, `1d`. Or `until`."
    )
    comment: str = Field(min_length=1, max_length=1024, description="Why; shown wherever it is.")

    @field_validator("lasts")
    @classmethod
    def _duration(cls, value: str | None) -> str | None:
        if value is not None:
            parse_duration(value)
        return value

    @field_validator("comment")
    @classmethod
    def _said(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("say why the alert is silenced")
        return value.strip()

    @model_validator(mode="after")
    def _one_end(self) -> SilenceRequest:
        if (self.until is None) == (self.lasts is None):
            raise ValueError("until: give until (a time) or for (a duration), one of them")
        return self


class SilenceView(BaseModel):
    """A silence: what it covers, when, why, who set it, and whether it is in force."""

    model_config = ConfigDict(extra="forbid")

    id: str
    flow: str
    step: str | None = Field(description="The alert step it covers; null: every one of the flow.")
    key: str | None = Field(description="The instance it covers; null: every one.")
    starts_at: dt.datetime
    ends_at: dt.datetime
    comment: str
    created_by: str = Field(description='"token" when set with the API token, "local" without one.')
    created_at: dt.datetime
    ended_at: dt.datetime | None = Field(description="When it was ended before its time.")
    state: SilenceState


class SilenceList(BaseModel):
    model_config = ConfigDict(extra="forbid")

    silences: list[SilenceView]


class InstanceView(BaseModel):
    """One instance of an alert as it stands."""

    model_config = ConfigDict(extra="forbid")

    key: str = Field(description='Its key columns\' values (`EventId=42`); "" for an alert without.')
    state: State
    since: dt.datetime | None = Field(description="When it entered its state.")
    pending_count: int = Field(description="Holding evaluations in a row, while pending.")
    last_held: dt.datetime | None = Field(description="When its condition last held.")
    notified_at: dt.datetime | None = Field(description="When it was last told.")
    next_repeat: dt.datetime | None = Field(description="When it is told again if it stays as it is.")
    row: dict[str, Any] | None = Field(description="The row it fired with, where kept.")
    silenced_by: str | None = Field(description="The id of a silence in force over it.")
    silenced_until: dt.datetime | None = Field(description="When that silence ends.")


class TransitionView(BaseModel):
    """What one evaluation did to one instance."""

    model_config = ConfigDict(extra="forbid")

    key: str
    before: State
    after: State
    notice: str | None = Field(description="What was to be told: firing, resolved, error, no_data, repeat.")
    held: str | None = Field(description="Why it was not delivered: `muted:<window>` or `silenced:<id>`.")
    run_id: str
    at: dt.datetime


class AlertView(BaseModel):
    """One alert step of a flow: its state as a whole, its instances, its latest transitions."""

    model_config = ConfigDict(extra="forbid")

    step: str
    state: State = Field(description="The worst of its instances' states.")
    key_columns: list[str]
    instances: list[InstanceView]
    transitions: list[TransitionView] = Field(description="The latest, newest first.")


class FlowAlerts(BaseModel):
    model_config = ConfigDict(extra="forbid")

    flow: str
    alerts: list[AlertView]
    silences: list[SilenceView] = Field(description="The flow's silences in force, newest first.")


#: Request examples that work against the embedded mode's ``local`` connection and its sample data.
EXAMPLE_FLOW: dict[str, Any] = {
    "name": "daily-storms",
    "description": "Storm events by state, every morning",
    "connection": "local",
    "database": "Samples",
    "trigger": {"cron": "0 8 * * *", "timezone": "Europe/Berlin"},
    "steps": [
        {
            "id": "by_state",
            "action": "run_query_and_render_chart",
            "query": "StormEvents | summarize Events = count() by State | top 10 by Events",
            "chart": "piechart",
        },
        {
            "id": "mail",
            "action": "send_email",
            "to": ["team@example.com"],
            "subject": "Storm events on {{ run.scheduled_for }}",
            "attachments": ["by_state"],
        },
    ],
}
EXAMPLE_JOB: dict[str, Any] = {
    "connection": "local",
    "database": "Samples",
    "query": "StormEvents | where DamageProperty >= min_damage | summarize Events = count() by State",
    "parameters": {"min_damage": 10000},
    "chart": "piechart",
    "title": "Damaging storms by state",
    "email": {"to": ["team@example.com"], "subject": "Damaging storms", "importance": "high"},
}
EXAMPLE_RUN: dict[str, Any] = {"parameters": {}}
EXAMPLE_SILENCE: dict[str, Any] = {
    "flow": "deadly-storm-check",
    "step": "deadly",
    "key": "EventId=42",
    "for": "2h",
    "comment": "known; the crew is on it",
}
