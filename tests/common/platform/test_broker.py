"""Broker behaviour, run against the in-process broker and real RabbitMQ alike."""

from __future__ import annotations

import asyncio

import pytest

from common.contracts.errors import DeadLetter, Requeue
from common.contracts.messages import StepKind
from common.contracts.topology import DELIVERY_LIMIT
from common.platform.broker.interface import REASON_HEADER, Broker, BrokerError, Delivery


class Inbox:
    """Collects deliveries; lets a test wait for the n-th one."""

    def __init__(self) -> None:
        self.deliveries: list[Delivery] = []
        self._changed = asyncio.Condition()

    async def add(self, delivery: Delivery) -> None:
        async with self._changed:
            self.deliveries.append(delivery)
            self._changed.notify_all()

    async def wait_for(self, count: int, timeout: float = 10.0) -> list[Delivery]:
        async with self._changed:
            await asyncio.wait_for(self._changed.wait_for(lambda: len(self.deliveries) >= count), timeout)
        return self.deliveries


async def test_published_message_reaches_the_bound_queue(broker: Broker) -> None:
    inbox = Inbox()
    topology = broker.topology
    await broker.consume(topology.step_queue(StepKind.QUERY), inbox.add)
    await broker.publish(topology.step_key(StepKind.QUERY), b'{"n": 1}', message_id="m-1")

    [delivery] = await inbox.wait_for(1)
    assert delivery.body == b'{"n": 1}'
    assert delivery.message_id == "m-1"
    assert delivery.redelivered is False


async def test_requeue_redelivers_the_same_message(broker: Broker) -> None:
    inbox = Inbox()

    async def fail_first(delivery: Delivery) -> None:
        await inbox.add(delivery)
        if len(inbox.deliveries) == 1:
            raise Requeue

    topology = broker.topology
    await broker.consume(topology.step_queue(StepKind.RENDER), fail_first)
    await broker.publish(topology.step_key(StepKind.RENDER), b"again", message_id="m-2")

    first, second = await inbox.wait_for(2)
    assert second.body == first.body == b"again"
    assert second.redelivered is True
    assert second.delivery_count == 2


async def test_dead_letter_goes_to_the_dead_letter_queue(broker: Broker) -> None:
    dead = Inbox()
    topology = broker.topology

    async def refuse(delivery: Delivery) -> None:
        raise DeadLetter

    await broker.consume(topology.step_queue(StepKind.NOTIFY), refuse)
    await broker.consume(topology.dead_letter_queue, dead.add)
    await broker.publish(topology.step_key(StepKind.NOTIFY), b"poison", message_id="m-3")

    [delivery] = await dead.wait_for(1)
    assert delivery.body == b"poison"


async def test_a_message_that_always_fails_is_dead_lettered_after_the_delivery_limit(broker: Broker) -> None:
    attempts = Inbox()
    dead = Inbox()
    topology = broker.topology

    async def always_fail(delivery: Delivery) -> None:
        await attempts.add(delivery)
        raise RuntimeError("boom")

    await broker.consume(topology.step_queue(StepKind.RECORD), always_fail)
    await broker.consume(topology.dead_letter_queue, dead.add)
    await broker.publish(topology.step_key(StepKind.RECORD), b"never", message_id="m-4")

    [delivery] = await dead.wait_for(1, timeout=30)
    assert delivery.body == b"never"
    assert DELIVERY_LIMIT <= len(attempts.deliveries) <= DELIVERY_LIMIT + 1


async def test_unroutable_publish_is_an_error(broker: Broker) -> None:
    with pytest.raises(BrokerError, match="no-such-key"):
        await broker.publish("no-such-key", b"lost?")


async def test_close_waits_for_the_handler_in_flight(broker: Broker) -> None:
    started = asyncio.Event()
    release = asyncio.Event()
    finished: list[bytes] = []

    async def slow(delivery: Delivery) -> None:
        started.set()
        await release.wait()
        finished.append(delivery.body)

    topology = broker.topology
    await broker.consume(topology.status_queue, slow)
    await broker.publish(topology.status_key, b"in-flight")
    await asyncio.wait_for(started.wait(), 10)

    closing = asyncio.create_task(broker.close())
    # Close is under way but must not finish while the handler holds its message.
    done, _ = await asyncio.wait({closing}, timeout=0.2)
    assert not done
    release.set()
    await asyncio.wait_for(closing, 10)
    assert finished == [b"in-flight"]


#: How late a delayed message may arrive. The tiers round a delay up to 0.1 s
#: and each tier a message passes adds milliseconds of dead-lettering; the rest
#: is room for a machine busy with other test runs. A correctness bound (a
#: short delay is not held up by a long one), not a speed figure.
LATE_MARGIN = 1.5


class Arrivals:
    """When each delayed message arrived, by body, on the loop's clock."""

    def __init__(self) -> None:
        self.inbox = Inbox()
        self.at: dict[bytes, float] = {}

    async def add(self, delivery: Delivery) -> None:
        self.at[delivery.body] = asyncio.get_running_loop().time()
        await self.inbox.add(delivery)


async def test_a_short_delay_is_not_held_up_by_a_long_one(broker: Broker) -> None:
    arrivals = Arrivals()
    topology = broker.topology
    key = topology.step_key(StepKind.QUERY)
    await broker.consume(topology.step_queue(StepKind.QUERY), arrivals.add)
    await broker.publish(key, b"retry in 5 minutes", message_id="long", delay=300)
    published = asyncio.get_running_loop().time()
    await broker.publish(key, b"poll in 1 s", message_id="short", delay=1)

    [delivery] = await arrivals.inbox.wait_for(1, timeout=1 + LATE_MARGIN)
    assert delivery.message_id == "short"
    assert 1 <= arrivals.at[b"poll in 1 s"] - published < 1 + LATE_MARGIN
    # The long one is still waiting: nothing else came.
    assert len(arrivals.inbox.deliveries) == 1


async def test_each_delayed_message_arrives_after_its_own_delay(broker: Broker) -> None:
    arrivals = Arrivals()
    topology = broker.topology
    await broker.consume(topology.step_queue(StepKind.RENDER), arrivals.add)
    loop = asyncio.get_running_loop()
    delays = [7.0, 2.5, 1.0, 0.3]
    published: dict[bytes, float] = {}
    # The longest first, so that each shorter one would be stuck behind it in a single queue.
    for delay in delays:
        body = f"{delay:g}".encode()
        published[body] = loop.time()
        await broker.publish(topology.step_key(StepKind.RENDER), body, delay=delay)

    deliveries = await arrivals.inbox.wait_for(len(delays), timeout=max(delays) + LATE_MARGIN)
    assert [d.body for d in deliveries] == [b"0.3", b"1", b"2.5", b"7"]
    for delay in delays:
        body = f"{delay:g}".encode()
        waited = arrivals.at[body] - published[body]
        assert delay <= waited < delay + LATE_MARGIN, (delay, waited)


async def test_a_delayed_message_keeps_its_id_body_key_and_delivery_limit(broker: Broker) -> None:
    attempts = Inbox()
    dead = Inbox()
    topology = broker.topology
    key = topology.step_key(StepKind.RECORD)

    async def always_fail(delivery: Delivery) -> None:
        await attempts.add(delivery)
        raise RuntimeError("boom")

    await broker.consume(topology.step_queue(StepKind.RECORD), always_fail)
    await broker.consume(topology.dead_letter_queue, dead.add)
    await broker.publish(key, b'{"later": true}', message_id="m-late", delay=0.3)

    [delivery] = await dead.wait_for(1, timeout=30)
    first = attempts.deliveries[0]
    assert (first.body, first.message_id, first.routing_key, first.delivery_count) == (
        b'{"later": true}',
        "m-late",
        key,
        1,
    )
    assert DELIVERY_LIMIT <= len(attempts.deliveries) <= DELIVERY_LIMIT + 1
    # Under the step's own key, so that replaying the dead letter sends it back to the step.
    assert (delivery.body, delivery.message_id, delivery.routing_key) == (b'{"later": true}', "m-late", key)


async def test_a_delayed_publish_where_no_delay_leads_is_an_error(broker: Broker) -> None:
    # Delays lead to the step queues only: not to the status queue, nor to an unbound key.
    for routing_key in [broker.topology.status_key, "no-such-key"]:
        with pytest.raises(BrokerError, match=routing_key):
            await broker.publish(routing_key, b"lost?", delay=1)


async def test_a_refused_message_reaches_the_dead_letters_whole_with_its_reason(broker: Broker) -> None:
    dead = Inbox()
    topology = broker.topology

    async def refuse(delivery: Delivery) -> None:
        await broker.refuse(delivery, "unreadable RunMessage: schema_version 2 is newer than this reader's 1")

    await broker.consume(topology.dead_letter_queue, dead.add)
    await broker.consume(topology.step_queue(StepKind.NOTIFY), refuse)
    await broker.publish(topology.step_key(StepKind.NOTIFY), b'{"schema_version": 2}', message_id="m-9")

    [letter] = await dead.wait_for(1)
    assert letter.body == b'{"schema_version": 2}'
    assert letter.message_id == "m-9"
    assert letter.routing_key == topology.step_key(StepKind.NOTIFY)
    assert letter.headers[REASON_HEADER] == (
        "unreadable RunMessage: schema_version 2 is newer than this reader's 1"
    )
