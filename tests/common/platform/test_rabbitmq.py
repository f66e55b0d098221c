"""What only RabbitMQ shows of delays: where a message waits, how it comes out, and the upgrade.

The delay behaviour both brokers share is in test_broker.py.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import aio_pika
import pytest
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage

from common.contracts.messages import StepKind
from common.contracts.topology import DELAY_UNIT_MS, Topology
from common.platform.broker.interface import Delivery
from common.platform.broker.rabbitmq import RabbitBroker

pytestmark = pytest.mark.rabbitmq

#: As in test_broker.py: generous room for a busy machine over the 0.1 s rounding of the tiers.
LATE_MARGIN = 1.5


@pytest.fixture
async def topology(namespace: str, amqp_url: str) -> AsyncIterator[Topology]:
    """The test's namespace; whatever the test declared in it is deleted afterwards."""
    topology = Topology(namespace)
    try:
        yield topology
    finally:
        async with RabbitBroker(amqp_url, topology, connection_name=f"{namespace}-cleanup") as cleanup:
            await cleanup.delete_topology()


@pytest.fixture
async def channel(amqp_url: str) -> AsyncIterator[AbstractChannel]:
    """A plain channel beside the broker, to look into queues and to play an earlier version."""
    connection = await aio_pika.connect(amqp_url)
    async with connection:
        yield await connection.channel(publisher_confirms=True)


async def depth(channel: AbstractChannel, name: str) -> int:
    queue = await channel.declare_queue(name, passive=True)
    count = queue.declaration_result.message_count
    assert count is not None
    return count


async def test_a_long_delay_waits_in_its_own_tier_while_a_short_one_passes(
    amqp_url: str, topology: Topology, channel: AbstractChannel
) -> None:
    arrived: asyncio.Queue[Delivery] = asyncio.Queue()

    async def collect(delivery: Delivery) -> None:
        await arrived.put(delivery)

    async with RabbitBroker(amqp_url, topology, connection_name=topology.namespace) as broker:
        key = topology.step_key(StepKind.QUERY)
        await broker.consume(topology.step_queue(StepKind.QUERY), collect)
        await broker.publish(key, b"retry", message_id="long", delay=300)
        await broker.publish(key, b"poll", message_id="short", delay=1)

        delivery = await asyncio.wait_for(arrived.get(), 1 + LATE_MARGIN)
        assert delivery.message_id == "short"
        # 300 s is 3000 units: the long one sits in the tier of its highest digit, 204.8 s,
        # where nothing shorter ever waits behind it.
        highest = (300_000 // DELAY_UNIT_MS).bit_length() - 1
        depths = {tier.level: await depth(channel, tier.queue.name) for tier in topology.delay_tiers}
        assert depths == {tier.level: int(tier.level == highest) for tier in topology.delay_tiers}
        waiting = await channel.declare_queue(topology.delay_tiers[-1 - highest].queue.name, passive=True)
        message = await waiting.get(no_ack=False)
        assert message is not None
        assert (message.message_id, message.body) == ("long", b"retry")
        assert message.delivery_mode == aio_pika.DeliveryMode.PERSISTENT
        await message.nack(requeue=True)
        assert arrived.empty()


async def test_a_due_message_arrives_from_the_main_exchange_under_its_steps_key(
    amqp_url: str, topology: Topology, channel: AbstractChannel
) -> None:
    async with RabbitBroker(amqp_url, topology, connection_name=topology.namespace) as broker:
        target = topology.step_queue(StepKind.NOTIFY)
        queue = await channel.declare_queue(target.name, passive=True)
        arrived: asyncio.Future[AbstractIncomingMessage] = asyncio.get_running_loop().create_future()

        async def collect(message: AbstractIncomingMessage) -> None:
            await message.ack()
            if not arrived.done():
                arrived.set_result(message)

        await queue.consume(collect)
        await broker.publish(target.routing_key, b"later", message_id="m-1", delay=0.3)

        message = await asyncio.wait_for(arrived, 0.3 + LATE_MARGIN)
        assert (message.exchange, message.routing_key) == (topology.exchange, target.routing_key)
        assert (message.message_id, message.body) == ("m-1", b"later")
        assert message.delivery_mode == aio_pika.DeliveryMode.PERSISTENT
        # Three units of 0.1 s: it waited in tiers 0 and 1 only, then passed the release queue.
        deaths = message.headers["x-death"]
        assert isinstance(deaths, list)
        assert sorted((death["queue"], death["reason"]) for death in deaths) == [  # type: ignore[index]
            (topology.delay_tiers[-1].queue.name, "expired"),
            (topology.delay_tiers[-2].queue.name, "expired"),
            (topology.release_queue(target).name, "expired"),
        ]


async def test_an_old_delay_queue_is_left_alone_and_what_waits_there_still_arrives(
    amqp_url: str, topology: Topology, channel: AbstractChannel
) -> None:
    target = topology.step_queue(StepKind.QUERY)
    legacy = topology.legacy_delay_queue(target)
    # What the previous version declared: the main exchange, the step queue, one delay queue beside it.
    exchange = await channel.declare_exchange(topology.exchange, aio_pika.ExchangeType.DIRECT, durable=True)
    step = await channel.declare_queue(target.name, durable=True, arguments=target.arguments)
    await step.bind(exchange, target.routing_key)
    old = await channel.declare_queue(legacy.name, durable=True, arguments=legacy.arguments)
    await old.bind(exchange, legacy.routing_key)

    async def publish_as_before(body: bytes, message_id: str) -> None:
        message = aio_pika.Message(
            body, message_id=message_id, expiration=1, delivery_mode=aio_pika.DeliveryMode.PERSISTENT
        )
        await exchange.publish(message, routing_key=legacy.routing_key, mandatory=True)

    await publish_as_before(b"waiting since the old version", "old-1")
    assert await depth(channel, legacy.name) == 1

    arrived: asyncio.Queue[Delivery] = asyncio.Queue()

    async def collect(delivery: Delivery) -> None:
        await arrived.put(delivery)

    async with RabbitBroker(amqp_url, topology, connection_name=topology.namespace) as broker:
        await broker.consume(target, collect)
        # A replica of the old version, still running during a rolling upgrade.
        await publish_as_before(b"from an old replica", "old-2")

        deliveries = [await asyncio.wait_for(arrived.get(), 1 + LATE_MARGIN) for _ in range(2)]
        assert sorted((d.message_id, d.body) for d in deliveries) == [
            ("old-1", b"waiting since the old version"),
            ("old-2", b"from an old replica"),
        ]
        assert {d.routing_key for d in deliveries} == {target.routing_key}
        # Left alone: still there, empty now, for an operator to delete.
        assert await depth(channel, legacy.name) == 0


async def test_a_delay_beyond_the_longest_tier_waits_in_every_tier_from_the_top(
    amqp_url: str, topology: Topology, channel: AbstractChannel
) -> None:
    async with RabbitBroker(amqp_url, topology, connection_name=topology.namespace) as broker:
        await broker.publish(topology.step_key(StepKind.RENDER), b"next week", delay=7 * 86_400)

        # Cut to every tier once: it starts in the longest (14.6 hours), not lost, not early.
        depths = {tier.level: await depth(channel, tier.queue.name) for tier in topology.delay_tiers}
        top = topology.delay_tiers[0].level
        assert depths == {tier.level: int(tier.level == top) for tier in topology.delay_tiers}
        assert await depth(channel, topology.step_queue(StepKind.RENDER).name) == 0
