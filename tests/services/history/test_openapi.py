"""The history API's OpenAPI document: valid, complete, and true of a live service under fuzzing.

The history runs once for the module, in a thread of its own (see
``tests.fuzzing``), with a seeded run; every answer is checked against the
schema the document gives it, and those schemas name every key.
"""

from __future__ import annotations

import datetime as dt
import functools
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from pydantic import SecretStr
from schemathesis import checks

from common.contracts.messages import (
    SERVICE_OF,
    RunInfo,
    StatusEvent,
    Step,
    StepKind,
    StepStatus,
    TriggerKind,
)
from common.contracts.topology import Topology
from common.platform.blobs.folder import FolderBlobStore
from common.platform.broker.memory import InProcessBroker
from common.platform.config import Settings
from common.platform.connections import Connections
from common.platform.runtime import Runtime
from services.history import service as history
from services.history.api import API, create_app
from services.history.dead_letters import DeadLetterStore
from services.history.store import HistoryStore
from tests.fuzzing import Live, live_service, loose_answers

# The kinds of a run without scope or alert steps, in itinerary order.
#: A run's steps from its start to its record, as a flow of a query, its chart and an email has them.
KINDS = [StepKind.TRIGGER, StepKind.QUERY, StepKind.RENDER, StepKind.NOTIFY, StepKind.RECORD]

TOKEN = "fuzz-token"
AUTHORIZED = {"Authorization": f"Bearer {TOKEN}"}
SEEDED_RUN = "seeded"

document = API.document
schema = schemathesis.openapi.from_dict(document())


def _runtime(data_dir: Path) -> Runtime:
    return Runtime(
        settings=Settings(data_dir=data_dir, history_port=0, api_token=SecretStr(TOKEN)),
        broker=InProcessBroker(Topology("history-openapi")),
        blobs=FolderBlobStore(data_dir / "blobs"),
        connections=Connections(),
    )


async def _seed(store: HistoryStore) -> None:
    submitted = dt.datetime.now(dt.UTC) - dt.timedelta(hours=1)
    itinerary = [Step(id=kind.value, kind=kind) for kind in KINDS]
    info = RunInfo(
        flow="storms",
        trigger=TriggerKind.MANUAL,
        connection="local",
        database="Samples",
        parameters={"state": "TEXAS"},
        itinerary=itinerary,
        submitted_at=submitted,
    )
    for index, kind in enumerate(KINDS):
        at = submitted + dt.timedelta(seconds=index)
        await store.apply(
            StatusEvent(
                run_id=SEEDED_RUN,
                step_id=kind.value,
                kind=kind,
                service=SERVICE_OF[kind],
                status=StepStatus.SUCCEEDED,
                started_at=at,
                finished_at=at + dt.timedelta(milliseconds=300),
                row_count=3 if kind is StepKind.QUERY else None,
                detail={"text": "StormEvents | take 3", "parameters": {}} if kind is StepKind.QUERY else {},
                run=info if kind is StepKind.TRIGGER else None,
            )
        )


@asynccontextmanager
async def _serving(data_dir: Path) -> AsyncIterator[str]:
    runtime = _runtime(data_dir)
    async with runtime, history.running(runtime) as server:
        store = HistoryStore(runtime.settings.resolved_database_url)
        try:
            await _seed(store)
        finally:
            await store.close()
        yield server.url


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    data_dir = tmp_path_factory.mktemp("history-openapi")
    with live_service(functools.partial(_serving, data_dir), "history") as service:
        yield service


def test_the_document_is_valid_openapi_3_1() -> None:
    doc = document()

    schemathesis.openapi.from_dict(doc).validate()
    assert doc["openapi"] == "3.1.0"
    assert all(ref.startswith("#/components/schemas/") for ref in _refs(doc))


def _refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        return [ref for key, value in node.items() for ref in ([value] if key == "$ref" else _refs(value))]
    if isinstance(node, list):
        return [ref for item in node for ref in _refs(item)]
    return []


async def test_every_api_route_is_documented(tmp_path: Path) -> None:
    runtime = _runtime(tmp_path)
    url = f"sqlite+aiosqlite:///{tmp_path / 'h.db'}"
    store, letters = HistoryStore(url), DeadLetterStore(url)
    try:
        app = create_app(runtime, store, letters)
    finally:
        await letters.close()
        await store.close()
    api = {"/openapi.json", "/healthz", "/readyz", "/metrics"}
    served = {
        (route.resource.canonical.replace("{key:.+}", "{key}"), route.method.lower())
        for route in app.router.routes()
        if route.resource is not None
        and route.method != "HEAD"
        and (route.resource.canonical.startswith("/v1/") or route.resource.canonical in api)
    }

    documented = {(path, method) for path, item in document()["paths"].items() for method in item}

    assert served == documented


def test_every_json_answer_names_all_its_keys() -> None:
    assert loose_answers(document()) == []


def test_the_document_is_served_without_a_token_and_the_api_wants_one(live: Live) -> None:
    response = live.session.get(f"{live.url}/openapi.json", timeout=10)
    assert response.status_code == 200
    assert response.json() == document()

    refused = live.session.get(f"{live.url}/v1/runs", timeout=10)
    assert refused.status_code == 401
    schema["/v1/runs"]["GET"].Case().validate_response(refused)


def test_a_real_run_matches_its_documented_shape(live: Live) -> None:
    for path, operation in [(f"/v1/runs/{SEEDED_RUN}", "/v1/runs/{run_id}"), ("/v1/runs", "/v1/runs")]:
        response = live.session.get(f"{live.url}{path}", headers=AUTHORIZED, timeout=10)
        assert response.status_code == 200
        case = schema[operation]["GET"].Case(path_parameters={"run_id": SEEDED_RUN})
        case.validate_response(response)
    response = live.session.get(
        f"{live.url}/v1/flows/storms/stats?window=24h", headers=AUTHORIZED, timeout=10
    )
    assert response.json()["runs"] == 1
    schema["/v1/flows/{name}/stats"]["GET"].Case(path_parameters={"name": "storms"}).validate_response(
        response
    )


# Generated at collection, which xdist's workers do not do: run in one process (scripts/test.sh).
@pytest.mark.serial
@schema.parametrize()
@settings(max_examples=25, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
def test_the_api_answers_every_generated_request_as_documented(case: schemathesis.Case, live: Live) -> None:
    response = case.call(base_url=live.url, session=live.session, headers=AUTHORIZED, timeout=10)

    # Every check but one, the body against its documented schema among them. A request the schema
    # allows may still be refused: most generated run ids name no run.
    case.validate_response(response, headers=AUTHORIZED, excluded_checks=[checks.positive_data_acceptance])
