"""The SQL database the trigger, the notifier and history share: SQLite embedded, PostgreSQL deployed.

One code path over SQLAlchemy's async Core; the few dialect differences
(insert-or-ignore, row locks) are decided here. Every statement is a span
under whatever span runs it (:mod:`common.platform.tracing`), from
SQLAlchemy's cursor events: the statement's text, whose values are bound
apart from it, and never the URL.
"""

from __future__ import annotations

import datetime as dt
import sqlite3
from pathlib import Path
from typing import Any, overload

import asyncpg.exceptions
import sqlalchemy as sa
from opentelemetry import trace
from opentelemetry.trace import SpanKind
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from common.platform import tracing
from common.platform.schema import MigrateMode, ensure_schema

#: What a database that is restarting or unreachable raises. SQLAlchemy wraps most
#: of it; a connection refused while PostgreSQL shuts down can reach us as asyncpg's own.
OUTAGES: tuple[type[BaseException], ...] = (
    sa.exc.OperationalError,
    sa.exc.InterfaceError,
    asyncpg.exceptions.CannotConnectNowError,
    asyncpg.exceptions.PostgresConnectionError,
    asyncpg.exceptions.AdminShutdownError,
    asyncpg.exceptions.InterfaceError,
    OSError,
)


@overload
def read_utc(value: dt.datetime) -> dt.datetime: ...
@overload
def read_utc(value: None) -> None: ...
def read_utc(value: dt.datetime | None) -> dt.datetime | None:
    """A time read back from the database: SQLite keeps no zone and hands it back naive, and every
    time stored is UTC."""
    if value is None or value.tzinfo is not None:
        return value
    return value.replace(tzinfo=dt.UTC)


def is_outage(exc: BaseException) -> bool:
    """Whether *exc*, or what caused it, says the database is away rather than the request wrong."""
    seen: BaseException | None = exc
    for _ in range(8):
        if seen is None:
            return False
        if isinstance(seen, OUTAGES):
            return True
        if isinstance(seen, sa.exc.DBAPIError) and seen.connection_invalidated:
            return True
        seen = getattr(seen, "orig", None) or seen.__cause__
    return False


#: How long a SQLite connection waits for another's write to finish before it fails: in embedded
#: mode every service writes the one file.
SQLITE_BUSY_TIMEOUT_MS = 30_000


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA journal_mode")
        if cursor.fetchone()[0] == "wal":
            return
        # Write-ahead log: readers neither wait for the writer nor hold it up, so the history
        # pages and the scheduler read while events are merged. It persists in the file.
        try:
            cursor.execute("PRAGMA journal_mode = WAL")
        except sqlite3.OperationalError as exc:
            # Connections opening a new file together: SQLite refuses all but one the switch at
            # once (not waiting, which could deadlock). The mode is the file's, and this
            # connection follows the one that switched it.
            if "locked" not in str(exc):
                raise
    finally:
        cursor.close()


_SPAN = "adxflow_span"


def _statement_started(
    conn: sa.Connection, _cursor: Any, statement: str, _parameters: Any, context: Any, _many: bool
) -> None:
    if context is None or not tracing.active() or not trace.get_current_span().get_span_context().is_valid:
        # Statements outside any step (the scheduler's polls, history merging events) start no
        # trace of their own; SQLAlchemy's own statements without an execution context are left out.
        return
    operation = statement.lstrip().split(None, 1)[0].upper() if statement.strip() else "SQL"
    attributes = {
        "db.system.name": conn.dialect.name,
        "db.operation.name": operation,
        "db.query.text": statement[:2000],
    }
    name = f"{operation} {conn.dialect.name}"
    setattr(context, _SPAN, tracing.tracer().start_span(name, kind=SpanKind.CLIENT, attributes=attributes))


def _statement_ended(
    _conn: sa.Connection, cursor: Any, _statement: str, _parameters: Any, context: Any, _many: bool
) -> None:
    span = getattr(context, _SPAN, None)
    if span is not None:
        if getattr(cursor, "rowcount", -1) >= 0:
            span.set_attribute("adxflow.sql.rowcount", cursor.rowcount)
        span.end()
        setattr(context, _SPAN, None)


def _statement_failed(exception_context: sa.engine.ExceptionContext) -> None:
    context = exception_context.execution_context
    span = getattr(context, _SPAN, None) if context is not None else None
    if span is not None:
        tracing.failed(span, type(exception_context.original_exception).__name__)
        span.end()
        setattr(context, _SPAN, None)


def _traced(engine: AsyncEngine) -> AsyncEngine:
    sa.event.listen(engine.sync_engine, "before_cursor_execute", _statement_started)
    sa.event.listen(engine.sync_engine, "after_cursor_execute", _statement_ended)
    sa.event.listen(engine.sync_engine, "handle_error", _statement_failed)
    return engine


def connect(url: str) -> AsyncEngine:
    if not url.startswith("sqlite"):
        return _traced(create_async_engine(url, pool_pre_ping=True))
    path = sa.make_url(url).database
    if path and path != ":memory:" and not path.startswith("file:"):
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    engine = create_async_engine(url)
    # On every connection the pool opens, before anything uses it.
    sa.event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
    return _traced(engine)


async def ping(engine: AsyncEngine) -> bool:
    try:
        async with engine.connect() as conn:
            await conn.execute(sa.text("SELECT 1"))
    except (OSError, sa.exc.SQLAlchemyError):
        return False
    return True


def insert_ignore(conn: AsyncConnection, table: sa.Table) -> Any:
    """``INSERT ... ON CONFLICT DO NOTHING`` in the connection's dialect."""
    if conn.dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as pg_insert

        return pg_insert(table).on_conflict_do_nothing()
    from sqlalchemy.dialects.sqlite import insert as sqlite_insert

    return sqlite_insert(table).on_conflict_do_nothing()


class SqlStore:
    """A store over its own tables in the shared database (:mod:`common.platform.schema` makes them)."""

    #: The store's tables as its queries see them; the revisions must build exactly these.
    metadata: sa.MetaData

    def __init__(self, url: str) -> None:
        self.engine: AsyncEngine = connect(url)

    async def ensure_schema(self, mode: MigrateMode = "auto") -> None:
        """Migrate the shared database to this code's schema (every service's tables), or refuse it."""
        await ensure_schema(self.engine, mode)

    async def close(self) -> None:
        await self.engine.dispose()

    async def ping(self) -> bool:
        return await ping(self.engine)
