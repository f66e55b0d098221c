"""Extent tags on the local Kusto endpoint: ingest-by tags and `ingestIfNotExists`.

Kusto tags the extents an ingestion creates with the `tags` ingestion property,
and an ingestion with `ingestIfNotExists='["X"]'` ingests "so long as no extent
in the table has the `ingest-by:X` tag", which is how a retried ingestion
is kept from ingesting twice; typically the command carries both
(https://learn.microsoft.com/kusto/management/extent-tags#ingest-by-extent-tags,
and the properties at https://learn.microsoft.com/kusto/management/data-ingestion/ingest-from-query
and https://learn.microsoft.com/kusto/ingestion-properties).

Streaming ingestion cannot set extent tags, so these are the commands that do,
here as on Kusto:

* `.set`, `.append`, `.set-or-append`, `.set-or-replace` *T*
  `with (tags=..., ingestIfNotExists=...) <|` *query*;
* `.ingest inline into table` *T* `[with (format=..., tags=..., ingestIfNotExists=...)] <|` *data*, whose
  data is CSV unless `format` says otherwise
  (https://learn.microsoft.com/kusto/management/data-ingestion/ingest-inline).

An ingestion that `ingestIfNotExists` holds back writes nothing and succeeds:
the query verbs answer no rows (no extent was created, as the engine answers
any write of nothing), `.ingest inline` one row with the zero extent id (its
documented answer when no extent is created). Any other ingestion property is
refused by name rather than ignored.

`.show table T extents` lists the extents recorded here with Kusto's columns;
sizes this endpoint does not have are null. The record is kept in memory for
the endpoint's lifetime: it holds the extents created through this endpoint
since it started (rows loaded before, or by another process, are in no extent),
and a `.set-or-replace` replaces the table's extents with its own.
"""

from __future__ import annotations

import ast
import datetime as dt
import json
import re
import threading
import uuid
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from duckdb_kql.server import RestColumn, Result

from services.embedded.kusto.literals import RequestRefused

__all__ = [
    "EXTENT_COLUMNS",
    "INGEST_BY",
    "INLINE_COLUMNS",
    "ZERO_EXTENT",
    "ExtentLog",
    "IngestionProperties",
    "InlineIngestion",
    "TaggedCommand",
    "inline_ingestion",
    "shown_extents_table",
    "tagged_command",
]

INGEST_BY = "ingest-by:"

#: `.ingest inline` answers one row per extent created, or this id when it created none.
ZERO_EXTENT = uuid.UUID(int=0)
INLINE_COLUMNS: tuple[RestColumn, ...] = (RestColumn("ExtentId", "guid", "Guid", "guid"),)

#: `.show table T extents`, Kusto's columns in Kusto's order.
EXTENT_COLUMNS: tuple[RestColumn, ...] = (
    RestColumn("ExtentId", "guid", "Guid", "guid"),
    RestColumn("DatabaseName", "string", "String", "string"),
    RestColumn("TableName", "string", "String", "string"),
    RestColumn("MaxCreatedOn", "datetime", "DateTime", "datetime"),
    RestColumn("OriginalSize", "real", "Double", "real"),
    RestColumn("ExtentSize", "real", "Double", "real"),
    RestColumn("CompressedSize", "real", "Double", "real"),
    RestColumn("IndexSize", "real", "Double", "real"),
    RestColumn("Blocks", "long", "Int64", "long"),
    RestColumn("Segments", "long", "Int64", "long"),
    RestColumn("ExtentContainerId", "string", "String", "string"),
    RestColumn("RowCount", "long", "Int64", "long"),
    RestColumn("MinCreatedOn", "datetime", "DateTime", "datetime"),
    RestColumn("Tags", "string", "String", "string"),
    RestColumn("Kind", "string", "String", "string"),
    RestColumn("DeletedRowCount", "long", "Int64", "long"),
)

_NAME = r"\[\s*'[^']*'\s*\]|\[\s*\"[^\"]*\"\s*\]|[A-Za-z_][A-Za-z0-9_]*"
_QUERY_VERB = re.compile(
    rf"(?P<verb>\.set-or-replace|\.set-or-append|\.append|\.set)\s+(?P<table>{_NAME})\s+with\s*\(",
    re.IGNORECASE,
)
_INLINE = re.compile(rf"\.ingest\s+inline\s+into\s+table\s+(?P<table>{_NAME})\s*", re.IGNORECASE)
_SHOW_EXTENTS = re.compile(
    rf"\.show\s+table\s+(?P<table>{_NAME})\s+extents\b(?P<rest>.*)", re.IGNORECASE | re.DOTALL
)
_PROPERTY = re.compile(r"\s*(?P<name>[A-Za-z_][A-Za-z0-9_]*)\s*=\s*")
#: A KQL string literal: '...' or "..." with backslash escapes, or @'...' / @"..." verbatim.
_STRING = re.compile(r"""@'(?:[^']|'')*'|@"(?:[^"]|"")*"|'(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*\"""", re.DOTALL)
_BARE = re.compile(r"[A-Za-z0-9_.:+-]+")


def _table_name(written: str) -> str:
    return written.strip()[1:-1].strip()[1:-1] if written.startswith("[") else written


@dataclass(frozen=True)
class IngestionProperties:
    """The ingestion properties this endpoint honours."""

    tags: tuple[str, ...] = ()
    ingest_if_not_exists: tuple[str, ...] = ()
    format: str | None = None


def _string_value(literal: str) -> str:
    if literal.startswith("@"):
        quote = literal[1]
        return literal[2:-1].replace(quote * 2, quote)
    try:
        value = ast.literal_eval(literal)
    except (ValueError, SyntaxError) as exc:
        raise RequestRefused(f"ingestion property value {literal!r:.80} is not a string literal") from exc
    if not isinstance(value, str):
        raise RequestRefused(f"ingestion property value {literal!r:.80} is not a string literal")
    return value


def _string_list(name: str, text: str) -> tuple[str, ...]:
    """A list of strings: JSON (`'["a","b"]'`), or `"['a','b']"` as Kusto's docs also write it."""
    try:
        value = json.loads(text)
    except ValueError:
        try:
            value = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            value = None
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise RequestRefused(f"ingestion property {name} must be a JSON list of strings, not {text!r:.80}")
    return tuple(value)


def _properties(text: str, start: int, allowed: frozenset[str]) -> tuple[IngestionProperties, int]:
    """The properties of the `with (` clause open at *start*, and where the clause ends."""
    values: dict[str, str] = {}
    position = start
    while True:
        named = _PROPERTY.match(text, position)
        if named is None:
            raise RequestRefused(f"malformed ingestion properties at {text[position : position + 40]!r}")
        name = named.group("name")
        position = named.end()
        literal = _STRING.match(text, position) or _BARE.match(text, position)
        if literal is None:
            raise RequestRefused(f"ingestion property {name} has no value")
        written = literal.group(0)
        values[name.lower()] = _string_value(written) if literal.re is _STRING else written
        position = literal.end()
        while position < len(text) and text[position].isspace():
            position += 1
        if text.startswith(",", position):
            position += 1
            continue
        if text.startswith(")", position):
            break
        raise RequestRefused(f"malformed ingestion properties at {text[position : position + 40]!r}")
    refused = sorted(set(values) - allowed)
    if refused:
        raise RequestRefused(
            f"ingestion propert{'y' if len(refused) == 1 else 'ies'} {', '.join(refused)} "
            f"not supported here: the local endpoint honours {', '.join(sorted(allowed))}"
        )
    properties = IngestionProperties(
        tags=_string_list("tags", values["tags"]) if "tags" in values else (),
        ingest_if_not_exists=(
            _string_list("ingestIfNotExists", values["ingestifnotexists"])
            if "ingestifnotexists" in values
            else ()
        ),
        format=values["format"].lower() if "format" in values else None,
    )
    return properties, position + 1


class TaggedCommand(NamedTuple):
    verb: str
    table: str
    #: The command without its `with (...)` clause, as the engine runs it.
    text: str
    properties: IngestionProperties


def tagged_command(head: str) -> TaggedCommand | None:
    """An ingest-from-query command with a `with (...)` clause, or None."""
    match = _QUERY_VERB.match(head)
    if match is None:
        return None
    properties, end = _properties(head, match.end(), frozenset({"tags", "ingestifnotexists"}))
    rest = head[end:].lstrip()
    if not rest.startswith("<|"):
        raise RequestRefused(f"{match.group('verb')}: expected `<|` after the ingestion properties")
    verb = match.group("verb").lower()
    return TaggedCommand(
        verb, _table_name(match.group("table")), f"{verb} {match.group('table')} {rest}", properties
    )


class InlineIngestion(NamedTuple):
    table: str
    properties: IngestionProperties
    data: bytes


def inline_ingestion(head: str) -> InlineIngestion | None:
    """`.ingest inline into table T [with (...)] <| data`, or None for another command."""
    match = _INLINE.match(head)
    if match is None:
        return None
    position = match.end()
    properties = IngestionProperties()
    opening = re.compile(r"with\s*\(", re.IGNORECASE).match(head, position)
    if opening is not None:
        properties, position = _properties(
            head, opening.end(), frozenset({"tags", "ingestifnotexists", "format"})
        )
    rest = head[position:].lstrip()
    if not rest.startswith("<|"):
        # Kusto also takes `[ ... ]` records here; only the `<|` form is served.
        raise RequestRefused(
            ".ingest inline: expected `<|` followed by the data (the bracket form is not served)"
        )
    # The data is not KQL: its whitespace is kept, but the line break after `<|` is not data.
    data = rest[2:]
    data = data[1:] if data.startswith("\n") else data[2:] if data.startswith("\r\n") else data.lstrip(" ")
    return InlineIngestion(_table_name(match.group("table")), properties, data.encode("utf-8"))


def shown_extents_table(head: str) -> str | None:
    """The table of a bare `.show table T extents`, or None for another command."""
    match = _SHOW_EXTENTS.match(head)
    if match is None:
        return None
    if match.group("rest").strip().rstrip(";").strip():
        raise RequestRefused(
            ".show table T extents is served bare here: "
            "extent ids, `hot`, tag filters and a pipeline on it are not"
        )
    return _table_name(match.group("table"))


@dataclass
class _Extent:
    id: uuid.UUID
    row_count: int
    tags: tuple[str, ...]
    created_on: dt.datetime = field(default_factory=lambda: dt.datetime.now(dt.UTC))


class ExtentLog:
    """The extents created through one endpoint, by (database, table), behind one lock.

    `ingestion` holds a table's lock from the check of `ingestIfNotExists` to
    the recording of the new extents, so two ingestions with one ingest-by tag
    cannot both pass the check.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._ingesting: dict[tuple[str, str], threading.Lock] = {}
        self._extents: dict[tuple[str, str], list[_Extent]] = {}

    def ingestion(self, database: str, table: str) -> threading.Lock:
        """The lock an ingestion into *table* holds while it checks, writes and records."""
        with self._lock:
            return self._ingesting.setdefault((database, table.lower()), threading.Lock())

    def ingested_by(self, database: str, table: str, values: tuple[str, ...]) -> str | None:
        """The first of *values* whose `ingest-by:` tag an extent of *table* has, or None."""
        wanted = {INGEST_BY + value for value in values}
        with self._lock:
            for extent in self._extents.get((database, table.lower()), []):
                for tag in extent.tags:
                    if tag in wanted:
                        return tag[len(INGEST_BY) :]
        return None

    def record(
        self,
        database: str,
        table: str,
        created: list[tuple[uuid.UUID, int]],
        tags: tuple[str, ...],
        *,
        replace: bool,
    ) -> None:
        """Record the extents an ingestion created (id, rows); *replace* drops the table's earlier ones."""
        key = (database, table.lower())
        with self._lock:
            kept = [] if replace else self._extents.get(key, [])
            self._extents[key] = kept + [_Extent(extent_id, rows, tags) for extent_id, rows in created]

    def forget(self, database: str, table: str) -> None:
        """A dropped table's extents, and their tags, are gone with it."""
        with self._lock:
            self._extents.pop((database, table.lower()), None)

    def result(self, database: str, table: str) -> Result:
        with self._lock:
            extents = list(self._extents.get((database, table.lower()), []))
        rows: list[Any] = [
            (
                extent.id,
                database,
                table,
                extent.created_on,
                None,  # OriginalSize, ExtentSize, CompressedSize, IndexSize: no such figures here
                None,
                None,
                None,
                None,  # Blocks, Segments, ExtentContainerId: no storage engine behind them
                None,
                None,
                extent.row_count,
                extent.created_on,
                "\r\n".join(extent.tags),
                "",
                0,
            )
            for extent in extents
        ]
        return Result(list(EXTENT_COLUMNS), rows)
