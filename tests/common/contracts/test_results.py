"""A stored result read back: the same values as pydantic reads, without stalling the event loop."""

from __future__ import annotations

import asyncio
import json

import pytest

from common.contracts.results import Column, ResultSet, ResultWriter, RowStream, Visualization

COLUMNS = [
    Column(name="n", type="long"),
    Column(name="state", type="string"),
    Column(name="bag", type="dynamic"),
]


async def written(rows: list[list[object]], visualization: Visualization | None = None) -> bytes:
    parts: list[bytes] = []

    async def write(data: bytes) -> None:
        parts.append(data)

    writer = ResultWriter(write)
    await writer.start(COLUMNS)
    await writer.add(rows[:1])
    await writer.add_json(json.dumps(rows[1:])[1:-1])
    await writer.end(visualization)
    return b"".join(parts)


TRICKY_ROWS: list[list[object]] = [
    [1, "TEXAS", {"a": [1, 2, {"b": None}]}],
    [2**70, 'Zürich \u2603 "quoted" \\ back', []],
    [-0.5, None, "1e400 as text"],
    [None, "", {"nested": {"deep": [[], {}]}}],
]


@pytest.mark.parametrize("visualization", [None, Visualization(kind="piechart", title="By state")])
async def test_a_written_result_reads_back_as_pydantic_reads_it(visualization: Visualization | None) -> None:
    data = await written(TRICKY_ROWS, visualization)
    assert ResultSet.from_json_bytes(data) == ResultSet.model_validate_json(data)
    assert ResultSet.from_json_bytes(data).rows == TRICKY_ROWS


def test_a_result_in_pydantic_s_own_encoding_with_whitespace_reads_back() -> None:
    result = ResultSet(columns=COLUMNS, rows=TRICKY_ROWS, visualization=Visualization(kind="timechart"))
    spaced = json.dumps(json.loads(result.to_json_bytes()), indent=2).encode()
    assert ResultSet.from_json_bytes(result.to_json_bytes()) == result
    assert ResultSet.from_json_bytes(spaced) == result
    empty = ResultSet(columns=[], rows=[])
    assert ResultSet.from_json_bytes(empty.to_json_bytes()) == empty


@pytest.mark.parametrize(
    "data",
    [
        b'{"columns": [], "rows": [[1], 2]}',
        b'{"columns": [], "rows": [[1]',
        b'{"columns": [], "rows": [[1]]} trailing',
        b'{"rows": [[1]]}',
        b'{"columns": [{"name": "x"}], "rows": []}',
        b"\xff",
    ],
    ids=["row-not-array", "cut-short", "trailing", "no-columns", "bad-column", "not-utf8"],
)
def test_a_damaged_result_is_refused(data: bytes) -> None:
    with pytest.raises(ValueError, match=r"."):
        ResultSet.from_json_bytes(data)


async def test_reading_a_big_result_in_a_thread_leaves_the_event_loop_running() -> None:
    rows = [[i, f"state-{i % 50}", {"k": i}] for i in range(300_000)]
    data = ResultSet(columns=COLUMNS, rows=rows).to_json_bytes()
    ticks = 0
    reading = True

    async def ticker() -> None:
        nonlocal ticks
        while reading:
            await asyncio.sleep(0.001)
            ticks += 1

    ticking = asyncio.create_task(ticker())
    try:
        result = await asyncio.to_thread(ResultSet.from_json_bytes, data)
    finally:
        reading = False
        await ticking
    print(f"\n{ticks} ticks while {len(data) / 2**20:.1f} MB ({result.row_count:,} rows) were read")
    assert result.row_count == len(rows)
    # Read in one call (pydantic's model_validate_json), the thread would hold the GIL
    # throughout and the ticker would tick once or twice; row by row, the loop gets the
    # GIL back every switch interval (5 ms) and ticks on through the whole read
    # (~0.4 s here: some 40 ticks, fewer where garbage collection pauses both threads).
    assert ticks >= 10


def streamed(data: bytes, size: int) -> tuple[list[Column] | None, list[list[object]]]:
    """*data* fed to a RowStream *size* bytes at a time: its columns and every row it answered."""
    stream = RowStream()
    rows: list[list[object]] = []
    for start in range(0, len(data), size):
        rows += stream.feed(data[start : start + size])
    stream.end()
    return stream.columns, rows


@pytest.mark.parametrize("size", [1, 2, 3, 7, 64, 1 << 20])
async def test_a_result_streamed_in_chunks_of_any_size_reads_back_the_same_rows(size: int) -> None:
    data = await written(TRICKY_ROWS, Visualization(kind="piechart"))
    assert streamed(data, size) == (COLUMNS, TRICKY_ROWS)
    spaced = json.dumps(json.loads(data), indent=1).encode()
    assert streamed(spaced, size) == (COLUMNS, TRICKY_ROWS)
    own = ResultSet(columns=COLUMNS, rows=TRICKY_ROWS).to_json_bytes()
    assert streamed(own, size) == (COLUMNS, TRICKY_ROWS)
    assert streamed(ResultSet(columns=COLUMNS, rows=[]).to_json_bytes(), size) == (COLUMNS, [])


def test_a_streamed_result_answers_its_rows_as_they_arrive_not_at_the_end() -> None:
    rows = [[index, f"s{index}", None] for index in range(1000)]
    data = ResultSet(columns=COLUMNS, rows=rows).to_json_bytes()
    stream = RowStream()
    answered = [len(stream.feed(data[start : start + 500])) for start in range(0, len(data), 500)]
    assert sum(answered) == 1000
    # Each chunk completes about as many rows as it holds: none are held back for the end.
    assert max(answered) < 100
    assert answered.count(0) <= 1


@pytest.mark.parametrize(
    "data",
    [
        b'{"columns": [], "rows": [[1], 2]}',
        b'{"columns": [], "rows": [[1]',
        b'{"rows": [[1]], "columns": []}',
        b'{"columns": [{"name": "x"}], "rows": []}',
        b'{"columns": [], "visualization": null, "rows": []}',
        b"\xff",
    ],
    ids=["row-not-array", "cut-short", "rows-first", "bad-column", "rows-not-next", "not-utf8"],
)
def test_a_damaged_result_is_refused_when_streamed(data: bytes) -> None:
    with pytest.raises(ValueError, match="not a stored result"):
        streamed(data, 4)
