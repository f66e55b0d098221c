from __future__ import annotations

from html.parser import HTMLParser
from typing import Any

import pytest

from common.results import Column, ResultSet
from services.render.table import format_number, format_value, render_table, render_text_table

HOSTILE = "<script>alert(1)</script>"
QUOTES = "\"&'"


def result_set(columns: list[tuple[str, str]], rows: list[list[Any]]) -> ResultSet:
    return ResultSet(columns=[Column(name=name, type=kind) for name, kind in columns], rows=rows)


class TableParser(HTMLParser):
    """Collects tags, header cells, body rows (with their styles) and the text outside the table."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[str] = []
        self.headers: list[str] = []
        self.rows: list[list[str]] = []
        self.row_styles: list[str] = []
        self.cell_styles: list[list[str]] = []
        self.paragraphs: list[str] = []
        self.attributes: list[tuple[str, str | None]] = []
        self._cell: list[str] | None = None
        self._in_head = False
        self._paragraph: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        self.attributes.extend(attrs)
        style = dict(attrs).get("style") or ""
        if tag == "thead":
            self._in_head = True
        elif tag == "tr" and not self._in_head:
            self.rows.append([])
            self.cell_styles.append([])
            self.row_styles.append(style)
        elif tag in ("td", "th"):
            self._cell = []
            if tag == "td":
                self.cell_styles[-1].append(style)
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


def test_hostile_text_is_escaped_and_round_trips() -> None:
    result = result_set([("Name", "string"), ("Note", "string")], [[HOSTILE, QUOTES]])

    html = render_table(result, title=HOSTILE)
    parsed = parse(html)

    assert "script" not in parsed.tags
    assert HOSTILE not in html
    assert parsed.rows == [[HOSTILE, QUOTES]]
    assert parsed.paragraphs[0] == HOSTILE
    assert "&lt;script&gt;" in html


def test_column_names_are_escaped_headers() -> None:
    result = result_set([(HOSTILE, "string"), ("Count", "long")], [["a", 1]])

    parsed = parse(render_table(result))

    assert parsed.headers == [HOSTILE, "Count"]
    assert "script" not in parsed.tags


def test_only_inline_styles_and_no_external_resources() -> None:
    result = result_set([("Name", "string")], [["x"]])

    parsed = parse(render_table(result, title="t"))

    assert not {"style", "script", "link", "img", "iframe"} & set(parsed.tags)
    assert not [
        name for name, _ in parsed.attributes if name in ("src", "href", "class") or name.startswith("on")
    ]
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
        ],
        [[12345, 3.14159, "2007-05-01T14:00:00Z", {"a": [1, 2], "b": "x y"}, True, "1234567.891", None]],
    )

    parsed = parse(render_table(result))

    assert parsed.rows == [
        ["12,345", "3.142", "2007-05-01 14:00:00", '{"a":[1,2],"b":"x y"}', "true", "1,234,567.89", ""]
    ]
    styles = parsed.cell_styles[0]
    assert "text-align:right" in styles[0]
    assert "text-align:right" in styles[1]
    assert "text-align:right" not in styles[6]


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
        ("datetime", "2007-05-01T14:00:00.1230000Z", "2007-05-01 14:00:00.123"),
        ("datetime", "2007-05-01T16:00:00+02:00", "2007-05-01 14:00:00"),
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
    result = result_set([("N", "long")], [[1], [2], [3]])

    styles = parse(render_table(result)).row_styles

    assert styles[0] == styles[2]
    assert styles[0] != styles[1]


def test_empty_result_keeps_headers_and_says_no_rows() -> None:
    result = result_set([("State", "string"), ("Events", "long")], [])

    parsed = parse(render_table(result))

    assert parsed.headers == ["State", "Events"]
    assert parsed.rows == [["no rows"]]


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
