"""Operating the services as deployed: readiness follows the broker, and no secret reaches a log,
the run history or the blob store, whatever succeeds or fails.

The services run as processes against the machine's RabbitMQ, each on a vhost
and user of its own made for the test with ``rabbitmqctl`` (so the AMQP
password is a secret of the test's, and the vhost can be taken away).
"""

from __future__ import annotations

import asyncio
import base64
import os
import sqlite3
import sys
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
import pytest
from aiohttp import web
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session

from common.contracts.topology import Topology
from common.platform.broker.rabbitmq import RabbitBroker
from services.embedded.kusto.database import ensure_database
from services.embedded.kusto.endpoint import LocalKusto
from tests.e2e.conftest import System
from tests.e2e.test_processes import SERVICES, Deployment, free_port

pytestmark = pytest.mark.rabbitmq


async def rabbitmqctl(*args: str) -> None:
    process = await asyncio.create_subprocess_exec(
        "rabbitmqctl", *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    output, _ = await process.communicate()
    assert process.returncode == 0, f"rabbitmqctl {args[0]}: {output.decode(errors='replace')}"


@dataclass
class Vhost:
    name: str
    user: str
    password: str

    @property
    def url(self) -> str:
        return f"amqp://{self.user}:{self.password}@127.0.0.1:5672/{quote(self.name, safe='')}"

    async def create(self) -> None:
        await rabbitmqctl("add_vhost", self.name)
        await rabbitmqctl("set_permissions", "-p", self.name, self.user, ".*", ".*", ".*")

    async def delete(self) -> None:
        await rabbitmqctl("delete_vhost", self.name)


@pytest.fixture
async def vhost() -> AsyncIterator[Vhost]:
    """A RabbitMQ vhost and a user with a password of its own, removed afterwards."""
    tag = uuid.uuid4().hex[:12]
    made = Vhost(
        name=f"adxflow-test-{tag}", user=f"adxflow-test-{tag}", password=f"amqp-pw-{uuid.uuid4().hex}"
    )
    await rabbitmqctl("add_user", made.user, made.password)
    try:
        await made.create()
        yield made
    finally:
        process = await asyncio.create_subprocess_exec(
            "rabbitmqctl",
            "delete_vhost",
            made.name,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )
        await process.wait()
        await rabbitmqctl("delete_user", made.user)


async def readiness(session: aiohttp.ClientSession, url: str) -> tuple[int, dict[str, Any]]:
    try:
        async with session.get(f"{url}/readyz") as response:
            return response.status, await response.json()
    except aiohttp.ClientError:
        return 0, {}


async def test_a_worker_is_not_ready_while_its_broker_is_gone(
    tmp_path: Path, vhost: Vhost, namespace: str, wait_until: Any
) -> None:
    port = free_port()
    env = {
        **os.environ,
        "ADXFLOW_AMQP_URL": vhost.url,
        "ADXFLOW_NAMESPACE": namespace,
        "ADXFLOW_DATA_DIR": str(tmp_path / "data"),
        "ADXFLOW_HEALTH_PORT": str(port),
        "ADXFLOW_LOG_LEVEL": "WARNING",
    }
    url = f"http://127.0.0.1:{port}"
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "services.render",
        env=env,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        async with aiohttp.ClientSession() as session:

            async def status_is(expected: int) -> bool:
                return (await readiness(session, url))[0] == expected

            await wait_until(lambda: status_is(200), timeout=60, what="the render worker to be ready")
            _, ready = await readiness(session, url)
            assert ready["checks"] == {"broker": True, "consumers": True, "blob_store": True}

            # The vhost goes away: RabbitMQ closes the connection, and reconnecting is refused.
            await vhost.delete()
            await wait_until(lambda: status_is(503), timeout=30, what="the worker to report not ready")
            _, ready = await readiness(session, url)
            assert ready["checks"]["broker"] is False
            assert ready["checks"]["consumers"] is False
            async with session.get(f"{url}/healthz") as response:
                assert response.status == 200

            # Back again: the robust connection reconnects and the consumer is attached anew.
            await vhost.create()
            await wait_until(lambda: status_is(200), timeout=60, what="the worker to be ready again")
    finally:
        process.terminate()
        await asyncio.wait_for(process.wait(), 60)


async def test_embedded_readiness_includes_every_services_consumers(system: System) -> None:
    # One process, no extra ports: the workers' consumers count in the APIs' readiness.
    for url in (system.trigger_url, system.history_url):
        async with system.session.get(f"{url}/readyz") as response:
            assert response.status == 200
            body = await response.json()
        # The scheduler, chainer, stall watcher and retention of the process, supervised, too.
        assert body["checks"] == {
            "broker": True,
            "consumers": True,
            "blob_store": True,
            "database": True,
            "loops": True,
        }


# -- secrets ----------------------------------------------------------------


class Relay:
    """An SMTP relay that wants a login, and can refuse it; a refusal quotes the password back."""

    def __init__(self, user: str, password: str) -> None:
        self.user = user
        self.password = password
        self.refuse_logins = False
        self.received: list[bytes] = []
        self.arrived = asyncio.Event()
        self.port = 0
        self._server: asyncio.Server | None = None
        self._sessions: list[SMTP] = []

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(self._session, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    def refuse_from_now(self) -> None:
        """Refuse every login from now on, and hang up on the sessions logged in already."""
        self.refuse_logins = True
        self._hang_up()

    def _hang_up(self) -> None:
        for session in self._sessions:
            if session.transport is not None:
                session.transport.close()

    async def close(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.close()
            self._hang_up()
            await server.wait_closed()

    def _session(self) -> SMTP:
        session = SMTP(
            self,
            hostname="localhost",
            loop=asyncio.get_running_loop(),
            decode_data=False,
            authenticator=self._authenticate,
            auth_require_tls=False,
        )
        self._sessions.append(session)
        return session

    def _authenticate(
        self, server: SMTP, session: Session, envelope: Envelope, mechanism: str, data: Any
    ) -> Any:
        if not isinstance(data, LoginPassword):
            return AuthResult(success=False, handled=False)
        supplied = data.password.decode()
        if self.refuse_logins or (data.login.decode(), supplied) != (self.user, self.password):
            return AuthResult(success=False, handled=False, message=f"535 5.7.8 no login with {supplied}")
        return AuthResult(success=True)

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        if not session.authenticated:
            return "530 5.7.0 Authentication required"
        assert envelope.original_content is not None
        self.received.append(envelope.original_content)
        self.arrived.set()
        return "250 OK"


@dataclass
class Secrets:
    amqp_password: str
    api_token: str
    smtp_password: str
    client_secret: str
    hook_token: str
    echo_token: str

    def forms(self, smtp_user: str) -> dict[str, str]:
        """Each secret, and the forms it travels in (SMTP AUTH sends it base64-encoded)."""
        found = {name: value for name, value in vars(self).items()}
        plain = base64.b64encode(f"\0{smtp_user}\0{self.smtp_password}".encode()).decode()
        found["smtp_auth_plain"] = plain
        found["smtp_auth_login"] = base64.b64encode(self.smtp_password.encode()).decode()
        return found


class Receiver:
    """Webhook endpoints: one that takes the post, one that refuses it quoting every header back."""

    def __init__(self) -> None:
        self.received: list[dict[str, str]] = []
        self.url = ""
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        async def take(request: web.Request) -> web.Response:
            self.received.append(dict(request.headers))
            return web.json_response({"ok": True})

        async def refuse(request: web.Request) -> web.Response:
            return web.json_response({"error": "not today", "you_sent": dict(request.headers)}, status=400)

        app = web.Application()
        app.router.add_post("/hook", take)
        app.router.add_post("/echo", refuse)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0).start()
        self.url = f"http://127.0.0.1:{self._runner.addresses[0][1]}"

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


def flow(name: str, connection: str, query: str, *deliveries: dict[str, Any]) -> dict[str, Any]:
    return {
        "name": name,
        "connection": connection,
        "database": "Samples",
        "steps": [
            {"id": "q", "action": "run_query_and_render_chart", "query": query, "chart": "html_table"},
            *deliveries,
        ],
    }


MAIL = {
    "id": "mail",
    "action": "send_email",
    "to": ["team@example.com"],
    "subject": "Storms",
    "attachments": ["q"],
}
GOOD_QUERY = "StormEvents | summarize Events = count() by State | top 3 by Events"


def haystacks(logs: Path, data: Path) -> dict[str, bytes]:
    """Every log, every file under the data folder (history database, blob store), and every
    text value of every table of the history database."""
    found = {f"log {path.name}": path.read_bytes() for path in sorted(logs.glob("*.log"))}
    for path in sorted(data.rglob("*")):
        if path.is_file():
            found[f"file {path.relative_to(data)}"] = path.read_bytes()
    database = sqlite3.connect(data / "history.db")
    try:
        tables = [row[0] for row in database.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        for table in tables:
            rows = database.execute(f'SELECT * FROM "{table}"').fetchall()
            values = "\n".join(str(value) for row in rows for value in row if value is not None)
            found[f"table {table}"] = values.encode()
    finally:
        database.close()
    return found


@pytest.mark.timeout(300)
async def test_no_secret_reaches_a_log_the_history_or_the_blob_store(
    tmp_path: Path, vhost: Vhost, namespace: str, wait_until: Any
) -> None:
    secrets = Secrets(
        amqp_password=vhost.password,
        api_token=f"api-token-{uuid.uuid4().hex}",
        smtp_password=f"smtp-pw-{uuid.uuid4().hex}",
        client_secret=f"client-secret-{uuid.uuid4().hex}",
        hook_token=f"hook-token-{uuid.uuid4().hex}",
        echo_token=f"echo-token-{uuid.uuid4().hex}",
    )
    smtp_user = "adxflow-sender"
    relay = Relay(smtp_user, secrets.smtp_password)
    receiver = Receiver()
    logs, data = tmp_path / "logs", tmp_path / "data"
    logs.mkdir()
    database = ensure_database(tmp_path / "kusto")
    await relay.start()
    await receiver.start()
    try:
        with LocalKusto(database, writable=False) as kusto:
            connections = tmp_path / "connections.yaml"
            connections.write_text(
                "connections:\n"
                f'  local: {{cluster: "{kusto.url}", auth: none}}\n'
                # A cluster nothing answers for: the query fails however the credential fares.
                f'  prod: {{cluster: "https://127.0.0.1:{free_port()}", auth: app_key, client_id: app,'
                " tenant_id: tenant, client_secret: {env: ADX_PROD_CLIENT_SECRET}}\n"
                "webhooks:\n"
                f'  alerts: {{url: "{receiver.url}/hook", headers: {{Authorization: {{env: HOOK_TOKEN}}}}}}\n'
                f'  echo: {{url: "{receiver.url}/echo", headers: {{X-Api-Key: {{env: ECHO_TOKEN}}}}}}\n'
            )
            trigger_port, history_port = free_port(), free_port()
            env = {
                **os.environ,
                "ADXFLOW_AMQP_URL": vhost.url,
                "ADXFLOW_NAMESPACE": namespace,
                "ADXFLOW_DATA_DIR": str(data),
                "ADXFLOW_CONNECTIONS_FILE": str(connections),
                "ADXFLOW_SMTP_PORT": str(relay.port),
                "ADXFLOW_SMTP_USERNAME": smtp_user,
                "ADXFLOW_SMTP_PASSWORD": secrets.smtp_password,
                "ADXFLOW_SMTP_TIMEOUT": "10",
                "ADXFLOW_API_TOKEN": secrets.api_token,
                "ADXFLOW_TRIGGER_PORT": str(trigger_port),
                "ADXFLOW_HISTORY_PORT": str(history_port),
                "ADXFLOW_MAX_ATTEMPTS": "2",
                "ADXFLOW_DELIVERY_MAX_ATTEMPTS": "2",
                "ADXFLOW_RETRY_BASE_SECONDS": "0.1",
                "ADXFLOW_LOG_LEVEL": "DEBUG",
                "ADX_PROD_CLIENT_SECRET": secrets.client_secret,
                "HOOK_TOKEN": f"Bearer {secrets.hook_token}",
                "ECHO_TOKEN": secrets.echo_token,
            }
            deployment = Deployment(
                env,
                f"http://127.0.0.1:{trigger_port}",
                f"http://127.0.0.1:{history_port}",
                smtp=None,  # type: ignore[arg-type]
                log_dir=logs,
            )
            try:
                for service in SERVICES:
                    await deployment.start(service)
                headers = {"Authorization": f"Bearer {secrets.api_token}"}
                async with aiohttp.ClientSession(headers=headers) as session:

                    async def ready() -> bool:
                        return await deployment.ready(session)

                    await wait_until(ready, timeout=60, what="the services to be ready")
                    runs = await run_flows(session, deployment, relay, wait_until)
            finally:
                await deployment.stop_all()
            await _delete_topology(vhost.url, namespace)
    finally:
        await receiver.close()
        await relay.close()

    assert runs["delivered"]["status"] == "succeeded", runs["delivered"]
    assert len(relay.received) == 1
    assert [headers["Authorization"] for headers in receiver.received] == [f"Bearer {secrets.hook_token}"]
    expected_failures = {
        "kusto-unreachable": "KustoUnavailable",
        "kusto-syntax": "KustoSyntaxError",
        "webhook-refused": "WebhookRejected",
        "smtp-login-refused": "SmtpRejected",
        "smtp-gone": "SmtpUnavailable",
    }
    assert {name: runs[name]["error"]["code"] for name in expected_failures} == expected_failures
    # The relay and the receiver quoted the secret back; the errors show it masked.
    assert "**********" in runs["smtp-login-refused"]["error"]["message"]
    assert "**********" in runs["webhook-refused"]["error"]["message"]

    found = haystacks(logs, data)
    everything = b"\n".join(found.values())
    # The search looks where the runs left their traces: debug logs of every service, each run's id.
    assert set(SERVICES) <= {name.removeprefix("log ").removesuffix(".log") for name in found}
    assert b'"level": "debug"' in everything
    for run in runs.values():
        assert run["run_id"].encode() in found["table runs"]
        assert run["run_id"].encode() in b"".join(v for k, v in found.items() if k.startswith("log "))
    assert any(name.startswith("file blobs/") for name in found)
    leaks = [
        f"{secret} in {place}"
        for secret, value in secrets.forms(smtp_user).items()
        for place, text in found.items()
        if value.encode() in text
    ]
    assert leaks == []


async def run_flows(
    session: aiohttp.ClientSession, deployment: Deployment, relay: Relay, wait_until: Any
) -> dict[str, dict[str, Any]]:
    """Run a flow that succeeds, then one for each way of failing; return each run as history has it."""
    flows = [
        flow(
            "delivered",
            "local",
            GOOD_QUERY,
            MAIL,
            {"id": "hook", "action": "post_webhook", "webhook": "alerts"},
        ),
        flow("kusto-unreachable", "prod", GOOD_QUERY, MAIL),
        flow("kusto-syntax", "local", "StormEvents | summarize by by", MAIL),
        flow(
            "webhook-refused",
            "local",
            GOOD_QUERY,
            {"id": "hook", "action": "post_webhook", "webhook": "echo"},
        ),
        flow("smtp-login-refused", "local", GOOD_QUERY, MAIL),
        flow("smtp-gone", "local", GOOD_QUERY, MAIL),
    ]
    for document in flows:
        async with session.put(
            f"{deployment.trigger_url}/v1/flows/{document['name']}", json=document
        ) as response:
            assert response.status == 201, await response.text()

    async def run(name: str) -> dict[str, Any]:
        async with session.post(f"{deployment.trigger_url}/v1/flows/{name}/runs", json={}) as response:
            assert response.status == 202, await response.text()
            run_id = (await response.json())["run_id"]
        latest: dict[str, Any] = {}

        async def ended() -> bool:
            async with session.get(f"{deployment.history_url}/v1/runs/{run_id}") as response:
                if response.status != 200:
                    return False
                latest.update(await response.json())
            return latest["status"] in ("succeeded", "failed")

        await wait_until(ended, timeout=90, what=f"the run of {name} to end")
        return latest

    runs = {}
    for name in ("delivered", "kusto-unreachable", "kusto-syntax", "webhook-refused"):
        runs[name] = await run(name)
    relay.refuse_from_now()
    runs["smtp-login-refused"] = await run("smtp-login-refused")
    await relay.close()
    runs["smtp-gone"] = await run("smtp-gone")
    return runs


async def _delete_topology(url: str, namespace: str) -> None:
    async with RabbitBroker(url, Topology(namespace), connection_name="operability-cleanup") as broker:
        await broker.delete_topology()
