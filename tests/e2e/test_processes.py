"""The five services as separate processes on RabbitMQ, as deployed: a worker
killed in the middle of its steps loses nothing; another one finishes them."""

from __future__ import annotations

import asyncio
import email
import email.policy
import os
import signal
import socket
import sys
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from common.local_kusto import LocalKusto
from common.outbox import Outbox
from common.rabbitmq import RabbitBroker
from common.sample_data import ensure_database
from common.topology import Topology

SERVICES = ("trigger", "query_worker", "render", "notifier", "history")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class Deployment:
    def __init__(self, env: dict[str, str], trigger_url: str, history_url: str, smtp: Outbox) -> None:
        self.env = env
        self.trigger_url = trigger_url
        self.history_url = history_url
        self.smtp = smtp
        self.processes: dict[str, asyncio.subprocess.Process] = {}

    async def start(self, service: str, label: str | None = None) -> None:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            f"services.{service}",
            env=self.env,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )
        self.processes[label or service] = process

    async def kill(self, label: str, sig: int = signal.SIGKILL) -> int:
        process = self.processes.pop(label)
        process.send_signal(sig)
        return await asyncio.wait_for(process.wait(), 60)

    async def stop_all(self) -> None:
        for process in self.processes.values():
            process.send_signal(signal.SIGTERM)
        for process in self.processes.values():
            try:
                await asyncio.wait_for(process.wait(), 30)
            except TimeoutError:
                process.kill()
                await process.wait()


@pytest.fixture
async def deployment(
    tmp_path: Path, namespace: str, amqp_url: str, wait_until: Any
) -> AsyncIterator[Deployment]:
    database = ensure_database(tmp_path / "kusto")
    async with AsyncExitStack() as stack:
        kusto = stack.enter_context(LocalKusto(database, writable=True))
        smtp = await stack.enter_async_context(Outbox(tmp_path / "smtp"))
        connections = tmp_path / "connections.yaml"
        connections.write_text(f'connections:\n  local: {{cluster: "{kusto.url}", auth: none}}\n')
        trigger_port, history_port = free_port(), free_port()
        env = {
            **os.environ,
            "ADXFLOW_AMQP_URL": amqp_url,
            "ADXFLOW_NAMESPACE": namespace,
            "ADXFLOW_DATA_DIR": str(tmp_path / "data"),
            "ADXFLOW_CONNECTIONS_FILE": str(connections),
            "ADXFLOW_SMTP_PORT": str(smtp.port),
            "ADXFLOW_TRIGGER_PORT": str(trigger_port),
            "ADXFLOW_HISTORY_PORT": str(history_port),
            "ADXFLOW_LOG_LEVEL": "WARNING",
        }
        system = Deployment(env, f"http://127.0.0.1:{trigger_port}", f"http://127.0.0.1:{history_port}", smtp)
        stack.push_async_callback(_delete_topology, amqp_url, namespace)
        stack.push_async_callback(system.stop_all)
        for service in SERVICES:
            await system.start(service)
        async with aiohttp.ClientSession() as session:

            async def ready() -> bool:
                try:
                    for url in (system.trigger_url, system.history_url):
                        async with session.get(f"{url}/readyz") as response:
                            if response.status != 200:
                                return False
                except aiohttp.ClientError:
                    return False
                return True

            await wait_until(ready, timeout=60, what="the services to be ready")
        yield system


async def _delete_topology(url: str, namespace: str) -> None:
    async with RabbitBroker(url, Topology(namespace), connection_name="processes-cleanup") as broker:
        await broker.delete_topology()


@pytest.mark.rabbitmq
@pytest.mark.timeout(300)
@pytest.mark.parametrize(
    ("service", "sig"),
    [
        ("query_worker", signal.SIGKILL),
        ("render", signal.SIGKILL),
        ("render", signal.SIGTERM),
    ],
    ids=["query-worker-killed", "render-killed", "render-stopped"],
)
async def test_a_worker_gone_mid_flight_loses_no_run_and_another_finishes_them(
    deployment: Deployment, wait_until: Any, service: str, sig: int
) -> None:
    job = {
        "connection": "local",
        "database": "Samples",
        # Heavy enough that queries are still running when a worker goes away.
        "query": "StormEvents | extend Day = bin(StartTime, 1d) | summarize Events = count() by Day, State"
        " | summarize Busiest = max(Events) by State | top 10 by Busiest",
        "chart": "piechart",
        "email": {"to": ["team@example.com"], "subject": "Storms"},
    }
    async with aiohttp.ClientSession() as session:
        accepted = []
        for _ in range(30):
            async with session.post(f"{deployment.trigger_url}/v1/jobs", json=job) as response:
                assert response.status == 202
                accepted.append((await response.json())["run_id"])
        await deployment.smtp.wait_for_message(timeout=60)
        code = await deployment.kill(service, sig)
        if sig == signal.SIGTERM:
            # Stopped, not killed: it finished what it had in hand and left cleanly.
            assert code == 0
        # Gone with work left: runs were still waiting for it.
        assert len(deployment.smtp.messages()) < len(accepted)
        await deployment.start(service, f"{service}-2")

        async def all_succeeded() -> bool:
            for run_id in accepted:
                async with session.get(f"{deployment.history_url}/v1/runs/{run_id}") as response:
                    if response.status != 200 or (await response.json())["status"] != "succeeded":
                        return False
            return True

        await wait_until(all_succeeded, timeout=180, what="every run to succeed")

    async def all_delivered() -> bool:
        return len(deployment.smtp.messages()) >= len(accepted)

    await wait_until(all_delivered, timeout=30, what="every email")
    ids = [
        email.message_from_bytes(path.read_bytes(), policy=email.policy.default)["Message-ID"]
        for path in deployment.smtp.messages()
    ]
    assert len(ids) == len(set(ids)) == len(accepted)
