"""The generated StormEvents table: its schema, its vocabularies, its shape, and
the DuckDB file it is stored in."""

from __future__ import annotations

import collections
import datetime as dt
import hashlib
import json
from pathlib import Path
from typing import Any

import duckdb
import pytest

from services.embedded.kusto.database import ensure_database, write_database
from services.embedded.sample_data import DEFAULT_COUNT, STORM_EVENTS_COLUMNS, storm_events_rows

# Spelled out here rather than imported, so a typo in the generator's tables
# cannot agree with itself.
REAL_COLUMNS = (
    ("StartTime", "datetime"), ("EndTime", "datetime"), ("EpisodeId", "int"), ("EventId", "int"),
    ("State", "string"), ("EventType", "string"), ("InjuriesDirect", "int"), ("InjuriesIndirect", "int"),
    ("DeathsDirect", "int"), ("DeathsIndirect", "int"), ("DamageProperty", "int"), ("DamageCrops", "int"),
    ("Source", "string"), ("BeginLocation", "string"), ("EndLocation", "string"), ("BeginLat", "real"),
    ("BeginLon", "real"), ("EndLat", "real"), ("EndLon", "real"), ("EpisodeNarrative", "string"),
    ("EventNarrative", "string"), ("StormSummary", "dynamic"),
)  # fmt: skip

US_STATES = {
    "ALABAMA", "ALASKA", "ARIZONA", "ARKANSAS", "CALIFORNIA", "COLORADO", "CONNECTICUT", "DELAWARE",
    "FLORIDA", "GEORGIA", "HAWAII", "IDAHO", "ILLINOIS", "INDIANA", "IOWA", "KANSAS", "KENTUCKY",
    "LOUISIANA", "MAINE", "MARYLAND", "MASSACHUSETTS", "MICHIGAN", "MINNESOTA", "MISSISSIPPI",
    "MISSOURI", "MONTANA", "NEBRASKA", "NEVADA", "NEW HAMPSHIRE", "NEW JERSEY", "NEW MEXICO", "NEW YORK",
    "NORTH CAROLINA", "NORTH DAKOTA", "OHIO", "OKLAHOMA", "OREGON", "PENNSYLVANIA", "RHODE ISLAND",
    "SOUTH CAROLINA", "SOUTH DAKOTA", "TENNESSEE", "TEXAS", "UTAH", "VERMONT", "VIRGINIA", "WASHINGTON",
    "WEST VIRGINIA", "WISCONSIN", "WYOMING",
}  # fmt: skip
#: The other `State` values StormEvents uses: territories and marine zones.
OTHER_AREAS = {
    "DISTRICT OF COLUMBIA", "PUERTO RICO", "GUAM", "AMERICAN SAMOA", "VIRGIN ISLANDS", "HAWAII WATERS",
    "ATLANTIC SOUTH", "ATLANTIC NORTH", "GULF OF MEXICO", "E PACIFIC", "LAKE MICHIGAN", "LAKE ERIE",
    "LAKE HURON", "LAKE SUPERIOR", "LAKE ONTARIO", "LAKE ST CLAIR", "GULF OF ALASKA",
}  # fmt: skip
#: NWS Directive 10-1605, Table 1: the event types Storm Data may use.
NOAA_EVENT_TYPES = {
    "Astronomical Low Tide", "Avalanche", "Blizzard", "Coastal Flood", "Cold/Wind Chill", "Debris Flow",
    "Dense Fog", "Dense Smoke", "Drought", "Dust Devil", "Dust Storm", "Excessive Heat",
    "Extreme Cold/Wind Chill", "Flash Flood", "Flood", "Freezing Fog", "Frost/Freeze", "Funnel Cloud",
    "Hail", "Heat", "Heavy Rain", "Heavy Snow", "High Surf", "High Wind", "Hurricane (Typhoon)",
    "Ice Storm", "Lake-Effect Snow", "Lakeshore Flood", "Lightning", "Marine Dense Fog", "Marine Hail",
    "Marine Heavy Freezing Spray", "Marine High Wind", "Marine Hurricane/Typhoon", "Marine Lightning",
    "Marine Strong Wind", "Marine Thunderstorm Wind", "Marine Tropical Depression",
    "Marine Tropical Storm", "Rip Current", "Seiche", "Sleet", "Sneakerwave", "Storm Surge/Tide",
    "Strong Wind", "Thunderstorm Wind", "Tornado", "Tropical Depression", "Tropical Storm", "Tsunami",
    "Volcanic Ash", "Waterspout", "Wildfire", "Winter Storm", "Winter Weather",
}  # fmt: skip

COLUMN = {name: index for index, (name, _) in enumerate(REAL_COLUMNS)}
SMALL = 2_000


@pytest.fixture(scope="module")
def rows() -> list[tuple[Any, ...]]:
    return list(storm_events_rows())


def test_columns_are_the_real_storm_events_schema() -> None:
    assert STORM_EVENTS_COLUMNS == REAL_COLUMNS


def test_same_seed_gives_equal_rows_and_another_seed_does_not() -> None:
    first = list(storm_events_rows(SMALL, seed=11))
    assert first == list(storm_events_rows(SMALL, seed=11))
    assert first != list(storm_events_rows(SMALL, seed=12))


def test_a_smaller_table_is_the_start_of_the_larger_one(rows: list[tuple[Any, ...]]) -> None:
    assert list(storm_events_rows(SMALL)) == rows[:SMALL]


def test_default_seed_names_the_same_bytes_everywhere() -> None:
    # A change here is a change to every sample database: bump
    # GENERATOR_VERSION along with this digest so existing files are rebuilt.
    digest = hashlib.sha256(repr(list(storm_events_rows(500))).encode()).hexdigest()
    assert digest == "51f0db5ab8913dc23c1a8e33bb073402dfde99a81da5dcb1eea985e733086cc5"


def test_default_table_is_a_year_of_2007(rows: list[tuple[Any, ...]]) -> None:
    assert len(rows) == DEFAULT_COUNT >= 50_000
    start, end = COLUMN["StartTime"], COLUMN["EndTime"]
    assert all(dt.datetime(2007, 1, 1) <= row[start] <= row[end] < dt.datetime(2008, 1, 1) for row in rows)
    assert {row[start].month for row in rows} == set(range(1, 13))
    assert len({row[COLUMN["EventId"]] for row in rows}) == len(rows)


def test_values_come_from_the_real_vocabularies(rows: list[tuple[Any, ...]]) -> None:
    states = {row[COLUMN["State"]] for row in rows}
    assert states <= US_STATES | OTHER_AREAS
    assert states >= US_STATES  # every state appears
    assert {row[COLUMN["EventType"]] for row in rows} <= NOAA_EVENT_TYPES


def test_distributions_are_skewed_like_the_real_data(rows: list[tuple[Any, ...]]) -> None:
    by_state = collections.Counter(row[COLUMN["State"]] for row in rows)
    assert [state for state, _ in by_state.most_common(2)] == ["TEXAS", "KANSAS"]
    by_type = collections.Counter(row[COLUMN["EventType"]] for row in rows)
    assert {kind for kind, _ in by_type.most_common(2)} == {"Thunderstorm Wind", "Hail"}
    by_month = collections.Counter(row[COLUMN["StartTime"]].month for row in rows)
    assert min(by_month[m] for m in (5, 6, 7, 8)) > max(by_month[m] for m in (1, 2, 12))
    winter = collections.Counter(
        row[COLUMN["StartTime"]].month for row in rows if row[COLUMN["EventType"]] == "Heavy Snow"
    )
    assert winter[1] > 10 * winter[7]
    damage = [row[COLUMN["DamageProperty"]] for row in rows]
    assert sum(1 for value in damage if value == 0) > 0.6 * len(damage)
    assert max(damage) > 1_000_000


def test_coordinates_fall_inside_their_state(rows: list[tuple[Any, ...]]) -> None:
    boxes = {"TEXAS": (25.8, 36.5, -106.7, -93.5), "KANSAS": (36.9, 40.1, -102.1, -94.5)}
    for row in rows:
        box = boxes.get(row[COLUMN["State"]])
        if box is not None:
            south, north, west, east = box
            assert south <= row[COLUMN["BeginLat"]] <= north
            assert west <= row[COLUMN["BeginLon"]] <= east


def test_storm_summary_is_json_that_agrees_with_its_row(rows: list[tuple[Any, ...]]) -> None:
    for row in rows[:SMALL]:
        summary = json.loads(row[COLUMN["StormSummary"]])
        assert summary["TotalDamages"] == row[COLUMN["DamageProperty"]] + row[COLUMN["DamageCrops"]]
        assert summary["StartTime"].startswith(row[COLUMN["StartTime"]].isoformat())
        assert summary["Details"] == {
            "Description": row[COLUMN["EventNarrative"]],
            "Location": row[COLUMN["State"]],
        }


def test_database_holds_the_generated_rows_with_duckdb_types(tmp_path: Path) -> None:
    path = write_database(tmp_path / "Storms.duckdb", count=SMALL, seed=5)
    con = duckdb.connect(str(path), read_only=True)
    try:
        described = con.execute("DESCRIBE StormEvents").fetchall()
        stored = con.execute("SELECT * FROM StormEvents").fetchall()
    finally:
        con.close()
    duckdb_types = {"datetime": "TIMESTAMP", "int": "INTEGER", "real": "DOUBLE", "string": "VARCHAR",
                    "dynamic": "JSON"}  # fmt: skip
    assert [(row[0], row[1]) for row in described] == [(n, duckdb_types[k]) for n, k in REAL_COLUMNS]
    assert stored == list(storm_events_rows(SMALL, seed=5))
    # Built in a scratch directory and renamed: nothing else is left behind.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["Storms.duckdb"]


def test_ensure_database_builds_once_then_reuses(tmp_path: Path) -> None:
    path = ensure_database(tmp_path, count=SMALL)
    assert path == tmp_path / "Samples.duckdb"
    built = path.stat().st_mtime_ns
    assert ensure_database(tmp_path, count=SMALL) == path
    assert path.stat().st_mtime_ns == built


def test_ensure_database_rebuilds_a_file_written_for_other_rows(tmp_path: Path) -> None:
    ensure_database(tmp_path, count=SMALL)
    path = ensure_database(tmp_path, count=SMALL + 1)
    con = duckdb.connect(str(path), read_only=True)
    try:
        assert con.execute("SELECT count(*) FROM StormEvents").fetchone() == (SMALL + 1,)
    finally:
        con.close()


def test_ensure_database_replaces_a_file_that_is_not_a_database(tmp_path: Path) -> None:
    (tmp_path / "Samples.duckdb").write_text("not a database")
    path = ensure_database(tmp_path, count=SMALL)
    con = duckdb.connect(str(path), read_only=True)
    try:
        assert con.execute("SELECT count(*) FROM StormEvents").fetchone() == (SMALL,)
    finally:
        con.close()
