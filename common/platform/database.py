"""The SQL database the trigger and history share: SQLite embedded, PostgreSQL deployed.

One code path over SQLAlchemy's async Core; the few dialect differences
(insert-or-ignore, row locks) are decided here.
"""

from __future__ import annotations

from typing import Any

import asyncpg.exceptions
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

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


def connect(url: str) -> AsyncEngine:
    kwargs: dict[str, Any] = {}
    if url.startswith("sqlite"):
        # Several services write one SQLite file in embedded mode: wait for the lock.
        kwargs["connect_args"] = {"timeout": 30}
    else:
        kwargs["pool_pre_ping"] = True
    return create_async_engine(url, **kwargs)


#: The PostgreSQL advisory lock that services hold while they create tables (any fixed number).
_SCHEMA_LOCK = 0x616478666C6F77  # "adxflow"


async def create_schema(engine: AsyncEngine, metadata: sa.MetaData) -> None:
    """Create the tables that are missing.

    Replicas starting together (two triggers, say) would race to create the same table, and
    PostgreSQL answers the loser with a unique violation in its catalog; a transaction-scoped
    advisory lock lets one create while the others wait, then find the tables there.
    """
    async with engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            await conn.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": _SCHEMA_LOCK})
        await conn.run_sync(metadata.create_all)


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
    """A store over its own tables in the shared database."""

    metadata: sa.MetaData

    def __init__(self, url: str) -> None:
        self.engine: AsyncEngine = connect(url)

    async def create_schema(self) -> None:
        await create_schema(self.engine, self.metadata)

    async def close(self) -> None:
        await self.engine.dispose()

    async def ping(self) -> bool:
        return await ping(self.engine)
