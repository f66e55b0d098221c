"""How rows get into a table, per database: the bulk path and the statements of each mode.

PostgreSQL takes rows by one COPY for the whole copy (asyncpg's binary
``copy_records_to_table``, fed batch by batch as the source is read, so the server
stores rows while the next batch is read and converted) and
replaces a table by filling a copy of it and renaming the two in the copy's
transaction (PostgreSQL's DDL is transactional). MariaDB and MySQL take
batched multi-row INSERTs (the driver packs ``executemany`` into statements of
up to about a megabyte), and replace by DELETE and INSERT in the transaction:
their DDL, RENAME TABLE included, commits on its own, so a swap could not
commit with the ledger row; InnoDB readers see the old rows until the commit.

Upsert and merge fill a temporary table shaped as the target's columns, then
update the target from it in one statement (``ON CONFLICT ... DO UPDATE``,
``ON DUPLICATE KEY UPDATE``); merge then deletes the target's rows whose keys
the temporary table has not. Identifiers are quoted by the dialect; values only
ever travel as parameters.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from common.contracts.errors import DatabaseError
from common.contracts.messages import ErrorCode
from common.platform.sql.types import is_mysql, is_postgres


@dataclass(frozen=True)
class TableName:
    name: str
    schema: str | None = None

    def __str__(self) -> str:
        return f"{self.schema}.{self.name}" if self.schema else self.name

    def sibling(self, purpose: str) -> TableName:
        """A name beside this one for a table the copy makes and drops (at most 63 characters)."""
        return TableName(f"{self.name[:40]}_adxflow_{purpose}_{uuid.uuid4().hex[:8]}", self.schema)


class Writer:
    """Writes rows into tables over one connection, inside the copy's transaction."""

    def __init__(self, connection: AsyncConnection, target: TableName, columns: Sequence[str]) -> None:
        self.connection = connection
        self.target = target
        self.columns = list(columns)
        self._preparer = connection.dialect.identifier_preparer

    def quoted(self, table: TableName) -> str:
        name = self._preparer.quote(table.name)
        return f"{self._preparer.quote_schema(table.schema)}.{name}" if table.schema else name

    def column_list(self, prefix: str = "") -> str:
        return ", ".join(prefix + self._preparer.quote(column) for column in self.columns)

    async def execute(self, statement: str) -> None:
        await self.connection.exec_driver_sql(statement)

    async def bulk(self, table: TableName, batches: AsyncIterator[list[tuple[Any, ...]]]) -> None:
        """Insert the rows of *batches* (values in the order of the columns) into *table*."""
        # The driver's own executemany: one statement text, packed into multi-row INSERTs where it can.
        statement = str(
            sa.insert(sa.table(table.name, *map(sa.column, self.columns), schema=table.schema)).compile(
                dialect=self.connection.dialect
            )
        )
        async for rows in batches:
            await self.connection.exec_driver_sql(statement, rows)

    async def replacement(self) -> TableName:
        """The table a replace writes into: the target, emptied (the transaction keeps the old rows)."""
        await self.execute(f"DELETE FROM {self.quoted(self.target)}")
        return self.target

    async def swap(self, replacement: TableName) -> None:
        """Make *replacement* the target (here, it is the target already)."""

    async def stage(self) -> TableName:
        raise DatabaseError(
            f"upsert and merge are not supported on {self.connection.dialect.name} databases: "
            "only append and replace are"
        )

    async def upsert(self, stage: TableName, keys: Sequence[str]) -> None:
        raise DatabaseError(f"upsert is not supported on {self.connection.dialect.name} databases")

    async def refuse_repeated_keys(self, stage: TableName, keys: Sequence[str]) -> None:
        """Refuse a source with two rows of one key: which of them an upsert keeps is not defined."""
        quoted = ", ".join(map(self._preparer.quote, keys))
        result = await self.connection.exec_driver_sql(
            f"SELECT {quoted} FROM {self.quoted(stage)} GROUP BY {quoted} HAVING count(*) > 1 LIMIT 1"
        )
        repeated = result.first()
        if repeated is not None:
            shown = ", ".join(f"{key}={value!r}" for key, value in zip(keys, repeated, strict=True))
            raise DatabaseError(
                f"the source has more than one row with key ({shown}); upsert and merge take one a key",
                code=ErrorCode.TABLE_MISMATCH,
            )

    async def delete_missing(self, stage: TableName, keys: Sequence[str]) -> None:
        """Delete the target's rows whose keys *stage* has not."""
        target, staged = self.quoted(self.target), self.quoted(stage)
        match = " AND ".join(
            f"{staged}.{q} = {target}.{q}" for q in (self._preparer.quote(key) for key in keys)
        )
        await self.execute(f"DELETE FROM {target} WHERE NOT EXISTS (SELECT 1 FROM {staged} WHERE {match})")

    async def drop_stage(self, stage: TableName) -> None:
        await self.execute(f"DROP TABLE {self.quoted(stage)}")


class PostgresWriter(Writer):
    async def bulk(self, table: TableName, batches: AsyncIterator[list[tuple[Any, ...]]]) -> None:
        raw = await self.connection.get_raw_connection()
        # The asyncpg connection under SQLAlchemy's, inside the transaction SQLAlchemy began on it.
        driver: Any = raw.driver_connection
        # One COPY: asyncpg sends rows as it takes them; an error from the source aborts the COPY.
        await driver.copy_records_to_table(
            table.name, records=_rows_of(batches), columns=self.columns, schema_name=table.schema
        )

    async def replacement(self) -> TableName:
        replacement = self.target.sibling("new")
        await self.execute(
            f"CREATE TABLE {self.quoted(replacement)} (LIKE {self.quoted(self.target)} INCLUDING ALL)"
        )
        return replacement

    async def swap(self, replacement: TableName) -> None:
        old = self.target.sibling("old")
        await self.execute(
            f"ALTER TABLE {self.quoted(self.target)} RENAME TO {self._preparer.quote(old.name)}"
        )
        await self.execute(
            f"ALTER TABLE {self.quoted(replacement)} RENAME TO {self._preparer.quote(self.target.name)}"
        )
        await self.execute(f"DROP TABLE {self.quoted(old)}")

    async def stage(self) -> TableName:
        stage = TableName(f"adxflow_stage_{uuid.uuid4().hex[:12]}")
        await self.execute(
            f"CREATE TEMPORARY TABLE {self.quoted(stage)} ON COMMIT DROP AS "
            f"SELECT {self.column_list()} FROM {self.quoted(self.target)} WITH NO DATA"
        )
        return stage

    async def upsert(self, stage: TableName, keys: Sequence[str]) -> None:
        quote = self._preparer.quote
        others = [column for column in self.columns if column not in keys]
        action = (
            "DO UPDATE SET " + ", ".join(f"{quote(c)} = EXCLUDED.{quote(c)}" for c in others)
            if others
            else "DO NOTHING"
        )
        await self.execute(
            f"INSERT INTO {self.quoted(self.target)} ({self.column_list()}) "
            f"SELECT {self.column_list()} FROM {self.quoted(stage)} "
            f"ON CONFLICT ({', '.join(map(quote, keys))}) {action}"
        )

    async def drop_stage(self, stage: TableName) -> None:
        """Nothing: the temporary table goes at commit (ON COMMIT DROP)."""


async def _rows_of(batches: AsyncIterator[list[tuple[Any, ...]]]) -> AsyncIterator[tuple[Any, ...]]:
    async for rows in batches:
        for row in rows:
            yield row


class MySqlWriter(Writer):
    async def stage(self) -> TableName:
        stage = TableName(f"adxflow_stage_{uuid.uuid4().hex[:12]}")
        # CREATE TEMPORARY TABLE, unlike other DDL here, does not commit the transaction.
        await self.execute(
            f"CREATE TEMPORARY TABLE {self.quoted(stage)} "
            f"SELECT {self.column_list()} FROM {self.quoted(self.target)} LIMIT 0"
        )
        return stage

    async def upsert(self, stage: TableName, keys: Sequence[str]) -> None:
        quote = self._preparer.quote
        others = [column for column in self.columns if column not in keys] or list(keys)[:1]
        await self.execute(
            f"INSERT INTO {self.quoted(self.target)} ({self.column_list()}) "
            f"SELECT {self.column_list()} FROM {self.quoted(stage)} "
            "ON DUPLICATE KEY UPDATE " + ", ".join(f"{quote(c)} = VALUES({quote(c)})" for c in others)
        )

    async def drop_stage(self, stage: TableName) -> None:
        await self.execute(f"DROP TEMPORARY TABLE {self.quoted(stage)}")


async def hold_table(connection: AsyncConnection, table: str) -> None:
    """Wait for, then take, the database's lock on copies into *table*, until the connection closes.

    Only PostgreSQL and MariaDB/MySQL have such locks: elsewhere concurrent copies of one step rely on
    the ledger's primary key alone.
    """
    name = "adxflow copy " + hashlib.sha256(table.encode("utf-8")).hexdigest()[:40]
    dialect = connection.dialect.name
    if is_postgres(dialect):
        await connection.execute(
            sa.text("SELECT pg_advisory_lock(hashtextextended(:name, 0))"), {"name": name}
        )
    elif is_mysql(dialect):
        taken = await connection.scalar(sa.text("SELECT GET_LOCK(:name, :wait)"), {"name": name, "wait": 600})
        if taken != 1:
            raise DatabaseError(
                f"another copy into table {table!r} held it for 10 minutes",
                code=ErrorCode.DATABASE_UNAVAILABLE,
                retryable=True,
            )
    await connection.commit()


def writer_for(connection: AsyncConnection, target: TableName, columns: Sequence[str]) -> Writer:
    dialect = connection.dialect.name
    if is_postgres(dialect):
        return PostgresWriter(connection, target, columns)
    if is_mysql(dialect):
        return MySqlWriter(connection, target, columns)
    return Writer(connection, target, columns)
