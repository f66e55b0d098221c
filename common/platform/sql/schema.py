"""What a copy checks before it writes: the request against the connection, the result against the table."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Dialect
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.types import TypeEngine

from common.contracts.copies import CopyMode
from common.contracts.errors import DatabaseError
from common.contracts.messages import ErrorCode
from common.contracts.results import Column
from common.platform.connections import DatabaseConfig
from common.platform.sql.types import KUSTO_TYPES, column_type, fits
from common.platform.sql.writers import TableName

#: ``table`` or ``schema.table``, each a plain identifier, as operators' allowlists name them.
_TABLE = re.compile(r"(?:([A-Za-z_][A-Za-z0-9_]{0,62})\.)?([A-Za-z_][A-Za-z0-9_]{0,62})")


def table_name(table: str) -> TableName:
    match = _TABLE.fullmatch(table)
    if match is None:
        raise DatabaseError(
            f"table {table!r} is not a table name: letters, digits and '_', as 'table' or 'schema.table'",
            code=ErrorCode.TABLE_NOT_ALLOWED,
        )
    return TableName(match.group(2), match.group(1))


def check_request(
    database: str, config: DatabaseConfig, table: str, mode: CopyMode, keys: Sequence[str]
) -> None:
    """Refuse a copy its connection does not allow, or whose mode and keys do not go together."""
    if not config.allows(table):
        raise DatabaseError(
            f"table {table!r} is not one database {database!r} allows flows to write "
            f"(tables: {', '.join(config.tables)})",
            code=ErrorCode.TABLE_NOT_ALLOWED,
        )
    if mode in (CopyMode.UPSERT, CopyMode.MERGE) and not keys:
        raise DatabaseError(f"mode {mode.value!r} needs key columns (keys)", code=ErrorCode.UNKNOWN_COLUMN)
    if mode in (CopyMode.APPEND, CopyMode.REPLACE) and keys:
        raise DatabaseError(f"mode {mode.value!r} takes no key columns", code=ErrorCode.UNKNOWN_COLUMN)


def check_columns(columns: Sequence[Column], keys: Sequence[str]) -> None:
    """Refuse a result no table can take: a name twice, a type without a mapping, keys it has not."""
    names = [column.name for column in columns]
    twice = sorted({name for name in names if names.count(name) > 1})
    if twice:
        raise DatabaseError(
            f"the result has more than one column {twice[0]!r}", code=ErrorCode.TABLE_MISMATCH
        )
    for column in columns:
        if column.type not in KUSTO_TYPES:
            raise DatabaseError(
                f"column {column.name!r} is of Kusto type {column.type!r}, which no table column maps",
                code=ErrorCode.TABLE_MISMATCH,
            )
    if columns:
        for key in keys:
            if key not in names:
                raise DatabaseError(
                    f"key column {key!r} is not a column of the result (columns: {', '.join(names)})",
                    code=ErrorCode.UNKNOWN_COLUMN,
                )
    for key in keys:
        if key in names and columns[names.index(key)].type == "dynamic":
            raise DatabaseError(
                f"key column {key!r} is dynamic, which no index covers", code=ErrorCode.UNKNOWN_COLUMN
            )


@dataclass(frozen=True)
class Existing:
    """A table found in the database: its columns' types and the column sets it keeps unique."""

    name: TableName
    types: dict[str, TypeEngine[Any]]
    unique: list[frozenset[str]]
    dialect: Dialect

    def naive(self, column: str) -> bool:
        """Whether the column keeps datetimes without a zone."""
        kind = self.types.get(column)
        return isinstance(kind, sa.DateTime) and not kind.timezone


async def existing_table(connection: AsyncConnection, table: TableName) -> Existing | None:
    """The table as the database describes it, or None when it is missing."""

    def inspect(sync: sa.Connection) -> Existing | None:
        inspector = sa.inspect(sync)
        if not inspector.has_table(table.name, schema=table.schema):
            return None
        types = {column["name"]: column["type"] for column in inspector.get_columns(table.name, table.schema)}
        unique = [frozenset(inspector.get_pk_constraint(table.name, table.schema)["constrained_columns"])]
        unique += [
            frozenset(constraint["column_names"])
            for constraint in inspector.get_unique_constraints(table.name, table.schema)
        ]
        unique += [
            frozenset(name for name in index["column_names"] if name is not None)
            for index in inspector.get_indexes(table.name, table.schema)
            if index["unique"]
        ]
        return Existing(table, types, [columns for columns in unique if columns], sync.dialect)

    return await connection.run_sync(inspect)


def fit(
    database: str,
    table: str,
    existing: Existing,
    columns: Sequence[Column],
    mode: CopyMode,
    keys: Sequence[str],
) -> None:
    """Refuse a table that cannot take the result, naming the column and both types."""
    for column in columns:
        kind = existing.types.get(column.name)
        dialect = existing.dialect
        shown = column_type(column.type, dialect.name, key=column.name in keys).compile(dialect=dialect)
        if kind is None:
            raise DatabaseError(
                f"table {table!r} of database {database!r} has no column {column.name!r} "
                f"(the result's is Kusto {column.type}, {shown} in a created table)",
                code=ErrorCode.TABLE_MISMATCH,
            )
        if not fits(column.type, kind, dialect.name):
            raise DatabaseError(
                f"column {column.name!r} of table {table!r} is {kind.compile(dialect=dialect)}, "
                f"which cannot hold the result's Kusto {column.type} values (use {shown})",
                code=ErrorCode.TABLE_MISMATCH,
            )
    if mode in (CopyMode.UPSERT, CopyMode.MERGE) and frozenset(keys) not in existing.unique:
        raise DatabaseError(
            f"table {table!r} of database {database!r} has no primary key or unique index on exactly "
            f"({', '.join(keys)}), which {mode.value} needs",
            code=ErrorCode.TABLE_MISMATCH,
        )


def new_table(table: TableName, columns: Sequence[Column], keys: Sequence[str], dialect: str) -> sa.Table:
    """The table a copy creates for *columns*, the keys its primary key; ``.create`` it on a connection."""
    return sa.Table(
        table.name,
        sa.MetaData(),
        *(
            sa.Column(
                column.name,
                column_type(column.type, dialect, key=column.name in keys),
                nullable=column.name not in keys,
                autoincrement=False,
            )
            for column in columns
        ),
        *([sa.PrimaryKeyConstraint(*keys)] if keys else []),
        schema=table.schema,
    )
