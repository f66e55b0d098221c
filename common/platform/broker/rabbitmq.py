"""The broker on RabbitMQ, through aio-pika.

A robust connection (reconnects and re-declares after a drop), durable quorum
queues with a delivery limit and a dead-letter exchange, publisher confirms
with mandatory routing (an unroutable message is an error, not a silent drop),
and one channel per consumer with its own prefetch. Delayed messages wait in
the delay tiers of :mod:`~common.contracts.topology`, which the broker alone
moves them through.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Any

import aio_pika
import structlog
from aio_pika.abc import (
    AbstractChannel,
    AbstractExchange,
    AbstractIncomingMessage,
    AbstractQueue,
    AbstractRobustChannel,
    AbstractRobustConnection,
)
from aio_pika.exceptions import AMQPError, ChannelInvalidStateError, DeliveryError

from common.contracts.topology import LONGEST_DELAY, QueueSpec, Topology
from common.platform.broker.interface import (
    REASON_HEADER,
    Broker,
    BrokerError,
    Delivery,
    Handler,
    Outcome,
    run_handler,
)

log = structlog.get_logger(__name__)

#: What a publish or an ack raises while the connection is down or being restored.
_DISCONNECTED = (AMQPError, ChannelInvalidStateError, ConnectionError, TimeoutError)
#: How long to wait for a reconnected channel to be restored before publishing again.
_RESTORE_PAUSE = 0.2


class RabbitBroker(Broker):
    def __init__(
        self,
        url: str,
        topology: Topology,
        *,
        connection_name: str = "adxflow",
        reconnect_wait: float = 30.0,
    ) -> None:
        super().__init__(topology)
        self._url = url
        self._connection_name = connection_name
        #: How long a publish waits for a lost connection to come back before it fails.
        self._reconnect_wait = reconnect_wait
        self._connection: AbstractRobustConnection | None = None
        self._publish_channel: AbstractChannel | None = None
        self._exchange: AbstractExchange | None = None
        self._dead_letters: AbstractExchange | None = None
        #: The longest delay tier's exchange: where every delayed message starts.
        self._delays: AbstractExchange | None = None
        self._consumers: list[tuple[AbstractChannel, AbstractQueue, str]] = []
        self._in_flight: set[asyncio.Task[Any]] = set()

    def __repr__(self) -> str:
        # The URL may carry a password; never show it.
        return f"RabbitBroker(namespace={self.topology.namespace!r}, connection={self._connection_name!r})"

    async def start(self) -> None:
        self._connection = await aio_pika.connect_robust(
            self._url, client_properties={"connection_name": self._connection_name}
        )
        channel = await self._connection.channel(publisher_confirms=True, on_return_raises=True)
        self._publish_channel = channel
        self._exchange = await channel.declare_exchange(
            self.topology.exchange, aio_pika.ExchangeType.DIRECT, durable=True
        )
        dead_letters = await channel.declare_exchange(
            self.topology.dead_letter_exchange, aio_pika.ExchangeType.TOPIC, durable=True
        )
        self._dead_letters = dead_letters
        for spec in self.topology.work_queues:
            queue = await channel.declare_queue(spec.name, durable=True, arguments=spec.arguments)
            await queue.bind(self._exchange, spec.routing_key)
        self._delays = await self._declare_delays(channel)
        dead = self.topology.dead_letter_queue
        queue = await channel.declare_queue(dead.name, durable=True, arguments=dead.arguments)
        await queue.bind(dead_letters, dead.routing_key)

    async def _declare_delays(self, channel: AbstractRobustChannel) -> AbstractExchange:
        """Declare the release queues and the tiers, from the bottom up; return the top tier's exchange.

        The ``<queue>.delay`` queues of earlier versions are left alone: see the topology's docstring.
        """
        below = await channel.declare_exchange(
            self.topology.delay_release_exchange, aio_pika.ExchangeType.TOPIC, durable=True
        )
        for spec in self.topology.release_queues:
            queue = await channel.declare_queue(spec.name, durable=True, arguments=spec.arguments)
            await queue.bind(below, spec.routing_key)
        for tier in reversed(self.topology.delay_tiers):
            exchange = await channel.declare_exchange(
                tier.exchange, aio_pika.ExchangeType.TOPIC, durable=True
            )
            queue = await channel.declare_queue(tier.queue.name, durable=True, arguments=tier.queue.arguments)
            await queue.bind(exchange, tier.queue.routing_key)
            await below.bind(exchange, tier.skip_key)
            below = exchange
        return below

    async def publish(
        self, routing_key: str, body: bytes, *, message_id: str | None = None, delay: float | None = None
    ) -> None:
        if self._exchange is None or self._delays is None:
            raise BrokerError("broker is not started")
        message = aio_pika.Message(
            body,
            content_type="application/json",
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            message_id=message_id,
        )
        exchange, key = self._exchange, routing_key
        if delay and delay > 0:
            # The tiers route every key, known target or not, and would drop a message for
            # an unknown one only once it is due: refuse it now, as an unroutable publish.
            if not self.topology.delays_to(routing_key):
                raise BrokerError(f"no delayed delivery to routing key {routing_key!r}")
            if delay > LONGEST_DELAY:
                log.warning("delay cut to the longest tier", routing_key=routing_key, delay_seconds=delay)
            exchange, key = self._delays, self.topology.delay_route(routing_key, delay)
        await self._confirmed(lambda: exchange.publish(message, routing_key=key, mandatory=True), key)

    async def dead_letter(
        self, routing_key: str, body: bytes, *, message_id: str | None = None, reason: str | None = None
    ) -> None:
        if self._dead_letters is None:
            raise BrokerError("broker is not started")
        exchange = self._dead_letters
        message = aio_pika.Message(
            body,
            content_type="application/json",
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            message_id=message_id,
            headers={REASON_HEADER: reason} if reason else None,
        )
        await self._confirmed(
            lambda: exchange.publish(message, routing_key=routing_key, mandatory=True), routing_key
        )

    async def _confirmed(self, publish: Callable[[], Awaitable[object]], routing_key: str) -> None:
        """Publish until the broker confirms, riding out a reconnection for up to the reconnect wait.

        A publish that failed with the connection may still have reached the
        broker; sending it again is safe because every consumer is idempotent.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._reconnect_wait
        while True:
            try:
                await publish()
                return
            except DeliveryError as exc:
                raise BrokerError(f"RabbitMQ did not accept the message for {routing_key!r}: {exc}") from exc
            except _DISCONNECTED as exc:
                remaining = deadline - loop.time()
                if remaining <= 0 or self._connection is None:
                    raise BrokerError(
                        f"RabbitMQ unreachable while publishing to {routing_key!r}: {exc}"
                    ) from exc
                log.info("waiting for RabbitMQ to come back", routing_key=routing_key)
                connected = self._connection.connected
                if not connected.is_set():
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(connected.wait(), remaining)
                else:
                    # Connected again, the channel not yet restored: try again shortly.
                    await asyncio.sleep(min(_RESTORE_PAUSE, remaining))

    async def consume(self, queue: QueueSpec, handler: Handler, *, prefetch: int = 8) -> None:
        if self._connection is None:
            raise BrokerError("broker is not started")
        channel = await self._connection.channel()
        await channel.set_qos(prefetch_count=prefetch)
        source = await channel.declare_queue(queue.name, durable=True, arguments=queue.arguments)

        async def on_message(message: AbstractIncomingMessage) -> None:
            task = asyncio.current_task()
            if task is not None:
                self._in_flight.add(task)
            try:
                await self._handle(message, handler)
            finally:
                if task is not None:
                    self._in_flight.discard(task)

        tag = await source.consume(on_message)
        self._consumers.append((channel, source, tag))

    async def _handle(self, message: AbstractIncomingMessage, handler: Handler) -> None:
        headers = dict(message.headers or {})
        count = headers.get("x-delivery-count")
        delivery = Delivery(
            body=message.body,
            routing_key=message.routing_key or "",
            message_id=message.message_id,
            redelivered=bool(message.redelivered),
            delivery_count=int(count) + 1 if isinstance(count, int) else 1,
            headers=headers,
        )
        outcome = await run_handler(handler, delivery)
        try:
            if outcome == Outcome.ACK:
                await message.ack()
            elif outcome == Outcome.REQUEUE:
                await message.nack(requeue=True)
            else:
                await message.reject(requeue=False)
        except _DISCONNECTED as exc:
            # The channel went away with the message unacknowledged: RabbitMQ
            # delivers it again, and the step is idempotent.
            log.warning("could not settle a message; it will be redelivered", error=str(exc))

    async def ping(self) -> bool:
        # A robust connection is not closed while it reconnects; it is not connected either.
        connection = self._connection
        return connection is not None and not connection.is_closed and connection.connected.is_set()

    async def consuming(self) -> bool:
        if not self._consumers or not await self.ping():
            return False
        return not any(channel.is_closed for channel, _queue, _tag in self._consumers)

    async def close(self, grace: float = 10.0) -> None:
        consumers, self._consumers = self._consumers, []
        for _channel, queue, tag in consumers:
            with contextlib.suppress(*_DISCONNECTED, asyncio.CancelledError):
                await queue.cancel(tag)
        if self._in_flight:
            await asyncio.wait(set(self._in_flight), timeout=grace)
        for channel, _queue, _tag in consumers:
            with contextlib.suppress(*_DISCONNECTED):
                await channel.close()
        connection, self._connection = self._connection, None
        self._exchange = None
        self._dead_letters = None
        self._delays = None
        self._publish_channel = None
        if connection is not None:
            await connection.close()

    async def delete_topology(self) -> None:
        """Remove every queue and exchange of this namespace (tests and teardown)."""
        if self._connection is None:
            raise BrokerError("broker is not started")
        channel = await self._connection.channel()
        try:
            tiers = self.topology.delay_tiers
            for spec in [
                *self.topology.work_queues,
                *(tier.queue for tier in tiers),
                *self.topology.release_queues,
                *self.topology.legacy_delay_queues,
                self.topology.dead_letter_queue,
            ]:
                await channel.queue_delete(spec.name)
            for name in [
                self.topology.exchange,
                self.topology.dead_letter_exchange,
                *(tier.exchange for tier in tiers),
                self.topology.delay_release_exchange,
            ]:
                await channel.exchange_delete(name)
        finally:
            await channel.close()
