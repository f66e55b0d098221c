from __future__ import annotations

import csv
import io
from typing import Any

from common.results import Column, ResultSet
from services.render.csvfile import render_csv


def result_set(columns: list[tuple[str, str]], rows: list[list[Any]]) -> ResultSet:
    return ResultSet(columns=[Column(name=name, type=kind) for name, kind in columns], rows=rows)


def read(data: bytes) -> list[list[str]]:
    return list(csv.reader(io.StringIO(data.decode("utf-8"), newline="")))


def test_round_trips_through_csv_reader() -> None:
    result = result_set(
        [("Name", "string"), ("Count", "long"), ("Ratio", "real"), ("When", "datetime"), ("Bag", "dynamic")],
        [
            ['a "quoted", comma', 12345, 0.1, "2007-05-01T14:00:00Z", {"k": [1, 2], "s": "x, y"}],
            ["line\nbreak", None, 2.5, None, '{"b": 1}'],
            ["ünïcode ✓", -7, None, None, None],
        ],
    )

    assert read(render_csv(result)) == [
        ["Name", "Count", "Ratio", "When", "Bag"],
        ['a "quoted", comma', "12345", "0.1", "2007-05-01T14:00:00Z", '{"k":[1,2],"s":"x, y"}'],
        ["line\nbreak", "", "2.5", "", '{"b":1}'],
        ["ünïcode ✓", "-7", "", "", ""],
    ]


def test_plain_utf8_with_crlf_line_endings() -> None:
    data = render_csv(result_set([("Name", "string")], [["ü"], ["b"]]))

    assert not data.startswith(b"\xef\xbb\xbf")
    assert data == "Name\r\nü\r\nb\r\n".encode()


def test_formula_looking_text_is_defused() -> None:
    hostile = ["=cmd|' /C calc'!A0", "+1+1", "-2+3", "@SUM(A1)", "\t=1", "safe - text"]
    result = result_set([("Text", "string"), ("Delta", "long")], [[text, -5] for text in hostile])

    rows = read(render_csv(result))[1:]

    assert [text for text, _ in rows] == [
        "'=cmd|' /C calc'!A0",
        "'+1+1",
        "'-2+3",
        "'@SUM(A1)",
        "'\t=1",
        "safe - text",
    ]
    # Numbers stay numbers, even negative ones.
    assert {delta for _, delta in rows} == {"-5"}


def test_text_inside_dynamic_is_defused_but_numbers_are_not() -> None:
    result = result_set([("Bag", "dynamic")], [["=HYPERLINK(1)"], [-3], ['"@x"']])

    assert read(render_csv(result))[1:] == [["'=HYPERLINK(1)"], ["-3"], ["'@x"]]


def test_booleans_and_non_finite_reals_use_kusto_words() -> None:
    result = result_set([("Flag", "bool"), ("Value", "real")], [[True, float("nan")], [False, float("-inf")]])

    assert read(render_csv(result))[1:] == [["true", "NaN"], ["false", "-Infinity"]]


def test_empty_result_is_just_the_header() -> None:
    assert render_csv(result_set([("A", "string"), ("B", "long")], [])) == b"A,B\r\n"
