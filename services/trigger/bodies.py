"""What the trigger API takes and answers: its bodies as pydantic models, and the documented examples.

The flow and job documents themselves are the contracts' :class:`~common.contracts.flows.Flow`
and :class:`~common.contracts.messages.JobRequest`; these are the rest.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SerializerFunctionWrapHandler, field_serializer

from common.contracts.flows import Flow
from common.platform.routes import absent_if_none

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


class FlowList(BaseModel):
    model_config = ConfigDict(extra="forbid")

    flows: list[FlowView]


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
