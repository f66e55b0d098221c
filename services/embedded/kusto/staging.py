"""Rows in a request body appended to a table of the local Kusto endpoint.

Streaming ingestion and `.ingest inline` carry data, not a query, so the
engine's `.append` cannot read them as it reads a query's rows. The data is
written to a scratch file, read by DuckDB's own reader for its format
(`services.embedded.kusto.streaming.source_sql`) into a temporary table, and
appended from there with the statements the engine renders for `.append`
(`duckdb_kql.ingest.render_ingestion`: its schema check, its one row per
extent created) — all in one transaction on a connection of its own, so a
malformed row leaves the table as it was.
"""

from __future__ import annotations

import tempfile
import threading
import uuid
from pathlib import Path
from typing import Any

from duckdb import DuckDBPyConnection
from duckdb_kql import KqlError
from duckdb_kql.ingest import IngestionCommand, render_ingestion

from services.embedded.kusto.literals import RequestRefused
from services.embedded.kusto.streaming import FORMATS, StreamingSource, source_sql

__all__ = ["EntityNotFound", "StagedAppend"]


class EntityNotFound(KqlError):
    """A database or table an ingestion names that is not there, in Kusto's words."""

    def __init__(self, name: str, kind: str) -> None:
        KqlError.__init__(self, f"Entity ID '{name}' of kind '{kind}' was not found.")
        self.construct = name
        self.span = None
        self.hint = None

    def payload(self) -> dict[str, Any]:
        """Kusto's error for a missing entity (its code, type and message), answered with a 400.

        Not a 404: azure-kusto-data reports a 404 to an ingestion as the
        ingestion endpoint missing, and the table's name would be lost. Permanent,
        so a managed streaming client neither retries it nor falls back to queued
        ingestion.
        """
        return {
            "error": {
                "code": "BadRequest_EntityNotFound",
                "message": "Request is invalid and cannot be executed.",
                "@type": "Kusto.Data.Exceptions.EntityNotFoundException",
                "@message": str(self),
                "@context": {"service": "duckdb-kql"},
                "@permanent": True,
            }
        }


#: The temporary table the rows are staged in; one append runs at a time.
_STAGED = "temp.main.staged_rows"


class StagedAppend:
    """Appends request data to existing tables, one append at a time, on its own connection."""

    def __init__(self, con: DuckDBPyConnection) -> None:
        self._cursor = con.cursor()
        self._lock = threading.Lock()

    def append(self, database: str, table: str, data_format: str, data: bytes) -> list[tuple[uuid.UUID, int]]:
        """Append *data*, in *data_format*, to *table* of *database*: the extents created (id, rows)."""
        if data_format not in FORMATS:
            raise RequestRefused(
                f"format {data_format!r:.40} is not served here; "
                f"the local endpoint ingests {', '.join(FORMATS)}"
            )
        with self._lock, tempfile.TemporaryDirectory(prefix="local-kusto-ingest-") as scratch:
            cursor = self._cursor
            columns = self._columns(database, table)
            source = StreamingSource(data_format, tuple((str(name), str(kind)) for _, name, kind in columns))
            staged = str(Path(scratch) / f"data.{data_format}")
            Path(staged).write_bytes(data)
            cursor.execute("SET TimeZone = 'UTC'")
            present = None
            if data_format == "parquet":
                described = cursor.execute("DESCRIBE SELECT * FROM read_parquet(?)", [staged]).fetchall()
                present = frozenset(str(row[0]) for row in described)
            command = IngestionCommand(".append", str(columns[0][0]), "")
            cursor.execute("BEGIN TRANSACTION")
            try:
                cursor.execute(
                    f"CREATE TEMPORARY TABLE staged_rows AS {source_sql(source, present)}", [staged]
                )
                written = cursor.execute(
                    render_ingestion(command, f"SELECT * FROM {_STAGED}", database)
                ).fetchall()
                cursor.execute(f"DROP TABLE {_STAGED}")
                cursor.execute("COMMIT")
            except BaseException:
                cursor.execute("ROLLBACK")
                raise
        return [(row[0], int(row[5])) for row in written]

    def check_table(self, database: str, table: str) -> None:
        """Raise EntityNotFound unless *table* is in *database*."""
        with self._lock:
            self._columns(database, table)

    def _columns(self, database: str, table: str) -> list[tuple[Any, ...]]:
        """(the table's own name, column, DuckDB type) for each column of *table*, in order."""
        columns = self._cursor.execute(
            "SELECT table_name, column_name, data_type FROM information_schema.columns "
            "WHERE table_catalog = ? AND table_schema = 'main' AND lower(table_name) = lower(?) "
            "ORDER BY ordinal_position",
            [database, table],
        ).fetchall()
        if not columns:
            raise EntityNotFound(table, "Table")
        return columns

    def close(self) -> None:
        with self._lock:
            self._cursor.close()
