"""The broker interface: what every handler can count on, whichever broker runs it.

Both implementations (:mod:`~common.platform.broker.memory` in one process,
:mod:`~common.platform.broker.rabbitmq` deployed) give the same guarantees to a
handler: a message is acknowledged only when the handler returns (so whatever
the handler published has already been confirmed),
:class:`~common.contracts.errors.Requeue` or any unexpected exception puts it back
for redelivery, :class:`~common.contracts.errors.DeadLetter` sends it to the
dead-letter queue, and a message delivered
:data:`~common.contracts.topology.DELIVERY_LIMIT` times is dead-lettered.
"""

from __future__ import annotations

import abc
import asyncio
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import Self

import structlog
from pydantic import BaseModel

from common.contracts.errors import DeadLetter, Requeue
from common.contracts.topology import QueueSpec, Topology

log = structlog.get_logger(__name__)


#: The header of a dead letter that says why it was refused (a message no handler here can read).
REASON_HEADER = "x-adxflow-reason"


class BrokerError(Exception):
    """The broker did not take a message (unroutable, not confirmed, closed)."""


@dataclass(frozen=True)
class Delivery:
    body: bytes
    routing_key: str
    message_id: str | None = None
    redelivered: bool = False
    delivery_count: int = 1
    headers: Mapping[str, object] = field(default_factory=dict)


Handler = Callable[[Delivery], Awaitable[None]]


class Outcome:
    ACK = "ack"
    REQUEUE = "requeue"
    DEAD_LETTER = "dead_letter"


async def run_handler(handler: Handler, delivery: Delivery) -> str:
    """Run *handler* and say what should happen to the message."""
    try:
        await handler(delivery)
    except Requeue:
        return Outcome.REQUEUE
    except DeadLetter:
        return Outcome.DEAD_LETTER
    except asyncio.CancelledError:
        raise
    except Exception:
        # A bug or an outage the handler did not classify: try again, and let
        # the delivery limit dead-letter it if it never succeeds.
        log.exception("handler failed", routing_key=delivery.routing_key, message_id=delivery.message_id)
        return Outcome.REQUEUE
    return Outcome.ACK


class Broker(abc.ABC):
    """Publish with confirmation, consume with ack/requeue/dead-letter."""

    def __init__(self, topology: Topology) -> None:
        self.topology = topology

    @abc.abstractmethod
    async def start(self) -> None:
        """Connect and declare the topology."""

    @abc.abstractmethod
    async def close(self, grace: float = 10.0) -> None:
        """Stop consuming, let in-flight handlers finish for up to *grace* seconds, disconnect.

        What is still unfinished then goes back to its queue (it was never
        acknowledged). Idempotent.
        """

    @abc.abstractmethod
    async def publish(
        self, routing_key: str, body: bytes, *, message_id: str | None = None, delay: float | None = None
    ) -> None:
        """Return only once the broker has taken responsibility for the message.

        With *delay* (seconds), the message reaches its queue only after that long;
        only step queues take delayed messages. On RabbitMQ a delay is rounded up
        to the smallest delay tier (0.1 s) and waits at most
        :data:`~common.contracts.topology.LONGEST_DELAY`.
        """

    @abc.abstractmethod
    async def dead_letter(
        self, routing_key: str, body: bytes, *, message_id: str | None = None, reason: str | None = None
    ) -> None:
        """Put a message straight into the dead-letter queue (a step that gave up on it).

        *reason* travels in the :data:`REASON_HEADER` header; history shows it with the letter.
        """

    async def refuse(self, delivery: Delivery, reason: str) -> None:
        """Dead-letter *delivery* as it came, saying why: a message this release cannot read.

        Kept whole, it can be replayed once the reader is upgraded. The handler
        then returns normally, so the delivery itself is acknowledged.
        """
        await self.dead_letter(
            delivery.routing_key, delivery.body, message_id=delivery.message_id, reason=reason[:1000]
        )

    @abc.abstractmethod
    async def consume(self, queue: QueueSpec, handler: Handler, *, prefetch: int = 8) -> None:
        """Start delivering *queue* to *handler*, up to *prefetch* at a time."""

    @abc.abstractmethod
    async def ping(self) -> bool:
        """Whether the broker is reachable now."""

    @abc.abstractmethod
    async def consuming(self) -> bool:
        """Whether every queue this process consumes is attached now (and there is at least one)."""

    async def publish_model(
        self, routing_key: str, model: BaseModel, *, message_id: str | None = None, delay: float | None = None
    ) -> None:
        body = model.model_dump_json().encode("utf-8")
        await self.publish(routing_key, body, message_id=message_id, delay=delay)

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()
