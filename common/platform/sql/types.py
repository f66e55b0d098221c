"""Kusto column types as SQL column types, and Kusto wire values as the values a driver sends.

===========  ==========================  ==============================  =========================
Kusto        PostgreSQL                  MariaDB / MySQL                 wire value → sent as
===========  ==========================  ==============================  =========================
bool         BOOLEAN                     BOOLEAN (TINYINT(1))            true/false → bool
int          INTEGER                     INTEGER                         number → int
long         BIGINT                      BIGINT                          number → int
real         DOUBLE PRECISION            DOUBLE                          number, "NaN", "Infinity"
                                                                         → float (NULL on MariaDB,
                                                                         which has no NaN)
decimal      NUMERIC                     DECIMAL(65,30)                  text → Decimal, exactly
string       TEXT                        LONGTEXT (VARCHAR(255) as key)  text
guid         UUID                        CHAR(36)                        text
datetime     TIMESTAMPTZ                 DATETIME(6), in UTC             ISO text → the instant, to
                                                                         the microsecond
timespan     INTERVAL                    BIGINT: 100 ns ticks            "[-][d.]hh:mm:ss[.f]"
dynamic      JSONB                       JSON                            any JSON → its JSON text
===========  ==========================  ==============================  =========================

Why these: PostgreSQL's NUMERIC without a scale holds every .NET decimal
exactly; on MariaDB DECIMAL(65,30) does (29 integer digits, 28 of scale).
MariaDB's TIME spans only ±838 hours and BIGINT ticks hold every Kusto
timespan exactly (Kusto's own unit), so a timespan is ticks there; PostgreSQL's
INTERVAL keeps microseconds, so its last tick digit is dropped, as a datetime's
is on both. MariaDB's DATETIME has no zone: instants are written in UTC. A
string that is a key column is VARCHAR(255) on MariaDB, since a unique index
cannot cover a LONGTEXT. Nulls are NULL in every column.

An existing table's column fits when its type holds the Kusto type's values
(`fits`): any integer at least as wide, a float or numeric for real, text for a
guid or for dynamic (MariaDB's JSON is LONGTEXT underneath).
"""

from __future__ import annotations

import datetime as dt
import json
import math
import re
import uuid
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import mysql, postgresql
from sqlalchemy.types import TypeEngine

from common.contracts.results import parse_datetime

KUSTO_TYPES = frozenset(
    {"bool", "int", "long", "real", "decimal", "string", "guid", "datetime", "timespan", "dynamic"}
)

Convert = Callable[[Any], Any]

#: Kusto's timespan literal as it comes over the wire: ``[-][d.]hh:mm:ss[.fffffff]``.
_TIMESPAN = re.compile(r"(-)?(?:(\d+)\.)?(\d{1,2}):(\d{2}):(\d{2})(?:\.(\d{1,7}))?")
_TICKS_PER_SECOND = 10_000_000


def _json_text() -> Callable[[Any], str]:
    """Compact JSON text of a value, not ASCII-escaped, by one encoder made once.

    ``json.dumps`` with options makes an encoder each call, and ``JSONEncoder.encode`` makes
    CPython's C encoder each call: for a small property bag either costs more than the
    encoding itself. CPython's C encoder, made once here, is the one ``encode`` would make.
    """
    encoder = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), check_circular=False)
    make = getattr(json.encoder, "c_make_encoder", None)
    if make is None:
        return encoder.encode
    chunks = make(None, encoder.default, json.encoder.encode_basestring, None, ":", ",", False, False, True)
    return lambda value: "".join(chunks(value, 0))


_encode_json = _json_text()


def is_postgres(dialect: str) -> bool:
    return dialect == "postgresql"


def is_mysql(dialect: str) -> bool:
    return dialect in ("mysql", "mariadb")


def column_type(kusto_type: str, dialect: str, *, key: bool = False) -> TypeEngine[Any]:
    """The SQL type a created table gives a column of *kusto_type* (the table in the docstring)."""
    postgres = is_postgres(dialect)
    match kusto_type:
        case "bool":
            return sa.Boolean()
        case "int":
            return sa.Integer()
        case "long":
            return sa.BigInteger()
        case "real":
            return sa.Double()
        case "decimal":
            return postgresql.NUMERIC() if postgres else mysql.DECIMAL(65, 30)
        case "string":
            if postgres:
                return sa.Text()
            return sa.String(255) if key else mysql.LONGTEXT() if is_mysql(dialect) else sa.UnicodeText()
        case "guid":
            return postgresql.UUID(as_uuid=False) if postgres else sa.CHAR(36)
        case "datetime":
            return mysql.DATETIME(fsp=6) if is_mysql(dialect) else sa.DateTime(timezone=True)
        case "timespan":
            return postgresql.INTERVAL() if postgres else sa.BigInteger()
        case "dynamic":
            return postgresql.JSONB() if postgres else sa.JSON()
    raise ValueError(f"Kusto type {kusto_type!r} is not one of {', '.join(sorted(KUSTO_TYPES))}")


def fits(kusto_type: str, existing: TypeEngine[Any], dialect: str) -> bool:
    """Whether a column of type *existing* holds every value of *kusto_type*."""
    exact_number = isinstance(existing, sa.Numeric) and not isinstance(existing, sa.Float)
    match kusto_type:
        case "bool":
            return isinstance(existing, sa.Boolean | sa.Integer)
        case "int":
            return (isinstance(existing, sa.Integer) and not _narrow(existing)) or exact_number
        case "long":
            return isinstance(existing, sa.BigInteger) or exact_number
        case "real":
            return isinstance(existing, sa.Float | sa.Numeric)
        case "decimal":
            return exact_number
        case "string":
            return isinstance(existing, sa.String) and not isinstance(existing, sa.Enum)
        case "guid":
            return isinstance(existing, sa.Uuid | sa.String)
        case "datetime":
            return isinstance(existing, sa.DateTime)
        case "timespan":
            if is_postgres(dialect):
                return isinstance(existing, sa.Interval | postgresql.INTERVAL)
            return isinstance(existing, sa.BigInteger) or exact_number
        case "dynamic":
            return isinstance(existing, sa.JSON | sa.Text | sa.String)
    return False


def _narrow(existing: TypeEngine[Any]) -> bool:
    return isinstance(existing, sa.SmallInteger | mysql.TINYINT | mysql.MEDIUMINT)


def converter(kusto_type: str, dialect: str, *, naive_utc: bool = False) -> Convert:
    """A function from a wire value of *kusto_type* to what the *dialect*'s driver sends; None stays None.

    *naive_utc*: the column keeps no zone (MariaDB's DATETIME, PostgreSQL's TIMESTAMP), so datetimes go as
    UTC without one.
    """
    postgres = is_postgres(dialect)
    match kusto_type:
        case "bool":
            return _nullable(bool)
        case "int" | "long":
            return _nullable(int)
        case "real":
            return _real if postgres else _finite_real
        case "decimal":
            return _decimal
        case "string":
            return _nullable(str)
        case "guid":
            return _guid
        case "datetime":
            return _naive_datetime if naive_utc or is_mysql(dialect) else parse_datetime
        case "timespan":
            return _interval if postgres else _nullable(timespan_ticks)
        case "dynamic":
            return dynamic_text
    raise ValueError(f"Kusto type {kusto_type!r} is not one of {', '.join(sorted(KUSTO_TYPES))}")


def _nullable(convert: Convert) -> Convert:
    def converted(value: Any) -> Any:
        return None if value is None else convert(value)

    return converted


def _real(value: Any) -> float | None:
    return None if value is None else float(value)


def _finite_real(value: Any) -> float | None:
    number = _real(value)
    return number if number is None or math.isfinite(number) else None


def _decimal(value: Any) -> Decimal | None:
    # Kusto sends decimals as text, so that no digit is lost; str() of a JSON number keeps its digits.
    return None if value is None else Decimal(str(value))


def _guid(value: Any) -> str | None:
    return None if value is None else str(uuid.UUID(str(value)))


def _naive_datetime(value: Any) -> dt.datetime | None:
    instant = parse_datetime(value)
    return None if instant is None else instant.astimezone(dt.UTC).replace(tzinfo=None)


def timespan_ticks(value: Any) -> int:
    """A Kusto timespan (its wire text, or a number of ticks) in 100 ns ticks."""
    if isinstance(value, int):
        return value
    match = _TIMESPAN.fullmatch(str(value).strip())
    if match is None:
        raise ValueError(f"{value!r} is not a Kusto timespan ([-][d.]hh:mm:ss[.fffffff])")
    sign, days, hours, minutes, seconds, fraction = match.groups()
    whole = ((int(days or 0) * 24 + int(hours)) * 60 + int(minutes)) * 60 + int(seconds)
    ticks = whole * _TICKS_PER_SECOND + int((fraction or "").ljust(7, "0"))
    return -ticks if sign else ticks


def _interval(value: Any) -> dt.timedelta | None:
    if value is None:
        return None
    ticks = timespan_ticks(value)
    # Toward zero, as the microseconds of -00:00:00.0000015 are -1, not -2.
    micros = ticks // 10 if ticks >= 0 else -(-ticks // 10)
    return dt.timedelta(microseconds=micros)


def dynamic_text(value: Any) -> str | None:
    """A dynamic wire value's JSON text: a value as JSON, text that is JSON as it is, other text quoted."""
    if value is None:
        return None
    if isinstance(value, str):
        # A dynamic may arrive as its JSON text; text that is not JSON is a JSON string.
        try:
            json.loads(value)
        except ValueError:
            return json.dumps(value, ensure_ascii=False)
        return value
    return _encode_json(value)
