"""A result set as an email-safe HTML table and as aligned plain text.

Email clients drop <style> blocks and scripts, so every style is inline and the
markup sticks to plain tables. Values are turned into display text here, once,
so the HTML body, the text/plain alternative and the chart labels agree on how
a number or a datetime reads.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import re
from collections.abc import Sequence
from decimal import Decimal, InvalidOperation
from typing import Any

from jinja2.sandbox import SandboxedEnvironment
from markupsafe import Markup

from common.contracts.results import NUMERIC_TYPES, Column, ResultSet, parse_datetime

NO_ROWS = "no rows"
#: Right-aligned like numbers: they read best when their digits line up.
_ALIGNED_RIGHT_TYPES = NUMERIC_TYPES | {"timespan"}
#: Kept on one line: a browser may break them at a hyphen, and half a datetime or guid misleads.
_UNBROKEN_TYPES = frozenset({"datetime", "guid"})
#: Free text, which may hold runs without a break opportunity (URLs, compact JSON) that widen a table.
_FREE_TEXT_TYPES = frozenset({"string", "dynamic"})
#: A run of characters longer than this may break anywhere rather than widen its column.
_LONGEST_UNBROKEN_RUN = 40
#: Longest cell in the plain-text table; a JSON blob would otherwise push every column off screen.
_TEXT_CELL_WIDTH = 40
#: Control characters left after whitespace is folded: they would garble a plain-text table.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f]")

_FONT = "font-family:Segoe UI,Helvetica,Arial,sans-serif;color:#1f2328"
_TABLE_STYLE = f"{_FONT};font-size:13px;border-collapse:collapse;border:1px solid #d0d7de;max-width:100%"
_HEADER_STYLE = "background-color:#eaeef2;border-bottom:2px solid #d0d7de;font-weight:bold;white-space:nowrap"
_NOTE_STYLE = f"{_FONT};font-size:13px;color:#57606a;margin:6px 0 0 0"
_TITLE_STYLE = f"{_FONT};font-size:15px;font-weight:bold;margin:0 0 8px 0"
# A thousand rows add up, and Gmail clips a message body beyond about 100 kB. So the
# per-row markup is what differs from the default and no more: vertical alignment is set
# once on <tbody> (cells inherit it), and the per-cell hints use the short presentational
# attributes every mail client honours (align, nowrap, bgcolor) instead of style="...".
_BODY_STYLE = "vertical-align:top"
_SHADED = Markup(' bgcolor="#f6f8fa"')
_PLAIN = Markup("")
_RIGHT = Markup(' align="right"')
_NOWRAP = Markup(" nowrap")
_BREAKABLE = Markup(' style="word-break:break-word;overflow-wrap:anywhere"')
_LINE_BREAK = Markup("<br>")

_TEMPLATE = """\
<div>
{%- if title %}<p style="{{ title_style }}">{{ title }}</p>{% endif %}
<table cellpadding="5" cellspacing="0" border="0" style="{{ table_style }}">
<thead><tr>
{%- for header in headers %}
<th style="{{ header_style }};text-align:{{ 'right' if aligns[loop.index0] else 'left' }}">{{ header }}</th>
{%- endfor %}
</tr></thead>
<tbody style="{{ body_style }}">
{%- for row in rows %}
<tr{{ shaded if loop.index is even }}>
{%- for attributes, text in row %}<td{{ attributes }}>{{ text }}</td>{% endfor -%}
</tr>
{%- else %}{% if no_rows %}
<tr><td colspan="{{ colspan }}" style="{{ note_style }}">{{ no_rows }}</td></tr>
{%- endif %}{% endfor %}
</tbody>
</table>
{%- if note %}
<p style="{{ note_style }}">{{ note }}</p>
{%- endif %}
</div>
"""

_environment = SandboxedEnvironment(autoescape=True)
_table_template = _environment.from_string(_TEMPLATE)

#: A cell of the HTML table: its attributes (fixed markup) and its text (escaped when rendered).
_Cell = tuple[Markup, str]


def render_table(
    result: ResultSet, *, max_rows: int = 1000, title: str | None = None, zone: dt.tzinfo = dt.UTC
) -> str:
    """The result as an HTML fragment with inline styles only; every value is escaped.

    Datetimes read in *zone*; at most *max_rows* rows are shown, with a note saying how many there were.
    """
    shown = result.rows[: max(max_rows, 0)]
    columns = result.columns
    return _table_template.render(
        title=title,
        headers=[column.name for column in columns],
        aligns=[_is_aligned_right(column) for column in columns],
        rows=[_html_row(columns, row, zone) for row in shown],
        colspan=max(len(columns), 1),
        note=truncation_note(len(shown), result.row_count),
        no_rows=None if result.rows else NO_ROWS,
        shaded=_SHADED,
        table_style=_TABLE_STYLE,
        header_style=_HEADER_STYLE,
        body_style=_BODY_STYLE,
        note_style=_NOTE_STYLE,
        title_style=_TITLE_STYLE,
    )


def render_text_table(result: ResultSet, *, max_rows: int = 50, zone: dt.tzinfo = dt.UTC) -> str:
    """The result as space-aligned columns for a text/plain email part; datetimes read in *zone*."""
    shown = result.rows[: max(max_rows, 0)]
    headers = [_clip(_one_line(column.name)) for column in result.columns]
    body = [[_clip(_one_line(cell)) for cell in format_row(result.columns, row, zone)] for row in shown]
    widths = [max([len(header)] + [len(row[index]) for row in body]) for index, header in enumerate(headers)]
    right = [_is_aligned_right(column) for column in result.columns]

    def line(cells: Sequence[str]) -> str:
        padded = [
            cell.rjust(width) if is_right else cell.ljust(width)
            for cell, width, is_right in zip(cells, widths, right, strict=True)
        ]
        return "  ".join(padded).rstrip()

    lines = [line(headers), line(["-" * width for width in widths])]
    lines.extend(line(row) for row in body)
    if not result.rows:
        lines.append(NO_ROWS)
    note = truncation_note(len(shown), result.row_count)
    if note:
        lines.append(note)
    return "\n".join(lines) + "\n"


def truncation_note(shown: int, total: int) -> str | None:
    return f"showing {shown:,} of {total:,} rows" if shown < total else None


def format_row(columns: Sequence[Column], row: Sequence[Any], zone: dt.tzinfo = dt.UTC) -> list[str]:
    return [format_value(column.type, value, zone) for column, value in zip(columns, row, strict=True)]


def format_value(kusto_type: str, value: Any, zone: dt.tzinfo = dt.UTC) -> str:
    """Display text for one wire value: grouped digits, ISO datetimes in *zone*, compact JSON, nulls empty."""
    if value is None:
        return ""
    if kusto_type in ("int", "long"):
        return _format_integer(value)
    if kusto_type in ("real", "decimal"):
        return format_number(value)
    if kusto_type == "datetime":
        return _format_datetime(value, zone)
    if kusto_type == "dynamic":
        return format_dynamic(value)
    if kusto_type == "bool" or isinstance(value, bool):
        return _format_bool(value)
    return str(value)


def format_number(value: Any) -> str:
    """Digits grouped by thousands; at most three decimals, two from a thousand up."""
    number = _as_number(value)
    if number is None:
        return str(value)
    if isinstance(number, int):
        return f"{number:,}"
    if not _is_finite(number):
        return _NON_FINITE.get(str(number).lower().lstrip("+"), str(number))
    magnitude = abs(float(number))
    if magnitude == 0:
        return "0"
    if magnitude < 1:
        # Significant digits, so 0.000123 does not collapse to 0.
        return f"{number:.3g}"
    text = f"{number:,.{2 if magnitude >= 1000 else 3}f}"
    return text.rstrip("0").rstrip(".")


def format_dynamic(value: Any) -> str:
    """Compact JSON; a dynamic that holds a plain string reads as that string."""
    decoded = decode_dynamic(value)
    return (
        decoded
        if isinstance(decoded, str)
        else json.dumps(decoded, ensure_ascii=False, separators=(",", ":"))
    )


def decode_dynamic(value: Any) -> Any:
    """A dynamic wire value as Python data; text that is not JSON stays text."""
    if isinstance(value, str):
        try:
            return json.loads(value)
        except ValueError:
            return value
    return value


def format_datetime(value: dt.datetime, zone: dt.tzinfo = dt.UTC) -> str:
    """ISO 8601 in *zone*, to the second (and the fraction, if any): ``2026-03-01T09:30:00+01:00``."""
    local = value.astimezone(zone)
    text = local.strftime("%Y-%m-%dT%H:%M:%S")
    if local.microsecond:
        text += f".{local.microsecond:06d}".rstrip("0")
    offset = local.utcoffset()
    if not offset:
        return text + "Z"
    minutes = int(offset.total_seconds()) // 60
    sign = "+" if minutes >= 0 else "-"
    return f"{text}{sign}{abs(minutes) // 60:02d}:{abs(minutes) % 60:02d}"


_NON_FINITE = {
    "nan": "NaN",
    "inf": "Infinity",
    "infinity": "Infinity",
    "-inf": "-Infinity",
    "-infinity": "-Infinity",
}


def _format_integer(value: Any) -> str:
    number = _as_number(value)
    if isinstance(number, float | Decimal) and _is_finite(number) and number == int(number):
        number = int(number)
    return format_number(value if number is None else number)


def _format_datetime(value: Any, zone: dt.tzinfo) -> str:
    try:
        parsed = parse_datetime(value)
    except ValueError:
        return str(value)
    return "" if parsed is None else format_datetime(parsed, zone)


def _format_bool(value: Any) -> str:
    if isinstance(value, bool | int):
        return "true" if value else "false"
    return str(value)


def _as_number(value: Any) -> int | float | Decimal | None:
    """Wire numbers are JSON numbers, except decimals and non-finite reals, which arrive as text."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float | Decimal):
        return value
    if isinstance(value, str):
        try:
            return Decimal(value.strip())
        except InvalidOperation:
            return None
    return None


def _is_finite(number: float | Decimal) -> bool:
    return number.is_finite() if isinstance(number, Decimal) else math.isfinite(number)


def _is_aligned_right(column: Column) -> bool:
    return column.type in _ALIGNED_RIGHT_TYPES


def _one_line(text: str) -> str:
    """Text on one line: a line break or a control character in a value must not forge a row."""
    if text.isprintable():
        return text
    return _CONTROL.sub("", " ".join(text.split()))


def _clip(text: str) -> str:
    return text if len(text) <= _TEXT_CELL_WIDTH else text[: _TEXT_CELL_WIDTH - 1] + "…"


def _html_row(columns: Sequence[Column], row: Sequence[Any], zone: dt.tzinfo) -> list[_Cell]:
    return [_html_cell(column.type, value, zone) for column, value in zip(columns, row, strict=True)]


def _html_cell(kusto_type: str, value: Any, zone: dt.tzinfo) -> _Cell:
    text = format_value(kusto_type, value, zone)
    if kusto_type in _ALIGNED_RIGHT_TYPES:
        return _RIGHT, text
    if kusto_type in _UNBROKEN_TYPES:
        return _NOWRAP, text
    if kusto_type not in _FREE_TEXT_TYPES:
        return _PLAIN, text
    long_run = len(text) > _LONGEST_UNBROKEN_RUN and _has_long_run(text)
    attributes = _BREAKABLE if long_run else _PLAIN
    if "\n" in text or "\r" in text:
        # Markup.join escapes each line; only the <br> between them is markup.
        return attributes, _LINE_BREAK.join(text.splitlines())
    return attributes, text


def _has_long_run(text: str) -> bool:
    return any(len(run) > _LONGEST_UNBROKEN_RUN for run in text.split())
