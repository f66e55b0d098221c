"""A stored result as a CSV or Parquet file, written into a blob as its rows arrive.

The rows come a chunk at a time (:meth:`~common.platform.blobs.interface.BlobStore.result_rows`)
and go out as they come: CSV a chunk of lines at a time, Parquet a row group at a time, so a
file holds in memory at most one row group, however many rows it has. Making either is CPU
work, done in a worker thread between two writes to the blob.

Kusto types in Parquet (each field also keeps its Kusto type in its metadata, ``kusto_type``):

===========  ===============================================================================
Kusto        Parquet
===========  ===============================================================================
bool         BOOLEAN
int          INT32
long         INT64
real         DOUBLE (NaN and infinities kept)
decimal      STRING: the digits Kusto sent. A .NET decimal has up to 29 integer digits and 28
             of scale, which no one DECIMAL(precision, scale) column holds exactly
string       STRING
guid         STRING
datetime     TIMESTAMP(isAdjustedToUTC, MICROS): the instant in UTC; Kusto's 100 ns tick is cut
             to the microsecond (and nanoseconds would not reach Kusto's years 1 to 9999)
timespan     INT64: 100 ns ticks, Kusto's own unit, exact (Parquet has no duration type)
dynamic      STRING with the JSON logical type: the value's JSON text
(other)      STRING
===========  ===============================================================================

A null is null in every column. CSV keeps the values as Kusto sent them: UTF-8 without BOM,
CRLF line endings, a header row, a null as an empty field, datetimes and timespans in
Kusto's text, dynamic values as JSON, ``true``/``false``, ``NaN`` and ``Infinity``. Unlike
the CSV an email attaches, whose cells a spreadsheet opens, nothing is escaped for
spreadsheets: the file is the data.
"""

from __future__ import annotations

import abc
import asyncio
import csv
import io
import math
import zlib
from collections.abc import Callable, Sequence
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from common.contracts.results import Column, parse_datetime
from common.platform.blobs.interface import BlobWriter
from common.platform.sql.types import dynamic_text, timespan_ticks

#: Rows per Parquet row group unless the step says otherwise.
ROW_GROUP_ROWS = 100_000

Convert = Callable[[Any], Any]


def _nullable(convert: Convert) -> Convert:
    def converted(value: Any) -> Any:
        return None if value is None else convert(value)

    return converted


def _real(value: Any) -> float:
    # Kusto sends NaN and the infinities as text ("NaN", "Infinity", "-Infinity"), which float reads.
    return float(value)


def arrow_field(column: Column) -> tuple[pa.Field, Convert]:
    """The Parquet field of a Kusto column, and how its wire values become the field's values."""
    kind = column.type
    match kind:
        case "bool":
            arrow, convert = pa.bool_(), _nullable(bool)
        case "int":
            arrow, convert = pa.int32(), _nullable(int)
        case "long":
            arrow, convert = pa.int64(), _nullable(int)
        case "real":
            arrow, convert = pa.float64(), _nullable(_real)
        case "datetime":
            arrow, convert = pa.timestamp("us", tz="UTC"), parse_datetime
        case "timespan":
            arrow, convert = pa.int64(), _nullable(timespan_ticks)
        case "dynamic":
            arrow, convert = pa.json_(), dynamic_text
        case _:
            # string, guid, decimal (its digits exactly), and any type a newer Kusto adds.
            arrow, convert = pa.string(), _nullable(str)
    return pa.field(column.name, arrow, nullable=True, metadata={"kusto_type": kind}), convert


class _Sink:
    """What pyarrow writes a Parquet file into: the bytes since the last :meth:`take`, and the
    position in the whole file (the footer records where each row group starts)."""

    def __init__(self) -> None:
        self._data = bytearray()
        self._position = 0
        self.closed = False

    def write(self, data: bytes) -> int:
        self._data += data
        self._position += len(data)
        return len(data)

    def tell(self) -> int:
        return self._position

    def flush(self) -> None:
        pass

    def writable(self) -> bool:
        return True

    def close(self) -> None:
        self.closed = True

    def take(self) -> bytes:
        data, self._data = bytes(self._data), bytearray()
        return data


def file_type(format: str, compression: str) -> tuple[str, str]:
    """A file's extension and content type, by its format and compression."""
    if format == "parquet":
        return ".parquet", "application/vnd.apache.parquet"
    if compression == "gzip":
        return ".csv.gz", "application/gzip"
    return ".csv", "text/csv; charset=utf-8"


class ExportFile(abc.ABC):
    """One file being written into *blob*: :meth:`start` with the columns, :meth:`add` each
    chunk's rows, then :meth:`finish`."""

    def __init__(self, blob: BlobWriter) -> None:
        self.blob = blob
        self.rows = 0

    async def start(self, columns: Sequence[Column]) -> None:
        await self._out(await asyncio.to_thread(self._start, list(columns)))

    async def add(self, rows: list[list[Any]]) -> None:
        if rows:
            await self._out(await asyncio.to_thread(self._add, rows))
            self.rows += len(rows)

    async def finish(self) -> None:
        await self._out(await asyncio.to_thread(self._finish))

    async def _out(self, data: bytes) -> None:
        if data:
            await self.blob.write(data)

    def detail(self) -> dict[str, Any]:
        """What the file is, for the step's record."""
        return {}

    @abc.abstractmethod
    def _start(self, columns: list[Column]) -> bytes: ...

    @abc.abstractmethod
    def _add(self, rows: list[list[Any]]) -> bytes: ...

    @abc.abstractmethod
    def _finish(self) -> bytes: ...


class ParquetFile(ExportFile):
    def __init__(self, blob: BlobWriter, *, compression: str, row_group_rows: int = ROW_GROUP_ROWS) -> None:
        super().__init__(blob)
        self.compression = compression
        self.row_group_rows = row_group_rows
        self.row_groups = 0
        self._sink = _Sink()
        self._writer: pq.ParquetWriter | None = None
        self._schema = pa.schema([])
        self._converters: list[Convert] = []
        #: Rows converted but not yet written: fewer than a row group.
        self._pending: list[pa.RecordBatch] = []
        self._pending_rows = 0

    def _start(self, columns: list[Column]) -> bytes:
        fields = [arrow_field(column) for column in columns]
        self._schema = pa.schema([field for field, _ in fields])
        self._converters = [convert for _, convert in fields]
        self._writer = pq.ParquetWriter(self._sink, self._schema, compression=self.compression)
        return self._sink.take()

    def _add(self, rows: list[list[Any]]) -> bytes:
        arrays = [
            pa.array([convert(row[index]) for row in rows], type=field.type)
            for index, (field, convert) in enumerate(zip(self._schema, self._converters, strict=True))
        ]
        self._pending.append(pa.RecordBatch.from_arrays(arrays, schema=self._schema))
        self._pending_rows += len(rows)
        if self._pending_rows >= self.row_group_rows:
            self._write(whole_groups_only=True)
        return self._sink.take()

    def _finish(self) -> bytes:
        self._write(whole_groups_only=False)
        assert self._writer is not None
        self._writer.close()
        return self._sink.take()

    def _write(self, *, whole_groups_only: bool) -> None:
        """Write the pending rows as row groups of ``row_group_rows``, keeping back a last, partial
        one unless the file ends."""
        assert self._writer is not None
        table = pa.Table.from_batches(self._pending, schema=self._schema)
        start = 0
        while table.num_rows - start >= self.row_group_rows or (
            not whole_groups_only and start < table.num_rows
        ):
            size = min(self.row_group_rows, table.num_rows - start)
            self._writer.write_table(table.slice(start, size), row_group_size=size)
            self.row_groups += 1
            start += size
        rest = table.slice(start)
        self._pending = rest.to_batches() if rest.num_rows else []
        self._pending_rows = rest.num_rows

    def detail(self) -> dict[str, Any]:
        return {"row_groups": self.row_groups}


class CsvFile(ExportFile):
    def __init__(self, blob: BlobWriter, *, compression: str) -> None:
        super().__init__(blob)
        self.gzip = compression == "gzip"
        self._lines = io.StringIO()
        self._csv = csv.writer(self._lines, lineterminator="\r\n")
        self._converters: list[Convert] = []
        # wbits 31: a gzip member (header and trailer), which gunzip and every CSV reader open.
        self._compressor = zlib.compressobj(6, zlib.DEFLATED, 31) if self.gzip else None

    def _start(self, columns: list[Column]) -> bytes:
        self._converters = [_csv_converter(column.type) for column in columns]
        self._csv.writerow(column.name for column in columns)
        return self._take()

    def _add(self, rows: list[list[Any]]) -> bytes:
        converters = self._converters
        self._csv.writerows(
            [convert(value) for convert, value in zip(converters, row, strict=True)] for row in rows
        )
        return self._take()

    def _finish(self) -> bytes:
        if self._compressor is None:
            return b""
        return self._compressor.flush()

    def _take(self) -> bytes:
        data = self._lines.getvalue().encode("utf-8")
        self._lines.seek(0)
        self._lines.truncate()
        return self._compressor.compress(data) if self._compressor is not None else data


def _csv_converter(kusto_type: str) -> Convert:
    if kusto_type == "dynamic":
        return lambda value: "" if value is None else dynamic_text(value)
    return _csv_value


def _csv_value(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    return str(value)
