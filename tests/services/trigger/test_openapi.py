"""The trigger's OpenAPI document, and the live API fuzzed against it.

The trigger runs once for the module, in a thread of its own (see
``tests.fuzzing``), with its SQLite store under the module's directory, an
in-process broker and an API token. Every answer is checked against the
schema the document gives it, and those schemas name every key.
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import requests
import schemathesis
from pydantic import SecretStr
from schemathesis import checks

from common.contracts.flows import Flow
from common.contracts.messages import JobRequest
from common.contracts.topology import Topology
from common.platform.blobs.folder import FolderBlobStore
from common.platform.broker.memory import InProcessBroker
from common.platform.config import Settings
from common.platform.connections import Connections
from common.platform.runtime import Runtime
from common.platform.webhooks import WebhookPolicy
from services.trigger import service as trigger
from services.trigger.alert_store import AlertStore
from services.trigger.api import API, create_app
from services.trigger.bodies import EXAMPLE_FLOW, EXAMPLE_JOB, EXAMPLE_RUN, EXAMPLE_SILENCE, SilenceRequest
from services.trigger.silences import SilenceStore
from services.trigger.store import FlowStore
from tests.conftest import random_name
from tests.fuzzing import FUZZ_SETTINGS, Live, live_service, loose_answers

TOKEN = "fuzz-token"
AUTHORIZED = {"Authorization": f"Bearer {TOKEN}"}
YAML = "application/yaml"
HISTORY_URL = "http://history.example:8081"

#: The coverage phase tries every boundary of every field in turn: for a flow document that is
#: over two thousand requests per operation, too slow for every test run; the fuzzing phase's
#: random documents still reach those operations, and the coverage phase the smaller ones.
FUZZING = schemathesis.Config.from_dict(
    {
        "operations": [
            {
                "include-operation-id": ["createFlow", "putFlow", "validateFlow"],
                "phases": {"coverage": {"enabled": False}},
            }
        ]
    }
)
document = API.document
schema = schemathesis.openapi.from_dict(document(), config=FUZZING)


def _settings(data_dir: Path) -> Settings:
    return Settings(
        data_dir=data_dir,
        trigger_port=0,
        api_token=SecretStr(TOKEN),
        webhook_allowed_hosts=["hooks.example.com"],
        minimum_schedule_seconds=300,
    )


def _runtime(data_dir: Path) -> Runtime:
    connections = Connections()
    connections.add_local("local", "http://127.0.0.1:31415")
    return Runtime(
        settings=_settings(data_dir),
        broker=InProcessBroker(Topology(random_name("trigger-openapi-"))),
        blobs=FolderBlobStore(data_dir / "blobs"),
        connections=connections,
        history_url=HISTORY_URL,
    )


@asynccontextmanager
async def _serving(data_dir: Path) -> AsyncIterator[str]:
    runtime = _runtime(data_dir)
    async with runtime, trigger.running(runtime) as server:
        yield server.url


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    data_dir = tmp_path_factory.mktemp("trigger-openapi")
    with live_service(functools.partial(_serving, data_dir), "trigger") as service:
        yield service


# -- the document ------------------------------------------------------------


def _refs(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref" and isinstance(value, str):
                yield value
            elif key == "mapping" and isinstance(value, dict):
                yield from value.values()
            else:
                yield from _refs(value)
    elif isinstance(node, list):
        for item in node:
            yield from _refs(item)


def _resolve(doc: dict[str, Any], ref: str) -> Any:
    assert ref.startswith("#/"), ref
    node: Any = doc
    for part in ref[2:].split("/"):
        node = node[part.replace("~1", "/").replace("~0", "~")]
    return node


def test_the_document_is_valid_openapi_3_1() -> None:
    doc = document()

    schemathesis.openapi.from_dict(doc).validate()
    assert doc["openapi"].startswith("3.1.")
    assert doc["info"]["version"] == "0.1.0"
    assert "servers" not in doc


def test_flow_edits_document_their_etag_and_if_match() -> None:
    paths = document()["paths"]
    flow = paths["/v1/flows/{name}"]

    assert "ETag" in flow["get"]["responses"]["200"]["headers"]
    assert set(flow["put"]["responses"]["200"]["headers"]) >= {"ETag"}
    for method in ("put", "delete"):
        names = {(p["name"], p["in"]) for p in flow[method]["parameters"]}
        assert ("If-Match", "header") in names
        assert "name the version it is at" in flow[method]["responses"]["412"]["description"]


def test_every_reference_resolves_inside_components() -> None:
    doc = document()

    refs = set(_refs(doc))

    assert refs
    assert not [ref for ref in refs if "$defs" in ref]
    for ref in refs:
        assert ref.startswith("#/components/"), ref
        assert isinstance(_resolve(doc, ref), dict), ref


async def test_every_route_of_the_app_is_documented(tmp_path: Path) -> None:
    runtime = _runtime(tmp_path)
    url = runtime.settings.resolved_database_url
    store, alerts, silences = FlowStore(url), AlertStore(url), SilenceStore(url)
    try:
        app = create_app(runtime, store, WebhookPolicy(named={}, allowed_hosts=[]), alerts, silences)
    finally:
        for opened in (store, alerts, silences):
            await opened.close()
    served = {
        (route.resource.canonical, route.method.lower())
        for route in app.router.routes()
        if route.resource is not None and route.method != "HEAD"
    }

    documented = {
        (path, method)
        for path, item in document()["paths"].items()
        for method in item
        if method != "parameters"
    }

    assert served == documented


def test_every_json_answer_names_all_its_keys() -> None:
    assert loose_answers(document()) == []


def test_the_service_serves_the_document_without_a_token(live: Live) -> None:
    response = live.session.get(f"{live.url}/openapi.json", timeout=10)

    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("application/json")
    assert response.json() == document()


def test_the_rest_of_the_api_still_wants_the_token(live: Live) -> None:
    case = schema["/v1/flows"]["GET"].Case()

    response = case.call(base_url=live.url, session=live.session)

    assert response.status_code == 401
    case.validate_response(response)


def test_the_examples_are_requests_the_models_accept() -> None:
    Flow.model_validate(EXAMPLE_FLOW)
    JobRequest.model_validate(EXAMPLE_JOB)
    SilenceRequest.model_validate(EXAMPLE_SILENCE)


# -- documented answers to requests that succeed ------------------------------


def _answer(
    live: Live,
    method: str,
    path: str,
    *,
    name: str | None = None,
    body: Any = None,
    media_type: str = "application/json",
    headers: dict[str, str] | None = None,
    path_parameters: dict[str, str] | None = None,
    query: dict[str, str] | None = None,
) -> requests.Response:
    """One request through the document, its answer checked against the document."""
    sent: dict[str, Any] = {} if body is None else {"body": body, "media_type": media_type}
    if name is not None:
        path_parameters = {"name": name, **(path_parameters or {})}
    case = schema[path][method].Case(path_parameters=path_parameters, headers=headers, query=query, **sent)
    response = case.call(base_url=live.url, session=live.session, headers=AUTHORIZED, timeout=10)
    case.validate_response(response, headers=AUTHORIZED)
    return response


def test_a_flow_is_saved_read_listed_run_and_deleted_as_documented(live: Live) -> None:
    name = random_name("flow-")
    flow = {**EXAMPLE_FLOW, "name": name}
    on_demand = {key: value for key, value in flow.items() if key != "trigger"}

    assert _answer(live, "POST", "/v1/flows", body=flow).status_code == 201
    assert _answer(live, "POST", "/v1/flows", body=flow).status_code == 409
    replaced = _answer(live, "PUT", "/v1/flows/{name}", name=name, body=on_demand, media_type=YAML)
    assert (replaced.status_code, replaced.json()["version"]) == (200, 2)
    assert _answer(live, "GET", "/v1/flows/{name}", name=name).json()["trigger"] == "manual"
    assert name in [view["name"] for view in _answer(live, "GET", "/v1/flows").json()["flows"]]
    key = {"Idempotency-Key": random_name()}
    first = _answer(live, "POST", "/v1/flows/{name}/runs", name=name, body=EXAMPLE_RUN, headers=key)
    again = _answer(live, "POST", "/v1/flows/{name}/runs", name=name, body=EXAMPLE_RUN, headers=key)
    assert (first.status_code, again.status_code) == (202, 202)
    assert again.json() == {**first.json(), "repeated": True}
    assert _answer(live, "POST", "/v1/flows/{name}/runs", name=name).status_code == 202
    assert _answer(live, "DELETE", "/v1/flows/{name}", name=name).status_code == 204
    assert _answer(live, "GET", "/v1/flows/{name}", name=name).status_code == 404


def test_a_flows_versions_are_listed_read_diffed_and_restored_as_documented(live: Live) -> None:
    name = random_name("flow-")
    flow = {**EXAMPLE_FLOW, "name": name}
    assert _answer(live, "PUT", "/v1/flows/{name}", name=name, body=flow).status_code == 201
    changed = {**flow, "description": "changed"}
    assert _answer(live, "PUT", "/v1/flows/{name}", name=name, body=changed).status_code == 200
    versions = {"version": "1"}

    listed = _answer(live, "GET", "/v1/flows/{name}/versions", name=name)
    one = _answer(live, "GET", "/v1/flows/{name}/versions/{version}", name=name, path_parameters=versions)
    diffed = _answer(live, "GET", "/v1/flows/{name}/diff", name=name, query={"from": "1", "to": "2"})
    # Accept is no parameter of the document: the other media are asked for directly.
    as_yaml = live.session.get(
        f"{live.url}/v1/flows/{name}/versions/1", headers={**AUTHORIZED, "Accept": YAML}, timeout=10
    )
    as_text = live.session.get(
        f"{live.url}/v1/flows/{name}/diff?from=1&to=2",
        headers={**AUTHORIZED, "Accept": "text/plain"},
        timeout=10,
    )
    restored = _answer(
        live, "POST", "/v1/flows/{name}/versions/{version}/restore", name=name, path_parameters=versions
    )

    assert [entry["version"] for entry in listed.json()["versions"]] == [2, 1]
    assert one.json()["document"]["name"] == name
    assert as_yaml.headers["Content-Type"].startswith(YAML)
    assert as_yaml.text == one.json()["definition"]
    assert "+description: changed" in diffed.json()["lines"]
    assert "+description: changed" in as_text.text.splitlines()
    assert (restored.status_code, restored.json()["version"]) == (200, 3)


def test_a_scheduled_flow_shows_its_next_fire_as_documented(live: Live) -> None:
    name = random_name("flow-")

    created = _answer(live, "PUT", "/v1/flows/{name}", name=name, body={**EXAMPLE_FLOW, "name": name})

    fetched = _answer(live, "GET", "/v1/flows/{name}", name=name)

    assert created.status_code == 201
    assert created.json()["next_fire"]
    assert "next_fires" not in created.json()
    assert len(fetched.json()["next_fires"]) == 5


def test_a_job_is_accepted_as_documented(live: Live) -> None:
    assert _answer(live, "POST", "/v1/jobs", body=EXAMPLE_JOB).status_code == 202


def test_a_silence_is_set_read_listed_and_ended_and_a_flows_alerts_answer_as_documented(live: Live) -> None:
    name = random_name("flow-")
    flow = {
        "name": name,
        "connection": "local",
        "database": "Samples",
        "steps": [
            {
                "id": "deadly",
                "action": "run_query",
                "query": "StormEvents",
                "alert": {"key_columns": ["EventId"]},
            }
        ],
    }
    assert _answer(live, "PUT", "/v1/flows/{name}", name=name, body=flow).status_code == 201
    silence = {**EXAMPLE_SILENCE, "flow": name}

    created = _answer(live, "POST", "/v1/silences", body=silence)
    assert created.status_code == 201
    one = {"id": created.json()["id"]}
    assert created.headers["location"] == [f"/v1/silences/{one['id']}"]
    assert _answer(live, "GET", "/v1/silences/{id}", path_parameters=one).json()["state"] == "active"
    listed = _answer(live, "GET", "/v1/silences", query={"flow": name, "state": "all", "limit": "5"})
    assert [found["id"] for found in listed.json()["silences"]] == [one["id"]]
    alerts = _answer(live, "GET", "/v1/flows/{name}/alerts", name=name).json()
    assert ([alert["step"] for alert in alerts["alerts"]], alerts["silences"]) == (
        ["deadly"],
        [created.json()],
    )
    assert _answer(live, "DELETE", "/v1/silences/{id}", path_parameters=one).status_code == 204
    assert _answer(live, "DELETE", "/v1/silences/{id}", path_parameters=one).status_code == 409
    assert _answer(live, "GET", "/v1/silences/{id}", path_parameters={"id": "nope"}).status_code == 404
    assert _answer(live, "GET", "/v1/flows/{name}/alerts", name=random_name("flow-")).status_code == 404
    assert _answer(live, "POST", "/v1/silences", body={**silence, "step": "mail"}).status_code == 400


def test_health_readiness_and_connections_answer_as_documented(live: Live) -> None:
    assert _answer(live, "GET", "/healthz").status_code == 200
    assert _answer(live, "GET", "/readyz").json()["ready"] is True
    assert _answer(live, "GET", "/v1/connections").json() == {"connections": ["local"]}


# -- bodies the fuzzing found faults with ------------------------------------

#: A "billion laughs": nine levels of ten aliases each, 10**9 items once expanded.
BOMB = "a: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{name}: &{name} [{', '.join([f'*{inner}'] * 10)}]\n" for inner, name in itertools.pairwise("abcdefghi")
)


@pytest.mark.parametrize(
    ("body", "content_type", "problem"),
    [
        pytest.param(b'{"name": "\xb0"}', "application/json", "not valid utf-8", id="not-utf-8"),
        pytest.param(b"{}", "application/json; charset=klingon", "charset 'klingon'", id="unknown-charset"),
        pytest.param(BOMB.encode(), YAML, "alias *a is not accepted", id="yaml-bomb"),
        pytest.param(b"a: " + b"[" * 100_000, YAML, "nested deeper than 64 levels", id="deep-yaml"),
        pytest.param(b"[" * 65 + b"]" * 65, "application/json", "nested deeper than 64", id="deep-json"),
        pytest.param(b"[" * 100_000, "application/json", "nested deeper than 64", id="bottomless-json"),
        pytest.param(b"name: " + b"9" * 5000, YAML, "cannot be read", id="huge-yaml-integer"),
        pytest.param(b'{"enabled": NaN}', "application/json", "must be finite", id="json-nan"),
        pytest.param(b'{"enabled": 1e999}', "application/json", "must be finite", id="json-overflow"),
        pytest.param(b"enabled: .inf", YAML, "must be finite", id="yaml-infinity"),
    ],
)
def test_a_body_that_cannot_be_read_is_refused_naming_the_problem(
    live: Live, body: bytes, content_type: str, problem: str
) -> None:
    name = random_name("flow-")
    saved = live.session.put(
        f"{live.url}/v1/flows/{name}", json={**EXAMPLE_FLOW, "name": name}, headers=AUTHORIZED, timeout=10
    )
    assert saved.status_code == 201, saved.text

    for path in ("/v1/flows", "/v1/jobs", f"/v1/flows/{name}/runs"):
        response = live.session.post(
            f"{live.url}{path}",
            data=body,
            headers={**AUTHORIZED, "Content-Type": content_type},
            timeout=10,
        )

        assert response.status_code == 400, (path, response.text)
        error = response.json()["error"]
        assert error["code"] == "InvalidRequest"
        assert problem in error["message"]


# -- fuzzing -----------------------------------------------------------------


#: Checks of promises the document does not make. A schema-valid request may still be refused:
#: the document cannot say which connections the operator configured, nor the rules that span
#: fields (a webhook step names a webhook or a url). And a request the schema rejects may be
#: accepted: the models coerce what is unambiguous (``0`` to ``false``, ``"10"`` to ``10``).
NOT_PROMISED = [checks.positive_data_acceptance, checks.negative_data_rejection]


# Generated at collection, which xdist's workers do not do: run in one process (scripts/test.sh).
@pytest.mark.serial
@schema.parametrize()
@FUZZ_SETTINGS
def test_the_api_answers_every_generated_request_as_documented(case: schemathesis.Case, live: Live) -> None:
    response = case.call(base_url=live.url, session=live.session, headers=AUTHORIZED, timeout=10)

    # Every other check, the body against its documented schema among them.
    case.validate_response(response, headers=AUTHORIZED, excluded_checks=NOT_PROMISED)
