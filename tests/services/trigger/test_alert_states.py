"""An alert's instances through evaluations on a driven clock: every transition, pending,
keep-firing, repeat, error and no data under each policy, and keyed instances."""

from __future__ import annotations

import datetime as dt

import pytest

from services.trigger.alert_states import (
    Evaluation,
    Instance,
    Notice,
    Outcome,
    Policy,
    Rules,
    State,
    evaluate,
)

T0 = dt.datetime(2026, 3, 29, 0, 0, tzinfo=dt.UTC)
MINUTE = dt.timedelta(minutes=1)

HOLDS, CLEAR, ERROR, NO_DATA = Outcome.HOLDS, Outcome.CLEAR, Outcome.ERROR, Outcome.NO_DATA


class Clock:
    """Evaluations of one alert a minute apart, its instances carried from one to the next."""

    def __init__(self, rules: Rules) -> None:
        self.rules = rules
        self.now = T0
        self.instances: dict[str, Instance] = {}
        self.history: list[Evaluation] = []

    def tick(self, found: dict[str, Outcome] | Outcome, *, absent: Outcome = CLEAR) -> Evaluation:
        outcomes = {"": found} if isinstance(found, Outcome) else found
        evaluation = evaluate(self.rules, self.instances, outcomes, self.now, absent=absent)
        self.instances = evaluation.instances
        self.history.append(evaluation)
        self.now += MINUTE
        return evaluation

    def states(self) -> dict[str, State]:
        return {key: instance.state for key, instance in self.instances.items()}

    def notices(self, evaluation: Evaluation) -> list[tuple[str, Notice]]:
        return [(t.key, t.notice) for t in evaluation.transitions if t.notice is not None]


def run(rules: Rules, outcomes: list[Outcome]) -> list[tuple[State, Notice | None]]:
    """The single instance's state and notice after each evaluation."""
    clock = Clock(rules)
    seen = []
    for outcome in outcomes:
        evaluation = clock.tick(outcome)
        state = clock.instances[""].state if "" in clock.instances else State.OK
        notices = [t.notice for t in evaluation.transitions if t.notice is not None]
        assert len(notices) <= 1
        seen.append((state, notices[0] if notices else None))
    return seen


def test_a_condition_that_holds_fires_once_stays_quiet_and_resolves_once() -> None:
    assert run(Rules(), [CLEAR, HOLDS, HOLDS, HOLDS, HOLDS, HOLDS, CLEAR, CLEAR]) == [
        (State.OK, None),
        (State.FIRING, Notice.FIRING),
        (State.FIRING, None),
        (State.FIRING, None),
        (State.FIRING, None),
        (State.FIRING, None),
        (State.OK, Notice.RESOLVED),
        (State.OK, None),
    ]


def test_pending_for_evaluations_fires_only_after_that_many_in_a_row() -> None:
    rules = Rules(pending_evaluations=3)
    assert run(rules, [HOLDS, HOLDS, CLEAR, HOLDS, HOLDS, HOLDS, HOLDS]) == [
        (State.PENDING, None),
        (State.PENDING, None),
        # Broken off: pending starts again, and a pending instance resolves silently.
        (State.OK, None),
        (State.PENDING, None),
        (State.PENDING, None),
        (State.FIRING, Notice.FIRING),
        (State.FIRING, None),
    ]


def test_pending_for_a_duration_fires_at_the_first_evaluation_that_long_after_it_began() -> None:
    clock = Clock(Rules(pending_for=dt.timedelta(minutes=2, seconds=30)))
    states = [clock.tick(HOLDS) and clock.instances[""].state for _ in range(4)]
    assert states == [State.PENDING, State.PENDING, State.PENDING, State.FIRING]
    fired = clock.history[3].transitions[0]
    assert (fired.before, fired.after, fired.notice) == (State.PENDING, State.FIRING, Notice.FIRING)
    # The transition says since when it was pending: the first holding evaluation.
    assert fired.since == T0
    assert clock.instances[""].since == T0 + 3 * MINUTE


def test_keep_firing_for_holds_a_flapping_instance_firing_and_resolves_after_it() -> None:
    rules = Rules(keep_firing_for=dt.timedelta(minutes=2))
    assert run(rules, [HOLDS, CLEAR, HOLDS, CLEAR, CLEAR, CLEAR]) == [
        (State.FIRING, Notice.FIRING),
        (State.FIRING, None),
        (State.FIRING, None),
        (State.FIRING, None),
        # Two minutes after it last held.
        (State.OK, Notice.RESOLVED),
        (State.OK, None),
    ]


def test_repeat_every_notifies_again_while_firing_and_not_after_it_resolves() -> None:
    rules = Rules(repeat_every=dt.timedelta(minutes=3))
    outcomes = [HOLDS] * 8 + [CLEAR, HOLDS]
    notices = [notice for _, notice in run(rules, outcomes)]
    assert notices == [
        Notice.FIRING,
        None,
        None,
        Notice.REPEAT,
        None,
        None,
        Notice.REPEAT,
        None,
        Notice.RESOLVED,
        Notice.FIRING,
    ]


def test_next_repeat_says_when_the_instance_is_due_again() -> None:
    rules = Rules(repeat_every=dt.timedelta(hours=4))
    clock = Clock(rules)
    clock.tick(HOLDS)
    assert clock.instances[""].next_repeat(rules) == T0 + dt.timedelta(hours=4)
    assert clock.instances[""].next_repeat(Rules()) is None


@pytest.mark.parametrize(
    ("policy", "expected"),
    [
        (
            Policy.STATE,
            [
                (State.FIRING, Notice.FIRING),
                (State.ERROR, Notice.ERROR),
                (State.ERROR, None),
                (State.OK, Notice.RESOLVED),
            ],
        ),
        (
            Policy.KEEP,
            [
                (State.FIRING, Notice.FIRING),
                (State.FIRING, None),
                (State.FIRING, None),
                (State.OK, Notice.RESOLVED),
            ],
        ),
        (
            Policy.OK,
            [(State.FIRING, Notice.FIRING), (State.OK, Notice.RESOLVED), (State.OK, None), (State.OK, None)],
        ),
        (
            Policy.FIRING,
            [
                (State.FIRING, Notice.FIRING),
                (State.FIRING, None),
                (State.FIRING, None),
                (State.OK, Notice.RESOLVED),
            ],
        ),
    ],
    ids=["state", "keep", "ok", "firing"],
)
def test_an_error_does_what_its_policy_says(policy: Policy, expected: list[tuple[State, Notice]]) -> None:
    assert run(Rules(on_error=policy), [HOLDS, ERROR, ERROR, CLEAR]) == expected


def test_no_data_has_its_own_state_and_policy() -> None:
    assert run(Rules(), [NO_DATA, NO_DATA, HOLDS, CLEAR]) == [
        (State.NO_DATA, Notice.NO_DATA),
        (State.NO_DATA, None),
        (State.FIRING, Notice.FIRING),
        (State.OK, Notice.RESOLVED),
    ]
    assert run(Rules(on_no_data=Policy.OK, on_error=Policy.KEEP), [NO_DATA, ERROR, HOLDS]) == [
        (State.OK, None),
        (State.OK, None),
        (State.FIRING, Notice.FIRING),
    ]


def test_an_error_is_repeated_as_firing_is() -> None:
    rules = Rules(repeat_every=dt.timedelta(minutes=2))
    assert [notice for _, notice in run(rules, [ERROR, ERROR, ERROR, ERROR, ERROR])] == [
        Notice.ERROR,
        None,
        Notice.REPEAT,
        None,
        Notice.REPEAT,
    ]


def test_notifications_turned_off_are_recorded_as_transitions_only() -> None:
    clock = Clock(Rules(notify_firing=False, notify_resolved=False, repeat_every=MINUTE))
    fired = clock.tick(HOLDS)
    clock.tick(HOLDS)
    resolved = clock.tick(CLEAR)
    assert [(t.before, t.after, t.notice) for t in fired.transitions + resolved.transitions] == [
        (State.OK, State.FIRING, None),
        (State.FIRING, State.OK, None),
    ]
    assert clock.history[1].transitions == []


def test_keyed_instances_fire_and_resolve_each_on_its_own_and_only_live_ones_are_kept() -> None:
    clock = Clock(Rules())
    first = clock.tick({"a": HOLDS, "b": HOLDS})
    assert clock.notices(first) == [("a", Notice.FIRING), ("b", Notice.FIRING)]
    # b's rows are gone: b resolves; c is new; a stays firing and is not told again.
    second = clock.tick({"a": HOLDS, "c": HOLDS})
    assert clock.notices(second) == [("b", Notice.RESOLVED), ("c", Notice.FIRING)]
    assert clock.states() == {"a": State.FIRING, "c": State.FIRING}
    # The query failed: every instance is in error, the absent ones included.
    third = clock.tick({}, absent=ERROR)
    assert clock.notices(third) == [("a", Notice.ERROR), ("c", Notice.ERROR)]
    fourth = clock.tick({})
    assert clock.notices(fourth) == [("a", Notice.RESOLVED), ("c", Notice.RESOLVED)]
    assert clock.instances == {}


def test_a_thousand_keyed_instances_in_one_evaluation_each_once() -> None:
    clock = Clock(Rules(pending_evaluations=2))
    keys = [f"event-{index:04}" for index in range(1000)]
    assert clock.notices(clock.tick(dict.fromkeys(keys, HOLDS))) == []
    fired = clock.tick(dict.fromkeys(keys, HOLDS))
    assert clock.notices(fired) == [(key, Notice.FIRING) for key in keys]
    half = clock.tick(dict.fromkeys(keys[:500], HOLDS))
    assert clock.notices(half) == [(key, Notice.RESOLVED) for key in keys[500:]]
    assert len(clock.instances) == 500


def test_an_evaluation_resumed_from_stored_instances_goes_on_where_it_was() -> None:
    # The instances as stored after two of three pending evaluations (a restart in between).
    rules = Rules(pending_evaluations=3)
    before = Clock(rules)
    before.tick(HOLDS)
    before.tick(HOLDS)
    stored = {key: Instance(**vars(instance)) for key, instance in before.instances.items()}
    after = Clock(rules)
    after.instances, after.now = stored, before.now
    assert after.notices(after.tick(HOLDS)) == [("", Notice.FIRING)]


def test_rules_refuse_what_cannot_be_meant() -> None:
    with pytest.raises(ValueError, match="pending_evaluations"):
        Rules(pending_evaluations=0)
    with pytest.raises(ValueError, match="repeat_every"):
        Rules(repeat_every=dt.timedelta(0))
    with pytest.raises(ValueError, match="keep_firing_for"):
        Rules(keep_firing_for=-MINUTE)
