"""Mute windows in wall-clock time: weekdays, times and dates in a zone, across daylight saving."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from pydantic import ValidationError

from common.contracts.mute_windows import MuteWindow

UTC = dt.UTC


def at(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00"))


def window(**fields: Any) -> MuteWindow:
    return MuteWindow.model_validate({"name": "quiet", **fields})


def test_a_night_window_is_two_hours_long_when_the_clocks_go_forward_and_four_when_they_go_back() -> None:
    night = window(timezone="Europe/Berlin", times=["01:00-04:00"])
    # 2026-03-29: 02:00 CET becomes 03:00 CEST. 01:00 CET is 00:00 UTC; 04:00 CEST is 02:00 UTC.
    assert not night.mutes(at("2026-03-28T23:59Z"))
    assert night.mutes(at("2026-03-29T00:00Z"))
    assert night.mutes(at("2026-03-29T01:59Z"))
    assert not night.mutes(at("2026-03-29T02:00Z"))
    assert night.ends_after(at("2026-03-29T00:30Z")) == at("2026-03-29T02:00Z")
    # 2026-10-25: 03:00 CEST becomes 02:00 CET. 01:00 CEST is 23:00 UTC the day before; 04:00 CET 03:00 UTC.
    assert night.mutes(at("2026-10-24T23:00Z"))
    # Both 02:30s, before and after the clocks went back, are in the window.
    assert night.mutes(at("2026-10-25T00:30Z"))
    assert night.mutes(at("2026-10-25T01:30Z"))
    assert not night.mutes(at("2026-10-25T03:00Z"))
    assert night.ends_after(at("2026-10-24T23:30Z")) == at("2026-10-25T03:00Z")


def test_an_hour_the_clocks_skip_is_never_muted() -> None:
    skipped = window(timezone="Europe/Berlin", times=["02:00-03:00"])
    assert not skipped.mutes(at("2026-03-29T00:59Z"))  # 01:59 CET
    assert not skipped.mutes(at("2026-03-29T01:00Z"))  # 03:00 CEST
    assert skipped.mutes(at("2026-03-30T00:30Z"))  # 02:30 CEST the next night


def test_weekday_evenings_and_nights_mute_on_the_days_they_name() -> None:
    nights = window(timezone="America/New_York", weekdays=["mon-fri"], times=["22:00-24:00", "00:00-07:00"])
    friday_late = at("2026-12-04T23:30-05:00")
    assert nights.mutes(friday_late)
    # Saturday's early hours are Saturday's: not in mon-fri.
    assert not nights.mutes(at("2026-12-05T03:00-05:00"))
    assert nights.ends_after(friday_late) == at("2026-12-05T00:00-05:00")
    # Monday's early hours are muted, up to 07:00 local.
    assert nights.ends_after(at("2026-12-07T01:00-05:00")) == at("2026-12-07T07:00-05:00")
    assert not nights.mutes(at("2026-12-07T12:00-05:00"))


def test_a_weekend_window_ends_at_monday_midnight_local_time() -> None:
    weekend = window(timezone="Europe/Berlin", weekdays=["sat-sun"])
    assert weekend.ends_after(at("2026-03-28T10:00+01:00")) == at("2026-03-30T00:00+02:00")
    assert weekend.ends_after(at("2026-03-30T10:00+02:00")) == at("2026-03-30T10:00+02:00")


def test_dates_in_a_zone_mute_whole_local_days() -> None:
    holidays = window(
        timezone="America/New_York", dates=["2026-12-24..2026-12-26", "2027-01-01"], at_end="drop"
    )
    assert not holidays.mutes(at("2026-12-24T04:59Z"))  # 23:59 on the 23rd in New York
    assert holidays.mutes(at("2026-12-24T05:00Z"))
    assert holidays.ends_after(at("2026-12-25T12:00Z")) == at("2026-12-27T05:00Z")
    assert holidays.mutes(at("2027-01-01T12:00-05:00"))
    assert holidays.at_end == "drop"


def test_a_window_that_mutes_every_day_never_ends() -> None:
    always = window(weekdays=["mon-sun"])
    assert always.ends_after(at("2026-06-01T00:00Z")) is None
    assert window(weekdays=["fri-mon"]).mutes(at("2026-12-06T12:00Z"))  # a Sunday


@pytest.mark.parametrize(
    ("fields", "problem"),
    [
        ({"times": ["22:00-06:00"]}, "ends before it starts; across midnight write two ranges"),
        ({"times": ["08:00-24:30"]}, "ends after 24:00"),
        ({"times": ["8-17"]}, "is not a time range"),
        ({"weekdays": ["monday"]}, "is not a weekday"),
        ({"dates": ["2026-12-26..2026-12-24"]}, "ends before it starts"),
        ({"dates": ["2026-02-30"]}, "is not a date"),
        ({"timezone": "Mars/Olympus", "weekdays": ["mon"]}, "is not an IANA time zone"),
        ({}, "needs weekdays, times or dates"),
        ({"weekdays": ["mon"], "snooze": True}, "Extra inputs are not permitted"),
    ],
)
def test_a_window_that_cannot_be_meant_is_refused_naming_the_problem(
    fields: dict[str, Any], problem: str
) -> None:
    with pytest.raises(ValidationError, match=problem):
        window(**fields)


def test_a_naive_time_is_refused() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        window(weekdays=["mon"]).mutes(dt.datetime(2026, 1, 5, 12, 0))
