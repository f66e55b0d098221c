"""The query-worker's Kusto layer: parameters, results and error codes.

Runs the real azure-kusto-data async client against the local Kusto endpoint.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import duckdb
import pytest
from aiohttp import web
from azure.kusto.data.response import KustoResponseDataSetV2

from common.contracts.errors import KustoError
from common.contracts.messages import ErrorCode
from common.contracts.results import ResultSet
from common.platform.connections import Connections
from services.embedded.kusto.database import ensure_database
from services.embedded.kusto.endpoint import LocalKusto
from services.query_worker.kusto import (
    KustoRunner,
    Parameters,
    kql_literal,
    timeout_margin,
    with_declarations,
)
from services.query_worker.reading import _visualization

#: Kusto response bodies in the real wire format (see their README).
FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "kusto-v2"

#: Far more work than fits in the timeout, and interruptible by the engine
#: (a bare `range | summarize` is not: DuckDB finishes it before checking).
HEAVY_QUERY = (
    "range x from 1 to 200000 step 1 | extend k = 1"
    " | join kind=inner (range y from 1 to 200000 step 1 | extend k = 1) on k"
    " | summarize count()"
)


@pytest.fixture(scope="module")
def sample(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, LocalKusto]]:
    path = ensure_database(tmp_path_factory.mktemp("kusto"))
    with LocalKusto(path) as server:
        yield path, server


@pytest.fixture
async def runner(sample: tuple[Path, LocalKusto]) -> AsyncIterator[KustoRunner]:
    connections = Connections()
    connections.add_local("local", sample[1].url)
    kusto = KustoRunner(connections, timeout=30)
    try:
        yield kusto
    finally:
        await kusto.close()


async def run(
    kusto: KustoRunner, text: str, *, command: bool = False, parameters: Parameters | None = None
) -> ResultSet:
    read = await kusto.run(
        connection="local",
        database="Samples",
        text=text,
        command=command,
        parameters=parameters,
        client_request_id="adxflow;test",
        max_rows=500_000,
        max_bytes=64 * 2**20,
        truncate=False,
        head=500_000,
    )
    return ResultSet(columns=read.columns, rows=read.head, visualization=read.visualization)


def test_parameter_values_travel_as_kusto_literals() -> None:
    assert kql_literal("string", "TEXAS' | take 1") == "TEXAS' | take 1"
    assert kql_literal("long", 5) == "5"
    assert kql_literal("real", 2.5) == "2.5"
    assert kql_literal("bool", True) == "true"
    assert kql_literal("real", float("inf")) == "real(inf)"
    assert kql_literal("datetime", "2007-05-01T00:00:00Z") == "datetime(2007-05-01T00:00:00Z)"
    assert kql_literal("timespan", "1h") == "timespan(1h)"


def test_declarations_are_added_only_when_the_query_has_none() -> None:
    declared = with_declarations("T | where x > n and s == name", {"n": ("long", 1), "name": ("string", "a")})
    assert declared.startswith("declare query_parameters(n:long, name:string);\n")
    own = "declare query_parameters(n:int);\nT | where x > n"
    assert with_declarations(own, {"n": ("int", 1)}) == own
    assert with_declarations("T", {}) == "T"


async def test_a_parameter_filters_without_being_spliced_into_the_text(
    runner: KustoRunner, sample: tuple[Path, LocalKusto]
) -> None:
    hostile = 'TEXAS" or 1==1 or State=="'
    empty = await run(
        runner, "StormEvents | where State == state | count", parameters={"state": ("string", hostile)}
    )
    assert empty.rows == [[0]]

    result = await run(
        runner,
        "StormEvents | where State == state and DamageProperty >= min_damage | count",
        parameters={"state": ("string", "TEXAS"), "min_damage": ("long", 5000)},
    )
    with duckdb.connect(str(sample[0]), read_only=True) as con:
        [(expected,)] = con.execute(
            "SELECT count(*) FROM StormEvents WHERE State = 'TEXAS' AND DamageProperty >= 5000"
        ).fetchall()
    assert expected > 0
    assert result.rows == [[expected]]
    assert result.columns[0].type in ("long", "int")


async def test_a_control_command_returns_its_table(runner: KustoRunner) -> None:
    result = await run(runner, ".show tables", command=True)
    names = [column.name for column in result.columns]
    assert "TableName" in names
    assert ["StormEvents"] in [[row[names.index("TableName")]] for row in result.rows]


@pytest.mark.parametrize(
    ("query", "code"),
    [
        ("StormEvents | summarize by", ErrorCode.KUSTO_SYNTAX_ERROR),
        ("NoSuchTable | count", ErrorCode.KUSTO_SEMANTIC_ERROR),
    ],
)
async def test_kusto_errors_get_stable_codes(runner: KustoRunner, query: str, code: ErrorCode) -> None:
    with pytest.raises(KustoError) as raised:
        await run(runner, query)
    assert raised.value.code is code
    assert raised.value.retryable is False
    assert raised.value.message


async def test_servertimeout_is_honoured_by_the_endpoint(sample: tuple[Path, LocalKusto]) -> None:
    connections = Connections()
    connections.add_local("local", sample[1].url)
    kusto = KustoRunner(connections, timeout=0.5)
    try:
        with pytest.raises(KustoError) as raised:
            await run(kusto, HEAVY_QUERY)
    finally:
        await kusto.close()
    assert raised.value.code is ErrorCode.REQUEST_TIMEOUT
    # The server's own answer, not the client's deadline (which is 2 s later).
    assert "servertimeout" in raised.value.message
    assert "(timeout 0.5 s, after " in raised.value.message


async def test_an_unreachable_cluster_is_retryable() -> None:
    connections = Connections()
    connections.add_local("local", "http://127.0.0.1:9")
    kusto = KustoRunner(connections, timeout=5)
    try:
        with pytest.raises(KustoError) as raised:
            await run(kusto, "StormEvents | count")
    finally:
        await kusto.close()
    assert raised.value.code is ErrorCode.KUSTO_UNAVAILABLE
    assert raised.value.retryable is True


class SilentCluster:
    """A cluster that takes a query and never answers it, and records the control commands it is sent."""

    def __init__(self, *, refuse: bool = False) -> None:
        self.commands: list[str] = []
        #: Whether control commands are refused (as a cluster refuses a cancel it may not make).
        self.refuse = refuse
        #: Set when the test is over: a query still waiting then gets its (late) answer.
        self.release = asyncio.Event()
        self.app = web.Application()
        self.app.router.add_post("/v2/rest/query", self.query)
        self.app.router.add_post("/v1/rest/mgmt", self.mgmt)

    async def query(self, request: web.Request) -> web.Response:
        await self.release.wait()
        return web.Response(status=500)

    async def mgmt(self, request: web.Request) -> web.Response:
        self.commands.append((await request.json())["csl"])
        if self.refuse:
            error = {
                "code": "Forbidden",
                "message": "Caller is not authorized",
                "@message": "not yours to cancel",
            }
            return web.json_response({"error": error}, status=403)
        empty = {"TableName": "Table_0", "Columns": [{"ColumnName": "x", "DataType": "Int32"}], "Rows": []}
        return web.json_response({"Tables": [empty]})


@pytest.mark.parametrize(
    ("refuse", "said"),
    [
        (False, "; cancel sent and acknowledged"),
        (
            True,
            "; cancel refused by the cluster (not yours to cancel); "
            "the query may still be running on the cluster",
        ),
    ],
    ids=["acknowledged", "refused"],
)
async def test_a_query_the_cluster_does_not_answer_in_time_is_cancelled_there(
    monkeypatch: pytest.MonkeyPatch, refuse: bool, said: str
) -> None:
    # The client's grace past the server's timeout, shortened so the test waits half a second, not two.
    monkeypatch.setattr("services.query_worker.kusto._CLIENT_GRACE", 0.5)
    cluster = SilentCluster(refuse=refuse)
    app = web.AppRunner(cluster.app)
    await app.setup()
    kusto = None
    try:
        await web.TCPSite(app, "127.0.0.1", 0).start()
        connections = Connections()
        connections.add_local("local", f"http://127.0.0.1:{app.addresses[0][1]}")
        kusto = KustoRunner(connections, timeout=0.5)
        with pytest.raises(KustoError) as raised:
            await run(kusto, "StormEvents | count")
    finally:
        if kusto is not None:
            await kusto.close()
        cluster.release.set()
        await app.cleanup()

    assert raised.value.code is ErrorCode.REQUEST_TIMEOUT
    assert raised.value.retryable is False
    assert "did not finish within its 0.5 s timeout (gave up after" in raised.value.message
    assert raised.value.message.endswith(said)
    assert raised.value.detail["cancel"] == ("refused" if refuse else "acknowledged")
    assert cluster.commands == ['.cancel query "adxflow;test"']


#: Long and deaf to interrupts: DuckDB runs a bare `range | summarize` to its end
#: whatever servertimeout says (~0.25 s per million rows on this machine), and the
#: endpoint serializes every request behind it, the `.cancel query` included.
DEAF_QUERY = "range x from 1 to 80000000 step 1 | summarize count()"
#: What a loaded machine may add to the documented margin: the client's own work,
#: opening a connection for the cancel, the event loop being late.
SLACK_SECONDS = 3.0


async def test_a_step_timeout_ends_on_time_when_the_endpoint_never_answers_the_cancel(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    limit = 2.0
    # An endpoint of its own: the query it is left running would hold up the module's.
    with LocalKusto(ensure_database(tmp_path / "kusto")) as endpoint:
        connections = Connections()
        connections.add_local("local", endpoint.url)
        kusto = KustoRunner(connections, timeout=limit)
        loop = asyncio.get_running_loop()
        started = loop.time()
        try:
            with pytest.raises(KustoError) as raised:
                await run(kusto, DEAF_QUERY)
            elapsed = loop.time() - started
        finally:
            await kusto.close()
    bound = limit + timeout_margin()
    with capsys.disabled():
        print(f"\n{limit:g} s step timeout ended after {elapsed:.2f} s (documented bound {bound:g} s)")
    assert elapsed <= bound + SLACK_SECONDS
    assert raised.value.code is ErrorCode.REQUEST_TIMEOUT
    assert raised.value.message.endswith(
        "cancel not acknowledged within 3 s; the query may still be running on the cluster"
    )
    assert raised.value.detail["cancel"] == "not_acknowledged"


def test_a_render_operator_is_read_from_a_real_v2_response() -> None:
    frames = json.loads((FIXTURES / "deft.json").read_text())
    properties = next(frame for frame in frames if frame.get("TableKind") == "QueryProperties")
    properties["Rows"][0][2] = json.dumps(
        {
            "Visualization": "timechart",
            "Title": "Events per day",
            "XColumn": "StartTime",
            "Series": "State",
            "YColumns": "Events,Damage",
            "Kind": None,
        }
    )
    visualization = _visualization(KustoResponseDataSetV2(frames))

    assert visualization is not None
    assert (visualization.kind, visualization.title, visualization.x_column) == (
        "timechart",
        "Events per day",
        "StartTime",
    )
    assert visualization.y_columns == ["Events", "Damage"]
    assert visualization.series == ["State"]


def test_a_response_without_render_has_no_visualization() -> None:
    frames = json.loads((FIXTURES / "deft.json").read_text())
    assert _visualization(KustoResponseDataSetV2(frames)) is None
