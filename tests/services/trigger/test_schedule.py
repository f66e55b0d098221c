"""Schedule math: every instant is passed in, so nothing here reads the clock or waits."""

from __future__ import annotations

import datetime as dt
import itertools
from collections import Counter
from zoneinfo import ZoneInfo

import pytest

from services.trigger.schedule import EPOCH, Schedule, ScheduleError, parse_every

BERLIN = ZoneInfo("Europe/Berlin")
NEW_YORK = ZoneInfo("America/New_York")
SECOND = dt.timedelta(seconds=1)


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0) -> dt.datetime:
    return dt.datetime(year, month, day, hour, minute, second, tzinfo=dt.UTC)


def cron(expression: str, timezone: str = "UTC") -> Schedule:
    return Schedule.build(cron=expression, every=None, timezone=timezone)


def every(text: str) -> Schedule:
    return Schedule.build(cron=None, every=text, timezone=None)


def local_day(day: dt.date, zone: ZoneInfo) -> tuple[dt.datetime, dt.datetime]:
    """The UTC span [start, end) of one local calendar day."""
    start = dt.datetime.combine(day, dt.time(), tzinfo=zone)
    end = dt.datetime.combine(day + dt.timedelta(days=1), dt.time(), tzinfo=zone)
    return start.astimezone(dt.UTC), end.astimezone(dt.UTC)


def fires_on_local_days(
    schedule: Schedule, first: dt.date, last: dt.date, zone: ZoneInfo
) -> list[dt.datetime]:
    start, _ = local_day(first, zone)
    _, end = local_day(last, zone)
    return schedule.slots_between(start - SECOND, end - SECOND)


# --- cron in a time zone, across daylight-saving changes ---------------------------------------


def test_daily_berlin_job_keeps_local_time_across_spring_forward() -> None:
    fires = fires_on_local_days(
        cron("0 8 * * *", "Europe/Berlin"), dt.date(2026, 3, 27), dt.date(2026, 3, 30), BERLIN
    )

    assert fires == [utc(2026, 3, 27, 7), utc(2026, 3, 28, 7), utc(2026, 3, 29, 6), utc(2026, 3, 30, 6)]
    assert {fire.astimezone(BERLIN).time() for fire in fires} == {dt.time(8)}


def test_daily_berlin_job_keeps_local_time_across_fall_back() -> None:
    fires = fires_on_local_days(
        cron("0 8 * * *", "Europe/Berlin"), dt.date(2026, 10, 23), dt.date(2026, 10, 26), BERLIN
    )

    assert fires == [utc(2026, 10, 23, 6), utc(2026, 10, 24, 6), utc(2026, 10, 25, 7), utc(2026, 10, 26, 7)]
    assert {fire.astimezone(BERLIN).time() for fire in fires} == {dt.time(8)}


def test_next_after_walks_the_same_fires_one_by_one() -> None:
    schedule = cron("0 8 * * *", "Europe/Berlin")
    walked = [schedule.next_after(utc(2026, 3, 27))]
    while len(walked) < 4:
        walked.append(schedule.next_after(walked[-1]))

    assert walked == [utc(2026, 3, 27, 7), utc(2026, 3, 28, 7), utc(2026, 3, 29, 6), utc(2026, 3, 30, 6)]
    assert all(fire.tzinfo is dt.UTC for fire in walked)


def test_a_time_the_spring_forward_skips_fires_at_the_first_minute_after_the_gap() -> None:
    # 02:30 does not exist in Berlin on 2026-03-29: clocks go from 02:00 CET to 03:00 CEST.
    fires = fires_on_local_days(
        cron("30 2 * * *", "Europe/Berlin"), dt.date(2026, 3, 28), dt.date(2026, 3, 30), BERLIN
    )

    assert fires == [utc(2026, 3, 28, 1, 30), utc(2026, 3, 29, 1), utc(2026, 3, 30, 0, 30)]
    assert fires[1].astimezone(BERLIN).time() == dt.time(3)


def test_a_time_the_fall_back_repeats_fires_once_at_its_first_occurrence() -> None:
    # 02:30 happens twice in Berlin on 2026-10-25: at 00:30Z (CEST), then at 01:30Z (CET).
    fires = fires_on_local_days(
        cron("30 2 * * *", "Europe/Berlin"), dt.date(2026, 10, 24), dt.date(2026, 10, 26), BERLIN
    )

    assert fires == [utc(2026, 10, 24, 0, 30), utc(2026, 10, 25, 0, 30), utc(2026, 10, 26, 1, 30)]


def test_next_after_from_the_repeated_hour_is_still_strictly_after() -> None:
    schedule = cron("30 2 * * *", "Europe/Berlin")
    second_pass = utc(2026, 10, 25, 1, 10)  # 02:10 CET, after that day's only fire (00:30Z)

    assert schedule.next_after(second_pass) == utc(2026, 10, 26, 1, 30)
    assert schedule.latest_at_or_before(second_pass) == utc(2026, 10, 25, 0, 30)


@pytest.mark.parametrize(
    "timezone", ["Europe/Berlin", "America/New_York", "Australia/Lord_Howe", "America/Santiago"]
)
@pytest.mark.parametrize("at", ["0 0", "30 0", "0 2", "30 2", "59 2", "0 3", "0 8"])
def test_a_daily_job_fires_exactly_once_on_every_local_date(timezone: str, at: str) -> None:
    # Lord Howe moves its clocks by 30 minutes; Santiago changes them at midnight.
    zone = ZoneInfo(timezone)
    fires = fires_on_local_days(
        cron(f"{at} * * *", timezone), dt.date(2026, 1, 1), dt.date(2026, 12, 31), zone
    )

    per_date = Counter(fire.astimezone(zone).date() for fire in fires)
    assert len(per_date) == 365
    assert set(per_date.values()) == {1}


@pytest.mark.parametrize(
    ("day", "count"),
    [(dt.date(2026, 6, 15), 24), (dt.date(2026, 3, 8), 23), (dt.date(2026, 11, 1), 25)],
)
def test_an_hourly_new_york_job_fires_once_per_hour_that_passes(day: dt.date, count: int) -> None:
    start, end = local_day(day, NEW_YORK)
    fires = cron("0 * * * *", "America/New_York").slots_between(start - SECOND, end - SECOND)

    assert end - start == dt.timedelta(hours=count)
    assert len(fires) == count
    assert all(later - earlier == dt.timedelta(hours=1) for earlier, later in itertools.pairwise(fires))


@pytest.mark.parametrize("expression", ["0 8 * * *", "30 2 * * *", "*/30 * * * *", "0 */2 * * *"])
def test_every_query_agrees_on_the_same_slots_across_a_transition(expression: str) -> None:
    schedule = cron(expression, "Europe/Berlin")
    slots = schedule.slots_between(utc(2026, 10, 22), utc(2026, 10, 28))

    assert slots == sorted(set(slots))
    assert all(slot.second == 0 and slot.microsecond == 0 for slot in slots)
    for previous, slot in itertools.pairwise(slots):
        assert schedule.next_after(previous) == slot
        assert schedule.next_after(slot - dt.timedelta(microseconds=1)) == slot
        assert schedule.latest_at_or_before(slot) == slot
        assert schedule.latest_at_or_before(slot - dt.timedelta(microseconds=1)) == previous


# --- latest missed slot, every missed slot ------------------------------------------------------


def test_every_slots_are_aligned_to_the_unix_epoch() -> None:
    schedule = every("7m")
    one = schedule.next_after(utc(2026, 5, 1, 10, 0, 1))
    other = schedule.next_after(utc(2026, 5, 1, 10, 3, 59) + dt.timedelta(microseconds=999))

    assert one == other
    assert (one - EPOCH) % dt.timedelta(minutes=7) == dt.timedelta(0)


def test_every_ignores_the_time_zone_and_counts_from_midnight_utc() -> None:
    schedule = Schedule.build(cron=None, every="1d", timezone="Europe/Berlin")

    assert schedule.next_after(utc(2026, 3, 29, 12)) == utc(2026, 3, 30)


def test_every_next_after_is_strictly_after() -> None:
    schedule = every("15m")

    assert schedule.next_after(utc(2026, 5, 1, 10, 7, 30)) == utc(2026, 5, 1, 10, 15)
    assert schedule.next_after(utc(2026, 5, 1, 10, 15)) == utc(2026, 5, 1, 10, 30)


def test_after_downtime_only_the_latest_missed_slot_is_due() -> None:
    schedule = every("15m")
    fired_last = utc(2026, 5, 1, 9)
    now = utc(2026, 5, 1, 12, 7)  # three hours later

    assert schedule.latest_at_or_before(now, not_before=fired_last) == utc(2026, 5, 1, 12)
    assert schedule.latest_at_or_before(utc(2026, 5, 1, 12), not_before=fired_last) == utc(2026, 5, 1, 12)
    assert schedule.latest_at_or_before(now, not_before=utc(2026, 5, 1, 12)) is None


def test_after_downtime_every_missed_slot_can_be_listed() -> None:
    slots = every("15m").slots_between(utc(2026, 5, 1, 9), utc(2026, 5, 1, 12, 7))

    assert len(slots) == 12
    assert slots[0] == utc(2026, 5, 1, 9, 15)
    assert slots[-1] == utc(2026, 5, 1, 12)
    assert all(later - earlier == dt.timedelta(minutes=15) for earlier, later in itertools.pairwise(slots))


@pytest.mark.parametrize("schedule", [every("1m"), cron("* * * * *")], ids=["every", "cron"])
def test_slots_between_returns_the_earliest_slots_up_to_the_limit(schedule: Schedule) -> None:
    slots = schedule.slots_between(utc(2026, 5, 1), utc(2026, 5, 2), limit=10)

    assert slots == [utc(2026, 5, 1, 0, minute) for minute in range(1, 11)]
    assert schedule.slots_between(utc(2026, 5, 1), utc(2026, 5, 1)) == []


def test_cron_latest_missed_slot_after_downtime() -> None:
    schedule = cron("*/15 * * * *", "Europe/Berlin")

    assert schedule.latest_at_or_before(utc(2026, 5, 1, 12, 7), not_before=utc(2026, 5, 1, 9)) == utc(
        2026, 5, 1, 12
    )
    assert schedule.latest_at_or_before(utc(2026, 5, 1, 12, 7), not_before=utc(2026, 5, 1, 12)) is None


def test_cron_latest_slot_looks_back_as_far_as_it_must() -> None:
    schedule = cron("0 0 1 1 *", "Europe/Berlin")
    now = utc(2026, 6, 1)

    assert schedule.latest_at_or_before(now) == utc(2025, 12, 31, 23)
    assert schedule.latest_at_or_before(now, not_before=utc(2026, 1, 1)) is None


def test_instants_without_a_time_zone_are_refused() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        every("15m").next_after(dt.datetime(2026, 5, 1, 12))


# --- parsing and validation ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "interval"),
    [
        ("30s", dt.timedelta(seconds=30)),
        ("15m", dt.timedelta(minutes=15)),
        ("2h", dt.timedelta(hours=2)),
        ("1d", dt.timedelta(days=1)),
        ("1h30m", dt.timedelta(minutes=90)),
        (" 15M ", dt.timedelta(minutes=15)),
        ("31d", dt.timedelta(days=31)),
    ],
)
def test_parse_every(text: str, interval: dt.timedelta) -> None:
    assert parse_every(text) == interval


@pytest.mark.parametrize(
    "text", ["", "15", "m", "fifteen minutes", "0m", "0h0m", "-5m", "1m1h", "32d", "PT15M"]
)
def test_parse_every_refuses(text: str) -> None:
    with pytest.raises(ScheduleError, match=r"^trigger\.every: ") as caught:
        parse_every(text)
    assert caught.value.field == "trigger.every"


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        (
            {"cron": "61 * * * *", "every": None},
            r"^trigger\.cron: '61 \* \* \* \*' is not a valid .*: Bad minute",
        ),
        ({"cron": "0 8 * *", "every": None}, r"^trigger\.cron: .* has 4 fields"),
        ({"cron": "0 0 8 * * *", "every": None}, r"^trigger\.cron: .* has 6 fields"),
        ({"cron": "@daily", "every": None}, r"^trigger\.cron: "),
        (
            {"cron": "0 8 * * *", "every": None, "timezone": "Mars/Olympus"},
            r"^trigger\.timezone: 'Mars/Olympus'",
        ),
        ({"cron": "0 8 * * *", "every": None, "timezone": "localtime"}, r"^trigger\.timezone: "),
        ({"cron": "0 8 * * *", "every": None, "timezone": "Europe"}, r"^trigger\.timezone: "),
        ({"cron": "0 8 * * *", "every": "1h"}, r"^trigger: .*trigger\.cron and trigger\.every \(got both\)"),
        ({"cron": None, "every": None}, r"^trigger: .*trigger\.cron and trigger\.every \(got neither\)"),
        ({"cron": None, "every": "nope"}, r"^trigger\.every: 'nope' is not an interval"),
        (
            {"cron": None, "every": "30s", "minimum_interval": dt.timedelta(minutes=1)},
            r"^trigger\.every: '30s' is shorter than the minimum interval of 1 minute",
        ),
        (
            {"cron": "* * * * *", "every": None, "minimum_interval": dt.timedelta(minutes=5)},
            r"^trigger\.cron: .* every 1 minute, more often than the minimum interval of 5 minutes",
        ),
        (
            # once a day, but twice within a minute
            {"cron": "0,1 8 * * *", "every": None, "minimum_interval": dt.timedelta(minutes=5)},
            r"^trigger\.cron: .* every 1 minute, .* minimum interval of 5 minutes",
        ),
    ],
)
def test_build_refuses_naming_the_field(fields: dict[str, object], message: str) -> None:
    with pytest.raises(ScheduleError, match=message):
        Schedule.build(**{"timezone": None, **fields})  # type: ignore[arg-type]


def test_a_schedule_at_the_minimum_interval_is_accepted() -> None:
    minimum = dt.timedelta(minutes=5)

    assert Schedule.build(cron="*/5 * * * *", every=None, timezone=None, minimum_interval=minimum).cron
    assert Schedule.build(cron=None, every="5m", timezone=None, minimum_interval=minimum).every == minimum


def test_a_schedule_built_directly_is_checked_too() -> None:
    with pytest.raises(ScheduleError, match=r"^trigger\.cron: "):
        Schedule(cron="0 25 * * *", every=None)
    with pytest.raises(ScheduleError, match=r"^trigger\.every: "):
        Schedule(cron=None, every=dt.timedelta(milliseconds=500))


# --- in words -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("cron_text", "every_text", "timezone", "words"),
    [
        ("0 8 * * *", None, "Europe/Berlin", "every day at 08:00 Europe/Berlin"),
        ("  0   8 * * * ", None, "Europe/Berlin", "every day at 08:00 Europe/Berlin"),
        ("5 * * * *", None, None, "every hour at minute 5 UTC"),
        ("* * * * *", None, None, "every minute"),
        (
            "0 8 * * 1-5",
            None,
            "Europe/Berlin",
            "cron '0 8 * * 1-5' in Europe/Berlin (at 08:00 on Monday through Friday)",
        ),
        (None, "15m", None, "every 15 minutes"),
        (None, "1h", None, "every hour"),
        (None, "1h30m", None, "every 1 hour 30 minutes"),
        (None, "1d", "Europe/Berlin", "every day"),
    ],
)
def test_describe(cron_text: str | None, every_text: str | None, timezone: str | None, words: str) -> None:
    assert Schedule.build(cron=cron_text, every=every_text, timezone=timezone).describe() == words
