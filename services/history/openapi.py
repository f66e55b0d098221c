"""The history API described as OpenAPI 3.1, served at ``/openapi.json``.

The shapes are pydantic models used only to write the document: the
handlers build plain JSON, and the API's tests check that it matches.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic.json_schema import models_json_schema

from common.contracts.messages import RunStatus, Service, StepKind, StepStatus, TriggerKind


class FieldProblem(BaseModel):
    field: str
    message: str


class ErrorDetail(BaseModel):
    code: str = Field(description="A stable code: InvalidRequest, NotFound, Conflict, Unauthorized, ...")
    message: str = Field(description="What is wrong; a bad parameter is named first (`limit: ...`).")
    fields: list[FieldProblem] | None = None


class ErrorBody(BaseModel):
    error: ErrorDetail


class RunError(BaseModel):
    code: str
    message: str


class StepError(RunError):
    retryable: bool


class ArtifactLink(BaseModel):
    href: str = Field(description="Where to fetch the artifact from this API.")
    content_type: str
    size: int


class QueryText(BaseModel):
    text: str = Field(description="The query or command as sent to the cluster.")
    parameters: dict[str, Any] = Field(description="The query parameters' values.")


class StepAttempt(BaseModel):
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


class RunSummary(BaseModel):
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


class RunDetail(RunSummary):
    steps: list[StepAttempt] = Field(description="Every attempt of every step, in itinerary order.")
    truncated: bool


class RunPage(BaseModel):
    runs: list[RunSummary]
    next_cursor: str | None = Field(description="Pass as `cursor` for the next page; null on the last.")


class Durations(BaseModel):
    p50: float | None
    p95: float | None


class FlowStats(BaseModel):
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


class Queued(BaseModel):
    run_id: str
    step_id: str
    attempt: int


class RedoAccepted(BaseModel):
    queued: Queued
    run: RunDetail


class DeadLetter(BaseModel):
    id: str
    run_id: str | None
    step_id: str | None
    attempt: int | None
    routing_key: str
    error: RunError | None
    dead_at: str


class DeadLetterList(BaseModel):
    dead_letters: list[DeadLetter]


class Replayed(BaseModel):
    replayed: dict[str, Any]


class Health(BaseModel):
    status: Literal["ok"]


class Readiness(BaseModel):
    ready: bool
    checks: dict[str, bool]


_MODELS: list[type[BaseModel]] = [
    ErrorBody,
    RunPage,
    RunDetail,
    FlowStats,
    ResendRequest,
    RedoAccepted,
    DeadLetterList,
    Replayed,
    Health,
    Readiness,
]


def _schemas() -> dict[str, Any]:
    _, top = models_json_schema(
        [(model, "serialization") for model in _MODELS], ref_template="#/components/schemas/{model}"
    )
    return dict(top["$defs"])


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(name: str, description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": _ref(name)}}}


def _errors(*statuses: int) -> dict[str, Any]:
    meaning = {
        400: "A bad parameter or body; the message names it.",
        401: "A bearer token is required (off loopback).",
        404: "Not found.",
        409: "The run is not in a state that allows it.",
        415: "The body is neither JSON nor YAML.",
        503: "The broker did not take the message; nothing was queued.",
    }
    return {str(status): _json("ErrorBody", meaning[status]) for status in (401, *statuses)}


def _query(name: str, schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "schema": schema, "description": description}


def _path(name: str, description: str) -> dict[str, Any]:
    return {
        "name": name,
        "in": "path",
        "required": True,
        "schema": {"type": "string"},
        "description": description,
    }


_RUN_FILTERS = [
    _query("status", {"type": "string", "enum": [s.value for s in RunStatus]}, "Only runs with this status."),
    _query("trigger", {"type": "string", "enum": [k.value for k in TriggerKind]}, "Only runs started so."),
    _query(
        "since",
        {"type": "string", "format": "date-time"},
        "Submitted at or after (ISO 8601; UTC if no zone).",
    ),
    _query(
        "until", {"type": "string", "format": "date-time"}, "Submitted before (ISO 8601; UTC if no zone)."
    ),
    _query("order", {"type": "string", "enum": ["desc", "asc"], "default": "desc"}, "By submitted time."),
    _query("limit", {"type": "integer", "minimum": 1, "maximum": 500, "default": 50}, "Runs per page."),
    _query("cursor", {"type": "string"}, "The next_cursor of the previous page, for the same order."),
]


def _paths() -> dict[str, Any]:
    runs_page = {"200": _json("RunPage", "A page of runs."), **_errors(400)}
    accepted = {
        "description": "Queued: the new attempt, and the run as it is now.",
        "headers": {"Location": {"schema": {"type": "string"}, "description": "The run."}},
        "content": {"application/json": {"schema": _ref("RedoAccepted")}},
    }
    return {
        "/v1/runs": {
            "get": {
                "operationId": "listRuns",
                "summary": "Runs, newest first, filtered and paged",
                "parameters": [_query("flow", {"type": "string"}, "Only runs of this flow."), *_RUN_FILTERS],
                "responses": runs_page,
            }
        },
        "/v1/runs/{run_id}": {
            "get": {
                "operationId": "getRun",
                "summary": "One run with every attempt of every step",
                "parameters": [_path("run_id", "The run.")],
                "responses": {"200": _json("RunDetail", "The run."), **_errors(404)},
            }
        },
        "/v1/runs/{run_id}/resend": {
            "post": {
                "operationId": "resendEmail",
                "summary": "Send a finished run's email again, as a new attempt of its send_email step",
                "parameters": [_path("run_id", "The run.")],
                "requestBody": {
                    "required": False,
                    "content": {"application/json": {"schema": _ref("ResendRequest")}},
                },
                "responses": {"202": accepted, **_errors(400, 404, 409, 415, 503)},
            }
        },
        "/v1/runs/{run_id}/rerun": {
            "post": {
                "operationId": "rerunRun",
                "summary": "Run a failed run again from its failed step, reusing earlier steps' outputs",
                "parameters": [_path("run_id", "The run.")],
                "responses": {"202": accepted, **_errors(400, 404, 409, 415, 503)},
            }
        },
        "/v1/flows/{name}/runs": {
            "get": {
                "operationId": "listFlowRuns",
                "summary": "The runs of one flow",
                "parameters": [_path("name", "The flow."), *_RUN_FILTERS],
                "responses": runs_page,
            }
        },
        "/v1/flows/{name}/stats": {
            "get": {
                "operationId": "flowStats",
                "summary": "Runs, outcomes and duration percentiles of a flow over a window",
                "parameters": [
                    _path("name", "The flow."),
                    _query(
                        "window",
                        {"type": "string", "pattern": "^[1-9][0-9]{0,4}[mhd]$", "default": "7d"},
                        "How far back from now: minutes, hours or days (1h, 24h, 7d, 28d), at most 366d.",
                    ),
                ],
                "responses": {"200": _json("FlowStats", "The flow's numbers."), **_errors(400)},
            }
        },
        "/v1/artifacts/{key}": {
            "get": {
                "operationId": "getArtifact",
                "summary": "An artifact a run produced (runs/...), as its own content type",
                "parameters": [_path("key", "The artifact's key, as linked from a run.")],
                "responses": {
                    "200": {
                        "description": "The artifact.",
                        "content": {"*/*": {"schema": {"type": "string", "format": "binary"}}},
                    },
                    **_errors(404),
                },
            }
        },
        "/v1/dead-letters": {
            "get": {
                "operationId": "listDeadLetters",
                "summary": "Messages no step could process, newest first",
                "responses": {"200": _json("DeadLetterList", "The dead letters."), **_errors()},
            }
        },
        "/v1/dead-letters/{id}/replay": {
            "post": {
                "operationId": "replayDeadLetter",
                "summary": "Send a dead letter back to its step as a new attempt",
                "parameters": [_path("id", "The dead letter.")],
                "responses": {"202": _json("Replayed", "Sent back."), **_errors(404)},
            }
        },
        "/v1/dead-letters/{id}": {
            "delete": {
                "operationId": "deleteDeadLetter",
                "summary": "Forget a dead letter",
                "parameters": [_path("id", "The dead letter.")],
                "responses": {"204": {"description": "Forgotten."}, **_errors(404)},
            }
        },
        "/openapi.json": {
            "get": {
                "operationId": "openapi",
                "summary": "This document",
                "security": [],
                "responses": {"200": {"description": "OpenAPI 3.1.", "content": {"application/json": {}}}},
            }
        },
        "/healthz": {
            "get": {
                "operationId": "health",
                "summary": "Whether the process lives",
                "security": [],
                "responses": {"200": _json("Health", "Alive.")},
            }
        },
        "/readyz": {
            "get": {
                "operationId": "readiness",
                "summary": "Whether the broker, database and blob store answer",
                "security": [],
                "responses": {
                    "200": _json("Readiness", "Ready."),
                    "503": _json("Readiness", "Not ready; the checks say what is away."),
                },
            }
        },
    }


def document() -> dict[str, Any]:
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "adxflow run history",
            "version": "1",
            "description": "Runs, their steps and artifacts; resending and re-running; dead letters.",
        },
        "paths": _paths(),
        "components": {
            "schemas": _schemas(),
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
        # A bearer token, except on loopback where the API has none.
        "security": [{"bearer": []}, {}],
    }


OPENAPI = document()
