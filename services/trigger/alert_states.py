"""The rules of an alert's life: what one evaluation does to each of its instances.

An alert is evaluated each time its flow runs. Each instance (the whole alert, or one per
value of its key columns) moves through ``ok → pending → firing → ok``, or to ``error``
when the query failed and ``no_data`` when it returned nothing where rows were expected,
each of those as the alert's policy says. Pure: the caller loads the instances, asks
:func:`evaluate` what the evaluation at *now* changes, writes the instances it answers and
delivers what it says to deliver (unless a mute window or a silence holds it back; that is
the caller's to decide, and the state moves on regardless).

Only a change is notified: firing, resolved (back to ok from firing, error or no data),
error and no data, each once as it begins; while an instance stays firing (or in error),
``repeat_every`` notifies it again. ``pending_for`` makes a condition hold for that many
evaluations, or that long, before it fires; ``keep_firing_for`` keeps a firing instance
firing that long after its condition stops holding, so that a flapping one does not
resolve and fire again at every other evaluation.
"""

from __future__ import annotations

import datetime as dt
import enum
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any


class State(enum.StrEnum):
    OK = "ok"
    PENDING = "pending"
    FIRING = "firing"
    ERROR = "error"
    NO_DATA = "no_data"


class Outcome(enum.StrEnum):
    """What one evaluation found for one instance."""

    #: The condition holds.
    HOLDS = "holds"
    #: It does not.
    CLEAR = "clear"
    #: The query failed.
    ERROR = "error"
    #: The query returned nothing where the alert expects rows.
    NO_DATA = "no_data"


class Policy(enum.StrEnum):
    """What an error or no data does to an instance."""

    #: The instance goes to state ``error`` (or ``no_data``), and that is notified.
    STATE = "state"
    #: As if the condition held: the instance pends and fires.
    FIRING = "firing"
    #: As if it did not: a firing instance resolves.
    OK = "ok"
    #: Nothing changes; the evaluation is as if it had not happened.
    KEEP = "keep"


class Notice(enum.StrEnum):
    """What an evaluation has to tell about an instance."""

    FIRING = "firing"
    RESOLVED = "resolved"
    ERROR = "error"
    NO_DATA = "no_data"
    #: Still firing (or in error, or without data) after ``repeat_every``.
    REPEAT = "repeat"


@dataclass(frozen=True)
class Rules:
    """An alert's timing and policies."""

    #: Evaluations the condition must hold in a row before the instance fires (1: at once) ...
    pending_evaluations: int = 1
    #: ... or, when set, for how long (the first holding evaluation to one this long after).
    pending_for: dt.timedelta | None = None
    keep_firing_for: dt.timedelta = dt.timedelta(0)
    repeat_every: dt.timedelta | None = None
    on_error: Policy = Policy.STATE
    on_no_data: Policy = Policy.STATE
    #: Which changes are delivered; the others are recorded only.
    notify_firing: bool = True
    notify_resolved: bool = True

    def __post_init__(self) -> None:
        if self.pending_evaluations < 1:
            raise ValueError(f"pending_evaluations must be at least 1, not {self.pending_evaluations}")
        if self.pending_for is not None and self.pending_for < dt.timedelta(0):
            raise ValueError("pending_for must not be negative")
        if self.keep_firing_for < dt.timedelta(0):
            raise ValueError("keep_firing_for must not be negative")
        if self.repeat_every is not None and self.repeat_every <= dt.timedelta(0):
            raise ValueError("repeat_every must be positive")


@dataclass(frozen=True)
class Instance:
    """One instance's state between evaluations."""

    key: str
    state: State = State.OK
    #: When the instance entered its state.
    since: dt.datetime | None = None
    #: Holding evaluations in a row, while pending.
    pending_count: int = 0
    #: When the condition last held (for keep_firing_for).
    last_held: dt.datetime | None = None
    #: When the instance was last notified (for repeat_every); None once it is ok again.
    notified_at: dt.datetime | None = None
    #: The row it fired with (what is told of it when it resolves); not part of its state.
    row: Mapping[str, Any] | None = field(default=None, compare=False)

    @property
    def quiet(self) -> bool:
        """Nothing to remember: an ok instance, which a keyed alert need not keep."""
        return self.state is State.OK and self.pending_count == 0

    def next_repeat(self, rules: Rules) -> dt.datetime | None:
        """When the instance is due to be notified again, if it stays as it is."""
        if rules.repeat_every is None or self.notified_at is None:
            return None
        if self.state not in (State.FIRING, State.ERROR, State.NO_DATA):
            return None
        return self.notified_at + rules.repeat_every


@dataclass(frozen=True)
class Transition:
    """What one evaluation did to one instance: its state before and after, and what to tell."""

    key: str
    before: State
    after: State
    at: dt.datetime
    #: What to deliver; None when there is nothing to tell (or the rules record it only).
    notice: Notice | None
    #: Since when the instance was in its state before (for templates: "firing since ...").
    since: dt.datetime | None

    @property
    def changed(self) -> bool:
        return self.before is not self.after


@dataclass(frozen=True)
class Evaluation:
    """What :func:`evaluate` decided: every instance after it, and the transitions worth recording."""

    instances: dict[str, Instance]
    #: A transition per instance whose state changed or that has something to tell, in key order.
    transitions: list[Transition]

    def notices(self, notice: Notice) -> list[Transition]:
        return [transition for transition in self.transitions if transition.notice is notice]


def evaluate(
    rules: Rules,
    previous: Mapping[str, Instance],
    found: Mapping[str, Outcome],
    now: dt.datetime,
    *,
    absent: Outcome | None = Outcome.CLEAR,
) -> Evaluation:
    """Move every instance through one evaluation at *now*.

    *found* is what the evaluation found for each instance it saw; an instance of
    *previous* it did not see (a key whose rows are gone) counts as *absent*, which is
    ``CLEAR`` unless the whole evaluation found nothing; None leaves those instances as
    they are (when the query failed, only the alert as a whole is in error). Instances
    that end quiet are left out of the answer: a keyed alert keeps only the ones that
    matter. Linear in the instances.
    """
    instances: dict[str, Instance] = {}
    transitions: list[Transition] = []
    for key in sorted(set(previous) | set(found)):
        before = previous.get(key) or Instance(key)
        outcome = found.get(key, absent)
        if outcome is None:
            instances[key] = before
            continue
        after, notice = step(rules, before, outcome, now)
        if not after.quiet:
            instances[key] = after
        if after.state is not before.state or notice is not None:
            transitions.append(Transition(key, before.state, after.state, now, notice, before.since))
    return Evaluation(instances, transitions)


def step(
    rules: Rules, instance: Instance, outcome: Outcome, now: dt.datetime
) -> tuple[Instance, Notice | None]:
    """One instance through one evaluation: the instance after it, and what to notify."""
    effective = _apply_policy(rules, outcome)
    if effective is None:
        return instance, None
    if effective is Outcome.HOLDS:
        return _holds(rules, instance, now)
    if effective is Outcome.CLEAR:
        return _clear(rules, instance, now)
    state = State.ERROR if effective is Outcome.ERROR else State.NO_DATA
    return _problem(rules, instance, state, now)


def _apply_policy(rules: Rules, outcome: Outcome) -> Outcome | None:
    """The outcome as the alert's policy reads it; None to change nothing."""
    if outcome in (Outcome.HOLDS, Outcome.CLEAR):
        return outcome
    policy = rules.on_error if outcome is Outcome.ERROR else rules.on_no_data
    if policy is Policy.KEEP:
        return None
    if policy is Policy.FIRING:
        return Outcome.HOLDS
    if policy is Policy.OK:
        return Outcome.CLEAR
    return outcome


def _holds(rules: Rules, instance: Instance, now: dt.datetime) -> tuple[Instance, Notice | None]:
    held = replace(instance, last_held=now)
    if instance.state is State.FIRING:
        return _repeat(rules, held, now)
    count = instance.pending_count + 1 if instance.state is State.PENDING else 1
    pending_since = instance.since if instance.state is State.PENDING and instance.since else now
    if rules.pending_for is not None:
        due = now - pending_since >= rules.pending_for
    else:
        due = count >= rules.pending_evaluations
    if not due:
        return replace(held, state=State.PENDING, since=pending_since, pending_count=count), None
    fired = replace(held, state=State.FIRING, since=now, pending_count=0)
    return _notify(rules, fired, Notice.FIRING, now)


def _clear(rules: Rules, instance: Instance, now: dt.datetime) -> tuple[Instance, Notice | None]:
    if instance.state is State.FIRING:
        kept = instance.last_held is not None and now - instance.last_held < rules.keep_firing_for
        if kept:
            return _repeat(rules, instance, now)
    if instance.state in (State.FIRING, State.ERROR, State.NO_DATA):
        return Instance(instance.key, State.OK, since=now), Notice.RESOLVED if rules.notify_resolved else None
    if instance.state is State.PENDING:
        return Instance(instance.key, State.OK, since=now), None
    return instance, None


def _problem(
    rules: Rules, instance: Instance, state: State, now: dt.datetime
) -> tuple[Instance, Notice | None]:
    if instance.state is state:
        return _repeat(rules, instance, now)
    entered = replace(instance, state=state, since=now, pending_count=0)
    notice = Notice.ERROR if state is State.ERROR else Notice.NO_DATA
    # An error is told whatever the firing notifications are set to: it is about the alert itself.
    return replace(entered, notified_at=now), notice


def _notify(
    rules: Rules, instance: Instance, notice: Notice, now: dt.datetime
) -> tuple[Instance, Notice | None]:
    if notice is Notice.FIRING and not rules.notify_firing:
        return instance, None
    return replace(instance, notified_at=now), notice


def _repeat(rules: Rules, instance: Instance, now: dt.datetime) -> tuple[Instance, Notice | None]:
    due = instance.next_repeat(rules)
    if due is None or now < due:
        return instance, None
    return replace(instance, notified_at=now), Notice.REPEAT
