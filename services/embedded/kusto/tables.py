"""Table commands on the local Kusto endpoint: `.create table`, `.create-merge table`, `.drop table`.

duckdb-kql 1.1.2 creates a table only from an ingestion's rows (`.set`); an
ingestion that creates its target from the source's types needs the table
first, as on Kusto
(https://learn.microsoft.com/kusto/management/create-merge-table-command):

* `.create table` *T* `(`*c*`:`*type*, ...`)` creates *T*; a *T* that is there
  already is left as it is, and the command succeeds, as on Kusto.
* `.create-merge table` *T* `(...)` creates *T*, or adds to it the columns it
  lacks; a column it has with another type is refused, naming the column and
  both types.
* `.drop table` *T* `[ifexists]` drops *T*; without `ifexists` a missing *T* is
  Kusto's entity-not-found error.

Each answers as Kusto does: the table's name, its schema (JSON), database,
folder and doc string for the two creates; the tables left for a drop.
Column types are DuckDB's for the Kusto types, the ones the engine gives a
table that `.set` creates, so the engine reads them back as the same Kusto
types. A `with (folder=..., docstring=...)` clause is accepted and not kept.
"""

from __future__ import annotations

import json
import re
import threading
from dataclasses import dataclass

from duckdb import DuckDBPyConnection
from duckdb_kql.server import RestColumn, Result
from duckdb_kql.types import kusto_type, net_type

from services.embedded.kusto.literals import RequestRefused
from services.embedded.kusto.staging import EntityNotFound

__all__ = ["DUCKDB_TYPES", "TableCommand", "Tables", "table_command"]

#: The DuckDB type of a column of each Kusto type, as the engine's `.set` creates it.
DUCKDB_TYPES = {
    "bool": "BOOLEAN",
    "int": "INTEGER",
    "long": "BIGINT",
    "real": "DOUBLE",
    "decimal": "DECIMAL(38,9)",
    "string": "VARCHAR",
    "guid": "UUID",
    "datetime": "TIMESTAMP",
    "timespan": "INTERVAL",
    "dynamic": "JSON",
}
#: Kusto's other names for its types.
_ALIASES = {
    "boolean": "bool",
    "double": "real",
    "date": "datetime",
    "time": "timespan",
    "uuid": "guid",
    "uniqueid": "guid",
    "int64": "long",
    "int32": "int",
}

_NAME = r"\[\s*'(?:[^']*)'\s*\]|\[\s*\"(?:[^\"]*)\"\s*\]|[A-Za-z_][A-Za-z0-9_]*"
_CREATE = re.compile(
    rf"^\.(?P<verb>create|create-merge)\s+table\s+(?P<table>{_NAME})\s*\((?P<columns>[^)]*)\)\s*"
    r"(?:with\s*\([^)]*\)\s*)?;?\s*$",
    re.IGNORECASE | re.DOTALL,
)
_DROP = re.compile(rf"^\.drop\s+table\s+(?P<table>{_NAME})(?P<ifexists>\s+ifexists)?\s*;?\s*$", re.IGNORECASE)
_COLUMN = re.compile(rf"^\s*(?P<name>{_NAME})\s*:\s*(?P<type>[A-Za-z0-9_]+)\s*$")

_CREATED_COLUMNS = (
    RestColumn("TableName", "string", "String", "string"),
    RestColumn("Schema", "string", "String", "string"),
    RestColumn("DatabaseName", "string", "String", "string"),
    RestColumn("Folder", "string", "String", "string"),
    RestColumn("DocString", "string", "String", "string"),
)
_TABLES_COLUMNS = (
    RestColumn("TableName", "string", "String", "string"),
    RestColumn("DatabaseName", "string", "String", "string"),
)


@dataclass(frozen=True)
class TableCommand:
    """One table command: its verb (``.create``, ``.create-merge`` or ``.drop``), table and columns."""

    verb: str
    table: str
    columns: tuple[tuple[str, str], ...] = ()
    if_exists: bool = False


def _unquoted(name: str) -> str:
    name = name.strip()
    if name.startswith("["):
        return name[1:-1].strip()[1:-1]
    return name


def table_command(head: str) -> TableCommand | None:
    """The table command *head* is, or None if it is none of them; RequestRefused if malformed."""
    lowered = head.lower()
    if not lowered.startswith((".create table", ".create-merge table", ".drop table")):
        return None
    dropped = _DROP.match(head)
    if dropped is not None:
        return TableCommand(".drop", _unquoted(dropped["table"]), if_exists=bool(dropped["ifexists"]))
    created = _CREATE.match(head)
    if created is None:
        raise RequestRefused(
            "a table command here is '.create table T (c:type, ...)', '.create-merge table T (...)' "
            "or '.drop table T [ifexists]'"
        )
    columns: list[tuple[str, str]] = []
    for part in created["columns"].split(","):
        column = _COLUMN.match(part)
        if column is None:
            raise RequestRefused(f"{part.strip()!r:.80} is not a column, written as name:type")
        kind = _ALIASES.get(column["type"].lower(), column["type"].lower())
        if kind not in DUCKDB_TYPES:
            raise RequestRefused(
                f"column {_unquoted(column['name'])!r}: {column['type']!r} is not a Kusto type "
                f"({', '.join(DUCKDB_TYPES)})"
            )
        name = _unquoted(column["name"])
        if any(name.lower() == seen.lower() for seen, _ in columns):
            raise RequestRefused(f"column {name!r} is named twice")
        columns.append((name, kind))
    return TableCommand(f".{created['verb'].lower()}", _unquoted(created["table"]), tuple(columns))


def _quoted(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


class Tables:
    """Runs table commands on a connection of its own, one at a time."""

    def __init__(self, con: DuckDBPyConnection) -> None:
        self._cursor = con.cursor()
        self._lock = threading.Lock()

    def run(self, database: str, command: TableCommand) -> Result:
        with self._lock:
            existing = self._columns(database, command.table)
            if command.verb == ".drop":
                return self._drop(database, command, existing)
            if existing is None:
                self._create(database, command)
            elif command.verb == ".create-merge":
                self._merge(database, command, existing)
            return self._described(database, command.table)

    def _columns(self, database: str, table: str) -> tuple[str, dict[str, str]] | None:
        """The table's own name and its columns (name → DuckDB type), or None if it is not there."""
        rows = self._cursor.execute(
            "SELECT table_name, column_name, data_type FROM information_schema.columns "
            "WHERE table_catalog = ? AND table_schema = 'main' AND lower(table_name) = lower(?) "
            "ORDER BY ordinal_position",
            [database, table],
        ).fetchall()
        if not rows:
            return None
        return str(rows[0][0]), {str(row[1]): str(row[2]) for row in rows}

    def _target(self, database: str, table: str) -> str:
        return f"{_quoted(database)}.main.{_quoted(table)}"

    def _create(self, database: str, command: TableCommand) -> None:
        columns = ", ".join(f"{_quoted(name)} {DUCKDB_TYPES[kind]}" for name, kind in command.columns)
        self._cursor.execute(f"CREATE TABLE {self._target(database, command.table)} ({columns})")

    def _merge(self, database: str, command: TableCommand, existing: tuple[str, dict[str, str]]) -> None:
        table, present = existing
        lowered = {name.lower(): (name, kind) for name, kind in present.items()}
        added = []
        for name, kind in command.columns:
            if name.lower() not in lowered:
                added.append((name, kind))
                continue
            own, duck = lowered[name.lower()]
            if not _same_type(duck, kind):
                raise RequestRefused(
                    f".create-merge table {table}: column {own!r} is {kusto_type(duck)} there, "
                    f"not {kind}; a column's type is changed by .alter column"
                )
        self._cursor.execute("BEGIN TRANSACTION")
        try:
            for name, kind in added:
                target = self._target(database, table)
                self._cursor.execute(f"ALTER TABLE {target} ADD COLUMN {_quoted(name)} {DUCKDB_TYPES[kind]}")
            self._cursor.execute("COMMIT")
        except BaseException:
            self._cursor.execute("ROLLBACK")
            raise

    def _drop(
        self, database: str, command: TableCommand, existing: tuple[str, dict[str, str]] | None
    ) -> Result:
        if existing is None and not command.if_exists:
            raise EntityNotFound(command.table, "Table")
        if existing is not None:
            self._cursor.execute(f"DROP TABLE {self._target(database, existing[0])}")
        left = self._cursor.execute(
            "SELECT table_name FROM information_schema.tables "
            "WHERE table_catalog = ? AND table_schema = 'main' ORDER BY table_name",
            [database],
        ).fetchall()
        return Result(list(_TABLES_COLUMNS), [(str(row[0]), database) for row in left])

    def _described(self, database: str, table: str) -> Result:
        found = self._columns(database, table)
        assert found is not None  # just created, or there before
        name, columns = found
        schema = {
            "Name": name,
            "OrderedColumns": [
                {"Name": column, "Type": net_type(kusto_type(kind)), "CslType": kusto_type(kind)}
                for column, kind in columns.items()
            ],
        }
        return Result(list(_CREATED_COLUMNS), [(name, json.dumps(schema), database, "", "")])

    def close(self) -> None:
        with self._lock:
            self._cursor.close()


def _same_type(duckdb_type: str, kind: str) -> bool:
    return kusto_type(duckdb_type) == kind
