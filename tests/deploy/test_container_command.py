"""The containers' commands, run here: every service of docker-compose.yml started
as its own process with the exact command and environment compose gives it, the
hosts rewritten to this machine's RabbitMQ, PostgreSQL, Azurite, an SMTP server
and a local Kusto endpoint seeded by the seed container's command. One flow goes
through them from the trigger API to the email and the run history."""

from __future__ import annotations

import asyncio
import email
import email.policy
import os
import signal
import sys
import uuid
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import duckdb
import pytest
import yaml

from common.contracts.topology import Topology
from common.platform.broker.rabbitmq import RabbitBroker
from services.embedded.kusto.endpoint import LocalKusto
from services.embedded.kusto.seed import DEFAULT_DATABASE
from services.embedded.outbox import Outbox
from tests.conftest import random_name
from tests.deploy.compose import environment, host_path, services
from tests.deploy.test_seed import run_seed
from tests.e2e.test_processes import free_port

#: What .env would hold: every required variable, with values only this test uses.
DOT_ENV = {
    "RABBITMQ_PASSWORD": "unused-here",
    "POSTGRES_PASSWORD": "unused-here",
    "AZURITE_ACCOUNT_KEY": "unused-here",
    "ADXFLOW_API_TOKEN": f"token-{uuid.uuid4().hex}",
    "ADX_ACCEPT_EULA": "Y",
}
#: The container's entrypoint (deploy/Dockerfile), as installed here.
ADXFLOW = str(Path(sys.executable).with_name("adxflow"))


@dataclass
class Machine:
    """This machine's stand-ins for the compose services the adxflow containers reach."""

    amqp_url: str
    database_url: str
    azurite: str
    smtp_port: int
    kusto_url: str
    tmp: Path
    ports: dict[str, int] = field(default_factory=dict)

    def port(self, name: str) -> int:
        """The port compose service *name* answers on: here they share one network namespace."""
        return self.ports.setdefault(name, free_port())

    def rewrite(self, name: str, service: dict[str, Any], env: dict[str, str]) -> dict[str, str]:
        """The service's environment, pointed at this machine instead of the compose network."""
        rewritten = dict(env)
        assert urlsplit(env["ADXFLOW_AMQP_URL"]).hostname == "rabbitmq"
        rewritten["ADXFLOW_AMQP_URL"] = self.amqp_url
        assert urlsplit(env["ADXFLOW_DATABASE_URL"].replace("+asyncpg", "")).hostname == "postgres"
        rewritten["ADXFLOW_DATABASE_URL"] = self.database_url
        assert env["ADXFLOW_BLOB_BACKEND"] == "azure"
        assert "BlobEndpoint=http://azurite:10000/" in env["ADXFLOW_AZURE_STORAGE_CONNECTION_STRING"]
        rewritten["ADXFLOW_AZURE_STORAGE_CONNECTION_STRING"] = self.azurite
        assert env["ADXFLOW_SMTP_HOST"] == "mailpit"
        rewritten["ADXFLOW_SMTP_HOST"], rewritten["ADXFLOW_SMTP_PORT"] = "127.0.0.1", str(self.smtp_port)
        rewritten["ADXFLOW_CONNECTIONS_FILE"] = str(
            self.connections(service, env["ADXFLOW_CONNECTIONS_FILE"])
        )
        for setting in ("ADXFLOW_TRIGGER_HOST", "ADXFLOW_HISTORY_HOST", "ADXFLOW_HEALTH_HOST"):
            assert env[setting] == "0.0.0.0", setting
            rewritten[setting] = "127.0.0.1"
        # Each container has ports of its own; here every service gets free ones.
        rewritten["ADXFLOW_TRIGGER_PORT"] = str(self.port(name if "trigger" in name else "trigger"))
        rewritten["ADXFLOW_HISTORY_PORT"] = str(self.port("history"))
        rewritten["ADXFLOW_HEALTH_PORT"] = str(self.port(name))
        assert env["ADXFLOW_TRIGGER_PUBLIC_URL"] == "http://trigger:8080"
        rewritten["ADXFLOW_TRIGGER_PUBLIC_URL"] = f"http://127.0.0.1:{self.port('trigger')}"
        rewritten["ADXFLOW_HISTORY_PUBLIC_URL"] = f"http://127.0.0.1:{self.port('history')}"
        # A container's own file system.
        home = self.tmp / name
        home.mkdir(exist_ok=True)
        rewritten["ADXFLOW_DATA_DIR"] = str(home)
        return rewritten

    def connections(self, service: dict[str, Any], container_path: str) -> Path:
        """The mounted connections file, with the emulator's URL replaced by the local endpoint's."""
        document = yaml.safe_load(host_path(service, container_path).read_text(encoding="utf-8"))
        for connection in document["connections"].values():
            if urlsplit(connection["cluster"]).hostname == "kusto":
                connection["cluster"] = self.kusto_url
        path = self.tmp / "connections.yaml"
        path.write_text(yaml.safe_dump(document), encoding="utf-8")
        return path


@dataclass
class Started:
    name: str
    process: asyncio.subprocess.Process
    env: dict[str, str]
    healthcheck: list[str]


def start_order(compose: dict[str, dict[str, Any]]) -> list[str]:
    """The adxflow services in an order that honours their dependencies on one another."""
    ordered: list[str] = []

    def visit(name: str) -> None:
        for dependency in compose[name].get("depends_on") or {}:
            visit(dependency)
        if name not in ordered:
            ordered.append(name)

    for name in compose:
        visit(name)
    return [name for name in ordered if (compose[name].get("command") or [])[:1] == ["serve"]]


@dataclass
class Deployment:
    services: dict[str, Started]
    #: Base URLs of the APIs, by compose service.
    urls: dict[str, str]
    smtp: Outbox


async def run_healthcheck(started: Started) -> bool:
    kind, executable, *args = started.healthcheck
    assert kind == "CMD"
    assert executable == "adxflow"
    process = await asyncio.create_subprocess_exec(
        ADXFLOW, *args, env=started.env, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL
    )
    return await process.wait() == 0


@pytest.fixture
async def deployment(
    tmp_path: Path, namespace: str, amqp_url: str, postgres_url: str, azurite: Any, wait_until: Any
) -> AsyncIterator[Deployment]:
    compose = services()
    engine = tmp_path / f"{DEFAULT_DATABASE}.duckdb"
    duckdb.connect(str(engine)).close()
    async with AsyncExitStack() as stack:
        kusto = await stack.enter_async_context(LocalKusto(engine, writable=True))
        smtp = await stack.enter_async_context(Outbox(tmp_path / "smtp"))
        # compose runs the query worker only once the seed container has finished.
        await run_seed(kusto.url)
        machine = Machine(amqp_url, postgres_url, azurite.connection_string, smtp.port, kusto.url, tmp_path)
        container = random_name("adxflow-")
        started: dict[str, Started] = {}

        async def stop_all() -> None:
            for service in started.values():
                if service.process.returncode is None:
                    service.process.send_signal(signal.SIGTERM)
            for service in started.values():
                try:
                    await asyncio.wait_for(service.process.wait(), 30)
                except TimeoutError:
                    service.process.kill()
                    await service.process.wait()

        stack.push_async_callback(_delete_topology, amqp_url, namespace)
        stack.push_async_callback(stop_all)
        for name in start_order(compose):
            service = compose[name]
            env = machine.rewrite(name, service, environment(service, DOT_ENV))
            env |= {
                "ADXFLOW_NAMESPACE": namespace,
                "ADXFLOW_AZURE_STORAGE_CONTAINER": container,
                "PATH": os.environ["PATH"],
                "HOME": env["ADXFLOW_DATA_DIR"],
            }
            with (tmp_path / f"{name}.log").open("wb") as log:
                process = await asyncio.create_subprocess_exec(
                    ADXFLOW, *service["command"], env=env, cwd=env["ADXFLOW_DATA_DIR"], stdout=log, stderr=log
                )
            started[name] = Started(name, process, env, service["healthcheck"]["test"])
        async with aiohttp.ClientSession() as session:
            for service in started.values():

                async def alive(service: Started = service) -> bool:
                    log = tmp_path / f"{service.name}.log"
                    assert service.process.returncode is None, log.read_text()
                    try:
                        async with session.get(
                            f"http://127.0.0.1:{machine.port(service.name)}/healthz"
                        ) as response:
                            return response.status == 200
                    except aiohttp.ClientError:
                        return False

                await wait_until(alive, timeout=90, what=f"{service.name} to answer /healthz")
                # The probe docker runs in the container agrees.
                assert await run_healthcheck(service), service.name
        urls = {
            name: f"http://127.0.0.1:{machine.port(name)}" for name in ("trigger", "trigger-2", "history")
        }
        yield Deployment(started, urls, smtp)
        # Stopped as docker stops a container: SIGTERM, and each leaves cleanly.
        await stop_all()
        for service in started.values():
            assert service.process.returncode == 0, (tmp_path / f"{service.name}.log").read_text()


async def _delete_topology(url: str, namespace: str) -> None:
    async with RabbitBroker(url, Topology(namespace), connection_name="compose-cleanup") as broker:
        await broker.delete_topology()


@pytest.mark.rabbitmq
@pytest.mark.postgres
@pytest.mark.azurite
@pytest.mark.timeout(240)
async def test_a_flow_runs_through_the_services_as_compose_starts_them(
    deployment: Deployment, wait_until: Any
) -> None:
    urls = deployment.urls
    assert {"trigger", "trigger-2", "query-worker", "render", "notifier", "history"} == set(
        deployment.services
    )
    headers = {"Authorization": f"Bearer {DOT_ENV['ADXFLOW_API_TOKEN']}"}
    name = random_name("compose-")
    flow = {
        "name": name,
        "connection": "local",
        "database": "Samples",
        "steps": [
            {
                "id": "by_state",
                "action": "run_query_and_render_chart",
                "query": "StormEvents | summarize Events = count() by State | top 5 by Events",
                "chart": "piechart",
            },
            {"id": "mail", "action": "send_email", "to": ["team@example.com"], "subject": "Storms by state"},
        ],
    }
    async with aiohttp.ClientSession(headers=headers) as session:
        async with session.put(f"{urls['trigger']}/v1/flows/{name}", json=flow) as response:
            assert response.status == 201, await response.text()
        # The other replica serves the same flows.
        async with session.post(f"{urls['trigger-2']}/v1/flows/{name}/runs", json={}) as response:
            assert response.status == 202, await response.text()
            run_id = (await response.json())["run_id"]

        sent = await deployment.smtp.wait_for_message(timeout=90)
        assert deployment.smtp.messages() == [sent]
        message = email.message_from_bytes(sent.read_bytes(), policy=email.policy.default)
        assert message["Subject"] == "Storms by state"
        assert message["To"] == "team@example.com"

        async def succeeded() -> bool:
            async with session.get(f"{urls['history']}/v1/runs/{run_id}") as response:
                return response.status == 200 and (await response.json())["status"] == "succeeded"

        await wait_until(succeeded, timeout=60, what=f"run {run_id} to succeed in history")
