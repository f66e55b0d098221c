"""Exchanges, queues and routing keys, declared once.

Every name derives from one namespace so that tests can run side by side on
one RabbitMQ with random namespaces and delete what they made.

Delays (a retry's backoff, the next poll of an async command) wait in the
broker, so that a restart loses nothing. RabbitMQ has no delayed delivery
without a plugin, and it expires a message only once it is at the head of its
queue: with per-message expiry in one queue, a 1 s poll would wait behind a
5-minute retry. So a delay waits in *tiers*, the delay infrastructure of
NServiceBus's RabbitMQ transport:

- Tier *n* (0 to :data:`DELAY_LEVELS` - 1) is a topic exchange and a classic
  queue whose every message lives 0.1 s × 2ⁿ (the queue's ``x-message-ttl``),
  then dead-letters to the exchange of tier *n* - 1.
- A delayed message's routing key is its delay in units of the smallest tier,
  as binary digits from the longest tier down, then the target's routing key:
  ``0.….1.0.1.0.step.query`` waits 1 s (in the tiers of 0.8 s and 0.2 s)
  before going to the query step. Tier *n*'s exchange sends a message whose digit *n* is 1 into its
  queue and any other straight on to tier *n* - 1's exchange (an
  exchange-to-exchange binding), so each message waits only in the tiers of
  its own digits, and the broker alone moves it down: no consumer in between
  to run, scale or lose (a router service republishing from tier to tier
  would be one more thing that must be up for a delay to end).
- Below tier 0, the release exchange routes on the target's key to that
  target's release queue, whose zero TTL dead-letters the message at once to
  the main exchange under the target's own routing key: it arrives with its
  message id, body, headers (plus an ``x-death`` entry per queue it passed)
  and persistence, as if just published there, and the target quorum queue's
  delivery limit and dead-lettering apply unchanged; a dead letter from there
  carries the step's key, so replaying it works as for any other.

A message therefore waits its delay rounded up to 0.1 s, plus a few
milliseconds of dead-lettering per tier it passes, and never behind a message
of another delay: within one tier every message has the same TTL, so the
head of the queue is always the first one due. Classic queues, as the single
delay queue was: dead-lettering from them is at most once, so a message in
flight between two tiers when a broker node crashes can be lost, the same
guarantee as before (quorum tiers with at-least-once dead-lettering would close
that gap at the price of twenty Raft groups per installation).

The smallest tier is 0.1 s because an async command may poll every 0.05 s
and retries may start at a fraction of a second (the end-to-end tests use
0.2 s): a 1 s unit would stretch those tenfold. Twenty tiers reach past the
longest delay the project asks for: retry backoff stops at
``ADXFLOW_RETRY_MAX_SECONDS`` (at most a day), an async command polls at
least every 600 s and the notifier rechecks a delivery within 5 s. A delay
longer than :data:`LONGEST_DELAY` (29 hours) waits that long, with a warning
in the log; every step is idempotent, so early is harmless. The in-process
broker has no tiers: it delivers each message after exactly its own delay.

Upgrading from a version with one ``<queue>.delay`` queue per target
(per-message expiry, dead-lettering to the main exchange under the target's
key): this version leaves those queues alone. It never declares them (so a
queue left with other arguments cannot fail startup with PRECONDITION_FAILED),
binds, publishes to or deletes them; what waits there still dead-letters to its
target when due, and replicas of the old version still publish there during a
rolling upgrade. Once every replica runs this version and they are empty, an
operator deletes them (README, "Operating").
"""

from __future__ import annotations

from dataclasses import dataclass, field

from common.contracts.messages import StepKind

#: How often the broker may deliver a message before it is dead-lettered.
DELIVERY_LIMIT = 5

#: The TTL of the smallest delay tier, in milliseconds; every delay is rounded up to a multiple of it.
DELAY_UNIT_MS = 100
#: How many delay tiers, each holding twice as long as the one below (the longest 14.6 hours).
DELAY_LEVELS = 20
#: The longest delay the tiers can hold, in seconds (about 29.1 hours): every tier once.
LONGEST_DELAY = ((1 << DELAY_LEVELS) - 1) * DELAY_UNIT_MS / 1000


@dataclass(frozen=True)
class QueueSpec:
    name: str
    routing_key: str
    arguments: dict[str, object] = field(default_factory=dict, hash=False, compare=False)


@dataclass(frozen=True)
class DelayTier:
    """One tier of the delays: an exchange, and a queue holding for a fixed time (the module's docstring)."""

    level: int
    exchange: str
    #: Bound to :attr:`exchange` by the messages whose digit of this tier is 1.
    queue: QueueSpec
    #: The exchange below: where the queue dead-letters, and where the other messages go on at once.
    below: str
    #: The binding of :attr:`below` to :attr:`exchange`: the messages whose digit of this tier is 0.
    skip_key: str

    @property
    def seconds(self) -> float:
        return DELAY_UNIT_MS * (1 << self.level) / 1000


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

    @property
    def delay_targets(self) -> list[QueueSpec]:
        """The queues a message can be published to with a delay: every step queue."""
        return [self.step_queue(kind) for kind in StepKind if kind is not StepKind.TRIGGER]

    def delays_to(self, routing_key: str) -> bool:
        """Whether a message for *routing_key* can be delayed (its key leads to a delay target)."""
        return any(target.routing_key == routing_key for target in self.delay_targets)

    @property
    def delay_tiers(self) -> list[DelayTier]:
        """Every tier, the longest first: the first is where delayed messages are published."""
        return [self._delay_tier(level) for level in reversed(range(DELAY_LEVELS))]

    def _delay_tier(self, level: int) -> DelayTier:
        below = self.delay_release_exchange if level == 0 else self._delay_tier_name(level - 1)
        name = self._delay_tier_name(level)
        # The digit of this tier is word number (DELAY_LEVELS - 1 - level) of the routing key.
        before = "*." * (DELAY_LEVELS - 1 - level)
        return DelayTier(
            level=level,
            exchange=name,
            queue=QueueSpec(
                name=name,
                routing_key=f"{before}1.#",
                arguments={
                    "x-queue-type": "classic",
                    "x-message-ttl": DELAY_UNIT_MS << level,
                    "x-dead-letter-exchange": below,
                },
            ),
            below=below,
            skip_key=f"{before}0.#",
        )

    def _delay_tier_name(self, level: int) -> str:
        return f"{self.namespace}.delay-level-{level:02d}"

    @property
    def delay_release_exchange(self) -> str:
        """Where a message whose every digit has been waited out arrives; it routes on the target."""
        return f"{self.namespace}.delay-release"

    def release_queue(self, target: QueueSpec) -> QueueSpec:
        """The last hop to *target*: gives the message back its own routing key on the main exchange.

        A message-TTL of zero and no consumer: a message is dead-lettered the
        moment it arrives, under the target's routing key, so it reaches the
        target (and, should it later be dead-lettered from there, the
        dead-letter queue) exactly as if it had been published there.
        """
        return QueueSpec(
            name=f"{target.name}.release",
            routing_key="*." * DELAY_LEVELS + target.routing_key,
            arguments={
                "x-queue-type": "classic",
                "x-message-ttl": 0,
                "x-dead-letter-exchange": self.exchange,
                "x-dead-letter-routing-key": target.routing_key,
            },
        )

    @property
    def release_queues(self) -> list[QueueSpec]:
        return [self.release_queue(target) for target in self.delay_targets]

    def delay_route(self, routing_key: str, seconds: float) -> str:
        """The routing key that makes the tiers hold a message for *seconds*, then send it to *routing_key*.

        The delay is counted in whole units of the smallest tier, rounded up
        (to the millisecond first, so 0.3 s is three units, not four), so a
        message is never early; one longer than :data:`LONGEST_DELAY` waits
        that long. Its binary digits, the longest tier first, precede the key.
        """
        milliseconds = round(seconds * 1000)
        units = min(-(-milliseconds // DELAY_UNIT_MS), (1 << DELAY_LEVELS) - 1)
        digits = format(max(units, 0), f"0{DELAY_LEVELS}b")
        return ".".join([*digits, routing_key])

    def legacy_delay_queue(self, target: QueueSpec) -> QueueSpec:
        """The one delay queue per target of versions before the tiers (see the module's docstring).

        Declared nowhere any more: a running installation keeps it while it
        empties by itself, and teardown removes it. Its routing key on the
        main exchange was ``delay.<target's key>``.
        """
        return QueueSpec(
            name=f"{target.name}.delay",
            routing_key=f"delay.{target.routing_key}",
            arguments={
                "x-queue-type": "classic",
                "x-dead-letter-exchange": self.exchange,
                "x-dead-letter-routing-key": target.routing_key,
            },
        )

    @property
    def legacy_delay_queues(self) -> list[QueueSpec]:
        return [self.legacy_delay_queue(target) for target in self.delay_targets]

    @property
    def work_queues(self) -> list[QueueSpec]:
        """Queues bound to the main exchange; the trigger step has none (it is HTTP)."""
        kinds = [kind for kind in StepKind if kind is not StepKind.TRIGGER]
        return [*(self.step_queue(kind) for kind in kinds), self.status_queue, self.run_completed_queue]

    @property
    def run_completed_key(self) -> str:
        return "run.completed"

    @property
    def run_completed_queue(self) -> QueueSpec:
        """Runs that ended; the trigger starts the flows chained after them."""
        return self._queue("run-completed", self.run_completed_key)
