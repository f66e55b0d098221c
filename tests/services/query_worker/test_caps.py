"""Result caps: enforced while a result streams in, and Kusto's own limit signals.

Runs the real azure-kusto-data async client, against the local Kusto endpoint
and against a stand-in endpoint on 127.0.0.1 that answers with given v2 frames
(recorded Kusto responses the local endpoint never produces). Every read streams
its result into a folder blob store, as the query-worker does: what is stored is
what was read, and a read that fails leaves nothing behind.
"""

from __future__ import annotations

import asyncio
import copy
import json
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from azure.kusto.data.aio import KustoClient

from common.contracts.errors import KustoError
from common.contracts.flows import Flow, new_run
from common.contracts.messages import ErrorCode, RunContext, RunMessage, TriggerKind
from common.contracts.results import ResultSet
from common.contracts.topology import Topology
from common.platform.blobs.folder import FolderBlobStore
from common.platform.blobs.interface import artifact_key
from common.platform.broker.memory import InProcessBroker
from common.platform.config import load_settings
from common.platform.connections import Connections, connection_string
from common.platform.runtime import Runtime
from services.embedded.kusto.database import ensure_database
from services.embedded.kusto.endpoint import LocalKusto
from services.query_worker.kusto import KustoRunner
from services.query_worker.reading import QueryResult, row_size
from services.query_worker.service import QueryStep

BIG = 2**40
NUMBERED = "range i from 1 to {n} step 1 | extend s = strcat('row-', tostring(i))"

# -- Kusto's partial failure at a limit, from the recorded responses
#    query_partial_results_defer_is_false.json / _true.json (azure-kusto-python's
#    test inputs, MIT licence).

LIMITS_MESSAGE = "Query execution has exceeded the allowed limits (80DA0003): ."
LIMITS_ERROR = {
    "error": {
        "code": "LimitsExceeded",
        "message": "Request is invalid and cannot be executed.",
        "@type": "Kusto.Data.Exceptions.KustoServicePartialQueryFailureLimitsExceededException",
        "@message": LIMITS_MESSAGE,
        "@context": {
            "timestamp": "2018-12-10T15:10:48.8352222Z",
            "machineName": "RD0003FFBEDEB9",
            "processName": "Kusto.Azure.Svc",
            "processId": 4328,
            "threadId": 7284,
            "appDomainName": "RdRuntime",
            "clientRequestId": "KPC.execute;d3a43e37-0d7f-47a9-b6cd-a889b2aee3d3",
            "activityId": "a57ec272-8846-49e6-b458-460b841ed47d",
            "subActivityId": "a57ec272-8846-49e6-b458-460b841ed47d",
            "activityType": "PO-OWIN-CallContext",
            "parentActivityId": "a57ec272-8846-49e6-b458-460b841ed47d",
            "activityStack": "(Activity stack: CRID=KPC.execute;d3a43e37-0d7f-47a9-b6cd-a889b2aee3d3 "
            "ARID=a57ec272-8846-49e6-b458-460b841ed47d > "
            "PO-OWIN-CallContext/a57ec272-8846-49e6-b458-460b841ed47d)",
        },
        "@permanent": False,
    }
}
NO_RENDER = json.dumps(
    {
        "Visualization": None,
        "Title": None,
        "XColumn": None,
        "Series": None,
        "YColumns": None,
        "AnomalyColumns": None,
        "XTitle": None,
        "YTitle": None,
        "XAxis": None,
        "YAxis": None,
        "Legend": None,
        "YSplit": None,
        "Accumulate": False,
        "IsQuerySorted": False,
        "Kind": None,
    },
    separators=(",", ":"),
)
HEADER = {"FrameType": "DataSetHeader", "IsProgressive": False, "Version": "v2.0"}
PROPERTIES = {
    "FrameType": "DataTable",
    "TableId": 0,
    "TableKind": "QueryProperties",
    "TableName": "@ExtendedProperties",
    "Columns": [
        {"ColumnName": "TableId", "ColumnType": "int"},
        {"ColumnName": "Key", "ColumnType": "string"},
        {"ColumnName": "Value", "ColumnType": "dynamic"},
    ],
    "Rows": [[1, "Visualization", NO_RENDER]],
}


def primary(rows: list[Any]) -> dict[str, Any]:
    return {
        "FrameType": "DataTable",
        "TableId": 1,
        "TableKind": "PrimaryResult",
        "TableName": "PrimaryResult",
        "Columns": [{"ColumnName": "x", "ColumnType": "long"}],
        "Rows": rows,
    }


FIVE = [[1], [2], [3], [4], [5]]
#: _false: the error in place of the sixth row, and again in DataSetCompletion.
DEFER_IS_FALSE = [
    HEADER,
    PROPERTIES,
    primary([*FIVE, {"OneApiErrors": [LIMITS_ERROR]}]),
    {"FrameType": "DataSetCompletion", "HasErrors": True, "Cancelled": False, "OneApiErrors": [LIMITS_ERROR]},
]
QCI_COLUMNS = [
    ("Timestamp", "datetime"),
    ("ClientRequestId", "string"),
    ("ActivityId", "guid"),
    ("SubActivityId", "guid"),
    ("ParentActivityId", "guid"),
    ("Level", "int"),
    ("LevelName", "string"),
    ("StatusCode", "int"),
    ("StatusCodeName", "string"),
    ("EventType", "int"),
    ("EventTypeName", "string"),
    ("Payload", "string"),
]
QCI_IDS = [
    "2018-12-10T15:12:14.2991851Z",
    "KPC.execute;eba30dbd-9963-4c70-902d-60169b8b5a9c",
    "031555a6-3a4f-4766-b3c3-fd28bf5d8ad6",
    "a1e0d6fd-1def-46eb-b630-12efa5f88041",
    "8421d4a0-d5b8-4e04-b345-019b2b2edf85",
]
RECORD_COUNT_TEXT = (
    "Queryresultsethasexceededtheinternalrecordcountlimit5"
    "(E_QUERY_RESULT_SET_TOO_LARGE;seehttp: //aka.ms/kustoquerylimits)"
)
STATS = (
    '{"ExecutionTime":0.0,"resource_usage":{"cache":{"memory":{"hits":0,"misses":0,"total":0},'
    '"disk":{"hits":0,"misses":0,"total":0}},"cpu":{"user":"00: 00: 00","kernel":"00: 00: 00",'
    '"totalcpu":"00: 00: 00"},"memory":{"peak_per_node":16777312}},"input_dataset_statistics":'
    '{"extents":{"total":0,"scanned":0},"rows":{"total":0,"scanned":0},"rowstores":{"scanned_rows":0,'
    '"scanned_values_size":0}},"dataset_statistics":[{"table_row_count":5,"table_size":40}]}'
)
#: _true: five rows, then only QueryCompletionInformation says Kusto cut the result.
DEFER_IS_TRUE = [
    HEADER,
    PROPERTIES,
    primary(FIVE),
    {
        "FrameType": "DataTable",
        "TableId": 2,
        "TableKind": "QueryCompletionInformation",
        "TableName": "QueryCompletionInformation",
        "Columns": [{"ColumnName": name, "ColumnType": kind} for name, kind in QCI_COLUMNS],
        "Rows": [
            [
                *QCI_IDS,
                2,
                "Error",
                -2133196797,
                "Query result set too large (E_QUERY_RESULT_SET_TOO_LARGE). (-2133196797)",
                1,
                "QueryLimitsExceeded",
                json.dumps({"Count": 1, "Text": RECORD_COUNT_TEXT}, separators=(",", ":")),
            ],
            [*QCI_IDS, 6, "Stats", 0, "S_OK (0)", 0, "QueryResourceConsumption", STATS],
        ],
    },
    {"FrameType": "DataSetCompletion", "HasErrors": False, "Cancelled": False},
]
#: The error only in DataSetCompletion, as when Kusto finds it after the last row.
AT_COMPLETION = copy.deepcopy(DEFER_IS_FALSE)
AT_COMPLETION[2]["Rows"] = FIVE


# -- endpoints


@pytest.fixture(scope="module")
def local() -> Iterator[LocalKusto]:
    with (
        tempfile.TemporaryDirectory(prefix="adxflow-caps-") as directory,
        LocalKusto(ensure_database(Path(directory), count=2000)) as server,
    ):
        yield server


@pytest.fixture
async def runner(local: LocalKusto) -> AsyncIterator[KustoRunner]:
    connections = Connections()
    connections.add_local("local", local.url)
    kusto = KustoRunner(connections, timeout=30)
    try:
        yield kusto
    finally:
        await kusto.close()


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class StandIn:
    """A Kusto endpoint on 127.0.0.1 whose answers the test sets, and a runner pointed at it."""

    def __init__(self) -> None:
        self.query: Handler = self.frames([HEADER, {"FrameType": "DataSetCompletion", "HasErrors": False}])
        self.mgmt: Handler = self.frames({"Tables": []})
        self.runner: KustoRunner | None = None

    @staticmethod
    def frames(body: Any) -> Handler:
        async def answer(request: web.Request) -> web.StreamResponse:
            return web.json_response(body)

        return answer

    async def _query(self, request: web.Request) -> web.StreamResponse:
        return await self.query(request)

    async def _mgmt(self, request: web.Request) -> web.StreamResponse:
        return await self.mgmt(request)

    async def run(self, text: str = "T", **caps: Any) -> QueryResult:
        assert self.runner is not None
        return await read(self.runner, text, connection="stand_in", **caps)


@pytest.fixture
async def stand_in() -> AsyncIterator[StandIn]:
    endpoint = StandIn()
    app = web.Application()
    app.router.add_post("/v2/rest/query", endpoint._query)
    app.router.add_post("/v1/rest/mgmt", endpoint._mgmt)
    async with TestServer(app, host="127.0.0.1") as server:
        connections = Connections()
        connections.add_local("stand_in", f"http://127.0.0.1:{server.port}")
        endpoint.runner = KustoRunner(connections, timeout=30)
        try:
            yield endpoint
        finally:
            await endpoint.runner.close()


async def read(
    kusto: KustoRunner,
    text: str,
    *,
    connection: str = "local",
    command: bool = False,
    max_rows: int = BIG,
    max_bytes: int = BIG,
    truncate: bool = False,
) -> QueryResult:
    """Read into a folder blob store, keeping every row in `head` too, to compare with what is stored."""
    with tempfile.TemporaryDirectory(prefix="adxflow-caps-blobs-") as folder:
        store = FolderBlobStore(Path(folder))
        try:
            async with store.writer("result.json", "application/json") as blob:
                outcome = await kusto.run(
                    connection=connection,
                    database="Samples",
                    text=text,
                    command=command,
                    client_request_id="adxflow;caps-test",
                    max_rows=max_rows,
                    max_bytes=max_bytes,
                    truncate=truncate,
                    head=BIG,
                    into=blob,
                )
        except KustoError:
            assert files(Path(folder)) == []
            raise
        stored = ResultSet.from_json_bytes(await store.get("result.json"))
    assert stored == ResultSet(
        columns=outcome.columns, rows=outcome.head, visualization=outcome.visualization
    )
    assert outcome.row_count == len(outcome.head)
    return outcome


def files(folder: Path) -> list[str]:
    """Every file under *folder*, a writer's temporary ones included."""
    return sorted(str(path.relative_to(folder)) for path in folder.rglob("*") if path.is_file())


def numbered(first: int, last: int) -> list[list[Any]]:
    return [[i, f"row-{i}"] for i in range(first, last + 1)]


# -- the step's caps


async def test_over_the_row_cap_the_step_fails_naming_the_cap(runner: KustoRunner) -> None:
    with pytest.raises(KustoError) as raised:
        await read(runner, NUMBERED.format(n=1000), max_rows=100)

    assert raised.value.code is ErrorCode.RESULT_TOO_LARGE
    assert raised.value.retryable is False
    assert raised.value.message == (
        "the result has more than 100 rows (the step's max_rows); "
        "narrow the query, or set on_too_large: truncate"
    )


async def test_with_truncate_exactly_max_rows_come_back_flagged(runner: KustoRunner) -> None:
    outcome = await read(runner, NUMBERED.format(n=1000), max_rows=100, truncate=True)

    assert outcome.head == numbered(1, 100)
    assert [column.name for column in outcome.columns] == ["i", "s"]
    assert outcome.truncated is True
    assert outcome.note == "showing 100 of more rows (the step's max_rows)"


async def test_a_result_of_exactly_max_rows_is_whole(runner: KustoRunner) -> None:
    outcome = await read(runner, NUMBERED.format(n=100), max_rows=100)

    assert outcome.head == numbered(1, 100)
    assert (outcome.truncated, outcome.note) == (False, None)


@pytest.mark.parametrize(
    "query",
    [
        NUMBERED.format(n=5000),
        "StormEvents | take 300",
        # Ordered: a summarize's rows come in no fixed order, and the two reads run the query twice.
        "StormEvents | summarize Events = count() by State | order by State asc"
        " | render piechart with (title='By state')",
    ],
)
async def test_under_the_caps_the_result_is_what_the_loading_client_reads(
    runner: KustoRunner, local: LocalKusto, query: str
) -> None:
    outcome = await read(runner, query, max_rows=500_000, max_bytes=64 * 2**20)

    client = KustoClient(connection_string(_local(local)))
    try:
        loaded = await client.execute_query("Samples", query)
    finally:
        await client.close()
    table = loaded.primary_results[0]
    assert (outcome.truncated, outcome.note) == (False, None)
    assert outcome.head == table.raw_rows
    assert [(c.name, c.type) for c in outcome.columns] == [
        (c.column_name, c.column_type) for c in table.columns
    ]
    if "render" in query:
        assert outcome.visualization is not None
        assert (outcome.visualization.kind, outcome.visualization.title) == (
            "piechart",
            "By state",
        )
    else:
        assert outcome.visualization is None


def _local(local: LocalKusto) -> Any:
    connections = Connections()
    connections.add_local("local", local.url)
    return connections.get("local")


async def test_the_byte_cap_trips_on_wide_rows(runner: KustoRunner) -> None:
    wide = "range i from 1 to 200 step 1 | extend s = strrep('x', 10000)"
    cap = 100_000

    with pytest.raises(KustoError) as raised:
        await read(runner, wide, max_bytes=cap)
    assert raised.value.code is ErrorCode.RESULT_TOO_LARGE
    assert raised.value.message.startswith(
        "the result has more than 100,000 bytes of rows (the step's max_bytes); narrow the query"
    )

    outcome = await read(runner, wide, max_bytes=cap, truncate=True)
    rows = [[i, "x" * 10000] for i in range(1, 201)]
    kept = len(outcome.head)
    assert outcome.head == rows[:kept]
    assert sum(map(row_size, rows[:kept])) <= cap < sum(map(row_size, rows[: kept + 1]))
    assert kept == 9  # rows of 10,006 bytes
    assert outcome.note == "showing 9 of more rows (the step's max_bytes, 100,000 bytes)"


async def test_the_caps_apply_to_a_control_commands_result(stand_in: StandIn) -> None:
    stand_in.mgmt = stand_in.frames(
        {
            "Tables": [
                {
                    "TableName": "Table_0",
                    "Columns": [{"ColumnName": "TableName", "DataType": "String", "ColumnType": "string"}],
                    "Rows": [["A"], ["B"], ["C"]],
                }
            ]
        }
    )
    with pytest.raises(KustoError) as raised:
        await stand_in.run(".show tables", command=True, max_rows=2)
    assert raised.value.code is ErrorCode.RESULT_TOO_LARGE

    outcome = await stand_in.run(".show tables", command=True, max_rows=2, truncate=True)
    assert outcome.head == [["A"], ["B"]]
    assert outcome.truncated is True


async def test_reading_stops_at_the_cap_and_lets_the_connection_go(stand_in: StandIn) -> None:
    """The endpoint offers 100 MB of rows; the client takes ten and hangs up."""
    hung_up = asyncio.Event()
    finished = asyncio.Event()

    async def plenty(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "application/json; charset=utf-8"})
        await response.prepare(request)
        table = json.dumps(primary([]))
        try:
            await response.write(f"[{json.dumps(HEADER)},{table[: -len(']}')]}".encode())
            filler = "y" * 1000
            for start in range(0, 100_000, 100):
                rows = ",".join(f'[{i},"{filler}"]' for i in range(start, start + 100))
                await response.write(f"{',' if start else ''}{rows}".encode())
            await response.write(b']},{"FrameType":"DataSetCompletion","HasErrors":false,"Cancelled":false}]')
            finished.set()
        except (ConnectionError, asyncio.CancelledError):
            # aiohttp cancels the handler when the client hangs up mid-write.
            hung_up.set()
            raise
        return response

    stand_in.query = plenty
    outcome = await stand_in.run(max_rows=10, truncate=True)

    assert outcome.head == [[i, "y" * 1000] for i in range(10)]
    assert outcome.truncated is True
    await asyncio.wait_for(hung_up.wait(), timeout=10)
    assert not finished.is_set()


# -- Kusto's own signals


@pytest.mark.parametrize(
    ("frames", "message"),
    [
        pytest.param(DEFER_IS_FALSE, LIMITS_MESSAGE, id="error-in-place-of-a-row"),
        pytest.param(AT_COMPLETION, LIMITS_MESSAGE, id="error-at-completion"),
        pytest.param(DEFER_IS_TRUE, RECORD_COUNT_TEXT, id="query-completion-information"),
    ],
)
async def test_kusto_cutting_the_result_short_is_too_large_or_truncated(
    stand_in: StandIn, frames: list[dict[str, Any]], message: str
) -> None:
    stand_in.query = stand_in.frames(frames)

    with pytest.raises(KustoError) as raised:
        await stand_in.run()
    assert raised.value.code is ErrorCode.RESULT_TOO_LARGE
    assert raised.value.message == (
        f"Kusto cut the result short at one of its limits: {message}; "
        "narrow the query, or set on_too_large: truncate"
    )

    outcome = await stand_in.run(truncate=True)
    assert outcome.head == FIVE
    assert [(c.name, c.type) for c in outcome.columns] == [("x", "long")]
    assert outcome.truncated is True
    assert outcome.note == f"showing 5 of more rows (Kusto: {message})"


async def test_other_errors_at_completion_fail_the_step(stand_in: StandIn) -> None:
    other = copy.deepcopy(AT_COMPLETION)
    other[-1]["OneApiErrors"][0]["error"].update(
        {"code": "SomethingElse", "@type": "Kusto.Data.Exceptions.SomethingElse", "@message": "it broke"}
    )
    stand_in.query = stand_in.frames(other)

    with pytest.raises(KustoError) as raised:
        await stand_in.run(truncate=True)
    assert raised.value.code is not ErrorCode.RESULT_TOO_LARGE
    assert "it broke" in raised.value.message


# -- the query-worker step


def query_message(step: dict[str, Any]) -> RunMessage:
    flow = Flow.model_validate(
        {
            "name": "caps-test",
            "connection": "local",
            "database": "Samples",
            "steps": [{"id": "q", "action": "run_query", "query": NUMBERED.format(n=500), **step}],
        }
    )
    message = new_run(flow, RunContext(flow=flow.name, trigger=TriggerKind.MANUAL), "caps-run")
    return message.model_copy(update={"step_id": "q"})


@pytest.mark.parametrize(
    ("step", "kept"),
    [
        pytest.param({"on_too_large": "truncate"}, 30, id="the-default-cap"),
        pytest.param({"max_rows": 40, "on_too_large": "truncate"}, 40, id="the-steps-own-cap"),
        pytest.param({"max_rows": 400, "on_too_large": "truncate"}, 100, id="at-most-the-operators-limit"),
    ],
)
async def test_the_step_output_says_the_result_was_truncated(
    local: LocalKusto, tmp_path: Path, step: dict[str, Any], kept: int
) -> None:
    settings = load_settings(data_dir=tmp_path, max_result_rows=30, max_result_rows_limit=100)
    connections = Connections()
    connections.add_local("local", local.url)
    runtime = Runtime(
        settings=settings,
        broker=InProcessBroker(Topology("caps-test")),
        blobs=FolderBlobStore(tmp_path / "blobs"),
        connections=connections,
    )
    kusto = KustoRunner(connections, timeout=30)
    try:
        output = await QueryStep(runtime, kusto).perform(query_message(step))
    finally:
        await kusto.close()

    assert output.row_count == kept
    assert output.detail["truncated"] is True
    assert output.detail["truncation"] == f"showing {kept} of more rows (the step's max_rows)"


async def test_a_step_over_its_cap_fails_by_default(local: LocalKusto, tmp_path: Path) -> None:
    settings = load_settings(data_dir=tmp_path, max_result_rows=30)
    connections = Connections()
    connections.add_local("local", local.url)
    runtime = Runtime(
        settings=settings,
        broker=InProcessBroker(Topology("caps-test")),
        blobs=FolderBlobStore(tmp_path / "blobs"),
        connections=connections,
    )
    kusto = KustoRunner(connections, timeout=30)
    message = query_message({})
    key = artifact_key(message.run_id, message.step_id, message.attempt, "result.json")
    try:
        with pytest.raises(KustoError) as raised:
            await QueryStep(runtime, kusto).perform(message)
        left = files(tmp_path / "blobs")
        whole = await QueryStep(runtime, kusto).perform(query_message({"max_rows": 500}))
    finally:
        await kusto.close()

    assert raised.value.code is ErrorCode.RESULT_TOO_LARGE
    assert "more than 30 rows" in raised.value.message
    assert left == []
    assert whole.row_count == 500
    assert (whole.detail["truncated"], whole.detail["truncation"]) == (False, None)
    assert whole.artifacts["result"].key == key
    stored = ResultSet.from_json_bytes(await runtime.blobs.get(key))
    assert stored.rows == numbered(1, 500)
    assert whole.preview == [{"i": i, "s": s} for i, s in numbered(1, settings.preview_rows)]
