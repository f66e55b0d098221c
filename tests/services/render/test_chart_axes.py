"""Axis ticks: round values, at most a dozen, time labels fit for the span and local to the zone."""

from __future__ import annotations

import datetime as dt
from itertools import pairwise
from zoneinfo import ZoneInfo

import pytest

from services.render.chart_axes import label_rotation, number_ticks, thinned, time_ticks, zone_name

START = dt.datetime(2024, 3, 1, tzinfo=dt.UTC)
BERLIN = ZoneInfo("Europe/Berlin")
NEW_YORK = ZoneInfo("America/New_York")
KOLKATA = ZoneInfo("Asia/Kolkata")


def local(position: float, zone: dt.tzinfo) -> dt.datetime:
    return dt.datetime.fromtimestamp(position, zone)


@pytest.mark.parametrize(
    ("span", "labels"),
    [
        (dt.timedelta(seconds=20), ["00:00:00", "00:00:02", "00:00:04"]),
        (dt.timedelta(hours=6), ["00:00", "01:00", "02:00", "03:00", "04:00", "05:00", "06:00"]),
        (dt.timedelta(days=2), ["03-01 00:00", "03-01 06:00", "03-01 12:00"]),
        (dt.timedelta(days=30), ["2024-03-04", "2024-03-11", "2024-03-18", "2024-03-25"]),
        (dt.timedelta(days=700), ["2024-04", "2024-07", "2024-10", "2025-01"]),
        (dt.timedelta(days=365 * 30), ["2025", "2030", "2035"]),
    ],
)
def test_time_ticks_fit_the_span(span: dt.timedelta, labels: list[str]) -> None:
    ticks = time_ticks(START.timestamp(), (START + span).timestamp())

    assert 2 <= len(ticks) <= 12
    assert [label for _, label in ticks][: len(labels)] == labels
    positions = [position for position, _ in ticks]
    assert positions == sorted(positions)
    assert positions[0] >= START.timestamp()
    assert positions[-1] <= (START + span).timestamp()


@pytest.mark.parametrize(
    ("zone", "labels"),
    [
        (dt.UTC, ["00:00", "01:00", "02:00"]),
        (BERLIN, ["01:00", "02:00", "03:00"]),
        (NEW_YORK, ["02-29 19:00", "02-29 20:00", "02-29 21:00"]),  # the span crosses a local midnight
        (KOLKATA, ["06:00", "07:00", "08:00"]),  # UTC+05:30: ticks on the local hour, not the UTC one
    ],
)
def test_hour_ticks_are_local_round_hours(zone: dt.tzinfo, labels: list[str]) -> None:
    ticks = time_ticks(START.timestamp(), (START + dt.timedelta(hours=6)).timestamp(), zone)

    assert [label for _, label in ticks][:3] == labels
    assert all(local(position, zone).minute == 0 for position, _ in ticks)


def test_day_ticks_fall_on_local_midnight_across_a_clock_change() -> None:
    # Berlin moves its clocks forward on 2024-03-31: that day has 23 hours.
    start = dt.datetime(2024, 3, 25, 12, tzinfo=BERLIN).timestamp()
    end = dt.datetime(2024, 4, 4, 12, tzinfo=BERLIN).timestamp()

    ticks = time_ticks(start, end, BERLIN)

    assert [label for _, label in ticks] == [f"2024-03-{day}" for day in range(26, 32)] + [
        f"2024-04-0{day}" for day in range(1, 5)
    ]
    assert all(local(position, BERLIN).time() == dt.time() for position, _ in ticks)
    gaps = {round(b - a) for (a, _), (b, _) in pairwise(ticks)}
    assert gaps == {86400, 82800}


def test_hour_ticks_across_a_clock_change_stay_on_the_local_hour() -> None:
    # New York falls back on 2024-11-03: 01:00 to 02:00 happens twice.
    start = dt.datetime(2024, 11, 2, 20, tzinfo=NEW_YORK).timestamp()
    end = dt.datetime(2024, 11, 3, 8, tzinfo=NEW_YORK).timestamp()

    ticks = time_ticks(start, end, NEW_YORK)

    assert len(ticks) <= 12
    assert all(local(position, NEW_YORK).minute == 0 for position, _ in ticks)
    assert all(local(position, NEW_YORK).hour % 2 == 0 for position, _ in ticks)
    assert [position for position, _ in ticks] == sorted({position for position, _ in ticks})


def test_month_ticks_fall_on_the_local_first_of_the_month() -> None:
    start = dt.datetime(2024, 1, 15, tzinfo=BERLIN).timestamp()
    end = dt.datetime(2024, 12, 20, tzinfo=BERLIN).timestamp()

    ticks = time_ticks(start, end, BERLIN)

    assert [label for _, label in ticks] == ["2024-03", "2024-05", "2024-07", "2024-09", "2024-11"]
    firsts = [local(position, BERLIN) for position, _ in ticks]
    assert all((moment.day, moment.time()) == (1, dt.time()) for moment in firsts)


@pytest.mark.parametrize("seconds", [3, 59, 61, 3599, 3601, 86399, 86401, 10 * 86400, 400 * 86400, 9e8])
@pytest.mark.parametrize("zone", [dt.UTC, BERLIN, KOLKATA])
def test_never_more_than_twelve_time_ticks(seconds: float, zone: dt.tzinfo) -> None:
    start = dt.datetime(2024, 3, 30, 22, 17, 3, tzinfo=dt.UTC).timestamp()

    ticks = time_ticks(start, start + seconds, zone)

    assert 1 <= len(ticks) <= 12
    assert len({label for _, label in ticks}) == len(ticks)


def test_a_single_moment_is_one_tick() -> None:
    assert time_ticks(START.timestamp(), START.timestamp()) == [(START.timestamp(), "2024-03-01 00:00")]


@pytest.mark.parametrize(
    ("low", "high", "most", "ticks"),
    [
        (0, 4701, 8, [0, 1000, 2000, 3000, 4000, 5000]),
        (3, 97, 12, [0, 10, 20, 30, 40, 50, 60, 70, 80, 90, 100]),
        (-1.5, 2.2, 12, [-1.5, -1, -0.5, 0, 0.5, 1, 1.5, 2, 2.5]),
        (0, 0.3, 4, [0, 0.1, 0.2, 0.3]),
        (5, 5, 4, [4.5, 5, 5.5]),
        (0, 1_000_000, 5, [0, 250_000, 500_000, 750_000, 1_000_000]),
    ],
)
def test_number_ticks_are_round_and_few(low: float, high: float, most: int, ticks: list[float]) -> None:
    assert number_ticks(low, high, most) == ticks


def test_thinned_labels_keep_every_nth() -> None:
    labels = [f"L{n}" for n in range(30)]

    shown = thinned(labels, 12)

    assert [label for label in shown if label] == [f"L{n}" for n in range(0, 30, 3)]
    assert len(shown) == 30
    assert thinned(labels[:5], 12) == labels[:5]


def test_labels_tilt_only_when_they_would_touch() -> None:
    assert label_rotation(["2024-03-01"] * 5, 700) == 0
    assert label_rotation(["2024-03-01T13:30:00+01:00"] * 12, 700) == 30
    assert label_rotation(["a", "", "", "b"], 40) == 0


@pytest.mark.parametrize(
    ("zone", "name"),
    [(dt.UTC, "UTC"), (BERLIN, "Europe/Berlin"), (dt.timezone(dt.timedelta(hours=1)), "UTC+01:00")],
)
def test_zone_names(zone: dt.tzinfo, name: str) -> None:
    assert zone_name(zone) == name
