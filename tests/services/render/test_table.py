from __future__ import annotations

import datetime as dt
import json
from html.parser import HTMLParser
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from markupsafe import escape

from common.contracts.results import Column, ResultSet
from services.render.table import format_number, format_value, render_table, render_text_table

SCRIPT = "<script>alert(1)</script>"
IMAGE = '"><img src=x onerror=alert(1)>'
QUOTES = "\"&'"
BERLIN = ZoneInfo("Europe/Berlin")


def result_set(columns: list[tuple[str, str]], rows: list[list[Any]]) -> ResultSet:
    return ResultSet(columns=[Column(name=name, type=kind) for name, kind in columns], rows=rows)


class TableParser(HTMLParser):
    """Collects tags, attributes, header cells, body rows and the text outside the table.

    A <br> inside a cell reads as a line break, so a cell's text can be compared with the value.
    """

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[str] = []
        self.attributes: list[tuple[str, str | None]] = []
        self.headers: list[str] = []
        self.header_attributes: list[dict[str, str | None]] = []
        self.rows: list[list[str]] = []
        self.row_attributes: list[dict[str, str | None]] = []
        self.cell_attributes: list[list[dict[str, str | None]]] = []
        self.paragraphs: list[str] = []
        self._cell: list[str] | None = None
        self._in_head = False
        self._paragraph: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        self.attributes.extend(attrs)
        if tag == "thead":
            self._in_head = True
        elif tag == "tr" and not self._in_head:
            self.rows.append([])
            self.cell_attributes.append([])
            self.row_attributes.append(dict(attrs))
        elif tag in ("td", "th"):
            self._cell = []
            (self.header_attributes if tag == "th" else self.cell_attributes[-1]).append(dict(attrs))
        elif tag == "br" and self._cell is not None:
            self._cell.append("\n")
        elif tag == "p":
            self._paragraph = []

    def handle_endtag(self, tag: str) -> None:
        if tag == "thead":
            self._in_head = False
        elif tag in ("td", "th") and self._cell is not None:
            text = "".join(self._cell)
            (self.headers if tag == "th" else self.rows[-1]).append(text)
            self._cell = None
        elif tag == "p" and self._paragraph is not None:
            self.paragraphs.append("".join(self._paragraph))
            self._paragraph = None

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)
        elif self._paragraph is not None:
            self._paragraph.append(data)


def parse(html: str) -> TableParser:
    parser = TableParser()
    parser.feed(html)
    parser.close()
    return parser


def assert_inert(parsed: TableParser) -> None:
    """No element or attribute that runs code, loads something or restyles the message."""
    assert not {"script", "img", "style", "link", "iframe", "object", "embed"} & set(parsed.tags)
    assert not [name for name, _ in parsed.attributes if name.startswith("on")]
    assert not [name for name, _ in parsed.attributes if name in ("src", "href", "class")]


@pytest.mark.parametrize("hostile", [SCRIPT, IMAGE])
def test_hostile_cells_and_column_names_are_escaped(hostile: str) -> None:
    result = result_set([(hostile, "string"), ("Bag", "dynamic")], [[hostile, {"k": hostile}]])

    html = render_table(result, title=hostile)
    parsed = parse(html)

    assert_inert(parsed)
    assert hostile not in html
    assert escape(hostile) in html
    assert parsed.headers == [hostile, "Bag"]
    assert parsed.rows == [[hostile, json.dumps({"k": hostile}, separators=(",", ":"))]]
    assert parsed.paragraphs[0] == hostile


@pytest.mark.parametrize("hostile", [SCRIPT, IMAGE])
def test_hostile_text_stays_literal_text_in_the_text_table(hostile: str) -> None:
    result = result_set([(hostile, "string"), ("N", "long")], [[hostile, 1], [f"{hostile}\n{hostile}", 2]])

    lines = render_text_table(result).splitlines()

    # Plain text has no markup to escape; what matters is that a value cannot forge a line.
    assert len(lines) == 4
    assert lines[0].startswith(hostile)
    assert lines[2].startswith(hostile)
    assert lines[3].startswith(f"{hostile} {hostile}"[:39])


def test_quotes_and_ampersands_round_trip() -> None:
    result = result_set([("Note", "string")], [[QUOTES]])

    parsed = parse(render_table(result))

    assert parsed.rows == [[QUOTES]]


def test_only_inline_styles_and_no_external_resources() -> None:
    result = result_set([("Name", "string"), ("When", "datetime")], [["x", "2024-01-01T00:00:00Z"]])

    parsed = parse(render_table(result, title="t"))

    assert_inert(parsed)
    assert parsed.tags.count("table") == 1


def test_values_are_formatted_by_kusto_type() -> None:
    result = result_set(
        [
            ("Count", "long"),
            ("Ratio", "real"),
            ("When", "datetime"),
            ("Bag", "dynamic"),
            ("Flag", "bool"),
            ("Amount", "decimal"),
            ("Missing", "string"),
            ("Id", "guid"),
            ("Took", "timespan"),
        ],
        [
            [
                12345,
                3.14159,
                "2007-05-01T14:00:00Z",
                {"a": [1, 2], "b": "x y"},
                True,
                "1234567.891",
                None,
                "00000001-0000-0000-0001-020304050607",
                "1.00:00:01.0010001",
            ]
        ],
    )

    parsed = parse(render_table(result))

    assert parsed.rows == [
        [
            "12,345",
            "3.142",
            "2007-05-01T14:00:00Z",
            '{"a":[1,2],"b":"x y"}',
            "true",
            "1,234,567.89",
            "",
            "00000001-0000-0000-0001-020304050607",
            "1.00:00:01.0010001",
        ]
    ]


def test_numbers_and_timespans_are_right_aligned_text_is_not() -> None:
    result = result_set(
        [("Count", "long"), ("Ratio", "real"), ("Took", "timespan"), ("Name", "string"), ("Flag", "bool")],
        [[1, 2.5, "00:00:01", "x", False], [None, None, None, None, None]],
    )

    parsed = parse(render_table(result))

    aligns = [[cell.get("align") for cell in row] for row in parsed.cell_attributes]
    assert aligns == [["right", "right", "right", None, None]] * 2
    header_styles = [header["style"] or "" for header in parsed.header_attributes]
    assert ["text-align:right" in style for style in header_styles] == [True, True, True, False, False]


def test_null_cells_are_empty() -> None:
    result = result_set(
        [("Count", "long"), ("When", "datetime"), ("Bag", "dynamic"), ("Flag", "bool")],
        [[None, None, None, None]],
    )

    assert parse(render_table(result)).rows == [["", "", "", ""]]
    assert render_text_table(result).splitlines()[2:] == [""]


def test_datetimes_and_guids_do_not_wrap() -> None:
    result = result_set(
        [("When", "datetime"), ("Id", "guid"), ("Name", "string")],
        [["2007-05-01T14:00:00Z", "3f2504e0-4f89-11d3-9a0c-0305e82c3301", "x"]],
    )

    cells = parse(render_table(result)).cell_attributes[0]

    assert ["nowrap" in cell for cell in cells] == [True, True, False]


@pytest.mark.parametrize(
    ("utc", "berlin"),
    [
        ("2026-01-15T08:00:00Z", "2026-01-15T09:00:00+01:00"),
        ("2026-07-15T08:00:00.25Z", "2026-07-15T10:00:00.25+02:00"),
        ("2026-03-29T00:59:59Z", "2026-03-29T01:59:59+01:00"),
        ("2026-03-29T01:00:00Z", "2026-03-29T03:00:00+02:00"),
    ],
)
def test_datetimes_read_in_the_flow_zone(utc: str, berlin: str) -> None:
    result = result_set([("When", "datetime")], [[utc]])

    assert parse(render_table(result, zone=BERLIN)).rows == [[berlin]]
    assert render_text_table(result, zone=BERLIN).splitlines()[2] == berlin
    assert parse(render_table(result)).rows[0][0].endswith("Z")


def test_long_unbroken_text_may_break_anywhere_but_prose_and_short_text_keep_plain_cells() -> None:
    url = "https://example.com/" + "a" * 200
    prose = " ".join(["word"] * 60)
    result = result_set([("Text", "string"), ("Bag", "dynamic")], [[url, {"k": "v" * 80}], [prose, {"k": 1}]])

    parsed = parse(render_table(result))

    long_cells, short_cells = parsed.cell_attributes
    assert all("word-break:break-word" in (cell.get("style") or "") for cell in long_cells)
    assert short_cells == [{}, {}]
    assert parsed.rows[0][0] == url


def test_line_breaks_in_text_become_br_between_escaped_lines() -> None:
    text = f"first line\r\n{SCRIPT}\nlast"
    result = result_set([("Text", "string")], [[text]])

    html = render_table(result)
    parsed = parse(html)

    assert parsed.rows == [[f"first line\n{SCRIPT}\nlast"]]
    assert "first line<br>&lt;script&gt;" in html
    assert_inert(parsed)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (12345, "12,345"),
        (-1234567, "-1,234,567"),
        (0, "0"),
        (3.0, "3"),
        (0.5, "0.5"),
        (0.000123, "0.000123"),
        (12.3456, "12.346"),
        (12345.678, "12,345.68"),
        (-0.0, "0"),
        ("NaN", "NaN"),
        (float("inf"), "Infinity"),
        ("-Infinity", "-Infinity"),
        ("123456789012345678.5", "123,456,789,012,345,678.5"),
    ],
)
def test_format_number(value: Any, expected: str) -> None:
    assert format_number(value) == expected


@pytest.mark.parametrize(
    ("kusto_type", "value", "expected"),
    [
        ("long", 12345.0, "12,345"),
        ("long", "9007199254740993", "9,007,199,254,740,993"),
        ("datetime", "2007-05-01T14:00:00.1230000Z", "2007-05-01T14:00:00.123Z"),
        ("datetime", "2007-05-01T16:00:00+02:00", "2007-05-01T14:00:00Z"),
        ("datetime", "not a date", "not a date"),
        ("dynamic", '{"b": 1,  "a": [true, null]}', '{"b":1,"a":[true,null]}'),
        ("dynamic", "plain text", "plain text"),
        ("dynamic", [1, "ü"], '[1,"ü"]'),
        ("bool", False, "false"),
        ("timespan", "01:02:03", "01:02:03"),
        ("string", None, ""),
    ],
)
def test_format_value(kusto_type: str, value: Any, expected: str) -> None:
    assert format_value(kusto_type, value) == expected


def test_format_value_in_a_zone() -> None:
    assert format_value("datetime", "2026-07-01T12:00:00Z", BERLIN) == "2026-07-01T14:00:00+02:00"
    assert format_value("datetime", dt.datetime(2026, 1, 1, 12, tzinfo=dt.UTC), BERLIN) == (
        "2026-01-01T13:00:00+01:00"
    )


def test_rows_beyond_max_rows_are_cut_with_a_note() -> None:
    result = result_set([("N", "long")], [[n] for n in range(1234)])

    parsed = parse(render_table(result, max_rows=1000))

    assert len(parsed.rows) == 1000
    assert parsed.rows[-1] == ["999"]
    assert "showing 1,000 of 1,234 rows" in parsed.paragraphs


def test_no_note_when_every_row_fits() -> None:
    result = result_set([("N", "long")], [[1], [2]])

    parsed = parse(render_table(result, max_rows=2))

    assert len(parsed.rows) == 2
    assert not [text for text in parsed.paragraphs if "showing" in text]


def test_zero_max_rows_shows_only_the_note() -> None:
    result = result_set([("N", "long")], [[1], [2]])

    parsed = parse(render_table(result, max_rows=0))

    assert parsed.rows == []
    assert parsed.paragraphs == ["showing 0 of 2 rows"]


def test_rows_alternate_background() -> None:
    result = result_set([("N", "long")], [[1], [2], [3], [4]])

    rows = parse(render_table(result)).row_attributes

    assert rows[0] == rows[2] == {}
    assert rows[1] == rows[3] == {"bgcolor": "#f6f8fa"}


def test_a_thousand_rows_carry_little_markup_each() -> None:
    # Gmail clips a message body beyond about 100 kB; the markup around each value is what can be kept small.
    start = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    result = result_set(
        [("When", "datetime"), ("State", "string"), ("Event", "string"), ("Count", "long"), ("Cost", "real")],
        [
            [(start + dt.timedelta(minutes=37 * n)).isoformat(), "TEXAS", "Hail", n * 7, n * 1.5]
            for n in range(1000)
        ],
    )

    html = render_table(result, zone=BERLIN)
    parsed = parse(html)

    text = sum(len(escape(cell).encode()) for row in parsed.rows for cell in row)
    markup_per_row = (len(html.encode()) - text) / len(parsed.rows)
    assert len(parsed.rows) == 1000
    assert markup_per_row < 110


def test_empty_result_keeps_headers_and_says_no_rows() -> None:
    result = result_set([("State", "string"), ("Events", "long")], [])

    parsed = parse(render_table(result))

    assert parsed.headers == ["State", "Events"]
    assert parsed.rows == [["no rows"]]
    assert render_text_table(result).splitlines()[-1] == "no rows"


def test_text_table_aligns_columns() -> None:
    result = result_set(
        [("State", "string"), ("Events", "long")],
        [["TEXAS", 4701], ["IOWA", 12], ["NEW\nYORK", None]],
    )

    lines = render_text_table(result).splitlines()

    assert lines[0].split() == ["State", "Events"]
    assert set(lines[1]) == {"-", " "}
    assert lines[2:] == ["TEXAS      4,701", "IOWA          12", "NEW YORK"]
    # Right-aligned numbers end in the same column as their header.
    assert len(lines[0]) == len(lines[2]) == len(lines[3])


def test_text_table_drops_control_characters() -> None:
    result = result_set([("Name\x1b[2J", "string")], [["red\x1b[31m\u2028text\x00"]])

    lines = render_text_table(result).splitlines()

    assert lines[0] == "Name[2J"
    assert lines[2] == "red[31m text"


def test_text_table_truncates_rows_and_long_cells() -> None:
    result = result_set([("Text", "string")], [["x" * 500] for _ in range(60)])

    lines = render_text_table(result, max_rows=50).splitlines()

    assert len(lines) == 2 + 50 + 1
    assert lines[-1] == "showing 50 of 60 rows"
    assert max(len(line) for line in lines) < 60
    assert lines[2].endswith("…")


def test_text_table_of_empty_result() -> None:
    result = result_set([("State", "string")], [])

    assert render_text_table(result).splitlines() == ["State", "-----", "no rows"]
