"""When a flow's trigger fires: its recurrence as pure functions of instants passed in.

Nothing here reads the clock or waits: every method is handed the instant it reasons
about, so the scheduler, an API preview and the tests all get the same answers.

A trigger recurs in one of two ways:

* ``every`` (``"30s"``, ``"15m"``, ``"1h30m"``, at most ``"31d"``): the slots are the
  Unix epoch plus whole multiples of the interval, in UTC (``1970-01-01T00:00Z + k *
  interval``). Every replica computes the same slots without coordinating, and a restart
  never shifts them. The flow's time zone plays no part: ``every: 1d`` fires at 00:00 UTC,
  and a flow that wants local midnight says ``cron: "0 0 * * *"``.
* ``cron`` (the five Debian cron fields, matched by cronsim): the slots are computed on
  the wall clock of the flow's time zone and returned in UTC, whole minutes.

Across daylight-saving changes cronsim behaves like Debian cron and cronie:

* An expression whose minute and hour fields are both fixed (neither starts with ``*``),
  such as ``0 8 * * *`` or ``30 2 * * 1-5``, is matched against the local wall clock. A
  time that does not exist on the spring-forward day (02:30 in Berlin on 2026-03-29) fires
  at the first minute that does exist after the gap (03:00 CEST, 01:00Z). A time that
  happens twice on the fall-back day (02:30 on 2026-10-25) fires once, at its first
  occurrence (02:30 CEST, 00:30Z). A daily job thus fires exactly once on every local date.
* Any other expression (``*/15 * * * *``, ``5 * * * *``, ``0 */2 * * *``) is matched
  against instants as they pass: the repeated hour of the fall-back day fires twice (an
  hourly job fires 25 times that day), the missing hour of the spring-forward day not at all
  (23 times), and ``0 */2 * * *`` skips 02:00 on that day rather than moving it.
"""

from __future__ import annotations

import datetime as dt
import itertools
import re
from collections.abc import Iterator
from dataclasses import dataclass
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from cronsim import CronSim, CronSimError

#: Where ``every`` slots are counted from.
EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
#: The longest ``every``; rarer schedules are clearer as cron expressions.
LONGEST_EVERY = dt.timedelta(days=31)
#: How many consecutive cron fires the minimum-interval check measures, from a fixed local
#: instant so that whether a flow is accepted never depends on the day it is loaded.
GAP_SAMPLE = 50
GAP_SAMPLE_START = dt.datetime(2001, 1, 1)

CRON_FIELDS = ("minute", "hour", "day-of-month", "month", "day-of-week")
_EVERY = re.compile(r"(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?")
_UNITS = (("day", 86400), ("hour", 3600), ("minute", 60), ("second", 1))
_NUMBER = re.compile(r"\d{1,2}")
_EVERY_EXAMPLES = "such as '30s', '15m', '2h', '1d' or '1h30m'"

#: latest_at_or_before looks back this far first, then twice as far until a slot turns up,
#: up to cronsim's own horizon (it stops looking after 50 years without a match).
_FIRST_LOOKBACK = dt.timedelta(hours=1)
_LONGEST_LOOKBACK = dt.timedelta(days=366 * 50)


class ScheduleError(ValueError):
    """A trigger that cannot be scheduled; the message starts with the field it is about."""

    def __init__(self, field: str, problem: str):
        super().__init__(f"{field}: {problem}")
        self.field = field
        self.problem = problem


def parse_every(text: str) -> dt.timedelta:
    """``"30s"``, ``"15m"``, ``"2h"``, ``"1d"``, ``"1h30m"``: units in that order, each at most once."""
    compact = text.strip().lower()
    match = _EVERY.fullmatch(compact)
    if not compact or match is None:
        problem = "is negative" if compact.startswith("-") else "is not an interval"
        raise ScheduleError(
            "trigger.every", f"{text!r} {problem}; write a number and a unit, {_EVERY_EXAMPLES}"
        )
    seconds = sum(int(count or 0) * size for count, (_, size) in zip(match.groups(), _UNITS, strict=True))
    if seconds == 0:
        raise ScheduleError("trigger.every", f"{text!r} is zero; an interval is at least 1 second")
    if seconds > LONGEST_EVERY.total_seconds():
        raise ScheduleError(
            "trigger.every",
            f"{text!r} is longer than {duration_words(LONGEST_EVERY)}; use a cron expression for rarer runs",
        )
    return dt.timedelta(seconds=seconds)


def duration_words(delta: dt.timedelta) -> str:
    """``timedelta(minutes=90)`` → ``"1 hour 30 minutes"``."""
    remaining = int(delta.total_seconds())
    words = []
    for unit, size in _UNITS:
        count, remaining = divmod(remaining, size)
        if count:
            words.append(f"{count} {unit}" + ("s" if count != 1 else ""))
    return " ".join(words) or "0 seconds"


@dataclass(frozen=True)
class Schedule:
    """One flow's recurrence: exactly one of ``cron`` and ``every``; checked on construction."""

    cron: str | None
    every: dt.timedelta | None
    timezone: str = "UTC"

    def __post_init__(self) -> None:
        if (self.cron is None) == (self.every is None):
            given = "both" if self.cron is not None else "neither"
            raise ScheduleError("trigger", f"set exactly one of trigger.cron and trigger.every (got {given})")
        _zone(self.timezone)
        if self.cron is not None:
            _check_cron(self.cron)
        elif self.every is not None and (
            not dt.timedelta(0) < self.every <= LONGEST_EVERY or self.every % dt.timedelta(seconds=1)
        ):
            raise ScheduleError(
                "trigger.every",
                f"{self.every} is not a whole number of seconds from 1 second to "
                f"{duration_words(LONGEST_EVERY)}",
            )

    @classmethod
    def build(
        cls,
        *,
        cron: str | None,
        every: str | None,
        timezone: str | None,
        minimum_interval: dt.timedelta = dt.timedelta(seconds=1),
    ) -> Schedule:
        """The schedule a flow's trigger fields describe, refused if it fires more often than the minimum."""
        schedule = cls(
            cron=" ".join(cron.split()) if cron is not None else None,
            every=parse_every(every) if every is not None else None,
            timezone="UTC" if timezone is None else timezone,
        )
        gap = schedule.shortest_gap()
        if gap < minimum_interval:
            allowed = f"the minimum interval of {duration_words(minimum_interval)} this server allows"
            if cron is None:
                raise ScheduleError("trigger.every", f"{every!r} is shorter than {allowed}")
            raise ScheduleError(
                "trigger.cron",
                f"{cron!r} fires as often as every {duration_words(gap)}, more often than {allowed}",
            )
        return schedule

    @property
    def zone(self) -> ZoneInfo:
        return _zone(self.timezone)

    def shortest_gap(self) -> dt.timedelta:
        """The interval, or for cron the shortest gap between consecutive fires in a fixed sample.

        The sample is the first :data:`GAP_SAMPLE` fires after :data:`GAP_SAMPLE_START`: enough
        to show an expression's pattern. A gap that only a daylight-saving change shortens
        counts only if the sample reaches that day.
        """
        if self.every is not None:
            return self.every
        fires = list(
            itertools.islice(self._cron_fires(GAP_SAMPLE_START.replace(tzinfo=self.zone)), GAP_SAMPLE)
        )
        if len(fires) < 2:
            raise ScheduleError("trigger.cron", f"{self.cron!r} does not fire twice in 50 years")
        return min(later - earlier for earlier, later in itertools.pairwise(fires))

    def next_after(self, after: dt.datetime) -> dt.datetime:
        """The first slot strictly after ``after``, in UTC."""
        _require_aware(after, "after")
        if self.every is not None:
            return EPOCH + ((after - EPOCH) // self.every + 1) * self.every
        fire = next(self._cron_fires(after), None)
        if fire is None:
            raise ScheduleError("trigger.cron", f"{self.cron!r} does not fire in the 50 years after {after}")
        return fire

    def latest_at_or_before(
        self, now: dt.datetime, *, not_before: dt.datetime | None = None
    ) -> dt.datetime | None:
        """The most recent slot at or before ``now`` (and after ``not_before``), in UTC.

        What a scheduler fires after downtime when it runs only the latest missed slot:
        ``not_before`` is the slot it fired last, so the same slot never fires twice.
        """
        _require_aware(now, "now")
        if not_before is not None:
            _require_aware(not_before, "not_before")
        if self.every is not None:
            slot = EPOCH + ((now - EPOCH) // self.every) * self.every
            return slot if not_before is None or slot > not_before else None
        lookback = _FIRST_LOOKBACK
        while True:
            start, bounded = now - lookback, False
            if not_before is not None and start <= not_before:
                start, bounded = not_before, True
            latest = None
            for fire in self._cron_fires(start):
                if fire > now:
                    break
                latest = fire
            if latest is not None or bounded or lookback >= _LONGEST_LOOKBACK:
                return latest
            lookback *= 2

    def slots_between(self, start: dt.datetime, end: dt.datetime, *, limit: int = 1000) -> list[dt.datetime]:
        """The slots in ``(start, end]``, in UTC and in order: the earliest ``limit`` of them.

        For a scheduler that runs every missed slot; past the limit it carries on from the
        last slot returned.
        """
        _require_aware(start, "start")
        _require_aware(end, "end")
        if limit < 1:
            raise ValueError(f"limit must be at least 1, got {limit}")
        if self.every is not None:
            first = (start - EPOCH) // self.every + 1
            last = min((end - EPOCH) // self.every, first + limit - 1)
            return [EPOCH + k * self.every for k in range(first, last + 1)]
        fires = itertools.takewhile(lambda fire: fire <= end, self._cron_fires(start))
        return list(itertools.islice(fires, limit))

    def describe(self) -> str:
        """In words: ``"every day at 08:00 Europe/Berlin"``, ``"every 15 minutes"``."""
        if self.every is not None:
            words = duration_words(self.every)
            # "every hour", but "every 1 hour 30 minutes"
            return "every " + (words[2:] if words.startswith("1 ") and words.count(" ") == 1 else words)
        assert self.cron is not None
        minute, hour, day, month, weekday = self.cron.split()
        if (day, month, weekday) == ("*", "*", "*"):
            if _NUMBER.fullmatch(minute) and _NUMBER.fullmatch(hour):
                return f"every day at {int(hour):02d}:{int(minute):02d} {self.timezone}"
            if _NUMBER.fullmatch(minute) and hour == "*":
                return f"every hour at minute {int(minute)} {self.timezone}"
            if (minute, hour) == ("*", "*"):
                return "every minute"
        explained = CronSim(self.cron, GAP_SAMPLE_START).explain()
        return f"cron '{self.cron}' in {self.timezone} ({explained[:1].lower()}{explained[1:]})"

    def _cron_fires(self, after: dt.datetime) -> Iterator[dt.datetime]:
        """The cron fires strictly after ``after``, in UTC and in order."""
        assert self.cron is not None
        latest = after.astimezone(dt.UTC)
        for fire in CronSim(self.cron, after.astimezone(self.zone)):
            instant = fire.astimezone(dt.UTC)
            # cronsim matches fixed-time expressions on a naive wall clock, which forgets
            # which pass of a repeated fall-back hour `after` was in: from 02:10 CET (the
            # second pass) "30 2 * * *" answers 02:30 CEST, an hour *before* `after`.
            if instant > latest:
                latest = instant
                yield instant


def _zone(name: str) -> ZoneInfo:
    # "localtime" loads too, but means whatever the machine is set to.
    if name != "localtime":
        try:
            return ZoneInfo(name)
        except (ZoneInfoNotFoundError, ValueError, OSError):
            pass
    raise ScheduleError("trigger.timezone", f"{name!r} is not an IANA time zone name such as 'Europe/Berlin'")


def _check_cron(expression: str) -> None:
    fields = expression.split()
    if len(fields) != len(CRON_FIELDS):
        raise ScheduleError(
            "trigger.cron",
            f"{expression!r} has {len(fields)} fields; a cron expression has {len(CRON_FIELDS)}: "
            + " ".join(CRON_FIELDS),
        )
    try:
        CronSim(expression, GAP_SAMPLE_START)
    except CronSimError as exc:
        raise ScheduleError("trigger.cron", f"{expression!r} is not a valid cron expression: {exc}") from None


def _require_aware(instant: dt.datetime, name: str) -> None:
    if instant.utcoffset() is None:
        raise ValueError(f"{name} must be timezone-aware, got {instant!r}")
