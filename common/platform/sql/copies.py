"""Copies of a query result into a table of an operator-configured database, exactly once.

``async with SqlDatabase(name, config) as database: await database.copy(request, batches)``
writes the rows of *batches* (an async iterator of ``(columns, rows)`` as
`BlobStore.result_rows` yields them) into ``request.table``:

1. The request is checked before anything is read or written: the table is in
   the connection's allowlist, upsert and merge name key columns, and those are
   columns of the result.
2. If the ledger (`common.platform.sql.ledger`) holds this run and step, the
   copy was made: nothing is written, and the outcome says so (``repeated``).
3. An existing table must fit the result (each column there, of a type that
   holds its values, and for upsert and merge a unique index on the keys), or
   the copy is refused naming the column and both types. A missing table is
   created (types: `common.platform.sql.types`), with the keys as its primary key.
4. In one transaction: the ledger row, then the rows batch by batch (only one
   batch is in memory), then the ledger's row count; at the commit all of it
   lands at once. A cap exceeded, a source that fails, a database that goes
   away: the transaction rolls back and the table is as it was (on MariaDB a
   table the copy created stays, empty: its DDL commits on its own).
"""

from __future__ import annotations

import json
import operator
from collections.abc import AsyncGenerator, AsyncIterable, AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from decimal import InvalidOperation
from types import TracebackType
from typing import Any, Self

from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlalchemy.pool import NullPool
from sqlalchemy.schema import CreateTable

from common.contracts.copies import CopyMode, CopyOutcome
from common.contracts.errors import DatabaseError
from common.contracts.messages import ErrorCode
from common.contracts.results import Column
from common.platform.connections import DatabaseConfig
from common.platform.sql import ledger
from common.platform.sql.failures import DATABASE_FAILURES, database_error
from common.platform.sql.reads import Batch, read_rows
from common.platform.sql.schema import (
    Existing,
    check_columns,
    check_request,
    existing_table,
    fit,
    new_table,
    table_name,
)
from common.platform.sql.types import Convert, converter, is_mysql
from common.platform.sql.writers import TableName, Writer, hold_table, writer_for

#: The rows' JSON as the byte cap counts it: compact, not ASCII-escaped.
_JSON = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))


@dataclass(frozen=True)
class CopyRequest:
    """One step's copy: which run and step it is, the table, the mode and the key columns."""

    run_id: str
    step_id: str
    table: str
    mode: CopyMode = CopyMode.APPEND
    keys: tuple[str, ...] = ()
    #: The result's columns, for a source that may have no rows (and so no batch to name them).
    columns: tuple[Column, ...] | None = None


class SqlDatabase:
    """A configured database, connected for copies; an async context manager."""

    def __init__(self, name: str, config: DatabaseConfig) -> None:
        self.name = name
        self.config = config
        self._engine: AsyncEngine | None = None

    async def __aenter__(self) -> Self:
        # No pool: a copy holds one connection for its transaction, and temporary tables end with it.
        self._engine = create_async_engine(self.config.engine_url(self.name), poolclass=NullPool)
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def close(self) -> None:
        engine, self._engine = self._engine, None
        if engine is not None:
            await engine.dispose()

    def __repr__(self) -> str:
        return f"SqlDatabase({self.name!r}, {self.config!r})"

    @property
    def dialect(self) -> str:
        """SQLAlchemy's name for the database's kind: ``postgresql``, ``mysql``, ``mariadb``."""
        if self._engine is None:
            raise RuntimeError("the database is not open: use it as an async context manager")
        return self._engine.dialect.name

    async def read(
        self, query: str, parameters: Mapping[str, Any], *, batch_rows: int = 5_000
    ) -> AsyncGenerator[Batch]:
        """*query*'s rows in batches, in a read-only transaction (`common.platform.sql.reads`);
        only of a database the operator lets flows read (``reads: true``)."""
        if self._engine is None:
            raise RuntimeError("the database is not open: use it as an async context manager")
        if not self.config.reads:
            raise DatabaseError(
                f"database {self.name!r} is not one flows may read: the operator allows it with "
                "'reads: true' in the connections file"
            )
        try:
            async with self._engine.connect() as connection:
                autocommit = await connection.execution_options(isolation_level="AUTOCOMMIT")
                async for batch in read_rows(autocommit, query, parameters, batch_rows):
                    yield batch
        except DATABASE_FAILURES as exc:
            raise database_error(exc, self.name, doing="the query") from exc

    async def copy(self, request: CopyRequest, batches: AsyncIterable[Batch]) -> CopyOutcome:
        """Write the rows of *batches* into the request's table once (see the module's docstring)."""
        if self._engine is None:
            raise RuntimeError("the database is not open: use it as an async context manager")
        target = table_name(request.table)
        check_request(self.name, self.config, request.table, request.mode, request.keys)
        source = aiter(batches)
        first = await anext(source, None)
        columns = list(first[0]) if first is not None else list(request.columns or [])
        check_columns(columns, request.keys)
        try:
            async with self._engine.connect() as connection:
                return await self._copy(connection, request, target, columns, _chain(first, source))
        except DATABASE_FAILURES as exc:
            raise database_error(exc, self.name) from exc

    async def _copy(
        self,
        connection: AsyncConnection,
        request: CopyRequest,
        target: TableName,
        columns: list[Column],
        batches: AsyncIterator[Batch],
    ) -> CopyOutcome:
        outcome = CopyOutcome(database=self.name, table=request.table, mode=request.mode, rows=0)
        dialect = connection.dialect.name
        # Copies into one table take turns, from the ledger's look to the commit.
        await hold_table(connection, request.table)
        await ledger.ensure_ledger(connection)
        recorded = await ledger.recorded_rows(connection, request.run_id, request.step_id)
        if recorded is not None:
            return outcome.model_copy(update={"rows": recorded, "repeated": True})
        existing = await existing_table(connection, target)
        if existing is not None:
            fit(self.name, request.table, existing, columns, request.mode, request.keys)
        create = CreateTable(new_table(target, columns, request.keys, dialect), if_not_exists=True)
        if existing is None and columns and is_mysql(dialect):
            # MariaDB's CREATE TABLE commits on its own: made before the copy's transaction begins.
            await connection.execute(create)
        await connection.commit()
        try:
            async with connection.begin():
                await ledger.open_entry(
                    connection, request.run_id, request.step_id, request.table, request.mode
                )
                if existing is None and columns and not is_mysql(dialect):
                    await connection.execute(create)
                rows = _Rows(self.name, self.config, columns, existing, dialect)
                writer = writer_for(connection, target, rows.names)
                written = await _write(writer, _mode(request.mode, existing), rows, batches, request.keys)
                await ledger.close_entry(connection, request.run_id, request.step_id, written)
        except IntegrityError:
            # Another try of the same step committed its ledger row while this one waited on it.
            recorded = await ledger.recorded_rows(connection, request.run_id, request.step_id)
            if recorded is None:
                raise
            return outcome.model_copy(update={"rows": recorded, "repeated": True})
        return outcome.model_copy(update={"rows": written})


def _mode(mode: CopyMode, existing: Existing | None) -> CopyMode:
    """The mode that does the same to the table: a table the copy creates has nothing to replace or delete."""
    if existing is not None:
        return mode
    return {CopyMode.REPLACE: CopyMode.APPEND, CopyMode.MERGE: CopyMode.UPSERT}.get(mode, mode)


async def _write(
    writer: Writer, mode: CopyMode, rows: _Rows, batches: AsyncIterator[Batch], keys: Sequence[str]
) -> int:
    """Write every batch by *mode*; the rows written."""
    if not rows.names:
        # A source without rows or columns into an existing table: replace and merge leave it empty.
        if mode in (CopyMode.REPLACE, CopyMode.MERGE):
            await writer.execute(f"DELETE FROM {writer.quoted(writer.target)}")
        return 0
    match mode:
        case CopyMode.APPEND:
            await rows.write_all(writer, writer.target, batches)
        case CopyMode.REPLACE:
            replacement = await writer.replacement()
            await rows.write_all(writer, replacement, batches)
            await writer.swap(replacement)
        case CopyMode.UPSERT | CopyMode.MERGE:
            stage = await writer.stage()
            await rows.write_all(writer, stage, batches)
            await writer.refuse_repeated_keys(stage, keys)
            await writer.upsert(stage, keys)
            if mode is CopyMode.MERGE:
                await writer.delete_missing(stage, keys)
            await writer.drop_stage(stage)
    return rows.count


async def _chain(first: Batch | None, rest: AsyncIterator[Batch]) -> AsyncIterator[Batch]:
    if first is None:
        return
    yield first
    async for batch in rest:
        yield batch


class _Rows:
    """The source's rows as the driver takes them, counted and held to the connection's caps."""

    def __init__(
        self,
        database: str,
        config: DatabaseConfig,
        columns: Sequence[Column],
        existing: Existing | None,
        dialect: str,
    ) -> None:
        self._database = database
        self._config = config
        self._columns = list(columns)
        self.names = [column.name for column in columns]
        self._converters: list[Convert] = [
            converter(column.type, dialect, naive_utc=existing is not None and existing.naive(column.name))
            for column in columns
        ]
        self.count = 0
        self.bytes = 0

    async def write_all(self, writer: Writer, table: TableName, batches: AsyncIterator[Batch]) -> None:
        await writer.bulk(table, self._converted_batches(batches))

    async def _converted_batches(self, batches: AsyncIterator[Batch]) -> AsyncIterator[list[tuple[Any, ...]]]:
        async for _, batch in batches:
            if batch:
                yield self._converted(batch)

    def _converted(self, batch: list[list[Any]]) -> list[tuple[Any, ...]]:
        self._hold_to_caps(batch)
        converters, width = self._converters, len(self._converters)
        if any(len(row) != width for row in batch):
            raise self._bad_value(batch)
        try:
            # The row's converters called on its values by map, in C: a row costs only its conversions.
            return [tuple(map(operator.call, converters, row)) for row in batch]
        except (ValueError, TypeError, InvalidOperation):
            raise self._bad_value(batch) from None

    def _hold_to_caps(self, batch: list[list[Any]]) -> None:
        self.count += len(batch)
        limit = self._config.max_rows
        if limit is not None and self.count > limit:
            raise DatabaseError(
                f"the source has more than max_rows={limit} rows, the cap of database {self._database!r}; "
                "nothing was written",
                code=ErrorCode.RESULT_TOO_LARGE,
            )
        limit = self._config.max_bytes
        if limit is not None:
            text = _JSON.encode(batch)
            self.bytes += len(text) if text.isascii() else len(text.encode("utf-8"))
            if self.bytes > limit:
                raise DatabaseError(
                    f"the source has more than max_bytes={limit} bytes of rows, the cap of database "
                    f"{self._database!r}; nothing was written",
                    code=ErrorCode.RESULT_TOO_LARGE,
                )

    def _bad_value(self, batch: list[list[Any]]) -> DatabaseError:
        """The first value of *batch* that does not convert, named by its column."""
        for row in batch:
            if len(row) != len(self._columns):
                return DatabaseError(f"a row has {len(row)} values for {len(self._columns)} columns")
            for column, convert, value in zip(self._columns, self._converters, row, strict=True):
                try:
                    convert(value)
                except (ValueError, TypeError, InvalidOperation):
                    return DatabaseError(
                        f"column {column.name!r}: {str(value)[:100]!r} is not a Kusto {column.type} value",
                        code=ErrorCode.TABLE_MISMATCH,
                    )
        return DatabaseError("a value of the source does not convert")
