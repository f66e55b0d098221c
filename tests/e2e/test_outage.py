"""The whole system on RabbitMQ loses its broker connection with jobs in flight (a proxy
between them cuts it; the server itself is left alone): every run succeeds, every email
arrives, and an email sent twice is the same bytes twice."""

from __future__ import annotations

import email
import email.policy
import shutil
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import pytest
from pydantic import SecretStr

from common.contracts.topology import Topology
from common.platform.broker.rabbitmq import RabbitBroker
from common.platform.config import Settings
from services.embedded.outbox import Outbox
from services.launcher.system import embedded_system
from tests.conftest import Waiter
from tests.proxy import Proxy

JOB: dict[str, Any] = {
    "connection": "local",
    "database": "Samples",
    "query": "StormEvents | summarize Events = count() by State | top 3 by Events",
    "email": {"to": ["team@example.com"], "subject": "Job"},
}


@dataclass
class Cuttable:
    trigger_url: str
    history_url: str
    smtp: Outbox
    proxy: Proxy


@pytest.fixture
async def cuttable(
    tmp_path: Path, sample_database: Path, namespace: str, amqp_url: str
) -> AsyncIterator[Cuttable]:
    data_dir = tmp_path / "adxflow"
    data_dir.mkdir()
    shutil.copy(sample_database, data_dir / sample_database.name)
    server = urlsplit(amqp_url)
    assert server.hostname is not None
    async with Proxy(server.hostname, server.port or 5672) as proxy, Outbox(tmp_path / "smtp") as smtp:
        through = server._replace(netloc=f"{server.username}:{server.password}@127.0.0.1:{proxy.port}")
        settings = Settings(
            data_dir=data_dir,
            namespace=namespace,
            amqp_url=SecretStr(through.geturl()),
            trigger_port=0,
            history_port=0,
            embedded_smtp=False,
            smtp_host="127.0.0.1",
            smtp_port=smtp.port,
            retry_base_seconds=0.2,
        )
        try:
            async with embedded_system(settings) as running:
                yield Cuttable(running.trigger_url, running.history_url, smtp, proxy)
        finally:
            async with RabbitBroker(
                amqp_url, Topology(namespace), connection_name="outage-cleanup"
            ) as broker:
                await broker.delete_topology()


def message_id(path: Path) -> str:
    return str(email.message_from_bytes(path.read_bytes(), policy=email.policy.default)["Message-ID"])


@pytest.mark.rabbitmq
@pytest.mark.timeout(300)
async def test_a_broker_connection_cut_with_jobs_in_flight_loses_no_run_and_resends_only_identical_copies(
    cuttable: Cuttable, wait_until: Waiter
) -> None:
    async with aiohttp.ClientSession() as session:
        accepted = []
        for index in range(60):
            job = {**JOB, "email": {**JOB["email"], "subject": f"Job {index}"}}
            async with session.post(f"{cuttable.trigger_url}/v1/jobs", json=job) as response:
                assert response.status == 202
                accepted.append((await response.json())["run_id"])
        await cuttable.smtp.wait_for_message(timeout=60)
        cut_at = time.time()
        cuttable.proxy.cut()
        assert cuttable.proxy.cuts > 0

        async def all_succeeded() -> bool:
            for run_id in accepted:
                async with session.get(f"{cuttable.history_url}/v1/runs/{run_id}") as response:
                    if response.status != 200 or (await response.json())["status"] != "succeeded":
                        return False
            return True

        await wait_until(all_succeeded, timeout=240, what="every run to succeed")

    async def all_delivered() -> bool:
        return len({message_id(path) for path in cuttable.smtp.messages()}) >= len(accepted)

    await wait_until(all_delivered, timeout=30, what="every email")
    paths = cuttable.smtp.messages()
    copies: dict[str, set[bytes]] = {}
    for path in paths:
        copies.setdefault(message_id(path), set()).add(path.read_bytes())
    last = max(int(path.name.split("-", 1)[0]) / 1e9 for path in paths)
    print(
        f"\n{len(accepted)} jobs, the broker connection cut after the first email: the last email arrived "
        f"{last - cut_at:.1f} s after the cut; {len(paths)} copies of {len(copies)} emails"
    )
    assert len(copies) == len(accepted)
    assert all(len(versions) == 1 for versions in copies.values())
