"""The delay tiers as names and numbers; test_broker.py and test_rabbitmq.py show them on a broker."""

from __future__ import annotations

import itertools

import pytest

from common.contracts.messages import StepKind
from common.contracts.topology import DELAY_LEVELS, DELAY_UNIT_MS, LONGEST_DELAY, Topology

topology = Topology("ns")
KEY = topology.step_key(StepKind.QUERY)


def waits(route: str) -> float:
    """The seconds a routing key makes a message wait: the tiers of its digits that are 1."""
    *digits, _step, _kind = route.split(".")
    assert len(digits) == DELAY_LEVELS
    return sum(tier.seconds for tier, digit in zip(topology.delay_tiers, digits, strict=True) if digit == "1")


@pytest.mark.parametrize(
    ("seconds", "waited"),
    [
        (0.3, 0.3),
        (1.0, 1.0),
        (1.1, 1.1),
        (2.5, 2.5),
        (0.05, 0.1),
        (0.35, 0.4),
        (300.0, 300.0),
        (86_400.0, 86_400.0),
    ],
)
def test_a_delay_waits_its_own_length_rounded_up_to_the_smallest_tier(seconds: float, waited: float) -> None:
    route = topology.delay_route(KEY, seconds)
    assert route.endswith(f".{KEY}")
    assert waits(route) == pytest.approx(waited)


def test_a_delay_beyond_the_tiers_waits_the_longest_they_hold() -> None:
    assert waits(topology.delay_route(KEY, 7 * 86_400)) == pytest.approx(LONGEST_DELAY)
    assert LONGEST_DELAY > 86_400, "the longest retry backoff the settings allow is a day"


def test_each_tier_holds_twice_as_long_as_the_one_below_and_dead_letters_to_it() -> None:
    tiers = list(reversed(topology.delay_tiers))
    assert [tier.queue.arguments["x-message-ttl"] for tier in tiers] == [
        DELAY_UNIT_MS * 2**level for level in range(DELAY_LEVELS)
    ]
    assert tiers[0].below == topology.delay_release_exchange
    for lower, upper in itertools.pairwise(tiers):
        assert upper.below == upper.queue.arguments["x-dead-letter-exchange"] == lower.exchange


def test_release_queues_send_to_the_steps_own_keys_on_the_main_exchange() -> None:
    for target, release in zip(topology.delay_targets, topology.release_queues, strict=True):
        assert release.arguments["x-message-ttl"] == 0
        assert release.arguments["x-dead-letter-exchange"] == topology.exchange
        assert release.arguments["x-dead-letter-routing-key"] == target.routing_key


def test_the_delay_names_are_new_beside_those_of_the_single_delay_queues() -> None:
    # Reusing an old name with other arguments would fail startup with PRECONDITION_FAILED.
    new = {tier.queue.name for tier in topology.delay_tiers} | {q.name for q in topology.release_queues}
    old = {queue.name for queue in topology.legacy_delay_queues}
    assert len(old) == len(topology.delay_targets)
    assert not new & old
    assert not new & {queue.name for queue in topology.work_queues}
