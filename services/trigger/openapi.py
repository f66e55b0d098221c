"""The trigger API as an OpenAPI 3.1 document, served at ``GET /openapi.json``.

Request bodies are described by the same pydantic models that validate them
(:class:`~common.contracts.flows.Flow`, :class:`~common.contracts.messages.JobRequest`), so the
document cannot drift from what the handlers accept. The document holds no
data and is served without a token.
"""

from __future__ import annotations

import copy
import functools
import importlib.metadata
import json
from typing import Any

from aiohttp import web
from pydantic.json_schema import models_json_schema

from common.contracts.flows import Flow
from common.contracts.messages import JobRequest

PATH = "/openapi.json"
OPENAPI_VERSION = "3.1.0"

_JSON = "application/json"
_YAML = "application/yaml"


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _response(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/responses/{name}"}


def _json(schema: dict[str, Any]) -> dict[str, Any]:
    return {_JSON: {"schema": schema}}


def _model_schemas() -> dict[str, Any]:
    """The request models' schemas, with every nested model under ``components/schemas``."""
    _, top = models_json_schema(
        [(Flow, "validation"), (JobRequest, "validation")], ref_template="#/components/schemas/{model}"
    )
    schemas: dict[str, Any] = top["$defs"]
    # PUT /v1/flows/{name} takes the name from the URL when the document leaves it out.
    replacement = copy.deepcopy(schemas["Flow"])
    replacement["title"] = "FlowReplacement"
    replacement["required"] = [field for field in replacement["required"] if field != "name"]
    replacement["description"] = "A flow document; `name` defaults to the name in the URL and must match it."
    schemas["FlowReplacement"] = replacement
    return schemas


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

_ERROR = {
    "type": "object",
    "description": "Every refusal: a stable code, a message a person can act on, and the fields at fault.",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["code", "message"],
            "properties": {
                "code": {"type": "string", "examples": ["InvalidRequest", "InvalidFlow", "NotFound"]},
                "message": {"type": "string"},
                "fields": {
                    "type": "array",
                    "description": "One entry per field at fault, such as `steps[1].subject`.",
                    "items": {
                        "type": "object",
                        "required": ["field", "message"],
                        "properties": {"field": {"type": "string"}, "message": {"type": "string"}},
                    },
                },
            },
        }
    },
}

_RUN_ACCEPTED = {
    "type": "object",
    "required": ["run_id", "status", "location", "repeated"],
    "properties": {
        "run_id": {"type": "string"},
        "status": {"const": "queued"},
        "location": {"type": "string", "description": "Where the history API reports on the run."},
        "repeated": {
            "type": "boolean",
            "description": "True when an earlier request with the same Idempotency-Key started the run.",
        },
    },
}

_FLOW_VIEW = {
    "type": "object",
    "required": ["name", "version", "enabled", "created_at", "updated_at", "document", "trigger", "schedule"],
    "properties": {
        "name": {"type": "string"},
        "version": {"type": "integer", "minimum": 1, "description": "Counts every save of the flow."},
        "enabled": {"type": "boolean"},
        "created_at": {"type": "string", "format": "date-time"},
        "updated_at": {"type": "string", "format": "date-time"},
        "document": _ref("Flow"),
        "trigger": {"enum": ["cron", "every", "after", "manual"]},
        "schedule": {"type": "string", "description": "The trigger in words."},
        "next_fire": {
            "type": "string",
            "format": "date-time",
            "description": "The next scheduled run (cron and every triggers only).",
        },
    },
}

_SCHEMAS: dict[str, Any] = {
    "Error": _ERROR,
    "RunAccepted": _RUN_ACCEPTED,
    "FlowView": _FLOW_VIEW,
    "FlowList": {
        "type": "object",
        "required": ["flows"],
        "properties": {"flows": {"type": "array", "items": _ref("FlowView")}},
    },
    "ConnectionList": {
        "type": "object",
        "required": ["connections"],
        "properties": {"connections": {"type": "array", "items": {"type": "string"}}},
    },
    "RunRequest": {
        "type": "object",
        "properties": {
            "parameters": {
                "type": "object",
                "description": "Values for the flow's declared parameters, by name; defaults fill the rest.",
            }
        },
    },
    "Health": {
        "type": "object",
        "required": ["status"],
        "properties": {"status": {"const": "ok"}},
    },
    "Readiness": {
        "type": "object",
        "required": ["ready", "checks"],
        "properties": {
            "ready": {"type": "boolean"},
            "checks": {"type": "object", "additionalProperties": {"type": "boolean"}},
        },
    },
}


def _error(description: str) -> dict[str, Any]:
    return {"description": description, "content": _json(_ref("Error"))}


_RESPONSES: dict[str, Any] = {
    "BadRequest": _error("The request is malformed or invalid; `fields` names what is wrong."),
    "Unauthorized": {
        **_error("A valid bearer token is required."),
        "headers": {"WWW-Authenticate": {"schema": {"type": "string"}}},
    },
    "NotFound": _error("No flow has this name."),
    "Conflict": _error("A flow with this name exists; PUT replaces it."),
    "PayloadTooLarge": {
        "description": "The body is over 1 MiB.",
        "content": {"text/plain": {"schema": {"type": "string"}}},
    },
    "UnsupportedMediaType": _error("The body is neither JSON nor YAML."),
    "Unavailable": _error("The broker did not accept the run; retrying can help."),
    "Accepted": {
        "description": "The run is queued; Location is where its history will be.",
        "headers": {"Location": {"schema": {"type": "string"}}},
        "content": _json(_ref("RunAccepted")),
    },
}

_PARAMETERS: dict[str, Any] = {
    "IdempotencyKey": {
        "name": "Idempotency-Key",
        "in": "header",
        "required": False,
        "description": "A repeated request with the same key answers with the run the first one started.",
        "schema": {"type": "string", "minLength": 1, "maxLength": 255},
    },
}


def _body(
    schema: dict[str, Any], example: dict[str, Any], *, required: bool = True, description: str = ""
) -> dict[str, Any]:
    media = {"schema": schema, "examples": {"example": {"value": example}}}
    body: dict[str, Any] = {"required": required, "content": {_JSON: media, _YAML: media}}
    if description:
        body["description"] = description
    return body


def _refusals(*names: str) -> dict[str, Any]:
    codes = {
        "BadRequest": "400",
        "Unauthorized": "401",
        "NotFound": "404",
        "Conflict": "409",
        "PayloadTooLarge": "413",
        "UnsupportedMediaType": "415",
        "Unavailable": "503",
    }
    return {codes[name]: _response(name) for name in names}


_BODY_REFUSALS = ("BadRequest", "Unauthorized", "PayloadTooLarge", "UnsupportedMediaType")


def _paths(name_pattern: str) -> dict[str, Any]:
    name = {
        "name": "name",
        "in": "path",
        "required": True,
        "description": "The flow's name.",
        "schema": {"type": "string", "pattern": name_pattern},
        "example": EXAMPLE_FLOW["name"],
    }
    open_to_all: list[dict[str, list[str]]] = []
    return {
        "/v1/jobs": {
            "post": {
                "operationId": "submitJob",
                "summary": "Run one query (or control command) once, render it and email it",
                "parameters": [{"$ref": "#/components/parameters/IdempotencyKey"}],
                "requestBody": _body(_ref("JobRequest"), EXAMPLE_JOB),
                "responses": {"202": _response("Accepted"), **_refusals(*_BODY_REFUSALS, "Unavailable")},
            }
        },
        "/v1/flows": {
            "get": {
                "operationId": "listFlows",
                "summary": "Every saved flow, by name",
                "responses": {
                    "200": {"description": "The flows.", "content": _json(_ref("FlowList"))},
                    **_refusals("Unauthorized"),
                },
            },
            "post": {
                "operationId": "createFlow",
                "summary": "Save a new flow",
                "requestBody": _body(_ref("Flow"), EXAMPLE_FLOW),
                "responses": {
                    "201": {"description": "The flow, saved.", "content": _json(_ref("FlowView"))},
                    **_refusals(*_BODY_REFUSALS, "Conflict"),
                },
            },
        },
        "/v1/flows/{name}": {
            "parameters": [name],
            "get": {
                "operationId": "getFlow",
                "summary": "One flow",
                "responses": {
                    "200": {"description": "The flow.", "content": _json(_ref("FlowView"))},
                    **_refusals("Unauthorized", "NotFound"),
                },
            },
            "put": {
                "operationId": "putFlow",
                "summary": "Create or replace a flow",
                "requestBody": _body(_ref("FlowReplacement"), EXAMPLE_FLOW),
                "responses": {
                    "200": {"description": "The flow, replaced.", "content": _json(_ref("FlowView"))},
                    "201": {"description": "The flow, created.", "content": _json(_ref("FlowView"))},
                    **_refusals(*_BODY_REFUSALS),
                },
            },
            "delete": {
                "operationId": "deleteFlow",
                "summary": "Delete a flow, its fired slots and its idempotency keys",
                "responses": {"204": {"description": "Deleted."}, **_refusals("Unauthorized", "NotFound")},
            },
        },
        "/v1/flows/{name}/runs": {
            "parameters": [name],
            "post": {
                "operationId": "runFlow",
                "summary": "Start a run of a flow now",
                "parameters": [{"$ref": "#/components/parameters/IdempotencyKey"}],
                "requestBody": _body(
                    _ref("RunRequest"),
                    EXAMPLE_RUN,
                    required=False,
                    description="Without a body the defaults apply.",
                ),
                "responses": {
                    "202": _response("Accepted"),
                    **_refusals(*_BODY_REFUSALS, "NotFound", "Unavailable"),
                },
            },
        },
        "/v1/connections": {
            "get": {
                "operationId": "listConnections",
                "summary": "The names of the connections the operator configured",
                "responses": {
                    "200": {"description": "Connection names.", "content": _json(_ref("ConnectionList"))},
                    **_refusals("Unauthorized"),
                },
            }
        },
        "/healthz": {
            "get": {
                "operationId": "health",
                "summary": "Whether the process answers",
                "security": open_to_all,
                "responses": {"200": {"description": "Alive.", "content": _json(_ref("Health"))}},
            }
        },
        "/readyz": {
            "get": {
                "operationId": "readiness",
                "summary": "Whether the broker, the database and the blob store answer",
                "security": open_to_all,
                "responses": {
                    "200": {"description": "Ready.", "content": _json(_ref("Readiness"))},
                    "503": {"description": "Not ready.", "content": _json(_ref("Readiness"))},
                },
            }
        },
        "/metrics": {
            "get": {
                "operationId": "metrics",
                "summary": "Counters and histograms in Prometheus' text format",
                "responses": {
                    "200": {
                        "description": "The metrics.",
                        "content": {"text/plain": {"schema": {"type": "string"}}},
                    },
                    **_refusals("Unauthorized"),
                },
            }
        },
        PATH: {
            "get": {
                "operationId": "openapi",
                "summary": "This document",
                "security": open_to_all,
                "responses": {
                    "200": {"description": "The OpenAPI document.", "content": _json({"type": "object"})}
                },
            }
        },
    }


@functools.cache
def _document() -> dict[str, Any]:
    schemas = _model_schemas()
    return {
        "openapi": OPENAPI_VERSION,
        "info": {
            "title": "adxflow trigger API",
            "version": importlib.metadata.version("adxflow"),
            "description": (
                "Flows that run Kusto queries and control commands on a schedule or on demand, "
                "and ad-hoc report jobs. Bodies are JSON, or YAML with Content-Type application/yaml. "
                "A bearer token is required unless the service listens on loopback without one."
            ),
        },
        "paths": _paths(schemas["Flow"]["properties"]["name"]["pattern"]),
        "components": {
            "schemas": {**schemas, **_SCHEMAS},
            "responses": _RESPONSES,
            "parameters": _PARAMETERS,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
        "security": [{"bearer": []}],
    }


def document() -> dict[str, Any]:
    """The OpenAPI document of the trigger API; a copy the caller may change."""
    return copy.deepcopy(_document())


def add_route(app: web.Application) -> None:
    body = json.dumps(_document()).encode()

    async def openapi(_: web.Request) -> web.Response:
        return web.Response(body=body, content_type="application/json")

    app.router.add_get(PATH, openapi)
