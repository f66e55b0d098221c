"""A delivery's attempts ride out a relay that is away for a minute, with the default settings:
the schedule worked out from the defaults, and the notifier's step worker driven through it
on a faster clock against a relay that comes up only after the attempts a minute can hold."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Callable

import pytest

from common.contracts.messages import StatusEvent, StepKind, StepStatus
from common.contracts.topology import Topology
from common.platform.broker.interface import Delivery
from common.platform.broker.memory import InProcessBroker
from common.platform.config import Settings
from common.platform.steps import RetryPolicy, StepWorker
from tests.relay import Relay
from tests.services.notifier.conftest import NotifierFactory

#: The relay outage the defaults must ride out, in seconds.
OUTAGE = 60.0


def delivery_policy(settings: Settings) -> RetryPolicy:
    return RetryPolicy.of(settings, max_attempts=settings.delivery_max_attempts)


def starts(policy: RetryPolicy, *, shortest: bool) -> list[float]:
    """When each attempt starts, counted from the first, with every wait its shortest or longest."""
    at, times = 0.0, [0.0]
    for attempt in range(1, policy.max_attempts):
        at += policy.ceiling(attempt) * (0.5 if shortest else 1.0)
        times.append(at)
    return times


def attempts_within(policy: RetryPolicy, seconds: float) -> int:
    """How many attempts can start within *seconds* of the first: those an outage that long can fail."""
    return sum(1 for at in starts(policy, shortest=True) if at < seconds)


def test_the_default_attempts_of_a_delivery_span_twice_a_relay_outage_of_a_minute() -> None:
    settings = Settings()
    policy = delivery_policy(settings)
    shortest, longest = starts(policy, shortest=True), starts(policy, shortest=False)
    print(
        f"\ndelivery attempts with the defaults: {policy.max_attempts}; last one starts "
        f"{shortest[-1]:g} to {longest[-1]:g} s after the first; "
        f"starts at the shortest waits: {', '.join(f'{at:g}' for at in shortest)} s"
    )

    assert shortest[-1] >= 2 * OUTAGE
    # At the shortest waits a minute's outage fails some attempts and leaves at least two.
    assert policy.max_attempts - attempts_within(policy, OUTAGE) >= 2
    # Each failed attempt tells history so; the longest quiet between two is far from a stall.
    quiet_before_stall = settings.query_timeout_seconds + settings.stall_grace_seconds
    assert max(policy.ceiling(attempt) for attempt in range(1, policy.max_attempts)) < quiet_before_stall
    # The other steps keep their own number of attempts.
    assert RetryPolicy.of(settings).max_attempts == settings.max_attempts


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture
async def broker(namespace: str) -> AsyncIterator[InProcessBroker]:
    async with InProcessBroker(Topology(namespace)) as in_process:
        yield in_process


async def test_a_relay_away_for_the_attempts_a_minute_holds_gets_the_email_within_the_defaults(
    notifier: NotifierFactory, broker: InProcessBroker
) -> None:
    defaults = delivery_policy(Settings())
    failing = attempts_within(defaults, OUTAGE)
    # The default schedule on a clock 100 times faster: the same attempts, the same shape.
    scale = 0.01
    faster = {
        "retry_base_seconds": Settings().retry_base_seconds * scale,
        "retry_max_seconds": Settings().retry_max_seconds * scale,
    }
    events: list[StatusEvent] = []
    changed = asyncio.Event()

    async def keep(delivery: Delivery) -> None:
        events.append(StatusEvent.model_validate_json(delivery.body))
        changed.set()

    def failed() -> list[StatusEvent]:
        return [e for e in events if e.step_id == "mail" and e.status is StepStatus.FAILED]

    async def until(predicate: Callable[[], bool], what: str) -> None:
        try:
            async with asyncio.timeout(30):
                while not predicate():
                    changed.clear()
                    await changed.wait()
        except TimeoutError:
            raise AssertionError(f"timed out waiting for {what}: {events}") from None

    port = free_port()
    async with notifier(**faster) as n:
        relay = Relay(port)
        step = n.step_to(relay.port)
        policy = delivery_policy(step.runtime.settings)
        assert policy.max_attempts == defaults.max_attempts
        await broker.consume(broker.topology.status_queue, keep)
        await StepWorker(broker, StepKind.NOTIFY, step.perform, policy).start(prefetch=1)
        run = await n.mail_run()
        await broker.publish_model(broker.topology.step_key(StepKind.NOTIFY), run)
        # Nothing listens on the relay's port until as many attempts as a minute can hold failed.
        await until(lambda: len(failed()) >= failing, "the attempts a minute's outage fails")
        async with relay:
            await until(lambda: any(e.status is StepStatus.SUCCEEDED for e in events), "the email")

    print(f"\nattempts failed while the relay was away: {len(failed())} of {policy.max_attempts}")
    assert [(e.attempt, e.error.code.value if e.error else None) for e in failed()] == [
        (attempt, "SmtpUnavailable") for attempt in range(1, failing + 1)
    ]
    assert all(e.retrying for e in failed())
    [succeeded] = [e for e in events if e.status is StepStatus.SUCCEEDED]
    assert succeeded.attempt == failing + 1 < policy.max_attempts
    assert len(relay.copies) == 1
