"""Exchanges, queues and routing keys, declared once.

Every name derives from one namespace so that tests can run side by side on
one RabbitMQ with random namespaces and delete what they made.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from common.contracts.messages import StepKind

#: How often the broker may deliver a message before it is dead-lettered.
DELIVERY_LIMIT = 5


@dataclass(frozen=True)
class QueueSpec:
    name: str
    routing_key: str
    arguments: dict[str, object] = field(default_factory=dict, hash=False, compare=False)


@dataclass(frozen=True)
class Topology:
    namespace: str = "adxflow"

    @property
    def exchange(self) -> str:
        return self.namespace

    @property
    def dead_letter_exchange(self) -> str:
        return f"{self.namespace}.dlx"

    def step_key(self, kind: StepKind) -> str:
        return f"step.{kind.value}"

    @property
    def status_key(self) -> str:
        return "status"

    def _queue(self, suffix: str, routing_key: str) -> QueueSpec:
        return QueueSpec(
            name=f"{self.namespace}.{suffix}",
            routing_key=routing_key,
            arguments={
                "x-queue-type": "quorum",
                "x-dead-letter-exchange": self.dead_letter_exchange,
                "x-delivery-limit": DELIVERY_LIMIT,
            },
        )

    def step_queue(self, kind: StepKind) -> QueueSpec:
        return self._queue(kind.value, self.step_key(kind))

    @property
    def status_queue(self) -> QueueSpec:
        return self._queue("status", self.status_key)

    @property
    def dead_letter_queue(self) -> QueueSpec:
        # Bound with "#" on a topic exchange: every dead letter lands here,
        # whatever queue it came from.
        return QueueSpec(
            name=f"{self.namespace}.dead",
            routing_key="#",
            arguments={"x-queue-type": "quorum"},
        )

    def delay_key(self, routing_key: str) -> str:
        return f"delay.{routing_key}"

    def delay_queue(self, target: QueueSpec) -> QueueSpec:
        """Where a message waits before it goes to *target*.

        RabbitMQ has no delayed delivery without a plugin: the message waits
        here with a per-message expiry, then dead-letters to the main exchange
        under the target's routing key. A classic queue, because quorum queues
        ignore per-message expiry on the versions this project supports.
        """
        return QueueSpec(
            name=f"{target.name}.delay",
            routing_key=self.delay_key(target.routing_key),
            arguments={
                "x-queue-type": "classic",
                "x-dead-letter-exchange": self.exchange,
                "x-dead-letter-routing-key": target.routing_key,
            },
        )

    @property
    def work_queues(self) -> list[QueueSpec]:
        """Queues bound to the main exchange; the trigger step has none (it is HTTP)."""
        kinds = [kind for kind in StepKind if kind is not StepKind.TRIGGER]
        return [*(self.step_queue(kind) for kind in kinds), self.status_queue, self.run_completed_queue]

    @property
    def delay_queues(self) -> list[QueueSpec]:
        kinds = [kind for kind in StepKind if kind is not StepKind.TRIGGER]
        return [self.delay_queue(self.step_queue(kind)) for kind in kinds]

    @property
    def run_completed_key(self) -> str:
        return "run.completed"

    @property
    def run_completed_queue(self) -> QueueSpec:
        """Runs that ended; the trigger starts the flows chained after them."""
        return self._queue("run-completed", self.run_completed_key)
