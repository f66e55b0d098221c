"""The notifier's consumer on RabbitMQ loses its connection (a proxy between them cuts it)
after a delivery's claim committed and before the send: the claim is given back at once,
and the redelivered message sends the email without waiting out the lease."""

from __future__ import annotations

import asyncio
from urllib.parse import urlsplit

import pytest
from structlog.testing import capture_logs

from common.contracts.messages import StepKind
from common.contracts.topology import Topology
from common.platform.broker.rabbitmq import RabbitBroker
from common.platform.steps import RetryPolicy, StepWorker
from services.notifier.ledger import Key
from tests.conftest import Waiter
from tests.proxy import Proxy
from tests.relay import Relay
from tests.services.notifier.conftest import NotifierFactory, PausedAfterClaim


@pytest.mark.rabbitmq
@pytest.mark.timeout(60)
async def test_a_broker_connection_lost_mid_claim_gives_the_claim_back_and_the_redelivery_sends_at_once(
    notifier: NotifierFactory, namespace: str, amqp_url: str, wait_until: Waiter
) -> None:
    server = urlsplit(amqp_url)
    assert server.hostname is not None
    async with Proxy(server.hostname, server.port or 5672) as proxy, notifier() as n, Relay() as relay:
        paused = PausedAfterClaim(n.runtime.settings.resolved_database_url)
        # A lease far longer than the test's timeout: a claim left to it would hold the redelivery.
        step = n.step_to(relay.port, paused, delivery_lease_seconds=600)
        through_proxy = server._replace(netloc=f"{server.username}:{server.password}@127.0.0.1:{proxy.port}")
        broker = RabbitBroker(
            through_proxy.geturl(), Topology(namespace), connection_name=f"outage-{namespace}"
        )
        try:
            with capture_logs() as logs:
                async with broker:
                    run = await n.mail_run()
                    await StepWorker(broker, StepKind.NOTIFY, step.perform, RetryPolicy()).start(prefetch=1)
                    await broker.publish_model(broker.topology.step_key(StepKind.NOTIFY), run)
                    await asyncio.wait_for(paused.claimed.wait(), 20)
                    proxy.cut()

                    async def connection_lost() -> bool:
                        return not await broker.ping()

                    await wait_until(connection_lost, timeout=20, what="the consumer to lose its connection")
                    paused.resume.set()

                    async def recorded() -> bool:
                        row = await paused.row(Key(run.run_id, run.step_id, "once"))
                        return row is not None and row["state"] == "sent"

                    await wait_until(recorded, timeout=40, what="the redelivered message to send the email")
                    row = await paused.row(Key(run.run_id, run.step_id, "once"))
        finally:
            await paused.close()
            async with RabbitBroker(
                amqp_url, Topology(namespace), connection_name="outage-cleanup"
            ) as cleanup:
                await cleanup.delete_topology()

    events = [entry["event"] for entry in logs]
    assert "delivery stopped before sending, its message taken away; its claim was given back" in events
    assert not any(event.startswith("delivery held by another worker") for event in events)
    assert proxy.cuts >= 2
    assert row is not None
    # Sent once, by the redelivered message: the first delivery gave its claim back unsent.
    assert row["detail"]["handovers"] == 1
    assert len(relay.copies) == 1
