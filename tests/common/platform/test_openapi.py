"""The OpenAPI document an HttpApi writes from its table, and schemathesis holding a live app to it.

The services' fuzz tests check every response against its documented schema;
here a throwaway app that answers what its document does not say shows that
check failing, so a passing fuzz run means something.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import schemathesis
from aiohttp import web
from pydantic import BaseModel, ConfigDict
from schemathesis import checks
from schemathesis.core.failures import FailureGroup

from common.platform.http import HttpServer
from common.platform.openapi import HttpApi
from common.platform.routes import Answer, Parameter, Route, absent_if_none
from tests.fuzzing import Live, live_service


class Thing(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    size: int
    note: str | None = absent_if_none("Said only when there is something to say.", maxLength=80)


async def _thing(_: object, request: web.Request) -> Thing:
    return Thing(name=request.match_info["name"], size=1)


def _api(*routes: Route[Any]) -> HttpApi[Any]:
    return HttpApi(
        title="things",
        version="1",
        description="A throwaway API.",
        routes=routes,
        refusals={
            401: Answer("A token is required.", headers={"WWW-Authenticate": "How to authenticate."}),
            404: Answer("No such thing."),
        },
    )


GET_THING = Route(
    "GET",
    "/things/{name}",
    "getThing",
    _thing,
    "One thing",
    {200: Answer("The thing.", Thing)},
    parameters=[Parameter("name", "path", "Its name.", {"type": "string", "pattern": "^[a-z]{1,8}$"})],
    refusals=(404,),
)
API = _api(GET_THING)


def test_the_document_holds_the_routes_the_probes_and_itself() -> None:
    doc = API.document()

    schemathesis.openapi.from_dict(doc).validate()
    operations = {(path, method) for path, item in doc["paths"].items() for method in item}
    assert operations == {
        ("/things/{name}", "get"),
        ("/healthz", "get"),
        ("/readyz", "get"),
        ("/metrics", "get"),
        ("/openapi.json", "get"),
    }


def test_a_route_that_wants_the_token_documents_401_and_an_open_one_needs_none() -> None:
    paths = API.document()["paths"]

    thing = paths["/things/{name}"]["get"]
    assert sorted(thing["responses"]) == ["200", "401", "404"]
    assert thing["responses"]["401"]["headers"]["WWW-Authenticate"]["required"] is True
    assert "security" not in thing
    assert paths["/healthz"]["get"]["security"] == []
    assert "401" not in paths["/healthz"]["get"]["responses"]
    assert "401" in paths["/metrics"]["get"]["responses"]


def test_a_field_left_out_when_none_is_documented_as_optional_and_never_null() -> None:
    schema = API.document()["components"]["schemas"]["Thing"]

    assert schema["required"] == ["name", "size"]
    assert schema["additionalProperties"] is False
    assert schema["properties"]["note"] == {
        "description": "Said only when there is something to say.",
        "maxLength": 80,
        "title": "Note",
        "type": "string",
    }


def test_a_route_whose_path_parameter_is_not_documented_cannot_be_described() -> None:
    undocumented = Route(
        "GET",
        "/things/{name}/{part}",
        "getPart",
        _thing,
        "A part",
        {200: Answer("It.", Thing)},
        parameters=GET_THING.parameters,
    )

    with pytest.raises(ValueError, match=r"getPart: path parameter \['part'\] is not documented"):
        _api(undocumented).document()


def test_a_regex_in_a_path_is_left_out_of_the_document() -> None:
    keyed = Route(
        "GET",
        "/blobs/{key:.+}",
        "getBlob",
        _thing,
        "A blob",
        {200: Answer("It.", Thing)},
        parameters=[Parameter("key", "path", "Its key.")],
    )

    assert "/blobs/{key}" in _api(keyed).document()["paths"]


# -- schemathesis against a throwaway app ------------------------------------


async def _drifted(request: web.Request) -> web.Response:
    """What the route answered before its model changed: a key the model does not have, a wrong type."""
    return web.json_response({"name": request.match_info["name"], "size": "large", "colour": "red"})


@asynccontextmanager
async def _serving(drifted: bool) -> AsyncIterator[str]:
    app = web.Application()
    if drifted:
        app.router.add_get("/things/{name}", _drifted)
    else:
        API.serve(app, None, {})
    async with HttpServer(app, "127.0.0.1", 0) as server:
        yield server.url


@pytest.fixture(scope="module")
def served() -> Iterator[Live]:
    with live_service(lambda: _serving(drifted=False), "things") as service:
        yield service


@pytest.fixture(scope="module")
def drifted() -> Iterator[Live]:
    with live_service(lambda: _serving(drifted=True), "drifted things") as service:
        yield service


def _checked(live: Live) -> None:
    case = schemathesis.openapi.from_dict(API.document())["/things/{name}"]["GET"].Case(
        path_parameters={"name": "teapot"}
    )
    response = case.call(base_url=live.url, session=live.session, timeout=10)
    case.validate_response(response, checks=[checks.response_schema_conformance])


def test_the_answer_of_the_table_matches_its_document(served: Live) -> None:
    _checked(served)


def test_an_answer_that_drifted_from_its_model_fails_the_schema_check(drifted: Live) -> None:
    with pytest.raises(FailureGroup) as failed:
        _checked(drifted)

    assert {failure.title for failure in failed.value.exceptions} == {"Response violates schema"}
    found = " ".join(str(failure) for failure in failed.value.exceptions)
    assert '"large" is not of type "integer"' in found
    assert "Additional properties" in found
