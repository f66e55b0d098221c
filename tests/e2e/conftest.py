"""The whole system in one process for end-to-end tests: the same services as
deployed, on the in-process broker or the machine's RabbitMQ, with a real SMTP
server, the local Kusto endpoint and a webhook receiver over real HTTP."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from aiohttp import web
from azure.core.exceptions import ResourceNotFoundError
from azure.storage.blob.aio import BlobServiceClient
from pydantic import SecretStr

from common.contracts.topology import Topology
from common.platform.broker.rabbitmq import RabbitBroker
from common.platform.config import Settings
from services.embedded.hook_outbox import HookOutbox
from services.embedded.kusto.database import ensure_database
from services.embedded.outbox import Outbox
from services.launcher.system import embedded_system


@pytest.fixture(scope="session")
def sample_database(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return ensure_database(tmp_path_factory.mktemp("samples"))


@dataclass
class Hooks:
    """Webhook posts received, and a way to wait for them."""

    url: str
    received: list[tuple[dict[str, str], bytes]] = field(default_factory=list)
    arrived: asyncio.Event = field(default_factory=asyncio.Event)
    #: A body holding one of these is refused with 400 (and not kept in :attr:`received`).
    refusing: set[bytes] = field(default_factory=set)
    refused: list[bytes] = field(default_factory=list)


@dataclass
class System:
    trigger_url: str
    history_url: str
    smtp: Outbox
    session: aiohttp.ClientSession
    #: Recipients the SMTP server refuses: with one reply always, or with each reply of a list once.
    rejections: dict[str, tuple[int, str] | list[tuple[int, str]]]
    hooks: Hooks
    wait_until: Callable[..., Awaitable[None]]
    #: The local Kusto endpoint's cluster URL (the connection ``local``).
    kusto_url: str = ""
    #: Embedded mode's webhook outbox: where posts to webhook names not configured go.
    hook_outbox: HookOutbox | None = None

    async def submit(self, job: dict[str, Any]) -> dict[str, Any]:
        async with self.session.post(f"{self.trigger_url}/v1/jobs", json=job) as response:
            body: dict[str, Any] = await response.json()
            assert response.status == 202, body
            assert response.headers["Location"].endswith(f"/v1/runs/{body['run_id']}")
            return body

    async def save_flow(self, flow: dict[str, Any]) -> dict[str, Any]:
        async with self.session.put(f"{self.trigger_url}/v1/flows/{flow['name']}", json=flow) as response:
            body: dict[str, Any] = await response.json()
            assert response.status in (200, 201), body
            return body

    async def start_flow(self, name: str, **parameters: Any) -> dict[str, Any]:
        url = f"{self.trigger_url}/v1/flows/{name}/runs"
        async with self.session.post(url, json={"parameters": parameters}) as response:
            body: dict[str, Any] = await response.json()
            assert response.status == 202, body
            return body

    async def run(self, run_id: str) -> dict[str, Any] | None:
        """The run as history has it, or None while history has not heard of it yet."""
        async with self.session.get(f"{self.history_url}/v1/runs/{run_id}") as response:
            if response.status == 404:
                return None
            assert response.status == 200
            run: dict[str, Any] = await response.json()
            return run

    async def get(self, path: str) -> Any:
        async with self.session.get(f"{self.history_url}{path}") as response:
            assert response.status == 200, await response.text()
            return await response.json()

    async def post(self, path: str) -> tuple[int, Any]:
        async with self.session.post(f"{self.history_url}{path}") as response:
            return response.status, await response.json()

    async def runs_of(self, flow: str) -> list[dict[str, Any]]:
        async with self.session.get(f"{self.history_url}/v1/flows/{flow}/runs") as response:
            assert response.status == 200
            body: dict[str, Any] = await response.json()
            return list(body["runs"])

    async def finished(self, run_id: str, timeout: float = 60) -> dict[str, Any]:
        latest: dict[str, Any] = {}

        async def ended() -> bool:
            run = await self.run(run_id)
            if run is None:
                return False
            latest.update(run)
            return run["status"] in ("succeeded", "failed")

        await self.wait_until(ended, timeout=timeout, what=f"run {run_id} to finish")
        return latest


@pytest.fixture
async def hooks() -> AsyncIterator[Hooks]:
    received = Hooks(url="")

    async def receive(request: web.Request) -> web.Response:
        body = await request.read()
        if any(marker in body for marker in received.refusing):
            received.refused.append(body)
            return web.json_response({"ok": False}, status=400)
        received.received.append((dict(request.headers), body))
        received.arrived.set()
        return web.json_response({"ok": True})

    app = web.Application()
    app.router.add_post("/hook", receive)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    received.url = f"http://127.0.0.1:{runner.addresses[0][1]}/hook"
    try:
        yield received
    finally:
        await runner.cleanup()


@pytest.fixture
def operator_connections() -> dict[str, Any]:
    """The operator's connections file beside the local endpoint (``connections:``, ``webhooks:``);
    a test module overrides it to configure named webhooks or more connections. Empty: no file."""
    return {}


@pytest.fixture(params=["in_process", "rabbitmq"])
async def system(
    request: pytest.FixtureRequest,
    postgres_database: Callable[[], Any],
    tmp_path: Path,
    sample_database: Path,
    namespace: str,
    amqp_url: str,
    hooks: Hooks,
    operator_connections: dict[str, Any],
    wait_until: Callable[..., Awaitable[None]],
) -> AsyncIterator[System]:
    data_dir = tmp_path / "adxflow"
    data_dir.mkdir()
    shutil.copy(sample_database, data_dir / sample_database.name)
    rejections: dict[str, tuple[int, str] | list[tuple[int, str]]] = {}

    def reject(recipients: list[str]) -> tuple[int, str] | None:
        for recipient in recipients:
            reply = rejections.get(recipient)
            if isinstance(reply, list):
                if reply:
                    return reply.pop(0)
            elif reply is not None:
                return reply
        return None

    smtp = Outbox(tmp_path / "smtp", reject=reject)
    # "rabbitmq+postgres": the deployed column, history and flows in PostgreSQL.
    deployed = request.param.startswith("rabbitmq")
    settings = Settings(
        data_dir=data_dir,
        namespace=namespace,
        amqp_url=SecretStr(amqp_url) if deployed else None,
        trigger_port=0,
        history_port=0,
        embedded_smtp=False,
        smtp_host="127.0.0.1",
        webhook_allowed_hosts=["127.0.0.1"],
        retry_base_seconds=0.2,
        max_attempts=5,
        delivery_max_attempts=5,
    )
    if operator_connections:
        connections_file = tmp_path / "connections.yaml"
        connections_file.write_text(yaml.safe_dump(operator_connections))
        settings = settings.model_copy(update={"connections_file": connections_file})
    async with AsyncExitStack() as stack:
        await stack.enter_async_context(smtp)
        settings = settings.model_copy(update={"smtp_port": smtp.port})
        # @pytest.mark.blob_backend("azure"): blobs in a container named after the namespace, on Azurite.
        backend = request.node.get_closest_marker("blob_backend")
        if backend is not None and backend.args[0] == "azure":
            connection_string = request.getfixturevalue("azurite").connection_string
            settings = settings.model_copy(
                update={
                    "blob_backend": "azure",
                    "azure_storage_connection_string": SecretStr(connection_string),
                    "azure_storage_container": namespace,
                }
            )
            stack.push_async_callback(_delete_container, connection_string, namespace)
        if request.param == "rabbitmq+postgres":
            url = await stack.enter_async_context(postgres_database())
            settings = settings.model_copy(update={"database_url": SecretStr(url)})
        if deployed:
            stack.push_async_callback(_delete_topology, amqp_url, namespace)
        running = await stack.enter_async_context(embedded_system(settings))
        session = await stack.enter_async_context(aiohttp.ClientSession())
        yield System(
            running.trigger_url,
            running.history_url,
            smtp,
            session,
            rejections,
            hooks,
            wait_until,
            kusto_url=running.kusto.url,
            hook_outbox=running.hooks,
        )


async def _delete_container(connection_string: str, container: str) -> None:
    async with BlobServiceClient.from_connection_string(connection_string) as service:
        with contextlib.suppress(ResourceNotFoundError):
            await service.delete_container(container)


async def _delete_topology(url: str, namespace: str) -> None:
    async with RabbitBroker(url, Topology(namespace), connection_name="e2e-cleanup") as broker:
        await broker.delete_topology()
