"""The in-process broker of embedded mode, with RabbitMQ's delivery semantics."""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, replace

import structlog

from common.contracts.topology import DELIVERY_LIMIT, QueueSpec, Topology
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


@dataclass
class _Consumer:
    dispatcher: asyncio.Task[None]
    in_flight: set[asyncio.Task[None]]


class InProcessBroker(Broker):
    """A broker inside the process, with RabbitMQ's delivery semantics.

    Nothing survives the process: it exists so that one command shows the
    whole product with nothing installed. Deployments use RabbitMQ.
    """

    def __init__(self, topology: Topology, *, delivery_limit: int = DELIVERY_LIMIT) -> None:
        super().__init__(topology)
        self._delivery_limit = delivery_limit
        self._queues: dict[str, asyncio.Queue[Delivery]] = {}
        self._bindings: dict[str, list[str]] = {}
        self._consumers: list[_Consumer] = []
        self._timers: set[asyncio.TimerHandle] = set()
        self._open = False

    async def start(self) -> None:
        for spec in self.topology.work_queues:
            self._queues.setdefault(spec.name, asyncio.Queue())
            self._bindings.setdefault(spec.routing_key, []).append(spec.name)
        self._queues.setdefault(self.topology.dead_letter_queue.name, asyncio.Queue())
        self._open = True

    def depth(self, queue: QueueSpec) -> int:
        """Messages waiting in *queue* (not counting those being handled)."""
        return self._queues[queue.name].qsize()

    async def publish(
        self, routing_key: str, body: bytes, *, message_id: str | None = None, delay: float | None = None
    ) -> None:
        if not self._open:
            raise BrokerError("broker is closed")
        targets = self._bindings.get(routing_key)
        if not targets:
            raise BrokerError(f"no queue is bound to routing key {routing_key!r}")
        if delay and delay > 0 and not self.topology.delays_to(routing_key):
            # As on RabbitMQ, whose delay tiers lead only to the step queues.
            raise BrokerError(f"no delayed delivery to routing key {routing_key!r}")
        for name in targets:
            delivery = Delivery(body=body, routing_key=routing_key, message_id=message_id)
            if delay:
                self._deliver_later(name, delivery, delay)
            else:
                self._queues[name].put_nowait(delivery)

    async def dead_letter(
        self, routing_key: str, body: bytes, *, message_id: str | None = None, reason: str | None = None
    ) -> None:
        if not self._open:
            raise BrokerError("broker is closed")
        headers = {REASON_HEADER: reason} if reason else {}
        delivery = Delivery(body=body, routing_key=routing_key, message_id=message_id, headers=headers)
        self._queues[self.topology.dead_letter_queue.name].put_nowait(delivery)

    def _deliver_later(self, queue: str, delivery: Delivery, delay: float) -> None:
        def deliver() -> None:
            self._timers.discard(handle)
            if self._open:
                self._queues[queue].put_nowait(delivery)

        handle = asyncio.get_running_loop().call_later(delay, deliver)
        self._timers.add(handle)

    async def consume(self, queue: QueueSpec, handler: Handler, *, prefetch: int = 8) -> None:
        if not self._open:
            raise BrokerError("broker is closed")
        source = self._queues[queue.name]
        in_flight: set[asyncio.Task[None]] = set()
        dispatcher = asyncio.create_task(self._dispatch(source, handler, prefetch, in_flight))
        self._consumers.append(_Consumer(dispatcher, in_flight))

    async def _dispatch(
        self,
        source: asyncio.Queue[Delivery],
        handler: Handler,
        prefetch: int,
        in_flight: set[asyncio.Task[None]],
    ) -> None:
        slots = asyncio.Semaphore(prefetch)
        while True:
            await slots.acquire()
            try:
                delivery = await source.get()
            except asyncio.CancelledError:
                slots.release()
                raise
            task = asyncio.create_task(self._handle(source, handler, delivery))
            in_flight.add(task)
            task.add_done_callback(in_flight.discard)
            task.add_done_callback(lambda _: slots.release())

    async def _handle(self, source: asyncio.Queue[Delivery], handler: Handler, delivery: Delivery) -> None:
        outcome = await run_handler(handler, delivery)
        if outcome == Outcome.ACK:
            return
        if outcome == Outcome.REQUEUE and delivery.delivery_count < self._delivery_limit:
            source.put_nowait(replace(delivery, redelivered=True, delivery_count=delivery.delivery_count + 1))
            return
        dead = self._queues[self.topology.dead_letter_queue.name]
        dead.put_nowait(replace(delivery, headers={**delivery.headers, "x-death-reason": outcome}))

    async def ping(self) -> bool:
        return self._open

    async def consuming(self) -> bool:
        return self._open and bool(self._consumers) and not any(c.dispatcher.done() for c in self._consumers)

    async def close(self, grace: float = 10.0) -> None:
        self._open = False
        for timer in self._timers:
            timer.cancel()
        self._timers.clear()
        consumers, self._consumers = self._consumers, []
        for consumer in consumers:
            consumer.dispatcher.cancel()
        for consumer in consumers:
            with contextlib.suppress(asyncio.CancelledError):
                await consumer.dispatcher
            if consumer.in_flight:
                await asyncio.wait(consumer.in_flight, timeout=grace)
