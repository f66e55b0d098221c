"""A notifier process killed with SIGKILL around the moment the relay accepts an email, on
RabbitMQ and PostgreSQL: another notifier process delivers it, and every copy the relay holds
is the same bytes with the same Message-ID, recorded as sent once."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, AsyncExitStack
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from common.contracts.flows import Flow, new_run
from common.contracts.messages import RunContext, StepKind, TriggerKind, new_id
from common.contracts.topology import Topology
from common.platform.broker.rabbitmq import RabbitBroker
from services.notifier.ledger import Key, Ledger
from tests.conftest import Waiter
from tests.e2e.test_processes import free_port
from tests.relay import Relay

FLOW: dict[str, Any] = {
    "name": "takeover",
    "description": "Storms today",
    "connection": "local",
    "database": "Samples",
    "steps": [{"id": "mail", "action": "send_email", "to": ["team@example.com"], "subject": "Storms"}],
}


class Notifiers:
    """Notifier processes, each with its own health port, sharing a broker, a ledger and blobs."""

    def __init__(self, env: dict[str, str], log_dir: Path) -> None:
        self.env = env
        self.log_dir = log_dir
        self.processes: dict[str, asyncio.subprocess.Process] = {}
        self.health: dict[str, str] = {}

    async def start(self, label: str, session: aiohttp.ClientSession, wait_until: Waiter) -> None:
        port = free_port()
        log = await asyncio.to_thread((self.log_dir / f"{label}.log").open, "ab")
        try:
            self.processes[label] = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "services.notifier",
                env={**self.env, "ADXFLOW_HEALTH_PORT": str(port)},
                stdout=asyncio.subprocess.DEVNULL,
                stderr=log,
            )
        finally:
            log.close()
        url = f"http://127.0.0.1:{port}/readyz"

        async def ready() -> bool:
            try:
                async with session.get(url) as response:
                    return response.status == 200
            except aiohttp.ClientError:
                return False

        await wait_until(ready, timeout=60, what=f"{label} to be ready")

    def kill(self, label: str) -> asyncio.subprocess.Process:
        process = self.processes.pop(label)
        process.send_signal(signal.SIGKILL)
        return process

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
async def relay() -> AsyncIterator[Relay]:
    async with Relay() as running:
        yield running


@pytest.fixture
async def deployed(
    tmp_path: Path,
    namespace: str,
    amqp_url: str,
    relay: Relay,
    postgres_database: Callable[[], AbstractAsyncContextManager[str]],
) -> AsyncIterator[tuple[Notifiers, RabbitBroker, Ledger]]:
    async with AsyncExitStack() as stack:
        url = await stack.enter_async_context(postgres_database())
        env = {
            **os.environ,
            "ADXFLOW_AMQP_URL": amqp_url,
            "ADXFLOW_NAMESPACE": namespace,
            "ADXFLOW_DATA_DIR": str(tmp_path / "data"),
            "ADXFLOW_DATABASE_URL": url,
            "ADXFLOW_SMTP_PORT": str(relay.port),
            "ADXFLOW_LOG_LEVEL": "INFO",
        }
        broker = RabbitBroker(amqp_url, Topology(namespace), connection_name=f"takeover-{namespace}")
        await stack.enter_async_context(broker)
        stack.push_async_callback(broker.delete_topology)
        ledger = Ledger(url)
        stack.push_async_callback(ledger.close)
        notifiers = Notifiers(env, tmp_path)
        stack.push_async_callback(notifiers.stop_all)
        yield notifiers, broker, ledger


@pytest.mark.rabbitmq
@pytest.mark.postgres
@pytest.mark.timeout(180)
@pytest.mark.parametrize("moment", ["before-the-250", "after-the-250"])
async def test_a_notifier_killed_as_the_relay_accepts_leaves_one_email_in_identical_copies(
    deployed: tuple[Notifiers, RabbitBroker, Ledger], relay: Relay, wait_until: Waiter, moment: str
) -> None:
    notifiers, broker, ledger = deployed
    arrived, answer = asyncio.Event(), asyncio.Event()
    if moment == "before-the-250":

        async def before_reply() -> None:
            # The first copy is at the relay; its sender is killed before it hears the answer.
            relay.before_reply = None
            arrived.set()
            await answer.wait()

        relay.before_reply = before_reply
    else:

        def after_reply() -> None:
            # The answer is on its way to the sender, which is killed now.
            relay.after_reply = None
            arrived.set()

        relay.after_reply = after_reply

    flow = Flow.model_validate(FLOW)
    run = new_run(flow, RunContext(flow=flow.name, trigger=TriggerKind.MANUAL), new_id())
    run = run.model_copy(update={"step_id": "mail"})
    key = Key(run.run_id, "mail", "once")
    async with aiohttp.ClientSession() as session:
        await notifiers.start("first", session, wait_until)
        await broker.publish_model(broker.topology.step_key(StepKind.NOTIFY), run)
        await asyncio.wait_for(arrived.wait(), 60)
        killed = notifiers.kill("first")
        killed_at = time.monotonic()
        assert await asyncio.wait_for(killed.wait(), 30) == -signal.SIGKILL
        answer.set()
        await notifiers.start("second", session, wait_until)

    async def recorded() -> bool:
        row = await ledger.row(key)
        return row is not None and row["state"] == "sent"

    await wait_until(recorded, timeout=90, what="the email recorded as sent")
    row = await ledger.row(key)
    assert row is not None
    seconds = time.monotonic() - killed_at
    print(
        f"\n{moment}: {len(relay.copies)} copies at the relay, recorded sent {seconds:.1f} s after the kill, "
        f"handed over {row['detail']['handovers']} times"
    )
    assert relay.copies
    assert all(copy == relay.copies[0] for copy in relay.copies)
    assert set(relay.message_ids()) == {f"<{run.run_id}.mail@adxflow>"}
    # Every hand-over but the one that was recorded went unanswered, or its answer was lost.
    assert row["detail"]["handovers"] == len(relay.copies)
    if moment == "before-the-250":
        # The first notifier never heard the answer: the second sent the kept copy again.
        assert len(relay.copies) == 2
