"""A result set as a CSV attachment.

Values keep their machine form (no digit grouping, wire datetimes), so the file
loads back into a spreadsheet or a script as the data Kusto returned.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import math
from typing import Any

from common.results import TEXT_TYPES, ResultSet
from services.render.table import decode_dynamic, format_dynamic

#: A spreadsheet runs a cell starting with one of these as a formula (OWASP's list).
_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def render_csv(result: ResultSet) -> bytes:
    """RFC 4180 CSV, UTF-8 without BOM, CRLF line endings, with a header row."""
    buffer = io.StringIO(newline="")
    writer = csv.writer(buffer, lineterminator="\r\n")
    writer.writerow(_defuse(column.name) for column in result.columns)
    types = [column.type for column in result.columns]
    for row in result.rows:
        writer.writerow(_cell(kusto_type, value) for kusto_type, value in zip(types, row, strict=True))
    return buffer.getvalue().encode("utf-8")


def _cell(kusto_type: str, value: Any) -> str:
    if value is None:
        return ""
    if kusto_type in TEXT_TYPES:
        return _defuse(str(value))
    if kusto_type == "dynamic":
        # Text inside a dynamic is as free-form as a string column; numbers and JSON are not.
        decoded = decode_dynamic(value)
        return _defuse(decoded) if isinstance(decoded, str) else format_dynamic(decoded)
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
