from __future__ import annotations

import csv
import io
import json
import tracemalloc
from pathlib import Path
from typing import Any

import pytest

from common.contracts.results import Column, ResultSet
from services.render.csvfile import csv_chunks, render_csv, store_csv
from tests.blob_backends import Backend

FIXTURES = Path(__file__).parents[2] / "fixtures" / "kusto-v2"


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


def every_kusto_type(repeat: int = 1) -> ResultSet:
    """The recorded v2 response with every scalar type, plus guid and decimal columns and hostile text."""
    frames = json.loads((FIXTURES / "deft.json").read_text())
    table = next(frame for frame in frames if frame.get("TableKind") == "PrimaryResult")
    columns = [(column["ColumnName"], column["ColumnType"]) for column in table["Columns"]]
    columns += [("id", "guid"), ("amount", "decimal"), ("note", "string")]
    extra = [
        ["3f2504e0-4f89-11d3-9a0c-0305e82c3301", "1234567.891", '=SUM(A1) ünï, "q"\r\nline'],
        [None, None, ""],
    ]
    rows = [row + extra[index % 2] for index, row in enumerate(table["Rows"])]
    return result_set(columns, rows * repeat)


async def test_streamed_csv_is_byte_identical_to_the_whole_file(blobs: Backend) -> None:
    result = every_kusto_type(repeat=20)
    store = blobs.store
    expected = render_csv(result)

    small = await store_csv(result, store, "runs/r/render/1/small.csv", chunk_size=100)
    whole = await store_csv(result, store, "runs/r/render/1/whole.csv")

    assert await store.get(small.key) == expected
    assert await store.get(whole.key) == expected
    assert small.size == whole.size == len(expected)
    assert small.content_type == "text/csv; charset=utf-8"
    assert read(expected)[2] == [
        "0",
        "00000000-0000-0000-0001-020304050607",
        "0.0",
        "0.0",
        "false",
        *["0"] * 7,
        "2014-01-01T01:01:01.0000000Z",
        "Zero",
        "Zero",
        "0",
        "00:00:00",
        "",
        "",
        "",
        "",
        "",
    ]
    assert read(expected)[3][-5:] == [
        "",
        '{"rowId":1,"arr":[0,1]}',
        "3f2504e0-4f89-11d3-9a0c-0305e82c3301",
        "1234567.891",
        '\'=SUM(A1) ünï, "q"\r\nline',
    ]


def test_chunks_end_on_row_boundaries_and_join_to_the_whole_file() -> None:
    result = every_kusto_type(repeat=5)

    chunks = list(csv_chunks(result, chunk_size=300))

    assert len(chunks) > 5
    assert b"".join(chunks) == render_csv(result)
    # Whole rows per chunk: each one decodes and parses on its own, so no field or character is split.
    assert [row for chunk in chunks for row in read(chunk)] == read(render_csv(result))


async def test_a_failure_mid_stream_leaves_no_blob_and_no_temp_file(blobs: Backend) -> None:
    store = blobs.store
    key = "runs/r/render/1/result.csv"
    await store.put(key, b"earlier attempt\r\n", "text/csv; charset=utf-8")
    rows: list[list[Any]] = [[n, "x" * 50] for n in range(20_000)]
    rows.append([1])  # one value short: making the CSV fails well after the first chunks went out
    result = result_set([("N", "long"), ("Text", "string")], rows)

    with pytest.raises(ValueError, match="zip"):
        await store_csv(result, store, key, chunk_size=4096)

    assert await blobs.stored() == [key]
    assert await store.get(key) == b"earlier attempt\r\n"


async def test_streaming_holds_a_chunk_not_the_file(blobs: Backend) -> None:
    rows = [
        [n, f"row {n} " + "ü" * 60, "2026-01-01T00:00:00.0000000Z", n / 7, {"n": n, "tags": ["a", "b"]}]
        for n in range(50_000)
    ]
    result = result_set(
        [("N", "long"), ("Text", "string"), ("When", "datetime"), ("Ratio", "real"), ("Bag", "dynamic")], rows
    )
    store = blobs.store

    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        ref = await store_csv(result, store, "runs/r/render/1/result.csv")
        peak = tracemalloc.get_traced_memory()[1] - before
    finally:
        tracemalloc.stop()

    assert ref.size > 10_000_000
    assert await blobs.stored() == [ref.key]
    assert len(await store.get(ref.key)) == ref.size
    # About a chunk and a staged block at a time (Azure stages 4 MiB blocks), whatever the file's size.
    assert peak < ref.size / 3
