"""A query's rows read from an operator-configured database, a batch at a time, with Kusto types.

``database.read(query, parameters)`` (on `common.platform.sql.SqlDatabase`) runs
*query* in a read-only transaction and yields ``(columns, rows)`` batches as
`BlobStore.result_rows` does, the columns typed as Kusto types from what the
driver says of each (`kusto_type`), the rows as Kusto's wire values
(`wire_value`): ISO text for datetimes, Kusto's timespan text, a decimal's
exact text, a guid's text, JSON for documents. The server keeps the cursor (a
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
import uuid
from collections.abc import AsyncIterator, Mapping, Sequence
from decimal import Decimal
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


def wire_value(kind: str, value: Any) -> Any:
    """A value read from the database as Kusto's wire form of *kind* (what a result's JSON holds)."""
    if value is None:
        return None
    if kind == "datetime":
        if isinstance(value, dt.datetime):
            instant = value if value.tzinfo else value.replace(tzinfo=dt.UTC)
            return instant.astimezone(dt.UTC).isoformat().replace("+00:00", "Z")
        if isinstance(value, dt.date):
            return f"{value.isoformat()}T00:00:00Z"
    if kind == "timespan":
        if isinstance(value, dt.timedelta):
            return kusto_timespan(value)
        if isinstance(value, dt.time):
            since_midnight = dt.datetime.combine(dt.date.min, value) - dt.datetime.min
            return kusto_timespan(since_midnight)
    if kind == "dynamic":
        # Drivers hand JSON over as its text; a document that is already parsed is written back.
        return json.loads(value) if isinstance(value, str | bytes) else value
    if kind == "bool":
        return bool(value)
    if isinstance(value, Decimal):
        return str(value) if kind == "decimal" else float(value)
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value).hex()
    if kind == "string" and not isinstance(value, str):
        return value.isoformat() if isinstance(value, dt.date | dt.time) else str(value)
    return value


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
        kinds = [column.type for column in columns]
        sent = False
        async for part in result.partitions(batch_rows):
            rows = [[wire_value(kind, value) for kind, value in zip(kinds, row, strict=True)] for row in part]
            sent = True
            yield columns, rows
        if not sent:
            yield columns, []
    finally:
        # A connection that broke has no transaction left to end (and saying so would hide why).
        if not connection.closed and not connection.invalidated:
            await connection.exec_driver_sql("ROLLBACK")
