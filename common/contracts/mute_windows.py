"""Mute windows: named, reusable stretches of wall-clock time in a zone when alerts deliver nothing.

A window is a set of weekdays, times of day and dates in its time zone, each optional
(all of them given must match): ``weekdays: [mon-fri]``, ``times: ["22:00-24:00",
"00:00-07:00"]``, ``dates: ["2026-12-24..2026-12-26"]``. It is read in wall-clock time,
so it follows daylight saving as people do: a window of 01:00-04:00 lasts two hours on the
night the clocks go forward and four on the night they go back. During a window an alert
is still evaluated and its state recorded; its deliveries are held, and at the window's end
sent (``at_end: send``, one delivery of the latest state) or dropped.
"""

from __future__ import annotations

import datetime as dt
import re
from typing import Annotated, Literal
from zoneinfo import ZoneInfo

from pydantic import Field, ValidationInfo, field_validator, model_validator

from common.contracts.documents import Document, known_zone
from common.contracts.parameters import Identifier

WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_TIMES = re.compile(r"^([01]\d|2[0-3]):([0-5]\d)-([01]\d|2[0-4]):([0-5]\d)$")
_DATES = re.compile(r"^(\d{4}-\d{2}-\d{2})(?:\.\.(\d{4}-\d{2}-\d{2}))?$")
#: How far :meth:`MuteWindow.ends_after` looks for the window's end (a window every day ends never).
_HORIZON = dt.timedelta(days=400)


class MuteWindow(Document):
    name: Identifier
    timezone: str = "UTC"
    #: Days of the week (``mon``, ``sat-sun``); none: every day.
    weekdays: list[str] = Field(default_factory=list)
    #: Times of day, ``HH:MM-HH:MM`` (the end excluded; ``24:00`` is midnight at the end of the day);
    #: none: the whole day. A stretch across midnight is two: ``22:00-24:00`` and ``00:00-06:00``.
    times: list[str] = Field(default_factory=list)
    #: Dates, ``YYYY-MM-DD`` or ``YYYY-MM-DD..YYYY-MM-DD`` (both included); none: any date.
    dates: list[str] = Field(default_factory=list)
    #: What happens to deliveries held during the window when it ends.
    at_end: Literal["send", "drop"] = "send"
    description: Annotated[str | None, Field(max_length=500)] = None

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        return known_zone(value)

    @field_validator("weekdays", "times", "dates")
    @classmethod
    def _readable(cls, values: list[str], info: ValidationInfo) -> list[str]:
        read = {"weekdays": _weekdays, "times": _time_range, "dates": _date_range}[info.field_name or ""]
        for value in values:
            read(value)
        return values

    @model_validator(mode="after")
    def _some_time(self) -> MuteWindow:
        if not (self.weekdays or self.times or self.dates):
            raise ValueError(
                "a mute window needs weekdays, times or dates (without any it would mute always)"
            )
        return self

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)

    def mutes(self, instant: dt.datetime) -> bool:
        """Whether the window holds deliveries at *instant* (timezone-aware)."""
        local = _aware(instant).astimezone(self.zone)
        if self.dates and not any(low <= local.date() <= high for low, high in map(_date_range, self.dates)):
            return False
        days = {day for value in self.weekdays for day in _weekdays(value)}
        if days and local.weekday() not in days:
            return False
        minute = local.hour * 60 + local.minute
        return not self.times or any(low <= minute < high for low, high in map(_time_range, self.times))

    def ends_after(self, instant: dt.datetime) -> dt.datetime | None:
        """The first instant at or after *instant* the window does not mute; None if it mutes for
        good (as far as the next 400 days go)."""
        moment = _aware(instant)
        limit = moment + _HORIZON
        while self.mutes(moment):
            moment = self._next_boundary(moment)
            if moment > limit:
                return None
        return moment

    def _next_boundary(self, instant: dt.datetime) -> dt.datetime:
        """The next instant after *instant* where the window may change: the end of the time range
        it is in, else the next local midnight."""
        local = instant.astimezone(self.zone)
        minute = local.hour * 60 + local.minute
        ends = [high for low, high in map(_time_range, self.times) if low <= minute < high]
        day = local.date()
        if ends and max(ends) < 24 * 60:
            hours, minutes = divmod(max(ends), 60)
            wall = dt.datetime.combine(day, dt.time(hours, minutes), tzinfo=self.zone)
        else:
            wall = dt.datetime.combine(day + dt.timedelta(days=1), dt.time(0, 0), tzinfo=self.zone)
        # A wall time the clocks skip reads as the instant just after the jump.
        following = wall.astimezone(dt.UTC)
        return following if following > instant else instant + dt.timedelta(minutes=1)


def _aware(instant: dt.datetime) -> dt.datetime:
    if instant.tzinfo is None or instant.utcoffset() is None:
        raise ValueError(f"a mute window needs a timezone-aware time, not {instant.isoformat()}")
    return instant


def _weekdays(value: str) -> list[int]:
    """``"mon"`` → [0]; ``"fri-mon"`` → [4, 5, 6, 0]."""
    first, _, last = value.strip().lower().partition("-")
    if first not in WEEKDAYS or (last and last not in WEEKDAYS):
        raise ValueError(f"{value!r} is not a weekday or a range of them (mon, sat-sun, mon-fri)")
    start, end = WEEKDAYS.index(first), WEEKDAYS.index(last or first)
    return [(start + offset) % 7 for offset in range((end - start) % 7 + 1)]


def _time_range(value: str) -> tuple[int, int]:
    """``"08:00-17:30"`` → minutes of the day, the end excluded."""
    match = _TIMES.match(value.strip())
    if match is None:
        raise ValueError(f"{value!r} is not a time range HH:MM-HH:MM (such as 22:00-24:00)")
    low = int(match.group(1)) * 60 + int(match.group(2))
    high = int(match.group(3)) * 60 + int(match.group(4))
    if high > 24 * 60:
        raise ValueError(f"{value!r} ends after 24:00")
    if high <= low:
        raise ValueError(
            f"{value!r} ends before it starts; across midnight write two ranges (22:00-24:00, 00:00-06:00)"
        )
    return low, high


def _date_range(value: str) -> tuple[dt.date, dt.date]:
    match = _DATES.match(value.strip())
    try:
        if match is None:
            raise ValueError
        low = dt.date.fromisoformat(match.group(1))
        high = dt.date.fromisoformat(match.group(2)) if match.group(2) else low
    except ValueError:
        raise ValueError(
            f"{value!r} is not a date or a range of dates (2026-12-24, 2026-12-24..2026-12-26)"
        ) from None
    if high < low:
        raise ValueError(f"{value!r} ends before it starts")
    return low, high
