"""Kusto wire values as a database driver takes them, and which existing column types fit."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

import pytest
import sqlalchemy as sa
from sqlalchemy.dialects import mysql, postgresql

from common.platform.sql.types import column_type, converter, fits, timespan_ticks


@pytest.mark.parametrize(
    ("text", "ticks"),
    [
        ("00:00:00", 0),
        ("00:00:01", 10_000_000),
        ("-00:00:01", -10_000_000),
        ("1.02:03:04.5000000", 937_845_000_000),
        ("00:00:00.0000001", 1),
        ("10675199.02:48:05.4775807", 2**63 - 1),
        (42, 42),
    ],
)
def test_timespans_are_read_to_the_tick(text: str | int, ticks: int) -> None:
    assert timespan_ticks(text) == ticks


def test_a_timespan_that_is_not_one_names_the_form() -> None:
    with pytest.raises(ValueError, match=r"\[-\]\[d\.\]hh:mm:ss"):
        timespan_ticks("an hour")


def test_timespans_become_intervals_to_the_microsecond_toward_zero() -> None:
    interval = converter("timespan", "postgresql")
    assert interval("-00:00:00.0000015") == dt.timedelta(microseconds=-1)
    assert interval("1.00:00:00.0000019") == dt.timedelta(days=1, microseconds=1)
    assert interval(None) is None


def test_datetimes_keep_their_instant_and_go_without_a_zone_to_mariadb() -> None:
    text = "2026-03-29T02:30:00.1234567+02:00"
    assert converter("datetime", "postgresql")(text) == dt.datetime(
        2026, 3, 29, 0, 30, 0, 123456, tzinfo=dt.UTC
    )
    assert converter("datetime", "mariadb")(text) == dt.datetime(2026, 3, 29, 0, 30, 0, 123456)
    assert converter("datetime", "mariadb")("2026-03-29T00:30:00Z") == dt.datetime(2026, 3, 29, 0, 30)


def test_decimals_keep_every_digit() -> None:
    assert converter("decimal", "mariadb")("79228162514264337593543950335") == Decimal(
        "79228162514264337593543950335"
    )
    assert converter("decimal", "postgresql")(0.1) == Decimal("0.1")


def test_dynamic_values_go_as_their_json() -> None:
    dynamic = converter("dynamic", "postgresql")
    assert dynamic({"a": [1, None]}) == '{"a":[1,null]}'
    assert dynamic('{"already": "json"}') == '{"already": "json"}'
    assert dynamic("plain text") == '"plain text"'
    assert dynamic("Grüße") == '"Grüße"'
    assert dynamic(None) is None


def test_non_finite_reals_are_null_where_the_database_has_none() -> None:
    assert converter("real", "postgresql")("NaN") != converter("real", "postgresql")("NaN")  # NaN
    assert converter("real", "postgresql")("-Infinity") == float("-inf")
    assert converter("real", "mariadb")("Infinity") is None
    assert converter("real", "mariadb")(2) == 2.0


@pytest.mark.parametrize(
    ("kusto", "existing", "dialect", "fit"),
    [
        ("long", sa.BigInteger(), "postgresql", True),
        ("long", sa.Integer(), "postgresql", False),
        ("int", mysql.TINYINT(), "mariadb", False),
        ("bool", mysql.TINYINT(display_width=1), "mariadb", True),
        ("decimal", sa.Double(), "postgresql", False),
        ("decimal", postgresql.NUMERIC(20, 4), "postgresql", True),
        ("guid", postgresql.UUID(), "postgresql", True),
        ("guid", sa.CHAR(36), "mariadb", True),
        ("timespan", postgresql.INTERVAL(), "postgresql", True),
        ("timespan", sa.BigInteger(), "postgresql", False),
        ("timespan", sa.BigInteger(), "mariadb", True),
        ("dynamic", mysql.LONGTEXT(), "mariadb", True),
        ("datetime", sa.Date(), "postgresql", False),
        ("string", sa.Integer(), "mariadb", False),
    ],
)
def test_which_existing_columns_fit(
    kusto: str, existing: sa.types.TypeEngine[object], dialect: str, fit: bool
) -> None:
    assert fits(kusto, existing, dialect) is fit


def test_a_string_key_is_indexable_on_mariadb() -> None:
    assert isinstance(column_type("string", "mariadb", key=True), sa.String)
    assert isinstance(column_type("string", "mariadb"), mysql.LONGTEXT)
    assert isinstance(column_type("string", "postgresql", key=True), sa.Text)
