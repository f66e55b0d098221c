"""An HTTP API as one table of routes: served from it, and described by it as OpenAPI 3.1.

:meth:`HttpApi.serve` registers a service's routes together with the probes
and ``/openapi.json`` that every API serves, and :meth:`HttpApi.document`
describes exactly those routes, their schemas written by pydantic from the
models the handlers take and return (``models_json_schema``). A route cannot
be served without being documented, nor a path parameter left out.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, Literal

from aiohttp import web
from pydantic import BaseModel
from pydantic.json_schema import JsonSchemaValue, models_json_schema

from common.platform.http import PROBES, Check, Probes
from common.platform.routes import Answer, Body, Owner, Parameter, Route, add_routes

JSON = "application/json"
YAML = "application/yaml"
DOCUMENT_PATH = "/openapi.json"

Mode = Literal["validation", "serialization"]
Refs = Mapping[tuple[Any, Mode], JsonSchemaValue]


@dataclass(frozen=True)
class _Document:
    body: bytes

    async def serve(self, _: web.Request) -> web.Response:
        return web.Response(body=self.body, content_type=JSON)


_DOCUMENT_ROUTE: Route[_Document] = Route(
    "GET",
    DOCUMENT_PATH,
    "openapi",
    _Document.serve,
    "This document",
    {200: Answer("The OpenAPI document.", media={JSON: {"schema": {"type": "object"}}})},
    open=True,
)


@dataclass(frozen=True)
class HttpApi(Generic[Owner]):
    """A service's API: its routes, and how it describes itself and its refusals."""

    title: str
    version: str
    description: str
    routes: Sequence[Route[Owner]]
    #: The API's error answers by status, each route naming those it may give; 401 goes on every
    #: route that wants the token.
    refusals: Mapping[int, Answer]
    #: Alternatives of the security requirement; ``{}`` among them makes the token optional.
    security: Sequence[Mapping[str, list[str]]] = field(default_factory=lambda: [{"bearer": []}])

    def serve(self, app: web.Application, owner: Owner, checks: dict[str, Check]) -> None:
        """Serve the routes with *owner*, the probes with *checks*, and the document."""
        add_routes(app, self.routes, owner)
        add_routes(app, PROBES, Probes(checks))
        add_routes(app, [_DOCUMENT_ROUTE], _Document(json.dumps(self.document()).encode()))

    def document(self) -> dict[str, Any]:
        routes: list[Route[Any]] = [*self.routes, *PROBES, _DOCUMENT_ROUTE]
        refs, schemas = self._schemas(routes)
        paths: dict[str, dict[str, Any]] = {}
        for route in routes:
            path = re.sub(r"\{(\w+):[^}]*\}", r"{\1}", route.path)
            paths.setdefault(path, {})[route.method.lower()] = self._operation(route, refs)
        return {
            "openapi": "3.1.0",
            "info": {"title": self.title, "version": self.version, "description": self.description},
            "paths": paths,
            "components": {
                "schemas": schemas,
                "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            },
            "security": [dict(requirement) for requirement in self.security],
        }

    def _schemas(self, routes: Sequence[Route[Any]]) -> tuple[Refs, dict[str, Any]]:
        """Every model the routes take or answer with, nested ones under ``components/schemas``."""
        wanted: dict[tuple[type[BaseModel], Mode], None] = {}
        for route in routes:
            if route.body is not None:
                wanted[(route.body.model, "validation")] = None
            for answer in [*route.answers.values(), *(self.refusals[s] for s in self._refused(route))]:
                if answer.model is not None:
                    wanted[(answer.model, "serialization")] = None
        refs, top = models_json_schema(list(wanted), ref_template="#/components/schemas/{model}")
        return refs, dict(top.get("$defs", {}))

    def _refused(self, route: Route[Any]) -> list[int]:
        return list(route.refusals) if route.open else [401, *route.refusals]

    def _operation(self, route: Route[Any], refs: Refs) -> dict[str, Any]:
        undocumented = set(re.findall(r"\{(\w+)", route.path)) - {
            parameter.name for parameter in route.parameters if parameter.where == "path"
        }
        if undocumented:
            raise ValueError(f"{route.operation_id}: path parameter {sorted(undocumented)} is not documented")
        operation: dict[str, Any] = {"operationId": route.operation_id, "summary": route.summary}
        if route.open:
            operation["security"] = []
        if route.parameters:
            operation["parameters"] = [_parameter(parameter) for parameter in route.parameters]
        if route.body is not None:
            operation["requestBody"] = _body(route.body, refs)
        responses = {str(status): _response(answer, refs) for status, answer in route.answers.items()}
        for status in self._refused(route):
            responses[str(status)] = _response(self.refusals[status], refs)
        operation["responses"] = responses
        return operation


def _parameter(parameter: Parameter) -> dict[str, Any]:
    described: dict[str, Any] = {
        "name": parameter.name,
        "in": parameter.where,
        "required": parameter.where == "path",
        "description": parameter.description,
        "schema": parameter.schema,
    }
    if parameter.example is not None:
        described["example"] = parameter.example
    return described


def _body(body: Body, refs: Refs) -> dict[str, Any]:
    media: dict[str, Any] = {"schema": refs[(body.model, "validation")]}
    if body.example is not None:
        media["examples"] = {"example": {"value": body.example}}
    described: dict[str, Any] = {
        "required": body.required,
        "content": {JSON: media, YAML: media} if body.yaml else {JSON: media},
    }
    if body.description:
        described["description"] = body.description
    return described


def _response(answer: Answer, refs: Refs) -> dict[str, Any]:
    described: dict[str, Any] = {"description": answer.description}
    if answer.headers:
        described["headers"] = {
            name: {"required": True, "schema": {"type": "string"}, "description": meaning}
            for name, meaning in answer.headers.items()
        }
    content = dict(answer.media)
    if answer.model is not None:
        content[JSON] = {"schema": refs[(answer.model, "serialization")]}
    if content:
        described["content"] = content
    return described
