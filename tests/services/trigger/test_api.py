"""The job API over real HTTP, with the in-process broker behind it."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from pydantic import SecretStr

from common.contracts.errors import ConfigurationError
from common.contracts.messages import RunMessage, StatusEvent, StepKind, StepStatus
from common.contracts.topology import QueueSpec, Topology
from common.platform.blobs.folder import FolderBlobStore
from common.platform.broker.interface import Delivery
from common.platform.broker.memory import InProcessBroker
from common.platform.config import Settings
from common.platform.connections import Connections
from common.platform.runtime import Runtime
from services.trigger import service as trigger

JOB: dict[str, Any] = {
    "connection": "local",
    "database": "Samples",
    "query": "StormEvents | summarize Events = count() by State",
    "parameters": {"min_damage": 10},
    "chart": "piechart",
    "email": {"to": ["team@example.com"], "subject": "Storms", "importance": "high"},
}


async def next_body(broker: InProcessBroker, queue: QueueSpec) -> bytes:
    """The first message waiting in *queue*."""
    first: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()

    async def take(delivery: Delivery) -> None:
        if not first.done():
            first.set_result(delivery.body)

    await broker.consume(queue, take)
    return await asyncio.wait_for(first, 5)


class Api:
    def __init__(self, url: str, broker: InProcessBroker) -> None:
        self.url = url
        self.broker = broker

    async def post(self, body: object, headers: dict[str, str] | None = None) -> tuple[int, Any, Any]:
        data = body if isinstance(body, str) else json.dumps(body)
        async with (
            aiohttp.ClientSession() as session,
            session.post(
                f"{self.url}/v1/jobs",
                data=data,
                headers={"Content-Type": "application/json", **(headers or {})},
            ) as response,
        ):
            return response.status, await response.json(), response.headers


async def start_api(tmp_path: Path, **settings: Any) -> AsyncIterator[Api]:
    config = Settings(data_dir=tmp_path, trigger_port=0, **settings)
    connections = Connections()
    connections.add_local("local", "http://127.0.0.1:31415")
    broker = InProcessBroker(Topology("trigger-test"))
    runtime = Runtime(
        settings=config, broker=broker, blobs=FolderBlobStore(tmp_path / "blobs"), connections=connections
    )
    runtime.history_url = "http://history.example:8081"
    async with runtime, trigger.running(runtime) as server:
        yield Api(server.url, broker)


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[Api]:
    async for started in start_api(tmp_path):
        yield started


async def test_an_accepted_job_is_queued_for_its_query_step(api: Api) -> None:
    status, body, headers = await api.post(JOB)

    assert status == 202
    run_id = body["run_id"]
    assert headers["Location"] == f"http://history.example:8081/v1/runs/{run_id}"
    topology = api.broker.topology
    message = RunMessage.model_validate_json(await next_body(api.broker, topology.step_queue(StepKind.QUERY)))
    assert message.run_id == run_id
    assert message.step_id == "query"
    assert message.context.parameters == {"min_damage": 10}
    assert "trigger" in message.outputs
    # The trigger step reports once: it succeeded, and this is the run.
    assert api.broker.depth(topology.status_queue) == 1
    first = StatusEvent.model_validate_json(await next_body(api.broker, topology.status_queue))
    assert first.step_id == "trigger"
    assert first.status is StepStatus.SUCCEEDED
    assert first.detail == {"trigger": "job"}
    assert first.run is not None
    assert (first.run.flow, first.run.trigger) == ("adhoc", "job")


async def test_a_control_command_under_query_points_to_control_command(api: Api) -> None:
    status, body, _ = await api.post({**JOB, "query": "  .show tables"})

    assert status == 400
    assert "control_command" in body["error"]["message"]
    assert body["error"]["fields"][0]["field"] == "query" or "query" in body["error"]["message"]


async def test_an_unknown_connection_is_refused_naming_the_field(api: Api) -> None:
    status, body, _ = await api.post({**JOB, "connection": "prod"})

    assert status == 400
    assert body["error"]["code"] == "UnknownConnection"
    assert body["error"]["fields"] == [{"field": "connection", "message": "'prod' is not configured"}]


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"email": {"subject": "x"}}, "email.to"),
        ({"email": {"to": ["not-an-address"], "subject": "x"}}, "email.to[0]"),
        ({"email": {"to": ["a@example.com"], "subject": "a\r\nBcc: victim@example.com"}}, "email.subject"),
        ({"chart": "radar"}, "chart"),
        ({"parameters": {"bad name": 1}}, "parameters"),
        ({"cluster": "https://evil.example.com"}, "cluster"),
    ],
)
async def test_malformed_jobs_are_refused_naming_the_field(
    api: Api, change: dict[str, Any], field: str
) -> None:
    status, body, _ = await api.post({**JOB, **change})

    assert status == 400
    assert field in [f["field"] for f in body["error"]["fields"]]
    assert api.broker.depth(api.broker.topology.step_queue(StepKind.QUERY)) == 0


async def test_a_body_that_is_not_json_is_refused(api: Api) -> None:
    status, body, _ = await api.post("{not json")
    assert status == 400
    assert "not valid JSON" in body["error"]["message"]


async def test_a_token_is_required_when_one_is_configured(tmp_path: Path) -> None:
    async for api in start_api(tmp_path, api_token=SecretStr("t0ken")):
        status, body, _ = await api.post(JOB)
        assert status == 401
        assert body["error"]["code"] == "Unauthorized"
        status, _, _ = await api.post(JOB, headers={"Authorization": "Bearer wrong"})
        assert status == 401
        status, _, _ = await api.post(JOB, headers={"Authorization": "Bearer t0ken"})
        assert status == 202


async def test_listening_beyond_loopback_without_a_token_refuses_to_start(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="ADXFLOW_API_TOKEN"):
        async for _ in start_api(tmp_path, trigger_host="0.0.0.0"):
            pass


async def test_a_repeated_idempotency_key_starts_the_job_once(api: Api) -> None:
    headers = {"Idempotency-Key": "nightly-2026-11-27"}
    first_status, first, _ = await api.post(JOB, headers=headers)
    second_status, second, _ = await api.post(JOB, headers=headers)

    assert (first_status, second_status) == (202, 202)
    assert first["run_id"] == second["run_id"]
    assert (first["repeated"], second["repeated"]) == (False, True)
    assert api.broker.depth(api.broker.topology.step_queue(StepKind.QUERY)) == 1
