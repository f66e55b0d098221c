"""Streaming ingestion, as the local Kusto endpoint serves it.

azure-kusto-ingest's `KustoStreamingIngestClient` (and the streaming attempts
of its `ManagedStreamingIngestClient`) call azure-kusto-data's
`execute_streaming_ingest`, which sends the data itself as the request body::

    POST /v1/rest/ingest/{database}/{table}?streamFormat={format}[&mappingName={name}]
    Content-Encoding: gzip
    x-ms-client-request-id: KPC.executeStreamingIngest;{uuid}

The client compresses every format it calls compressible and sends the header
for all of them, Parquet included (its bytes go as they are), so the body is
read as gzip only when it starts with gzip's magic bytes. Kusto answers a v1
table of four columns, `ConsumedRecordsCount`, `UpdatePolicyStatus`,
`UpdatePolicyFailureCode` and `UpdatePolicyFailureReason`, which the client
parses and ignores.

Rows go into an existing table only, as on Kusto: the CSV family maps fields
to columns by position, JSON and Parquet by name (a field the table lacks is
dropped, a column the data lacks is null; a string column is never null, as
in Kusto). Named ingestion mappings are not kept here, so `mappingName` is
refused; so are ingestion from a blob (`sourceKind=uri`) and formats other
than those in `FORMATS`.

Kusto documents that extent tags cannot be set on streaming ingestion data
(https://learn.microsoft.com/azure/data-explorer/ingest-data-streaming#limitations),
and the request carries none: ingest-by tags go with the ingestion commands
(`services.embedded.kusto.extents`).
"""

from __future__ import annotations

import io
import re
import zlib
from dataclasses import dataclass
from urllib.parse import parse_qs, unquote, urlsplit

from duckdb_kql.server import RestColumn, Result

from services.embedded.kusto.literals import RequestRefused

__all__ = [
    "FORMATS",
    "MAX_STREAMING_BYTES",
    "STREAMING_RESULT_COLUMNS",
    "StreamingRequest",
    "StreamingSource",
    "read_body",
    "source_sql",
    "streaming_request",
    "streaming_result",
]

#: Kusto's limit on the data of one streaming ingestion request, uncompressed.
MAX_STREAMING_BYTES = 4 * 1024 * 1024

#: The path every streaming ingestion request is under.
_ROUTE = re.compile(r"^/v1/rest/ingest/(?P<database>[^/?]+)/(?P<table>[^/?]+)/?$")

#: Each `streamFormat` served, with the field separator of the CSV family
#: (None for JSON and Parquet, which are read by name).
FORMATS: dict[str, str | None] = {
    "csv": ",",
    "tsv": "\t",
    "scsv": ";",
    "sohsv": "\x01",
    "psv": "|",
    "json": None,
    "multijson": None,
    "singlejson": None,
    "parquet": None,
}

#: What Kusto answers a streaming ingestion with.
STREAMING_RESULT_COLUMNS: tuple[RestColumn, ...] = (
    RestColumn("ConsumedRecordsCount", "long", "Int64", None),
    RestColumn("UpdatePolicyStatus", "string", "String", None),
    RestColumn("UpdatePolicyFailureCode", "string", "String", None),
    RestColumn("UpdatePolicyFailureReason", "string", "String", None),
)

_GZIP_MAGIC = b"\x1f\x8b"


@dataclass(frozen=True)
class StreamingRequest:
    database: str
    table: str
    format: str


def streaming_request(path: str) -> StreamingRequest | None:
    """The streaming ingestion *path* asks for, or None if it is not one.

    Raises RequestRefused for what it asks that is not served here.
    """
    parts = urlsplit(path)
    match = _ROUTE.match(parts.path)
    if match is None:
        return None
    query = {key.lower(): values[-1] for key, values in parse_qs(parts.query).items()}
    written = query.get("streamformat")
    if not written:
        raise RequestRefused("streaming ingestion needs a streamFormat")
    data_format = written.lower()
    if data_format not in FORMATS:
        raise RequestRefused(
            f"streamFormat {written!r:.40} is not served here; the local endpoint ingests "
            f"{', '.join(FORMATS)}"
        )
    if "mappingname" in query:
        raise RequestRefused(
            f"ingestion mapping {query['mappingname']!r:.80} cannot be used: the local endpoint keeps no "
            "ingestion mappings; CSV fields map to columns by position, JSON and Parquet fields by name"
        )
    if query.get("sourcekind", "").lower() == "uri":
        raise RequestRefused("streaming ingestion from a blob is not served here; send the data itself")
    return StreamingRequest(unquote(match.group("database")), unquote(match.group("table")), data_format)


def read_body(stream: io.BufferedIOBase, content_length: str | None, transfer_encoding: str | None) -> bytes:
    """The request body, by Content-Length or chunked, gunzipped if it is gzip.

    Bounded: a body larger than `MAX_STREAMING_BYTES` once decompressed is refused.
    """
    if transfer_encoding is not None and transfer_encoding.strip().lower() == "chunked":
        raw = _chunked(stream)
    else:
        try:
            length = int(content_length or "0")
        except ValueError:
            length = -1
        if length < 0:
            raise RequestRefused("malformed Content-Length")
        if length > MAX_STREAMING_BYTES:
            raise _too_large()
        raw = stream.read(length)
    if not raw.startswith(_GZIP_MAGIC):
        return raw
    # Decompressed in bounded steps, so a small body cannot unpack into gigabytes.
    inflater = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
    try:
        data = inflater.decompress(raw, MAX_STREAMING_BYTES + 1)
    except zlib.error as exc:
        raise RequestRefused(f"the body starts as gzip but does not decompress: {exc}") from exc
    if len(data) > MAX_STREAMING_BYTES or inflater.unconsumed_tail:
        raise _too_large()
    if not inflater.eof:
        raise RequestRefused("the gzip body is truncated")
    return data


def _chunked(stream: io.BufferedIOBase) -> bytes:
    body = bytearray()
    while True:
        line = stream.readline(1024)
        try:
            size = int(line.split(b";", 1)[0].strip(), 16)
        except ValueError:
            raise RequestRefused("malformed chunked body") from None
        if size == 0:
            # The trailer section ends with an empty line.
            while stream.readline(1024).strip():
                pass
            return bytes(body)
        if len(body) + size > MAX_STREAMING_BYTES:
            raise _too_large()
        body += stream.read(size)
        stream.readline(8)  # the CRLF after each chunk


def _too_large() -> RequestRefused:
    return RequestRefused(
        f"the data is larger than {MAX_STREAMING_BYTES} bytes, Kusto's limit for one streaming ingestion "
        "request; split it, or use queued ingestion on a real cluster"
    )


@dataclass(frozen=True)
class StreamingSource:
    """What one streaming request reads: its format, and the table's columns as DuckDB types."""

    format: str
    columns: tuple[tuple[str, str], ...]


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _string(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def source_sql(source: StreamingSource, present: frozenset[str] | None = None) -> str:
    """A SELECT over the staged file (its path the one `?` parameter) with the table's columns, in order.

    *present* names the fields a Parquet file has (columns the file lacks are null).
    """
    string_columns = [name for name, kind in source.columns if kind == "VARCHAR"]
    separator = FORMATS[source.format]
    # A timespan is read as its text, which DuckDB's interval parser does not take (`1.02:03:04.5`).
    texts = source.format != "parquet"
    read_as = [(name, "VARCHAR" if texts and kind == "INTERVAL" else kind) for name, kind in source.columns]
    struct = "{" + ", ".join(f"{_string(name)}: {_string(kind)}" for name, kind in read_as) + "}"
    if separator is not None:
        # DuckDB takes no empty list here: a table without string columns leaves the option out.
        not_null = (
            ", force_not_null = [" + ", ".join(_string(name) for name in string_columns) + "]"
            if string_columns
            else ""
        )
        # DuckDB's parallel scanner cannot pad short rows and read a quoted line break at once.
        reader = (
            f"read_csv(?, header = false, auto_detect = false, columns = {struct}, "
            f"delim = {_string(separator)}, quote = '\"', escape = '\"', null_padding = true, "
            f"parallel = false{not_null})"
        )
    elif source.format == "parquet":
        reader = "read_parquet(?)"
    else:
        reader = f"read_json(?, format = 'auto', columns = {struct})"
    projection = []
    for name, kind in source.columns:
        if present is not None and name not in present:
            value = f"CAST(NULL AS {kind})"
        elif texts and kind == "INTERVAL":
            value = _timespan(_ident(name))
        else:
            value = f"CAST({_ident(name)} AS {kind})"
        if kind == "VARCHAR":
            value = f"coalesce({value}, '')"
        projection.append(f"{value} AS {_ident(name)}")
    return f"SELECT {', '.join(projection)} FROM {reader}"


#: Kusto's timespan text, as .NET writes and reads it: ``[-][d.]hh:mm[:ss[.fffffff]]``.
_TIMESPAN = r"^(-)?(?:(\d+)\.)?(\d+):(\d+)(?::(\d+))?(?:\.(\d{1,7}))?$"


def _timespan(column: str) -> str:
    """SQL reading *column*'s Kusto timespan text as an INTERVAL; an empty field is null, anything
    else that is not a timespan an error naming the value."""
    text = f"trim({column})"
    part = _string(_TIMESPAN)

    def group(index: int) -> str:
        return f"coalesce(TRY_CAST(nullif(regexp_extract({text}, {part}, {index}), '') AS BIGINT), 0)"

    fraction = f"rpad(regexp_extract({text}, {part}, 6), 6, '0')[1:6]"
    micros = (
        f"((({group(2)} * 24 + {group(3)}) * 60 + {group(4)}) * 60 + {group(5)}) * 1000000"
        f" + coalesce(TRY_CAST(nullif({fraction}, '') AS BIGINT), 0)"
    )
    sign = f"CASE WHEN regexp_extract({text}, {part}, 1) = '-' THEN -1 ELSE 1 END"
    return (
        f"CASE WHEN {column} IS NULL OR {text} = '' THEN NULL "
        f"WHEN NOT regexp_full_match({text}, {part}) "
        f"THEN error('timespan value ' || {column} || ' is not [-][d.]hh:mm[:ss[.fffffff]]') "
        f"ELSE to_microseconds({sign} * ({micros})) END"
    )


def streaming_result(rows: int) -> Result:
    """Kusto's answer to a streaming ingestion of *rows* records."""
    return Result(list(STREAMING_RESULT_COLUMNS), [(rows, "Inactive", "Unknown", None)])
