"""From rows to series: parsing wire values, running totals, shares of 100%, downsampling."""

from __future__ import annotations

import datetime as dt
import math
from typing import Any
from zoneinfo import ZoneInfo

import numpy as np
import pytest

from common.contracts.results import Column, ResultSet
from services.render.chart_columns import ChartColumns
from services.render.chart_series import (
    OTHER,
    Series,
    aligned,
    downsample,
    label,
    percent_of_total,
    read_series,
    running_totals,
    to_floats,
    to_timestamps,
)

START = dt.datetime(2024, 3, 1, tzinfo=dt.UTC)


def result_set(columns: list[tuple[str, str]], rows: list[list[Any]]) -> ResultSet:
    return ResultSet(columns=[Column(name=name, type=kind) for name, kind in columns], rows=rows)


def series_of(
    result: ResultSet, columns: ChartColumns, *, max_series: int = 10, fold: bool = False
) -> Series:
    return read_series(result, columns, dt.UTC, max_categories=50, max_series=max_series, fold_other=fold)


STORMS = result_set(
    [("Day", "datetime"), ("State", "string"), ("Events", "long")],
    [
        [(START + dt.timedelta(days=day)).strftime("%Y-%m-%dT%H:%M:%SZ"), state, events]
        for day in (2, 0, 1)  # out of order: a series is drawn in time order
        for state, events in (("TEXAS", 10 + day), ("IOWA", 3 * day), ("OHIO", None))
    ],
)
BY_STATE = ChartColumns(axis="time", x=0, y=(2,), series=(1,))


def test_series_by_state_in_time_order_largest_first() -> None:
    series = series_of(STORMS, BY_STATE)

    assert [line.name for line in series.lines] == ["TEXAS", "IOWA"]  # OHIO has no numbers
    texas = series.lines[0]
    assert texas.x.tolist() == [START.timestamp() + day * 86400 for day in range(3)]
    assert texas.y.tolist() == [10, 11, 12]
    assert series.labels is None


def test_running_totals_never_fall_for_counts() -> None:
    rows = [[n, n % 7] for n in range(200)]
    series = running_totals(
        series_of(
            result_set([("N", "long"), ("Count", "long")], rows), ChartColumns(axis="number", x=0, y=(1,))
        )
    )

    totals = series.lines[0].y
    assert np.all(np.diff(totals) >= 0)
    assert totals[-1] == sum(n % 7 for n in range(200))


def test_shares_of_each_stack_sum_to_a_hundred() -> None:
    grid = percent_of_total(aligned(series_of(STORMS, BY_STATE)))

    sums = grid.values.sum(axis=0)
    # Day 0: IOWA has 0 of 10, so TEXAS is all of it.
    assert np.allclose(sums, 100.0)
    assert grid.values[:, 0].tolist() == [100.0, 0.0]


def test_a_category_without_any_value_is_a_zero_share() -> None:
    rows = [["A", "x", 0], ["A", "y", 0], ["B", "x", 1], ["B", "y", 3]]
    result = result_set([("Name", "string"), ("Kind", "string"), ("Value", "long")], rows)

    grid = percent_of_total(
        aligned(series_of(result, ChartColumns(axis="category", x=0, y=(2,), series=(1,))))
    )

    assert grid.values.tolist() == [[0.0, 75.0], [0.0, 25.0]]


def test_series_past_the_limit_are_summed_as_other_or_left_out() -> None:
    rows = [[START.isoformat(), f"S{n}", n] for n in range(1, 8)]
    result = result_set([("T", "datetime"), ("Name", "string"), ("V", "long")], rows)

    folded = series_of(result, BY_STATE, max_series=3, fold=True)
    dropped = series_of(result, BY_STATE, max_series=3)

    assert [line.name for line in folded.lines] == ["S7", "S6", "S5", OTHER]
    assert folded.lines[-1].y.tolist() == [1 + 2 + 3 + 4]
    assert [line.name for line in dropped.lines] == ["S7", "S6", "S5"]
    assert folded.notes == dropped.notes == ["top 3 of 7 series by total"]


def test_categories_past_the_limit_are_noted() -> None:
    rows = [[f"C{n}", n] for n in range(80)]

    series = series_of(
        result_set([("Name", "string"), ("V", "long")], rows), ChartColumns("category", 0, (1,))
    )

    assert series.labels == [f"C{n}" for n in range(50)]
    assert len(series.lines[0].x) == 50
    assert series.notes == ["first 50 of 80 rows"]


def test_several_series_columns_name_a_series_together() -> None:
    rows = [["A", "x", "1", 1], ["A", "y", "1", 2], ["B", "x", "2", 3]]
    result = result_set([("Name", "string"), ("Kind", "string"), ("Shard", "string"), ("V", "long")], rows)

    series = series_of(result, ChartColumns("category", 0, (3,), (1, 2)))

    assert sorted(line.name for line in series.lines) == ["x, 1", "x, 2", "y, 1"]


def test_downsample_keeps_ends_and_extremes() -> None:
    x = np.arange(10_000, dtype=float)
    y = np.sin(x / 300)
    y[5000], y[7000] = 99.0, -99.0

    kept = downsample(x, y, 500)

    assert 400 <= len(kept) <= 502
    assert kept[0] == 0
    assert kept[-1] == len(x) - 1
    assert {5000, 7000} <= set(kept.tolist())
    assert np.all(np.diff(kept) > 0)
    assert downsample(x[:10], y[:10], 500).tolist() == list(range(10))


def test_wire_datetimes_become_unix_seconds() -> None:
    values = [
        "2024-03-01T00:00:00Z",
        "2007-05-01T14:00:00.1230000Z",
        None,
        "2024-03-01T01:00:00+01:00",
        dt.datetime(2024, 3, 1, tzinfo=dt.UTC),
        "not a date",
    ]

    seconds = to_timestamps(values)

    assert seconds[0] == START.timestamp()
    assert seconds[1] == pytest.approx(dt.datetime(2007, 5, 1, 14, 0, 0, 123000, tzinfo=dt.UTC).timestamp())
    assert math.isnan(seconds[2])
    assert seconds[3] == START.timestamp()
    assert seconds[4] == START.timestamp()
    assert math.isnan(seconds[5])


def test_an_odd_value_ending_in_z_does_not_spoil_the_others() -> None:
    seconds = to_timestamps(["2024-03-01T00:00:00Z", "hertz"])

    assert seconds[0] == START.timestamp()
    assert math.isnan(seconds[1])


def test_wire_numbers_become_floats() -> None:
    numbers = to_floats([1, "2.5", None, "NaN", float("inf"), True, {"a": 1}, "x"])

    assert numbers[:2].tolist() == [1.0, 2.5]
    assert np.isnan(numbers[2:]).all()


@pytest.mark.parametrize(
    ("kusto_type", "value", "zone", "text"),
    [
        ("datetime", "2024-03-01T00:00:00Z", dt.UTC, "2024-03-01"),
        ("datetime", "2024-02-29T23:00:00Z", ZoneInfo("Europe/Berlin"), "2024-03-01"),
        ("datetime", "2024-03-01T06:00:00Z", dt.UTC, "2024-03-01 06:00"),
        ("datetime", "2024-03-01T06:00:00Z", ZoneInfo("Europe/Berlin"), "2024-03-01 07:00"),
        ("datetime", "2024-03-01T00:00:00Z", ZoneInfo("Europe/Berlin"), "2024-03-01"),
        ("datetime", "2024-03-01T06:00:05Z", dt.UTC, "2024-03-01 06:00:05"),
        ("long", 1234567, dt.UTC, "1,234,567"),
        ("string", "  two\nlines ", dt.UTC, "two lines"),
        ("string", "", dt.UTC, "(empty)"),
        ("string", "x" * 40, dt.UTC, "x" * 29 + "…"),
        ("string", "bell\x07", dt.UTC, "bell\N{REPLACEMENT CHARACTER}"),
    ],
)
def test_labels(kusto_type: str, value: Any, zone: dt.tzinfo, text: str) -> None:
    assert label(kusto_type, value, zone) == text
