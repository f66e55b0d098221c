"""A route table served over real HTTP: it answers only what it documents, refusals as error bodies."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from pydantic import BaseModel, ConfigDict

from common.platform.http import HttpServer
from common.platform.routes import (
    Answer,
    FieldProblem,
    InvalidParameter,
    Parameter,
    Refusal,
    Reply,
    Route,
    absent_if_none,
    add_routes,
)


class Thing(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    note: str | None = absent_if_none("Said only when there is something to say.")
    size: int | None = None


class Other(BaseModel):
    name: str


@dataclass
class Things:
    async def thing(self, request: web.Request) -> Thing:
        return Thing(name=request.match_info["name"], note=request.query.get("note"))

    async def made(self, request: web.Request) -> Reply:
        return Reply(Thing(name="new"), status=201, headers={"Location": "/things/new"})

    async def gone(self, request: web.Request) -> Reply:
        return Reply(None, status=204)

    async def refused(self, request: web.Request) -> Thing:
        if "field" in request.query:
            raise Refusal(
                400,
                "name: too long",
                code="InvalidThing",
                fields=[FieldProblem(field="name", message="too long")],
            )
        raise InvalidParameter("limit", "must be an integer")

    async def wrong_model(self, request: web.Request) -> Other:
        return Other(name="not a thing")

    async def wrong_status(self, request: web.Request) -> Reply:
        return Reply(Thing(name="x"), status=202)

    async def no_location(self, request: web.Request) -> Reply:
        return Reply(Thing(name="x"), status=201)


_NAME = [Parameter("name", "path", "The thing.")]
_MADE = {201: Answer("Made.", Thing, headers={"Location": "The thing."})}

ROUTES: list[Route[Things]] = [
    Route("GET", "/things/{name}", "getThing", Things.thing, "One thing", {200: Answer("It.", Thing)}, _NAME),
    Route("POST", "/things", "makeThing", Things.made, "Make one", _MADE),
    Route("DELETE", "/things/{name}", "dropThing", Things.gone, "Drop one", {204: Answer("Gone.")}, _NAME),
    Route("GET", "/refused", "refused", Things.refused, "Always refuses", {200: Answer("It.", Thing)}),
    Route("GET", "/wrong-model", "wrongModel", Things.wrong_model, "Bug", {200: Answer("It.", Thing)}),
    Route("GET", "/wrong-status", "wrongStatus", Things.wrong_status, "Bug", {200: Answer("It.", Thing)}),
    Route("POST", "/no-location", "noLocation", Things.no_location, "Bug", _MADE),
]


@pytest.fixture
async def things() -> AsyncIterator[tuple[str, aiohttp.ClientSession]]:
    app = web.Application()
    add_routes(app, ROUTES, Things())
    async with HttpServer(app, "127.0.0.1", 0) as server, aiohttp.ClientSession() as session:
        yield server.url, session


async def _call(things: tuple[str, aiohttp.ClientSession], method: str, path: str) -> tuple[int, Any, Any]:
    url, session = things
    async with session.request(method, url + path) as response:
        body = await response.json() if response.content_type == "application/json" else await response.text()
        return response.status, body, response.headers


async def test_a_model_goes_on_the_wire_with_its_absent_fields_left_out(things: Any) -> None:
    assert (await _call(things, "GET", "/things/a"))[:2] == (200, {"name": "a", "size": None})
    assert (await _call(things, "GET", "/things/a?note=hi"))[:2] == (
        200,
        {"name": "a", "note": "hi", "size": None},
    )


async def test_a_reply_carries_its_status_headers_or_no_body(things: Any) -> None:
    status, body, headers = await _call(things, "POST", "/things")
    assert (status, body, headers["Location"]) == (201, {"name": "new", "size": None}, "/things/new")
    status, body, _ = await _call(things, "DELETE", "/things/a")
    assert (status, body) == (204, "")


async def test_a_refusal_is_an_error_body_that_names_the_field(things: Any) -> None:
    assert (await _call(things, "GET", "/refused"))[:2] == (
        400,
        {"error": {"code": "InvalidRequest", "message": "limit: must be an integer"}},
    )
    assert (await _call(things, "GET", "/refused?field"))[:2] == (
        400,
        {
            "error": {
                "code": "InvalidThing",
                "message": "name: too long",
                "fields": [{"field": "name", "message": "too long"}],
            }
        },
    )


@pytest.mark.parametrize("path", ["/wrong-model", "/wrong-status"])
async def test_an_answer_the_route_does_not_document_is_a_server_error(things: Any, path: str) -> None:
    assert (await _call(things, "GET", path))[0] == 500


def test_the_route_says_what_it_answered_and_does_not_document() -> None:
    by_id = {route.operation_id: route for route in ROUTES}

    with pytest.raises(TypeError, match="wrongModel answered 200 with Other, which it does not document"):
        by_id["wrongModel"].respond(Other(name="x"))
    with pytest.raises(TypeError, match="wrongStatus answered 202 with Thing"):
        by_id["wrongStatus"].respond(Reply(Thing(name="x"), status=202))
    with pytest.raises(TypeError, match="noLocation answered 201 with no Location header"):
        by_id["noLocation"].respond(Reply(Thing(name="x"), status=201))
    with pytest.raises(TypeError, match="dropThing answered 200 with a response of its own"):
        by_id["dropThing"].respond(web.Response(text="deleted"))


async def test_an_answer_without_a_documented_header_is_a_server_error(things: Any) -> None:
    assert (await _call(things, "POST", "/no-location"))[0] == 500
