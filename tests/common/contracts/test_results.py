"""A stored result read back: the same values as pydantic reads, without stalling the event loop."""

from __future__ import annotations

import asyncio
import json

import pytest

from common.contracts.results import Column, ResultSet, ResultWriter, Visualization

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
