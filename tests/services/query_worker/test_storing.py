"""The result streamed into the blob store as it is read.

A stand-in Kusto endpoint on 127.0.0.1 sends recorded responses (and made-up
ones with the values that differ between JSON readers) in chunks; the real
azure-kusto-data client reads them through `KustoRunner` into a folder blob
store. What is stored must read back exactly as the result stored whole after
reading (``ResultSet.to_json_bytes`` of the parsed rows) did, and a read that
fails must leave nothing behind.
"""

from __future__ import annotations

import json
import tracemalloc
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from azure.kusto.data.response import KustoResponseDataSetV1
from pydantic_core import PydanticSerializationError

from common.contracts.errors import KustoError
from common.contracts.messages import ErrorCode
from common.contracts.results import Column, ResultSet
from common.platform.blobs.folder import FolderBlobStore
from common.platform.connections import Connections
from services.query_worker.kusto import KustoRunner
from services.query_worker.reading import QueryResult, _visualization, _visualization_of

SHARED = Path("/work/shared/fixtures/kusto-v2")
OWN = Path(__file__).resolve().parents[2] / "fixtures" / "kusto-v2"
KEY = "runs/r/q/1/result.json"
BIG = 2**40

HEADER = {"FrameType": "DataSetHeader", "IsProgressive": False, "Version": "v2.0"}
COMPLETION = {"FrameType": "DataSetCompletion", "HasErrors": False, "Cancelled": False}
LIMITS_ERROR = {
    "error": {
        "code": "LimitsExceeded",
        "message": "Request is invalid and cannot be executed.",
        "@type": "Kusto.Data.Exceptions.KustoServicePartialQueryFailureLimitsExceededException",
        "@message": "Query execution has exceeded the allowed limits (80DA0003): .",
        "@permanent": False,
    }
}
OTHER_ERROR = {"error": {"code": "SomethingElse", "message": "m", "@message": "it broke", "@permanent": True}}


def body_with_rows(rows: str, columns: list[tuple[str, str]]) -> bytes:
    """A v2 response whose primary result's rows are the JSON text *rows* (no brackets), sent as is."""
    table = {
        "FrameType": "DataTable",
        "TableId": 1,
        "TableKind": "PrimaryResult",
        "TableName": "PrimaryResult",
        "Columns": [{"ColumnName": name, "ColumnType": kind} for name, kind in columns],
        "Rows": "ROWS",
    }
    frames = json.dumps([HEADER, table, COMPLETION], separators=(",", ":"))
    return frames.replace('"ROWS"', f"[{rows}]").encode()


def numbered(count: int) -> bytes:
    rows = ",".join(f'[{i},"row-{i}"]' for i in range(count))
    return body_with_rows(rows, [("i", "long"), ("s", "string")])


#: Values that JSON readers may take differently, written as a server might send them.
EDGES = {
    "constants": (
        '["a",NaN,1],["b",Infinity,2],["c",-Infinity,3],["d",1.5,4]',
        [("s", "string"), ("r", "real"), ("n", "long")],
    ),
    "escapes-and-unicode": (
        '["\\u00e9\\/\\"q\\"\\\\\\t\\n","é ünïcödé ✓ 漢字"],["\\ud83d\\ude00 surrogate pair","😀"],["",null]',
        [("a", "string"), ("b", "string")],
    ),
    "numbers": (
        "[1,1.0,-0.0,1e-7,1.7976931348623157E+308,123456789012345678901234567890,"
        '5e-324,"1.50","79228162514264337593543950335"]',
        [
            ("i", "long"),
            ("f", "real"),
            ("z", "real"),
            ("e", "real"),
            ("m", "real"),
            ("b", "long"),
            ("d", "real"),
            ("dec", "decimal"),
            ("maxdec", "decimal"),
        ],
    ),
    "dynamic-datetime-timespan-guid": (
        '[{"a":[1,2.5,{"b":null}],"a2":{"x":"y"}},[1,"2"],"2020-01-01T00:00:00.0000001Z",'
        '"-2.00:00:02.0020002","00000000-0000-0000-0001-020304050607",true],'
        '[{"k":1,"k":2},"text",null,null,null,false]',
        [
            ("d", "dynamic"),
            ("l", "dynamic"),
            ("t", "datetime"),
            ("ts", "timespan"),
            ("g", "guid"),
            ("b", "bool"),
        ],
    ),
    "spacing": (
        ' [ 1 , "a" ]\r\n,\t[2,"b"] , [3 ,"c"]',
        [("i", "long"), ("s", "string")],
    ),
    "rows-wider-or-narrower-than-the-columns": ('[1,"a","extra"],[2],[]', [("i", "long"), ("s", "string")]),
}
RECORDED_V2 = [
    *sorted(OWN.glob("*.json")),
    *(SHARED / name for name in ("deft.json", "dynamic.json", "null_values.json", "zero_results.json")),
]
BODIES = [
    *(pytest.param(path.read_bytes(), id=path.name) for path in RECORDED_V2),
    *(pytest.param(body_with_rows(rows, columns), id=name) for name, (rows, columns) in EDGES.items()),
    pytest.param(numbered(5000), id="5000-rows"),
]


def stored_whole(body: bytes) -> bytes:
    """What the query-worker stored when it read the whole result into memory first."""
    frames = json.loads(body)
    tables = [frame for frame in frames if frame.get("FrameType") == "DataTable"]
    primary = next((table for table in tables if table["TableKind"] == "PrimaryResult"), None)
    properties = next((table for table in tables if table["TableKind"] == "QueryProperties"), None)
    return ResultSet.model_construct(
        columns=[Column(name=c["ColumnName"], type=str(c["ColumnType"]).lower()) for c in primary["Columns"]]
        if primary
        else [],
        rows=primary["Rows"] if primary else [],
        visualization=_visualization_of(properties["Rows"]) if properties else None,
    ).to_json_bytes()


def primary_rows(body: bytes) -> list[Any]:
    frames = json.loads(body)
    return next((f["Rows"] for f in frames if f.get("TableKind") == "PrimaryResult"), [])


def same(stored: bytes, expected: bytes) -> None:
    """The two stored results read back as the same values, of the same types."""
    # Written again by one writer, equal values of different types (1 and 1.0) differ.
    assert (
        ResultSet.from_json_bytes(stored).to_json_bytes()
        == ResultSet.from_json_bytes(expected).to_json_bytes()
    )


def files(folder: Path) -> list[str]:
    """Every file under *folder*, a writer's temporary ones included."""
    return sorted(str(path.relative_to(folder)) for path in folder.rglob("*") if path.is_file())


class StandIn:
    """A Kusto endpoint whose answers the test sets: *body* in *chunk*-byte writes for queries."""

    def __init__(self) -> None:
        self.body = b""
        self.chunk = 2**16
        self.status = 200
        self.mgmt: Any = {"Tables": []}

    async def query(self, request: web.Request) -> web.StreamResponse:
        if self.status != 200:
            return web.Response(body=self.body, status=self.status, content_type="application/json")
        response = web.StreamResponse(headers={"Content-Type": "application/json; charset=utf-8"})
        await response.prepare(request)
        for start in range(0, len(self.body), self.chunk):
            await response.write(self.body[start : start + self.chunk])
        await response.write_eof()
        return response

    async def management(self, request: web.Request) -> web.StreamResponse:
        return web.json_response(self.mgmt)


@pytest.fixture
async def endpoint() -> AsyncIterator[tuple[StandIn, KustoRunner]]:
    stand_in = StandIn()
    app = web.Application()
    app.router.add_post("/v2/rest/query", stand_in.query)
    app.router.add_post("/v1/rest/mgmt", stand_in.management)
    async with TestServer(app, host="127.0.0.1") as server:
        connections = Connections()
        connections.add_local("stand_in", f"http://127.0.0.1:{server.port}")
        runner = KustoRunner(connections, timeout=30)
        try:
            yield stand_in, runner
        finally:
            await runner.close()


@pytest.fixture
def store(tmp_path: Path) -> FolderBlobStore:
    return FolderBlobStore(tmp_path / "blobs")


async def stream(
    runner: KustoRunner,
    store: FolderBlobStore,
    *,
    command: bool = False,
    max_rows: int = BIG,
    max_bytes: int = BIG,
    truncate: bool = False,
    head: int = 0,
) -> QueryResult:
    async with store.writer(KEY, "application/json") as blob:
        return await runner.run(
            connection="stand_in",
            database="Samples",
            text=".show something" if command else "T",
            command=command,
            client_request_id="adxflow;storing-test",
            max_rows=max_rows,
            max_bytes=max_bytes,
            truncate=truncate,
            head=head,
            into=blob,
        )


# -- what is stored


@pytest.mark.parametrize("body", BODIES)
@pytest.mark.parametrize("chunk", [13, 2**16])
async def test_a_streamed_result_is_stored_as_the_result_read_whole_was(
    endpoint: tuple[StandIn, KustoRunner], store: FolderBlobStore, body: bytes, chunk: int
) -> None:
    stand_in, runner = endpoint
    stand_in.body, stand_in.chunk = body, chunk

    outcome = await stream(runner, store, head=3)

    stored = await store.get(KEY)
    same(stored, stored_whole(body))
    whole = ResultSet.from_json_bytes(stored)
    assert (outcome.columns, outcome.visualization) == (whole.columns, whole.visualization)
    assert (outcome.row_count, outcome.truncated, outcome.note) == (whole.row_count, False, None)
    # The first rows as parsed, as the result read whole held them (NaN stays NaN there).
    assert json.dumps(outcome.head) == json.dumps(primary_rows(body)[:3])


def test_the_old_store_writes_nan_and_infinity_as_null() -> None:
    """What the comparison above holds the streamed result to, for the constants JSON lacks."""
    rows, columns = EDGES["constants"]
    assert ResultSet.from_json_bytes(stored_whole(body_with_rows(rows, columns))).rows == [
        ["a", None, 1],
        ["b", None, 2],
        ["c", None, 3],
        ["d", 1.5, 4],
    ]


@pytest.mark.parametrize("name", ["versionshowcommandresult.json", "adminthenquery.json"])
async def test_a_control_commands_result_is_stored_as_before(
    endpoint: tuple[StandIn, KustoRunner], store: FolderBlobStore, name: str
) -> None:
    stand_in, runner = endpoint
    stand_in.mgmt = json.loads((SHARED / name).read_bytes())

    outcome = await stream(runner, store, command=True, head=1)

    loaded = KustoResponseDataSetV1(stand_in.mgmt)
    table = loaded.primary_results[0]
    expected = ResultSet.model_construct(
        columns=[Column(name=c.column_name, type=str(c.column_type).lower()) for c in table.columns],
        rows=table.raw_rows,
        visualization=_visualization(loaded),
    ).to_json_bytes()
    same(await store.get(KEY), expected)
    assert outcome.row_count == len(table.raw_rows)
    assert outcome.head == table.raw_rows[:1]


async def test_only_the_first_rows_stay_in_memory(
    endpoint: tuple[StandIn, KustoRunner], store: FolderBlobStore
) -> None:
    stand_in, runner = endpoint
    stand_in.body = numbered(1000)

    outcome = await stream(runner, store, head=5)

    assert outcome.head == [[i, f"row-{i}"] for i in range(5)]
    assert outcome.row_count == 1000
    assert ResultSet.from_json_bytes(await store.get(KEY)).rows == [[i, f"row-{i}"] for i in range(1000)]


async def test_streaming_holds_a_few_batches_not_the_result(
    endpoint: tuple[StandIn, KustoRunner], store: FolderBlobStore
) -> None:
    stand_in, runner = endpoint
    rows = ",".join(
        f'[{i},"row-{i:09d}-abcdefghij",{i / 7},"2020-01-01T00:00:{i % 60:02d}Z"]' for i in range(200_000)
    )
    stand_in.body = body_with_rows(rows, [("i", "long"), ("s", "string"), ("r", "real"), ("t", "datetime")])
    await stream(runner, store)  # connections and caches warmed, outside the measure

    tracemalloc.start()
    try:
        outcome = await stream(runner, store, head=50)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    assert outcome.row_count == 200_000
    # Held whole, the parsed rows would take about four times the body (14 MiB); the stand-in's
    # own allocations are in the figure too.
    assert peak < len(stand_in.body) / 2, (
        f"peak {peak / 2**20:.1f} MiB for a {len(stand_in.body) / 2**20:.1f} MiB body"
    )


# -- caps and failures


@pytest.mark.parametrize(
    ("caps", "kept"),
    [
        pytest.param({"max_rows": 7}, 7, id="max_rows"),
        # Ten rows of 11 bytes ([0,"row-0"]), then rows of 13: 110 + 76 × 13 = 1,098.
        pytest.param({"max_bytes": 1100}, 86, id="max_bytes"),
    ],
)
async def test_with_truncate_the_rows_within_the_caps_are_stored(
    endpoint: tuple[StandIn, KustoRunner], store: FolderBlobStore, caps: dict[str, int], kept: int
) -> None:
    stand_in, runner = endpoint
    stand_in.body, stand_in.chunk = numbered(300), 100

    outcome = await stream(runner, store, truncate=True, head=2, **caps)

    assert (outcome.row_count, outcome.truncated) == (kept, True)
    assert outcome.head == [[0, "row-0"], [1, "row-1"]]
    assert ResultSet.from_json_bytes(await store.get(KEY)).rows == [[i, f"row-{i}"] for i in range(kept)]


@pytest.mark.parametrize(
    "name", ["query_partial_results_defer_is_false.json", "query_partial_results_defer_is_true.json"]
)
async def test_kustos_partial_failure_stores_the_rows_before_it_when_truncating(
    endpoint: tuple[StandIn, KustoRunner], store: FolderBlobStore, tmp_path: Path, name: str
) -> None:
    stand_in, runner = endpoint
    stand_in.body = (SHARED / name).read_bytes()

    with pytest.raises(KustoError) as raised:
        await stream(runner, store)
    assert raised.value.code is ErrorCode.RESULT_TOO_LARGE
    assert files(tmp_path / "blobs") == []

    outcome = await stream(runner, store, truncate=True)
    frames = json.loads(stand_in.body)
    rows = next(frame for frame in frames if frame.get("TableKind") == "PrimaryResult")["Rows"]
    before = [row for row in rows if isinstance(row, list)]
    assert outcome.truncated is True
    assert ResultSet.from_json_bytes(await store.get(KEY)).rows == before


def with_error_after(rows: int, error: dict[str, Any]) -> bytes:
    text = ",".join(f'[{i},"row-{i}"]' for i in range(rows))
    return body_with_rows(f"{text},{json.dumps({'OneApiErrors': [error]})}", [("i", "long"), ("s", "string")])


@pytest.mark.parametrize(
    ("body", "status", "caps", "code"),
    [
        pytest.param(numbered(300), 200, {"max_rows": 299}, ErrorCode.RESULT_TOO_LARGE, id="over-max_rows"),
        pytest.param(
            numbered(300), 200, {"max_bytes": 1000}, ErrorCode.RESULT_TOO_LARGE, id="over-max_bytes"
        ),
        pytest.param(
            with_error_after(200, LIMITS_ERROR),
            200,
            {},
            ErrorCode.RESULT_TOO_LARGE,
            id="kusto-limits-mid-stream",
        ),
        pytest.param(
            with_error_after(200, OTHER_ERROR),
            200,
            {"truncate": True},
            ErrorCode.KUSTO_SEMANTIC_ERROR,
            id="other-kusto-error-mid-stream",
        ),
        pytest.param(
            numbered(300)[:-500], 200, {"truncate": True}, ErrorCode.KUSTO_SERVICE_ERROR, id="body-cut-short"
        ),
        pytest.param(
            json.dumps({"error": {"code": "General_BadRequest", "@message": "Syntax error: bad"}}).encode(),
            400,
            {"truncate": True},
            ErrorCode.KUSTO_SYNTAX_ERROR,
            id="refused",
        ),
    ],
)
async def test_a_read_that_fails_leaves_nothing_behind(
    endpoint: tuple[StandIn, KustoRunner],
    store: FolderBlobStore,
    tmp_path: Path,
    body: bytes,
    status: int,
    caps: dict[str, Any],
    code: ErrorCode,
) -> None:
    stand_in, runner = endpoint
    stand_in.body, stand_in.chunk, stand_in.status = body, 512, status

    with pytest.raises(KustoError) as raised:
        await stream(runner, store, **caps)

    assert raised.value.code is code
    assert files(tmp_path / "blobs") == []


async def test_a_failed_rerun_leaves_the_result_stored_before(
    endpoint: tuple[StandIn, KustoRunner], store: FolderBlobStore
) -> None:
    stand_in, runner = endpoint
    stand_in.body = numbered(10)
    await stream(runner, store)
    before = await store.get(KEY)

    stand_in.body = numbered(300)
    with pytest.raises(KustoError):
        await stream(runner, store, max_rows=100)

    assert await store.get(KEY) == before


async def test_a_value_the_store_cannot_write_fails_the_read_and_leaves_nothing(
    endpoint: tuple[StandIn, KustoRunner], store: FolderBlobStore, tmp_path: Path
) -> None:
    """A lone UTF-16 surrogate is no text; written whole, the result failed the same way."""
    stand_in, runner = endpoint
    stand_in.body = body_with_rows('["a"],["\\ud800"]', [("s", "string")])

    with pytest.raises(PydanticSerializationError):
        stored_whole(stand_in.body)
    with pytest.raises(PydanticSerializationError):
        await stream(runner, store)
    assert files(tmp_path / "blobs") == []
