"""The five services as separate processes on RabbitMQ, as deployed: a worker
killed in the middle of its steps loses nothing; another one finishes them."""

from __future__ import annotations

import asyncio
import email
import email.policy
import json
import os
import signal
import socket
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterable
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from common.contracts.topology import Topology
from common.platform.broker.rabbitmq import RabbitBroker
from services.embedded.kusto.database import ensure_database
from services.embedded.kusto.endpoint import LocalKusto
from services.embedded.outbox import Outbox

SERVICES = ("trigger", "query_worker", "render", "notifier", "history")
#: The services that, run alone, serve /healthz, /readyz and /metrics on a health port of their own.
WORKERS = ("query_worker", "render", "notifier")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def answer_ready(session: aiohttp.ClientSession, urls: Iterable[str]) -> bool:
    """Whether every service at *urls* answers /readyz with 200."""
    try:
        for url in urls:
            async with session.get(f"{url}/readyz") as response:
                if response.status != 200:
                    return False
    except aiohttp.ClientError:
        return False
    return True


class Deployment:
    def __init__(
        self,
        env: dict[str, str],
        trigger_url: str,
        history_url: str,
        smtp: Outbox,
        *,
        log_dir: Path | None = None,
    ) -> None:
        self.env = env
        self.trigger_url = trigger_url
        self.history_url = history_url
        self.smtp = smtp
        #: Where each process's stderr goes (``LABEL.log``); discarded without.
        self.log_dir = log_dir
        self.processes: dict[str, asyncio.subprocess.Process] = {}
        #: The health server of each worker process, by label.
        self.health_urls: dict[str, str] = {}

    async def start(self, service: str, label: str | None = None, **settings: str) -> None:
        """Start *service* as process *label*, with *settings* (``ADXFLOW_*`` variables) of its own."""
        label = label or service
        env = {**self.env, **settings}
        if service in WORKERS:
            port = free_port()
            env = {**env, "ADXFLOW_HEALTH_PORT": str(port)}
            self.health_urls[label] = f"http://127.0.0.1:{port}"
        log = await asyncio.to_thread((self.log_dir / f"{label}.log").open, "ab") if self.log_dir else None
        try:
            process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                f"services.{service}",
                env=env,
                stdout=asyncio.subprocess.DEVNULL,
                stderr=log or asyncio.subprocess.DEVNULL,
            )
        finally:
            if log is not None:
                log.close()
        self.processes[label] = process

    async def ready(self, session: aiohttp.ClientSession) -> bool:
        """Whether every running service answers /readyz with 200."""
        urls = [self.trigger_url, self.history_url]
        urls += [url for label, url in self.health_urls.items() if label in self.processes]
        return await answer_ready(session, urls)

    async def kill(self, label: str, sig: int = signal.SIGKILL) -> int:
        process = self.processes.pop(label)
        process.send_signal(sig)
        return await asyncio.wait_for(process.wait(), 60)

    async def stop_all(self) -> None:
        for process in self.processes.values():
            if process.returncode is None:
                process.send_signal(signal.SIGTERM)
        for process in self.processes.values():
            try:
                await asyncio.wait_for(process.wait(), 30)
            except TimeoutError:
                process.kill()
                await process.wait()


@asynccontextmanager
async def deployment_of(
    tmp_path: Path, namespace: str, amqp_url: str, **settings: str
) -> AsyncIterator[Deployment]:
    """A deployment's parts (the local Kusto endpoint, the SMTP server, every process's settings,
    with *settings* beside them) before any process starts; afterwards every process is stopped
    and the topology deleted."""
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
            **settings,
        }
        system = Deployment(env, f"http://127.0.0.1:{trigger_port}", f"http://127.0.0.1:{history_port}", smtp)
        stack.push_async_callback(_delete_topology, amqp_url, namespace)
        stack.push_async_callback(system.stop_all)
        yield system


@pytest.fixture
async def deployment(
    tmp_path: Path, namespace: str, amqp_url: str, wait_until: Any
) -> AsyncIterator[Deployment]:
    async with deployment_of(tmp_path, namespace, amqp_url) as system:
        for service in SERVICES:
            await system.start(service)
        async with aiohttp.ClientSession() as session:

            async def ready() -> bool:
                return await system.ready(session)

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
        await every_run_succeeds_and_every_email_arrives_once(deployment, session, accepted, wait_until)


JOB = {
    "connection": "local",
    "database": "Samples",
    "query": "StormEvents | extend Day = bin(StartTime, 1d) | summarize Events = count() by Day, State"
    " | summarize Busiest = max(Events) by State | top 10 by Busiest",
    "chart": "piechart",
    "email": {"to": ["team@example.com"], "subject": "Storms"},
}


SLOW_JOB = {
    **JOB,
    "query": "range x from 1 to 20000000 step 1 | summarize Rows = count()",
    "chart": "html_table",
}


@pytest.mark.rabbitmq
@pytest.mark.timeout(300)
@pytest.mark.parametrize(
    ("service", "grace"),
    [("query_worker", 30.0), ("notifier", 30.0), ("query_worker", 0.5)],
    ids=["query-worker-finishes", "notifier-finishes", "query-worker-cancels"],
)
async def test_sigterm_mid_batch_loses_no_run_sends_no_email_twice_and_exits_within_the_grace(
    deployment: Deployment, wait_until: Any, tmp_path: Path, service: str, grace: float
) -> None:
    deployment.log_dir = tmp_path
    async with aiohttp.ClientSession() as session:
        # The worker under test runs with the grace of this case, its log kept.
        await deployment.kill(service, signal.SIGTERM)
        await deployment.start(service, ADXFLOW_SHUTDOWN_GRACE_SECONDS=str(grace), ADXFLOW_LOG_LEVEL="INFO")

        async def ready() -> bool:
            return await deployment.ready(session)

        await wait_until(ready, timeout=60, what=f"{service} to be ready")
        cancelling = grace < 30
        # Where steps must outlive the grace, the batch starts with a query that runs for
        # seconds (DuckDB runs a bare range to its end, ~0.25 s per million rows here).
        jobs = [SLOW_JOB] if cancelling else []
        accepted = []
        for job in [*jobs, *[JOB] * 40]:
            async with session.post(f"{deployment.trigger_url}/v1/jobs", json=job) as response:
                assert response.status == 202
                accepted.append((await response.json())["run_id"])
        if cancelling:

            async def slow_query_running() -> bool:
                async with session.get(f"{deployment.history_url}/v1/runs/{accepted[0]}") as response:
                    run = await response.json() if response.status == 200 else {"steps": []}
                    return any(step["status"] == "running" for step in run["steps"])

            await wait_until(slow_query_running, timeout=60, what="the slow query to report running")
        else:
            await deployment.smtp.wait_for_message(timeout=60)
        loop = asyncio.get_running_loop()
        stopped_at = loop.time()
        code = await deployment.kill(service, signal.SIGTERM)
        took = loop.time() - stopped_at
        sent_then = len(deployment.smtp.messages())
        events = {}
        for line in (tmp_path / f"{service}.log").read_text().splitlines():
            if line.startswith("{"):
                event = json.loads(line)
                events[event["event"]] = event
        in_flight = events.get("letting handlers in flight finish", {}).get("count", 0)
        cancelled = events.get("cancelling handlers still running after the grace", {}).get("count", 0)
        print(
            f"\n{service} stopped {took:.2f} s after SIGTERM (grace {grace:g} s) with {sent_then} of "
            f"{len(accepted)} emails sent; steps in flight {in_flight}, cancelled {cancelled}"
        )
        assert code == 0
        # Mid-batch: runs were still waiting for it.
        assert sent_then < len(accepted)
        if not cancelling:
            # What it had in hand finished within the grace; nothing was cut off.
            assert took < grace
            assert not cancelled
        else:
            # Steps outlived the grace: cancelled, awaited, their messages handed back;
            # the exit follows within the grace and the teardown of its connections (10 s, generous).
            assert cancelled
            assert took < grace + 10
        await deployment.start(service, f"{service}-2")
        await every_run_succeeds_and_every_email_arrives_once(deployment, session, accepted, wait_until)


def metric(text: str, name: str, **labels: str) -> float:
    """The sum of *name*'s samples whose labels include *labels*, in a /metrics answer."""
    total = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                total += sample.value
    return total


@pytest.mark.rabbitmq
@pytest.mark.timeout(300)
async def test_every_service_counts_a_run_in_its_metrics(deployment: Deployment, wait_until: Any) -> None:
    name = f"metrics-{uuid.uuid4().hex[:8]}"
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
            {"id": "mail", "action": "send_email", "to": ["team@example.com"], "subject": "Storms"},
        ],
    }
    async with aiohttp.ClientSession() as session:
        async with session.put(f"{deployment.trigger_url}/v1/flows/{name}", json=flow) as response:
            assert response.status == 201, await response.text()
        async with session.post(f"{deployment.trigger_url}/v1/flows/{name}/runs", json={}) as response:
            assert response.status == 202
            run_id = (await response.json())["run_id"]

        async def scrape(url: str) -> str:
            async with session.get(f"{url}/metrics") as response:
                assert response.status == 200
                assert response.content_type == "text/plain"
                return await response.text()

        def counted(url: str, name: str, at_least: float = 1, **labels: str) -> Any:
            async def moved() -> bool:
                return metric(await scrape(url), name, **labels) >= at_least

            return wait_until(moved, timeout=60, what=f"{name}{labels} at {url}")

        await counted(deployment.history_url, "adxflow_runs_total", flow=name, status="succeeded")
        async with session.get(f"{deployment.history_url}/v1/runs/{run_id}") as response:
            assert (await response.json())["status"] == "succeeded"
        history = await scrape(deployment.history_url)
        assert metric(history, "adxflow_runs_total", flow=name, status="succeeded") == 1
        assert metric(history, "adxflow_runs_total", flow=name, status="failed") == 0

        query_worker = deployment.health_urls["query_worker"]
        await counted(query_worker, "adxflow_step_duration_seconds_count", kind="query", status="succeeded")
        await counted(query_worker, "adxflow_kusto_rows_read_total", at_least=5, connection="local")
        await counted(query_worker, "adxflow_kusto_bytes_read_total", connection="local")
        await counted(query_worker, "adxflow_kusto_query_duration_seconds_count", connection="local")
        await counted(deployment.health_urls["render"], "adxflow_step_duration_seconds_count", kind="render")
        await counted(deployment.health_urls["notifier"], "adxflow_emails_sent_total")
        await counted(deployment.history_url, "adxflow_step_duration_seconds_count", kind="record")
        # The trigger scrapes too: its scheduler's lateness is there even before a slot fires.
        assert "adxflow_scheduler_lateness_seconds" in await scrape(deployment.trigger_url)


def arrived_at(path: Path) -> float:
    """When the outbox took the email at *path*: the stamp it names its files with, in seconds."""
    return int(path.name.split("-", 1)[0]) / 1e9


@pytest.mark.rabbitmq
@pytest.mark.timeout(300)
async def test_a_notifier_killed_mid_batch_leaves_its_claims_to_the_other_promptly(
    deployment: Deployment, wait_until: Any
) -> None:
    job = {
        "connection": "local",
        "database": "Samples",
        "query": "StormEvents | summarize Events = count() by State | top 3 by Events",
        "email": {"to": ["team@example.com"], "subject": "Storms"},
    }
    async with aiohttp.ClientSession() as session:
        await deployment.start("notifier", "notifier-2")

        async def ready() -> bool:
            return await deployment.ready(session)

        await wait_until(ready, timeout=60, what="the second notifier to be ready")
        accepted = []
        for _ in range(60):
            async with session.post(f"{deployment.trigger_url}/v1/jobs", json=job) as response:
                assert response.status == 202
                accepted.append((await response.json())["run_id"])

        async def some_delivered() -> bool:
            return len(deployment.smtp.messages()) >= 10

        await wait_until(some_delivered, timeout=120, what="the first emails")
        assert await deployment.kill("notifier") == -signal.SIGKILL
        killed_at = time.time()
        assert len(deployment.smtp.messages()) < len(accepted)

        async def all_succeeded() -> bool:
            for run_id in accepted:
                async with session.get(f"{deployment.history_url}/v1/runs/{run_id}") as response:
                    if response.status != 200 or (await response.json())["status"] != "succeeded":
                        return False
            return True

        await wait_until(all_succeeded, timeout=180, what="every run to succeed")

    async def all_delivered() -> bool:
        return len({message_id(path) for path in deployment.smtp.messages()}) >= len(accepted)

    await wait_until(all_delivered, timeout=30, what="every email")
    paths = deployment.smtp.messages()
    copies: dict[str, set[bytes]] = {}
    for path in paths:
        copies.setdefault(message_id(path), set()).add(path.read_bytes())
    last = max(arrived_at(path) for path in paths)
    print(
        f"\n{len(accepted)} jobs, one of two notifiers killed once 10 emails had arrived: the last arrived "
        f"{last - killed_at:.1f} s after the kill; {len(paths)} copies of {len(copies)} emails"
    )
    assert len(copies) == len(accepted)
    # An email sent again by the notifier that took a claim over is the same bytes.
    assert all(len(versions) == 1 for versions in copies.values())


def message_id(path: Path) -> str:
    return str(email.message_from_bytes(path.read_bytes(), policy=email.policy.default)["Message-ID"])


async def every_run_succeeds_and_every_email_arrives_once(
    deployment: Deployment, session: aiohttp.ClientSession, accepted: list[str], wait_until: Any
) -> None:
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


@pytest.mark.rabbitmq
@pytest.mark.timeout(300)
async def test_a_trigger_killed_mid_scope_starts_every_iteration_once_and_the_parent_goes_on(
    deployment: Deployment, wait_until: Any
) -> None:
    rows = 40
    flow = {
        "name": "per-event",
        "connection": "local",
        "database": "Samples",
        "steps": [
            {
                "id": "events",
                "action": "run_query",
                "query": f"StormEvents | top {rows} by EventId asc | project EventId, State",
            },
            {
                "id": "each",
                "for_each": "events",
                "concurrency": 3,
                "steps": [
                    {
                        "id": "same_state",
                        "action": "run_query",
                        "parameters": {"state": {"type": "string", "value": "{{ row.State }}"}},
                        "query": "StormEvents | where State == state | count",
                    },
                    {
                        "id": "mail",
                        "action": "send_email",
                        "to": ["team@example.com"],
                        "subject": "Event {{ row.EventId }}: {{ steps.same_state.first_row.Count }} there",
                    },
                ],
            },
            {
                "id": "summary",
                "action": "send_email",
                "to": ["team@example.com"],
                "subject": "All {{ steps.each.succeeded }} of {{ steps.each.total }}",
            },
        ],
    }
    async with aiohttp.ClientSession() as session:
        async with session.put(f"{deployment.trigger_url}/v1/flows/per-event", json=flow) as response:
            assert response.status == 201, await response.text()
        async with session.post(f"{deployment.trigger_url}/v1/flows/per-event/runs", json={}) as response:
            assert response.status == 202
            run_id = (await response.json())["run_id"]
        await deployment.smtp.wait_for_message(timeout=60)
        await deployment.kill("trigger")
        # Killed with iterations still to start: the scope waits in SQL and on the queues.
        assert len(deployment.smtp.messages()) < rows
        await deployment.start("trigger", "trigger-2")

        async def parent_succeeded() -> bool:
            try:
                async with session.get(f"{deployment.history_url}/v1/runs/{run_id}") as response:
                    return response.status == 200 and (await response.json())["status"] == "succeeded"
            except aiohttp.ClientError:
                return False

        await wait_until(parent_succeeded, timeout=180, what="the parent run to succeed")

        async def all_delivered() -> bool:
            return len(deployment.smtp.messages()) >= rows + 1

        await wait_until(all_delivered, timeout=30, what="every email")
    subjects = [
        str(email.message_from_bytes(path.read_bytes(), policy=email.policy.default)["Subject"])
        for path in deployment.smtp.messages()
    ]
    per_row = [subject for subject in subjects if subject.startswith("Event ")]
    assert len(per_row) == len(set(per_row)) == rows
    assert subjects.count(f"All {rows} of {rows}") == 1
    assert len(subjects) == rows + 1
