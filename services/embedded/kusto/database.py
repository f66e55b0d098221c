"""The sample table as the DuckDB file the local Kusto endpoint serves.

Built once per data folder and rebuilt only when the generator's output changes.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import duckdb

from services.embedded.sample_data import (
    DEFAULT_COUNT,
    DEFAULT_SEED,
    GENERATOR_VERSION,
    STORM_EVENTS_COLUMNS,
    TABLE_NAME,
    text_rows,
)

#: How each Kusto type is stored. duckdb-kql reports JSON columns as `dynamic`
#: and INTEGER as `int` (duckdb_kql.types.DUCKDB_TO_KQL), so the schema a Kusto
#: client sees is the one declared above.
_DUCKDB_TYPES = {
    "datetime": "TIMESTAMP",
    "int": "INTEGER",
    "long": "BIGINT",
    "real": "DOUBLE",
    "string": "VARCHAR",
    "dynamic": "JSON",
}


def _marker(count: int, seed: int) -> str:
    return f"adxflow sample StormEvents v{GENERATOR_VERSION} seed={seed} count={count}"


#: Field separator of the staging file: ASCII's own unit separator, which no
#: generated value contains, so fields need no quoting and the writer no
#: escaping. Were one ever to appear, DuckDB would refuse the row for having
#: too many columns rather than load it shifted.
_SEPARATOR = "\x1f"


def write_database(path: Path, *, count: int = DEFAULT_COUNT, seed: int = DEFAULT_SEED) -> Path:
    """Write a DuckDB file at *path* holding table `StormEvents`; returns *path*.

    The rows go through a delimited text file that DuckDB reads in one typed
    statement, because per-row inserts are two orders of magnitude slower. The
    database is built beside *path* and renamed over it, so a reader never
    opens a half-written one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    columns = ", ".join(f"'{name}': '{_DUCKDB_TYPES[kind]}'" for name, kind in STORM_EVENTS_COLUMNS)
    schema = ", ".join(f'"{name}" {_DUCKDB_TYPES[kind]}' for name, kind in STORM_EVENTS_COLUMNS)
    with tempfile.TemporaryDirectory(dir=path.parent, prefix=f".{path.stem}-") as scratch:
        staged = Path(scratch) / "rows.txt"
        with staged.open("w", encoding="utf-8", newline="\n") as out:
            out.writelines(_SEPARATOR.join(map(str, row)) + "\n" for row in text_rows(count, seed))
        built = Path(scratch) / path.name
        con = duckdb.connect(str(built))
        try:
            con.execute(f"CREATE TABLE {TABLE_NAME} ({schema})")
            # `nullstr` is a token the data never contains, because DuckDB would
            # otherwise read an empty field as NULL and no StormEvents value is.
            con.execute(
                f"INSERT INTO {TABLE_NAME} SELECT * FROM read_csv(?, header = false, auto_detect = false, "
                f"columns = {{{columns}}}, delim = '{_SEPARATOR}', quote = '', escape = '', "
                "nullstr = '\\N')",
                [str(staged)],
            )
            # The marker rides on the table comment rather than in a table of its
            # own, which Kusto clients would list beside StormEvents.
            con.execute(f"COMMENT ON TABLE {TABLE_NAME} IS '{_marker(count, seed)}'")
        finally:
            con.close()
        os.replace(built, path)
    return path


def _current_marker(path: Path) -> str | None:
    try:
        con = duckdb.connect(str(path), read_only=True)
    except duckdb.Error:
        return None  # unreadable or not a DuckDB file: rebuild it
    try:
        row = con.execute("SELECT comment FROM duckdb_tables() WHERE table_name = ?", [TABLE_NAME]).fetchone()
    finally:
        con.close()
    return None if row is None else row[0]


def ensure_database(
    directory: Path,
    name: str = "Samples",
    *,
    count: int = DEFAULT_COUNT,
    seed: int = DEFAULT_SEED,
) -> Path:
    """`<directory>/<name>.duckdb`, built unless it already holds these rows.

    duckdb-kql names a database after its file stem, so *name* is the Kusto
    database name clients see.
    """
    path = Path(directory) / f"{name}.duckdb"
    if path.exists() and _current_marker(path) == _marker(count, seed):
        return path
    return write_database(path, count=count, seed=seed)
