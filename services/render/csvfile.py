"""A result set as a CSV attachment.

Values keep their machine form (no digit grouping, wire datetimes), so the file
loads back into a spreadsheet or a script as the data Kusto returned.

A result can hold hundreds of thousands of rows, so the file is made in chunks
and streamed to the blob store as it is made; it is never whole in memory.
"""

from __future__ import annotations

import asyncio
import csv
import datetime as dt
import io
import math
from collections.abc import Callable, Iterator
from typing import Any

from common.contracts.messages import BlobRef
from common.contracts.results import TEXT_TYPES, ResultSet
from common.platform.blobs.interface import BlobStore
from services.render.table import decode_dynamic, format_dynamic

CONTENT_TYPE = "text/csv; charset=utf-8"
#: Bytes of CSV per chunk (a chunk ends with the row that reaches it).
CHUNK_SIZE = 256 * 1024
#: Most rows formatted between two looks at the chunk's size.
_MOST_BATCH_ROWS = 1024
#: A spreadsheet runs a cell starting with one of these as a formula (OWASP's list).
_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def csv_chunks(result: ResultSet, chunk_size: int = CHUNK_SIZE) -> Iterator[bytes]:
    """RFC 4180 CSV, UTF-8 without BOM, CRLF line endings, with a header row; in chunks of whole rows."""
    lines = io.StringIO()
    writer = csv.writer(lines, lineterminator="\r\n")
    writer.writerow(_defuse(column.name) for column in result.columns)
    converters = [_converter(column.type) for column in result.columns]
    rows = result.rows
    start, batch, written = 0, 1, 0
    while start < len(rows):
        writer.writerows(
            [convert(value) for convert, value in zip(converters, row, strict=True)]
            for row in rows[start : start + batch]
        )
        start += batch
        if lines.tell() >= chunk_size:
            written += lines.tell()
            yield _take(lines)
        # Rows go to the writer in batches of about half a chunk, judged by the rows so far.
        average = (written + lines.tell()) / start
        batch = max(1, min(_MOST_BATCH_ROWS, int(chunk_size / 2 / max(average, 1.0))))
    if lines.tell():
        yield _take(lines)


def render_csv(result: ResultSet) -> bytes:
    """The whole CSV file in memory; :func:`store_csv` streams it instead."""
    return b"".join(csv_chunks(result))


async def store_csv(
    result: ResultSet, store: BlobStore, key: str, *, chunk_size: int = CHUNK_SIZE
) -> BlobRef:
    """Stream the result's CSV to *key*; the blob appears only once the whole file is written.

    Making CSV is CPU-bound, so each chunk is made in a worker thread and the event
    loop stays free between chunks. At most one chunk is held at a time.
    """
    chunks = csv_chunks(result, chunk_size)
    async with store.writer(key, CONTENT_TYPE) as blob:
        while chunk := await asyncio.to_thread(next, chunks, b""):
            await blob.write(chunk)
    return blob.ref


def _take(lines: io.StringIO) -> bytes:
    data = lines.getvalue().encode("utf-8")
    lines.seek(0)
    lines.truncate()
    return data


def _converter(kusto_type: str) -> Callable[[Any], str]:
    """How a column's wire values become CSV fields; chosen once per column, used for every row."""
    if kusto_type in TEXT_TYPES:
        return _text
    if kusto_type == "dynamic":
        return _dynamic
    return _plain


def _text(value: Any) -> str:
    return "" if value is None else _defuse(str(value))


def _dynamic(value: Any) -> str:
    if value is None:
        return ""
    # Text inside a dynamic is as free-form as a string column; numbers and JSON are not.
    decoded = decode_dynamic(value)
    return _defuse(decoded) if isinstance(decoded, str) else format_dynamic(decoded)


def _plain(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    if isinstance(value, dt.datetime):
        return value.isoformat().replace("+00:00", "Z")
    return str(value)


def _defuse(text: str) -> str:
    """Text that a spreadsheet shows rather than evaluates."""
    return "'" + text if text.startswith(_FORMULA_STARTS) else text
