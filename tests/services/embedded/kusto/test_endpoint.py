"""The local Kusto endpoint, driven by the real azure-kusto-data client."""

from __future__ import annotations

import http.client
import json
import socket
import time
from collections.abc import AsyncIterator, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import duckdb
import duckdb_kql
import pytest
from azure.kusto.data import ClientRequestProperties, KustoConnectionStringBuilder
from azure.kusto.data.aio import KustoClient
from azure.kusto.data.exceptions import KustoServiceError

from services.embedded.kusto.database import write_database
from services.embedded.kusto.endpoint import EMPTY_DATABASE, LocalKusto, empty_database, start_local_kusto
from services.embedded.kusto.literals import ParameterValueError, parameter_value
from services.embedded.sample_data import DEFAULT_COUNT

ROWS = 5_000

#: A cross join of two 200,000-row ranges: 4e10 rows, far more than can be
#: counted within the few seconds these tests allow, and interruptible.
HEAVY_QUERY = (
    "range x from 1 to 200000 step 1 | extend k = 1"
    " | join kind=inner (range y from 1 to 200000 step 1 | extend k = 1) on k"
    " | summarize count()"
)


@pytest.fixture(scope="module")
def database(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_database(tmp_path_factory.mktemp("local_kusto") / "Samples.duckdb", count=ROWS)


@pytest.fixture(scope="module")
def kusto(database: Path) -> Iterator[LocalKusto]:
    with LocalKusto(database) as endpoint:
        yield endpoint


@pytest.fixture
async def client(kusto: LocalKusto) -> AsyncIterator[KustoClient]:
    async with KustoClient(KustoConnectionStringBuilder.with_no_authentication(kusto.url)) as kusto_client:
        yield kusto_client


def sql_count(database: Path, where: str, *params: Any) -> int:
    """The answer computed without Kusto, KQL or the endpoint: plain DuckDB SQL."""
    con = duckdb.connect(str(database), read_only=True)
    try:
        row = con.execute(f"SELECT count(*) FROM StormEvents WHERE {where}", list(params)).fetchone()
    finally:
        con.close()
    assert row is not None
    return int(row[0])


def properties(**parameters: str) -> ClientRequestProperties:
    props = ClientRequestProperties()
    for name, value in parameters.items():
        props.set_parameter(name, value)
    return props


async def rows(
    client: KustoClient, kusto: LocalKusto, query: str, props: ClientRequestProperties | None = None
) -> list[list[Any]]:
    response = await client.execute(kusto.database, query, props)
    return [list(row) for row in response.primary_results[0].raw_rows]


async def test_serves_the_sample_database(client: KustoClient, kusto: LocalKusto) -> None:
    assert kusto.database == "Samples"
    assert kusto.url.startswith("http://127.0.0.1:")
    assert await rows(client, kusto, "StormEvents | count") == [[ROWS]]


async def test_string_and_long_parameters_match_plain_sql(
    client: KustoClient, kusto: LocalKusto, database: Path
) -> None:
    expected = sql_count(database, "State = ? AND DamageProperty >= ?", "TEXAS", 10_000)
    # A filter that keeps everything or nothing would pass with the parameters ignored.
    assert 0 < expected < sql_count(database, "State = ?", "TEXAS")
    query = (
        "declare query_parameters(state:string, min_damage:long);"
        " StormEvents | where State == state and DamageProperty >= min_damage | count"
    )
    assert await rows(client, kusto, query, properties(state="TEXAS", min_damage="10000")) == [[expected]]
    assert await rows(client, kusto, query, properties(state="TEXAS", min_damage="long(10000)")) == [
        [expected]
    ]


@pytest.mark.parametrize(
    ("since", "north"),
    [
        ("datetime(2007-06-01)", "real(38.5)"),
        ("2007-06-01T00:00:00Z", "38.5"),
        ("datetime(2007-06-01 00:00:00)", "3.85e1"),
    ],
)
async def test_datetime_and_real_parameters_take_effect(
    client: KustoClient, kusto: LocalKusto, database: Path, since: str, north: str
) -> None:
    expected = sql_count(database, "StartTime >= TIMESTAMP '2007-06-01' AND BeginLat > 38.5")
    assert 0 < expected < sql_count(database, "BeginLat > 38.5")
    query = (
        "declare query_parameters(since:datetime, north:real);"
        " StormEvents | where StartTime >= since and BeginLat > north | count"
    )
    assert await rows(client, kusto, query, properties(since=since, north=north)) == [[expected]]


async def test_every_declared_type_binds_from_its_wire_text(client: KustoClient, kusto: LocalKusto) -> None:
    sent = {
        "b": "bool(true)",
        "i": "int(7)",
        "l": "9000000000",
        "r": "real(2.5)",
        "d": "datetime(2007-05-01 12:30)",
        "t": "1.02:03:04",
        "g": "guid(74be27de-1e4e-49d9-b579-fe0b331d3642)",
        "j": 'dynamic({"a":[1,2]})',
        "s": "long(5)",
    }
    query = (
        "declare query_parameters(b:bool, i:int, l:long, r:real, d:datetime, t:timespan, g:guid,"
        " j:dynamic, s:string); print b, i, l, r, d, t, g, j, s"
    )
    assert await rows(client, kusto, query, properties(**sent)) == [
        [
            True,
            7,
            9_000_000_000,
            2.5,
            "2007-05-01T12:30:00.000000Z",
            "1.02:03:04",
            "74be27de-1e4e-49d9-b579-fe0b331d3642",
            {"a": [1, 2]},
            "long(5)",  # a string parameter is its raw text, never a literal
        ]
    ]


async def test_servertimeout_interrupts_the_query_and_the_client_still_works(
    client: KustoClient, kusto: LocalKusto
) -> None:
    props = ClientRequestProperties()
    props.set_option(ClientRequestProperties.request_timeout_option_name, timedelta(milliseconds=200))
    started = time.monotonic()
    with pytest.raises(KustoServiceError, match="timed out") as timed_out:
        await client.execute(kusto.database, HEAVY_QUERY, props)
    assert time.monotonic() - started < 10
    assert "servertimeout" in str(timed_out.value)
    # The same client, so the same pooled connection, answers the next query.
    assert await rows(client, kusto, "print answer = 42") == [[42]]


def test_keep_alive_connection_serves_consecutive_requests(kusto: LocalKusto) -> None:
    """Properties as a JSON string, the way azure-kusto-data sends them, rewrite
    the body; the connection must still read the next request correctly."""
    address = urlsplit(kusto.url)
    assert address.hostname is not None
    connection = http.client.HTTPConnection(address.hostname, address.port, timeout=10)
    answers = []
    try:
        sockets = set()
        for n in (1, 22, 333):
            body = json.dumps(
                {
                    "db": kusto.database,
                    "csl": "declare query_parameters(n:long); print n",
                    "properties": json.dumps({"Options": {}, "Parameters": {"n": str(n)}}),
                }
            )
            connection.request("POST", "/v2/rest/query", body, {"Content-Type": "application/json"})
            sockets.add(id(connection.sock))
            response = connection.getresponse()
            frames = json.loads(response.read())
            assert response.status == 200, frames
            primary = next(f for f in frames if f.get("TableKind") == "PrimaryResult")
            answers.append(primary["Rows"])
    finally:
        connection.close()
    assert answers == [[[1]], [[22]], [[333]]]
    assert len(sockets) == 1


@pytest.mark.parametrize(
    ("declaration", "value"),
    [
        ("n:long", "abc"),
        ("n:long", "2.5"),
        ("n:long", "real(5)"),
        ("n:int", "3000000000"),
        ("n:bool", "yes"),
        ("n:real", "1,5"),
        ("n:datetime", "last tuesday"),
        ("n:timespan", "soon"),
        ("n:guid", "123"),
        ("n:dynamic", "{not json"),
    ],
)
async def test_wrong_typed_value_is_refused_naming_the_parameter(
    client: KustoClient, kusto: LocalKusto, declaration: str, value: str
) -> None:
    name, kind = declaration.split(":")
    query = f"declare query_parameters({declaration}); print {name}"
    with pytest.raises(KustoServiceError) as refused:
        await client.execute(kusto.database, query, properties(**{name: value}))
    message = str(refused.value)
    assert f"'{name}'" in message
    assert f"declared {kind}" in message


async def test_syntax_error_reports_the_engine_message(client: KustoClient, kusto: LocalKusto) -> None:
    query = "StormEvents | where"
    with pytest.raises(duckdb_kql.KqlSyntaxError) as engine:
        duckdb_kql.to_sql(query)
    with pytest.raises(KustoServiceError) as served:
        await client.execute(kusto.database, query)
    assert str(engine.value) in str(served.value)


async def test_unknown_table_is_named_in_the_error(client: KustoClient, kusto: LocalKusto) -> None:
    with pytest.raises(KustoServiceError, match=r"NoSuchTable.*does not exist"):
        await client.execute(kusto.database, "NoSuchTable | count")


@pytest.mark.parametrize("host", ["0.0.0.0", "192.168.1.10", "", "::1", "example.com"])
def test_non_loopback_host_is_refused(database: Path, host: str) -> None:
    with pytest.raises(ValueError, match="loopback"):
        LocalKusto(database, host=host)


async def test_async_context_serves_then_releases_its_port(database: Path) -> None:
    endpoint = LocalKusto(database)
    async with endpoint as kusto:
        port = urlsplit(kusto.url).port
        async with KustoClient(KustoConnectionStringBuilder.with_no_authentication(kusto.url)) as client:
            assert await rows(client, kusto, "StormEvents | count") == [[ROWS]]
    endpoint.close()  # a second close is harmless
    assert port is not None
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=5)
    with pytest.raises(RuntimeError, match="closed"):
        endpoint.start()


def test_url_needs_a_started_endpoint(database: Path) -> None:
    endpoint = LocalKusto(database)
    with pytest.raises(RuntimeError, match="not started"):
        _ = endpoint.url
    endpoint.close()


def test_missing_database_file_is_reported(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"nothing\.duckdb"):
        LocalKusto(tmp_path / "nothing.duckdb").start()


async def test_start_local_kusto_builds_the_full_sample_and_takes_writes(tmp_path: Path) -> None:
    with start_local_kusto(tmp_path) as kusto:
        assert (tmp_path / "Samples.duckdb").is_file()
        async with KustoClient(KustoConnectionStringBuilder.with_no_authentication(kusto.url)) as client:
            top = await rows(client, kusto, "StormEvents | summarize n = count() by State | top 2 by n")
            total = await rows(client, kusto, "StormEvents | count")
            await client.execute_mgmt(kusto.database, ".set-or-append Top2 <| print State = 'TEXAS'")
            written = await rows(client, kusto, "Top2")
    assert [state for state, _ in top] == ["TEXAS", "KANSAS"]
    assert total == [[DEFAULT_COUNT]]
    assert written == [["TEXAS"]]

    # The same sample, served read-only: kept, not rebuilt, and not written to.
    with start_local_kusto(tmp_path, writable=False) as kusto:
        async with KustoClient(KustoConnectionStringBuilder.with_no_authentication(kusto.url)) as client:
            assert await rows(client, kusto, "Top2") == [["TEXAS"]]
            with pytest.raises(KustoServiceError, match="writes are disabled"):
                await client.execute_mgmt(kusto.database, ".set-or-append Top2 <| print State = 'OHIO'")


def post(kusto: LocalKusto, connection: http.client.HTTPConnection, headers: dict[str, str]) -> int:
    body = json.dumps({"db": kusto.database, "csl": ".show tables"})
    connection.request("POST", "/v1/rest/mgmt", body, {"Content-Type": "text/plain", **headers})
    response = connection.getresponse()
    response.read()
    return response.status


def test_request_from_a_foreign_web_page_is_refused(kusto: LocalKusto) -> None:
    """A page may POST here without a preflight; only the Azure Data Explorer UI
    (or a client that sends no Origin) is answered."""
    address = urlsplit(kusto.url)
    assert address.hostname is not None
    for origin, expected in [
        ("https://attacker.example", 403),
        ("https://dataexplorer.azure.com", 200),
        (None, 200),
    ]:
        connection = http.client.HTTPConnection(address.hostname, address.port, timeout=10)
        try:
            assert post(kusto, connection, {"Origin": origin} if origin else {}) == expected, origin
        finally:
            connection.close()


def test_keep_alive_connection_that_outlives_close_is_answered_503(database: Path) -> None:
    endpoint = LocalKusto(database).start()
    address = urlsplit(endpoint.url)
    assert address.hostname is not None
    connection = http.client.HTTPConnection(address.hostname, address.port, timeout=10)
    try:
        assert post(endpoint, connection, {}) == 200
        endpoint.close()
        assert post(endpoint, connection, {}) == 503
    finally:
        connection.close()
        endpoint.close()


@pytest.mark.parametrize(
    ("kind", "text", "expected"),
    [
        ("long", "5", 5),
        ("long", " long(-5) ", -5),
        ("long", "0x1F", 31),
        ("int", "int(null)", None),
        ("real", "2.5", 2.5),
        ("real", "real(2.5)", 2.5),
        ("real", "double(1e3)", 1000.0),
        ("real", "-inf", float("-inf")),
        ("bool", "true", True),
        ("bool", "bool(False)", False),
        ("decimal", "decimal(1.25)", "1.25"),
        ("datetime", "datetime(2007-05-01)", "2007-05-01"),
        ("datetime", "2007-05-01T00:00:00Z", "2007-05-01T00:00:00Z"),
        ("timespan", "timespan(1d)", "1d"),
        ("timespan", "1.02:03:04", "1.02:03:04"),
        ("guid", "guid(74be27de-1e4e-49d9-b579-fe0b331d3642)", "74be27de-1e4e-49d9-b579-fe0b331d3642"),
        ("dynamic", "dynamic([1, 2])", "[1, 2]"),
        ("dynamic", '{"a": 1}', '{"a": 1}'),
        ("string", "long(5)", "long(5)"),
        ("long", 5, 5),  # a client that sent a JSON number is left to the engine
    ],
)
def test_parameter_value_reads_kusto_literals(kind: str, text: Any, expected: Any) -> None:
    assert parameter_value(text, kind, "p") == expected


@pytest.mark.parametrize(
    ("kind", "text"),
    [
        ("long", "5.0"),
        ("long", "9223372036854775808"),
        ("int", "long(2147483648)"),
        ("real", "nan()"),
        ("real", "1e"),
        ("bool", "1"),
        ("decimal", "decimal(NaN)"),
        ("datetime", "datetime(tomorrow)"),
        ("timespan", "1 fortnight"),
        ("guid", "guid(xyz)"),
        ("dynamic", "dynamic(NaN)"),
        ("dynamic", "string([1])"),
    ],
)
def test_parameter_value_refuses_other_text(kind: str, text: str) -> None:
    with pytest.raises(ParameterValueError) as refused:
        parameter_value(text, kind, "p")
    assert (refused.value.name, refused.value.kind, refused.value.value) == ("p", kind, text)


async def test_an_empty_engine_serves_netdefaultdb_alone_and_keeps_what_was_written(tmp_path: Path) -> None:
    # `--empty`: the Kusto emulator's stand-in in docker compose starts as a fresh emulator does.
    path = empty_database(tmp_path / "kusto")
    assert path.name == f"{EMPTY_DATABASE}.duckdb"
    async with LocalKusto(path, writable=True) as endpoint:
        kcsb = KustoConnectionStringBuilder.with_no_authentication(endpoint.url)
        async with KustoClient(kcsb) as client:
            response = await client.execute_mgmt(EMPTY_DATABASE, ".show databases")
            names = [row[0] for row in response.primary_results[0].raw_rows]
            assert names == [EMPTY_DATABASE]
            await client.execute_mgmt(EMPTY_DATABASE, ".set-or-replace Kept <| datatable(x: long) [1, 2]")
    # A second start finds the file and leaves it as it was.
    assert empty_database(tmp_path / "kusto") == path
    async with LocalKusto(path) as endpoint:
        kcsb = KustoConnectionStringBuilder.with_no_authentication(endpoint.url)
        async with KustoClient(kcsb) as client:
            response = await client.execute(EMPTY_DATABASE, "Kept | count")
            assert response.primary_results[0].raw_rows == [[2]]
