"""Broker ceiling: how fast ``RabbitBroker`` moves messages with publisher confirms.

On a fresh namespace, one ``RabbitBroker`` publishes persistent 2 KiB messages to the
query queue (a durable quorum queue, as deployed), each publish awaiting RabbitMQ's
confirm, from 1 or 16 tasks at once; another ``RabbitBroker`` (its own connection)
consumes that queue with the services' default prefetch of 8 and acknowledges each
message. The publish rate counts until the last confirm; the publish-and-consume rate
until the last message was handled. Both brokers run in this one process.

Delay lateness: with a 5-minute delayed message waiting, 20 messages delayed 1 s
are published at once to a consumed queue; the figure is how long after its
delay the latest of them was handled (the tiers round up to 0.1 s, so 1 s is
exact and the figure is the broker's dead-lettering from tier to tier).
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

from benchmarks.figures import Section
from benchmarks.servers import AMQP_URL, fresh_namespace
from common.contracts.messages import StepKind
from common.contracts.topology import Topology
from common.platform.broker.interface import Delivery
from common.platform.broker.rabbitmq import RabbitBroker

BODY = json.dumps({"padding": "x" * 2030}).encode()
PREFETCH = 8


async def ceiling(messages: int, publishers: int) -> tuple[float, float]:
    """Messages per second: published (confirmed), and published and consumed."""
    received = 0
    done = asyncio.Event()

    async def handle(delivery: Delivery) -> None:
        nonlocal received
        received += 1
        if received == messages:
            done.set()

    async with fresh_namespace() as namespace:
        topology = Topology(namespace)
        async with (
            RabbitBroker(AMQP_URL, topology, connection_name="bench-publisher") as publisher,
            RabbitBroker(AMQP_URL, topology, connection_name="bench-consumer") as consumer,
        ):
            await consumer.consume(topology.step_queue(StepKind.QUERY), handle, prefetch=PREFETCH)
            key = topology.step_key(StepKind.QUERY)
            pending = iter(range(messages))

            async def publish() -> None:
                for number in pending:
                    await publisher.publish(key, BODY, message_id=str(number))

            started = time.perf_counter()
            await asyncio.gather(*(publish() for _ in range(publishers)))
            published = time.perf_counter()
            await asyncio.wait_for(done.wait(), 120)
            finished = time.perf_counter()
    return messages / (published - started), messages / (finished - started)


async def lateness(messages: int) -> float:
    """Milliseconds past its 1 s delay that the last of *messages* delayed together was handled."""
    loop = asyncio.get_running_loop()
    arrived: list[float] = []
    done = asyncio.Event()

    async def handle(delivery: Delivery) -> None:
        arrived.append(loop.time())
        if len(arrived) == messages:
            done.set()

    async with fresh_namespace() as namespace:
        topology = Topology(namespace)
        async with RabbitBroker(AMQP_URL, topology, connection_name="bench-delays") as broker:
            await broker.consume(topology.step_queue(StepKind.QUERY), handle, prefetch=PREFETCH)
            key = topology.step_key(StepKind.QUERY)
            await broker.publish(key, BODY, message_id="long", delay=300)
            started = loop.time()
            await asyncio.gather(
                *(broker.publish(key, BODY, message_id=str(n), delay=1) for n in range(messages))
            )
            await asyncio.wait_for(done.wait(), 30)
    return (max(arrived) - started - 1.0) * 1000


async def run(section: Section, workdir: Path, *, quick: bool) -> None:
    rounds = 1 if quick else 3
    plan = {1: 50, 16: 50} if quick else {1: 1000, 16: 5000}
    for publishers, messages in plan.items():
        figures = [await ceiling(messages, publishers) for _ in range(rounds)]
        at = f"{publishers} publishing task{'s' if publishers > 1 else ''}"
        section.add(f"publish with confirms, {at}", "msg/s", [published for published, _ in figures])
        section.add(f"publish and consume, {at}", "msg/s", [both for _, both in figures])
        section.notes.append(f"{at}: {messages:,} messages a run, {rounds} run(s), a fresh namespace each.")
    delays = [await lateness(20) for _ in range(rounds)]
    section.add("1 s delay beside a 5-minute one, lateness of the last of 20", "ms", delays)


METHOD = __doc__.split("\n\n", 1)[1].strip()
