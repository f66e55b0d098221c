"""The v2 response body parsed as it arrives: recorded Kusto responses, served
in chunks of every size by a real aiohttp server and read through aiohttp."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import ClientSession, web
from aiohttp.test_utils import TestServer
from azure.kusto.data.exceptions import (
    KustoMultiApiError,
    KustoStreamingQueryError,
    KustoUnsupportedApiError,
)

from services.query_worker.wire import Batch, Oversized, ResponseStream

SHARED = Path("/work/shared/fixtures/kusto-v2")
RECORDED = [
    pytest.param(path.name, path.read_bytes(), id=path.name)
    for path in (
        *sorted((Path(__file__).resolve().parents[2] / "fixtures" / "kusto-v2").glob("*.json")),
        *(
            SHARED / name
            for name in (
                "dynamic.json",
                "null_values.json",
                "zero_results.json",
                "query_partial_results_defer_is_true.json",
            )
        ),
    )
]
PROGRESSIVE = (SHARED / "progressive_result.json").read_bytes()
HEADER = {"FrameType": "DataSetHeader", "IsProgressive": False, "Version": "v2.0"}
COMPLETION = {"FrameType": "DataSetCompletion", "HasErrors": False, "Cancelled": False}
COLUMNS = [{"ColumnName": "s", "ColumnType": "string"}, {"ColumnName": "x", "ColumnType": "long"}]


def table(rows: list[Any], kind: str = "PrimaryResult", columns: list[Any] = COLUMNS) -> dict[str, Any]:
    return {
        "FrameType": "DataTable",
        "TableId": 1,
        "TableKind": kind,
        "TableName": kind,
        "Columns": columns,
        "Rows": rows,
    }


def compact(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()


Open = Callable[..., Awaitable[ResponseStream]]


@pytest.fixture
async def serve() -> AsyncIterator[Open]:
    """`await serve(body, chunk)`: a stream over *body*, sent *chunk* bytes at a time."""
    sent: dict[str, Any] = {}

    async def answer(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "application/json; charset=utf-8"})
        await response.prepare(request)
        body, chunk = sent["body"], sent["chunk"]
        for start in range(0, len(body), chunk):
            await response.write(body[start : start + chunk])
        await response.write_eof()
        return response

    app = web.Application()
    app.router.add_post("/", answer)
    async with TestServer(app, host="127.0.0.1") as server, ClientSession() as session:
        responses: list[Any] = []

        async def open_stream(body: bytes, chunk: int = 2**16, **options: Any) -> ResponseStream:
            sent.update(body=body, chunk=chunk)
            response = await session.post(server.make_url("/"))
            responses.append(response)
            return ResponseStream(response.content, **options)

        try:
            yield open_stream
        finally:
            for response in responses:
                response.close()


async def read_rows(stream: ResponseStream, rows: list[Any]) -> None:
    """Every row of every table into *rows*, as far as the stream gets."""
    async for frame in stream.frames():
        if frame["FrameType"] == "DataTable":
            async for batch in frame["Rows"]:
                rows.extend(batch.rows)


async def parsed(stream: ResponseStream) -> tuple[list[dict[str, Any]], list[int]]:
    """The frames with their rows in place, and every row's size."""
    frames, sizes = [], []
    async for frame in stream.frames():
        if frame["FrameType"] == "DataTable":
            rows: list[Any] = []
            async for batch in frame["Rows"]:
                rows.extend(batch.rows)
                sizes.extend(batch.sizes)
            frame = {**frame, "Rows": rows}
        frames.append(frame)
    return frames, sizes


@pytest.mark.parametrize(("name", "body"), RECORDED)
@pytest.mark.parametrize("chunk", [1, 7, 2**16])
async def test_recorded_responses_parse_as_the_json_module_reads_them(
    serve: Open, name: str, body: bytes, chunk: int
) -> None:
    frames, _ = await parsed(await serve(body, chunk))

    expected = json.loads(body)
    assert [{**frame, "FrameType": str(frame["FrameType"])} for frame in frames] == expected


@pytest.mark.parametrize("chunk", [1, 5, 2**16])
async def test_a_rows_size_is_the_utf8_bytes_of_its_json(serve: Open, chunk: int) -> None:
    rows = [["plain", 1], ["é ünïcödé ✓", 2], ['tab\there "quoted"', -3], [None, None]]
    body = compact([HEADER, table(rows), COMPLETION])

    frames, sizes = await parsed(await serve(body, chunk))

    assert frames[1]["Rows"] == rows
    assert sizes == [len(compact(row)) for row in rows]


async def batches(stream: ResponseStream) -> list[Batch]:
    """Every batch of rows of every table."""
    found = []
    async for frame in stream.frames():
        if frame["FrameType"] == "DataTable":
            found.extend([batch async for batch in frame["Rows"]])
    return found


@pytest.mark.parametrize(("name", "body"), RECORDED)
@pytest.mark.parametrize("chunk", [1, 7, 2**16])
async def test_a_batchs_text_is_its_rows_as_sent(serve: Open, name: str, body: bytes, chunk: int) -> None:
    for batch in await batches(await serve(body, chunk)):
        assert batch.text is not None
        assert batch.text in body.decode()
        assert json.loads(f"[{batch.text}]") == batch.rows


async def test_rows_as_sent_keep_their_spacing_and_escapes(serve: Open) -> None:
    sent = '[ "é ünïcödé ✓" ,1 ] ,\r\n["\\u00e9\\/\\"q\\"",2]'
    body = compact([HEADER, table([]), COMPLETION]).replace(b'"Rows":[]', f'"Rows":[{sent}]'.encode())

    [batch] = await batches(await serve(body))

    assert batch.text == sent
    assert batch.rows == [["é ünïcödé ✓", 1], ['é/"q"', 2]]
    assert batch.sizes == [len('[ "é ünïcödé ✓" ,1 ]'.encode()), len('["\\u00e9\\/\\"q\\"",2]')]


@pytest.mark.parametrize(
    "row",
    [
        pytest.param('["a",NaN]', id="NaN"),
        pytest.param('["a",Infinity]', id="Infinity"),
        pytest.param('["a",-Infinity]', id="minus-Infinity"),
        pytest.param('["\\ud83d\\ude00",1]', id="surrogate-pair"),
        pytest.param('["\\uD800",1]', id="lone-surrogate"),
    ],
)
async def test_rows_a_strict_json_reader_reads_otherwise_come_without_their_text(
    serve: Open, row: str
) -> None:
    body = compact([HEADER, table([]), COMPLETION]).replace(b'"Rows":[]', f'"Rows":[["b",1],{row}]'.encode())

    [batch] = await batches(await serve(body))

    assert batch.text is None
    assert len(batch.rows) == 2


async def test_rows_left_unread_are_read_past(serve: Open) -> None:
    body = compact(
        [HEADER, table([["a", 1], ["b", 2]]), table([["c", 3]], kind="QueryProperties"), COMPLETION]
    )
    kinds = []
    async for frame in (await serve(body, 4)).frames():
        kinds.append(frame.get("TableKind", frame["FrameType"]))
    assert kinds == ["DataSetHeader", "PrimaryResult", "QueryProperties", "DataSetCompletion"]


async def test_an_error_in_place_of_a_row_comes_after_the_rows_before_it(serve: Open) -> None:
    error = {"OneApiErrors": [{"error": {"code": "LimitsExceeded", "message": "m", "@message": "cut"}}]}
    body = compact([HEADER, table([["a", 1], ["b", 2], error]), COMPLETION])
    stream = await serve(body, 2**16)
    rows: list[Any] = []

    with pytest.raises(KustoMultiApiError) as raised:
        await read_rows(stream, rows)

    assert rows == [["a", 1], ["b", 2]]
    assert [e.code for e in raised.value.get_api_errors()] == ["LimitsExceeded"]


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(compact([HEADER, table([["a", 1]] * 50), COMPLETION])[:-40], id="cut-short"),
        pytest.param(
            compact([HEADER, table([["a", 1]] * 50)]).replace(b'["a",1]', b'["a" 1]', 1), id="bad-row"
        ),
        pytest.param(b'[{"FrameType":"DataSetHeader","Version":"v2.0"}]'.replace(b",", b" "), id="bad-frame"),
        pytest.param(b'[{"FrameType":"DataSetHeader"} {"FrameType":"x"}]', id="frames-without-comma"),
    ],
)
async def test_a_body_that_is_not_a_whole_data_set_is_a_streaming_error(serve: Open, body: bytes) -> None:
    with pytest.raises(KustoStreamingQueryError):
        await parsed(await serve(body, 16))


async def test_a_progressive_response_is_refused(serve: Open) -> None:
    with pytest.raises(KustoUnsupportedApiError):
        await parsed(await serve(PROGRESSIVE))


async def test_a_row_longer_than_the_ceiling_is_not_buffered_whole(serve: Open) -> None:
    huge = ["y" * 1_000_000, 1]
    body = compact([HEADER, table([["a", 1], huge]), COMPLETION])
    stream = await serve(body, 2**12, chunk_size=2**12)
    stream.ceiling = 100_000
    rows: list[Any] = []

    with pytest.raises(Oversized):
        await read_rows(stream, rows)

    assert rows == [["a", 1]]
