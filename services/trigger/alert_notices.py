"""What an alert's evaluation tells now, and what it holds back: silences and mute windows.

:func:`services.trigger.alert_states.evaluate` decides each instance's state and what is worth
telling; this decides when it is told. A notice about an instance a silence covers is recorded
as silenced and never delivered. During a mute window every notice is held; the first
evaluation after the window releases what was held as one notice per instance of how it is
now against what was last told before the window (an instance that fired and resolved inside
the window tells nothing; one that started firing and still is tells "firing"), or drops it
(``at_end: drop``). Pure, like the state rules: the caller reads silences, the muting window
and the held notices, and stores what :func:`sort_out` answers.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

from services.trigger.alert_states import Evaluation, Notice, Rules, State

AtEnd = Literal["send", "drop"]


@dataclass(frozen=True)
class Silence:
    """A silence over the alert: every instance, or the one with *key*."""

    id: str
    key: str | None = None
    #: When it ends (for what shows it; an evaluation needs only that it is in force).
    ends_at: dt.datetime | None = None

    def covers(self, key: str) -> bool:
        return self.key is None or self.key == key


@dataclass(frozen=True)
class Held:
    """A notice a mute window holds back: the instance's state before it, and the window."""

    key: str
    notice: Notice
    before: State
    window: str
    #: When it was decided (the evaluation's time).
    at: dt.datetime


@dataclass(frozen=True)
class Told:
    """A notice to deliver now."""

    key: str
    notice: Notice
    #: The instance's state now, and the state it was told in before this notice.
    state: State
    previous: State
    #: Since when the instance was in *previous*.
    since: dt.datetime | None = None
    #: Released at a mute window's end (it was decided during the window).
    released: bool = False


@dataclass(frozen=True)
class Sorted:
    """What to tell now, and what to record of what is not told."""

    told: list[Told]
    #: Why a transition's notice is not delivered now, by key: ``silenced:<id>`` or ``muted:<window>``.
    withheld: dict[str, str] = field(default_factory=dict)
    #: Notices to hold until the muting window ends.
    hold: list[Held] = field(default_factory=list)
    #: The held notices read are done with (released or dropped): forget them.
    release: bool = False
    dropped: int = 0


def sort_out(
    rules: Rules,
    evaluation: Evaluation,
    *,
    silences: Sequence[Silence] = (),
    muting: str | None = None,
    held: Sequence[Held] = (),
    at_end: Mapping[str, AtEnd] | None = None,
) -> Sorted:
    """Sort *evaluation*'s notices into told, silenced and held.

    *muting* names the mute window the evaluation is in, if any; *held* is what earlier
    evaluations held, oldest first; *at_end* says per window whether its held notices are
    sent or dropped once it is over (a window no longer configured sends).
    """
    withheld: dict[str, str] = {}
    hold: list[Held] = []
    told: dict[str, Told] = {}

    def silence_of(key: str) -> Silence | None:
        return next((silence for silence in silences if silence.covers(key)), None)

    for transition in evaluation.transitions:
        if transition.notice is None:
            continue
        silence = silence_of(transition.key)
        if silence is not None:
            withheld[transition.key] = f"silenced:{silence.id}"
        elif muting is not None:
            withheld[transition.key] = f"muted:{muting}"
            hold.append(Held(transition.key, transition.notice, transition.before, muting, transition.at))
        else:
            told[transition.key] = Told(
                transition.key, transition.notice, transition.after, transition.before, transition.since
            )
    if muting is not None or not held:
        return Sorted(list(told.values()), withheld, hold)
    dropped = 0
    for key, notices in _by_key(held).items():
        first = notices[0]
        if (at_end or {}).get(first.window, "send") == "drop":
            dropped += 1
            continue
        instance = evaluation.instances.get(key)
        now = instance.state if instance is not None else State.OK
        notice = _net(rules, first.before, now, [held.notice for held in notices])
        told.pop(key, None)
        if notice is None:
            continue
        silence = silence_of(key)
        if silence is not None:
            withheld[key] = f"silenced:{silence.id}"
            continue
        since = instance.since if instance is not None else None
        told[key] = Told(key, notice, now, first.before, since, released=True)
    return Sorted(sorted(told.values(), key=lambda t: t.key), withheld, hold, release=True, dropped=dropped)


def _by_key(held: Sequence[Held]) -> dict[str, list[Held]]:
    grouped: dict[str, list[Held]] = {}
    for notice in held:
        grouped.setdefault(notice.key, []).append(notice)
    return grouped


#: Pending is not told: as far as anyone was told, a pending instance is ok.
def _told_as(state: State) -> State:
    return State.OK if state is State.PENDING else state


_ANNOUNCING = {
    State.FIRING: Notice.FIRING,
    State.OK: Notice.RESOLVED,
    State.ERROR: Notice.ERROR,
    State.NO_DATA: Notice.NO_DATA,
}


def _net(rules: Rules, before: State, now: State, notices: list[Notice]) -> Notice | None:
    """One notice for what a mute window held: how the instance is now, if that is news."""
    before, now = _told_as(before), _told_as(now)
    if now is before:
        return Notice.REPEAT if Notice.REPEAT in notices and now is not State.OK else None
    notice = _ANNOUNCING[now]
    if (notice is Notice.FIRING and not rules.notify_firing) or (
        notice is Notice.RESOLVED and not rules.notify_resolved
    ):
        return None
    return notice
