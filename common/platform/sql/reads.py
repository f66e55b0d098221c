"""A query's rows read from an operator-configured database, a batch at a time, with Kusto types.

``database.read(query, parameters)`` (on `common.platform.sql.SqlDatabase`) runs
*query* in a read-only transaction and yields ``(columns, rows)`` batches as
`BlobStore.result_rows` does, the columns typed as Kusto types from what the
driver says of each (`kusto_type`), the rows as the driver gives them, which
`csv_fields` turns into the fields of Kusto's CSV. The server keeps the cursor (a
server-side cursor on PostgreSQL, an unbuffered one on MariaDB), so only a
batch is in memory whatever the result's size.

Values reach the query only as bound parameters (``:name`` in its text). The
read-only transaction refuses writes on PostgreSQL; on MariaDB a DDL statement
commits on its own and is not held back by it, so the connection's user should
be one that may only read what ingestion takes.

==========================================  =========================================
PostgreSQL / MariaDB column                 Kusto type
==========================================  =========================================
boolean                                     bool
smallint, integer, tinyint, mediumint, year int
bigint, oid, bit                            long
real, double precision, float, double       real
numeric, decimal                            decimal
uuid                                        guid
timestamp[tz], date, datetime, timestamp    datetime (naive values are read as UTC)
interval, time                              timespan
json, jsonb (MariaDB's JSON is text)        dynamic
anything else                               string
==========================================  =========================================
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from common.contracts.results import Column

Batch = tuple[list[Column], list[list[Any]]]

#: PostgreSQL's type OIDs, as asyncpg describes a result's columns.
_POSTGRES = {
    16: "bool",
    21: "int",
    23: "int",
    20: "long",
    26: "long",
    700: "real",
    701: "real",
    1700: "decimal",
    2950: "guid",
    1082: "datetime",
    1114: "datetime",
    1184: "datetime",
    1083: "timespan",
    1186: "timespan",
    114: "dynamic",
    3802: "dynamic",
}
#: MySQL's and MariaDB's field types, as asyncmy describes a result's columns.
_MYSQL = {
    1: "int",
    2: "int",
    3: "int",
    9: "int",
    13: "int",
    8: "long",
    16: "long",
    4: "real",
    5: "real",
    0: "decimal",
    246: "decimal",
    7: "datetime",
    10: "datetime",
    12: "datetime",
    11: "timespan",
    245: "dynamic",
}
_TICKS_PER_MICROSECOND = 10


def bound_names(query: str) -> list[str]:
    """The parameters *query* binds (``:name``), as SQLAlchemy reads its text."""
    return list(sa.text(query).compile().params)


def kusto_type(dialect: str, type_code: object) -> str:
    """The Kusto type of a result column the *dialect*'s driver describes with *type_code*."""
    table = _POSTGRES if dialect == "postgresql" else _MYSQL
    return table.get(type_code, "string") if isinstance(type_code, int) else "string"


def kusto_timespan(value: dt.timedelta) -> str:
    """*value* as Kusto writes a timespan: ``[-][d.]hh:mm:ss[.fffffff]``."""
    ticks = (value.days * 86_400 + value.seconds) * 10_000_000 + value.microseconds * _TICKS_PER_MICROSECOND
    sign = "-" if ticks < 0 else ""
    ticks = abs(ticks)
    seconds, fraction = divmod(ticks, 10_000_000)
    minutes, second = divmod(seconds, 60)
    hours, minute = divmod(minutes, 60)
    days, hour = divmod(hours, 24)
    text = f"{sign}{f'{days}.' if days else ''}{hour:02d}:{minute:02d}:{second:02d}"
    return f"{text}.{fraction:07d}" if fraction else text


Convert = Callable[[Any], Any]


def _datetime(value: Any) -> Any:
    if isinstance(value, dt.datetime):
        instant = value if value.tzinfo else value.replace(tzinfo=dt.UTC)
        return instant.astimezone(dt.UTC).isoformat().replace("+00:00", "Z")
    if isinstance(value, dt.date):
        return f"{value.isoformat()}T00:00:00Z"
    return value


def _timespan(value: Any) -> Any:
    if isinstance(value, dt.timedelta):
        return kusto_timespan(value)
    if isinstance(value, dt.time):
        return kusto_timespan(dt.datetime.combine(dt.date.min, value) - dt.datetime.min)
    return value


def _dynamic(value: Any) -> Any:
    # Drivers hand JSON over as its text, which goes as it is; a parsed document is written back.
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, bytes):
        return value.decode("utf-8")
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def _bool(value: Any) -> Any:
    return value if value is None else ("true" if value else "false")


def _text(value: Any) -> Any:
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value).hex()
    if isinstance(value, dt.date | dt.time):
        return value.isoformat()
    return value


_FIELDS: dict[str, Convert] = {
    "datetime": _datetime,
    "timespan": _timespan,
    "dynamic": _dynamic,
    "bool": _bool,
    "string": _text,
}


def csv_fields(columns: Sequence[Column]) -> list[tuple[int, Convert]]:
    """For each column whose driver value is not already its Kusto CSV field, its index and the
    conversion: ISO text in UTC for datetimes, Kusto's timespan text, JSON text for documents,
    ``true``/``false``; numbers, decimals, guids and text go as the CSV writer writes them, and
    None as an empty field."""
    return [(index, _FIELDS[column.type]) for index, column in enumerate(columns) if column.type in _FIELDS]


async def read_rows(
    connection: AsyncConnection, query: str, parameters: Mapping[str, Any], batch_rows: int
) -> AsyncIterator[Batch]:
    """*query*'s rows in batches of *batch_rows*, in a read-only transaction on *connection*.

    The connection is in autocommit, so that the transaction is the one this starts.
    """
    await connection.exec_driver_sql("START TRANSACTION READ ONLY")
    try:
        result = await connection.stream(sa.text(query), dict(parameters))
        described: Sequence[Any] = result._real_result.cursor.description or ()  # type: ignore[attr-defined]
        dialect = connection.dialect.name
        columns = [Column(name=str(entry[0]), type=kusto_type(dialect, entry[1])) for entry in described]
        sent = False
        async for part in result.partitions(batch_rows):
            sent = True
            yield columns, [list(row) for row in part]
        if not sent:
            yield columns, []
    finally:
        # A connection that broke has no transaction left to end (and saying so would hide why).
        if not connection.closed and not connection.invalidated:
            await connection.exec_driver_sql("ROLLBACK")
