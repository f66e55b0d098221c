"""The copies ledger: one row per run and step that copied into a database, in that same database.

A copy inserts its ledger row first and writes the rows in the same
transaction, so the row commits with them or not at all. A retried or
redelivered step finds it and writes nothing; a concurrent duplicate waits on
its primary key and then finds it too; a copy that died left neither.

The table, ``adxflow_copies``, lives in the operator's database beside the
tables flows write, not in adxflow's own store, so it is no Alembic revision of
adxflow's schema: a copy creates it when it is missing, and its shape only ever
grows by columns a reader can do without.
"""

from __future__ import annotations

import datetime as dt

import sqlalchemy as sa
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection

from common.contracts.copies import CopyMode
from common.platform.sql.types import is_mysql

LEDGER_TABLE = "adxflow_copies"

_metadata = sa.MetaData()
ledger = sa.Table(
    LEDGER_TABLE,
    _metadata,
    sa.Column("run_id", sa.String(64), primary_key=True),
    # 190 characters: the key stays within MariaDB's 3,072 bytes of an index in utf8mb4.
    sa.Column("step_id", sa.String(190), primary_key=True),
    sa.Column("target", sa.String(400), nullable=False),
    sa.Column("mode", sa.String(16), nullable=False),
    sa.Column("rows", sa.BigInteger, nullable=False),
    sa.Column("at", sa.DateTime(timezone=True), nullable=False),
)


async def ensure_ledger(connection: AsyncConnection) -> None:
    """Create the ledger table when it is missing, and commit."""
    try:
        await connection.run_sync(_metadata.create_all, checkfirst=True)
        await connection.commit()
    except DBAPIError:
        # Another copy created it between the look and the CREATE.
        await connection.rollback()
        if not await connection.run_sync(lambda sync: sa.inspect(sync).has_table(LEDGER_TABLE)):
            raise


async def recorded_rows(connection: AsyncConnection, run_id: str, step_id: str) -> int | None:
    """The rows the copy of *run_id*/*step_id* wrote, or None when it has not committed one."""
    result = await connection.execute(
        sa.select(ledger.c.rows).where(ledger.c.run_id == run_id, ledger.c.step_id == step_id)
    )
    return result.scalar_one_or_none()


async def open_entry(
    connection: AsyncConnection, run_id: str, step_id: str, target: str, mode: CopyMode
) -> None:
    """Insert the copy's row, in the copy's transaction; a duplicate raises ``IntegrityError``."""
    now = dt.datetime.now(dt.UTC)
    at = now.replace(tzinfo=None) if is_mysql(connection.dialect.name) else now
    await connection.execute(
        ledger.insert().values(run_id=run_id, step_id=step_id, target=target, mode=mode.value, rows=0, at=at)
    )


async def close_entry(connection: AsyncConnection, run_id: str, step_id: str, rows: int) -> None:
    """Record the rows the copy wrote, before its transaction commits."""
    await connection.execute(
        ledger.update().where(ledger.c.run_id == run_id, ledger.c.step_id == step_id).values(rows=rows)
    )
