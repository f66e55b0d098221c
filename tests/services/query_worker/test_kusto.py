"""The query-worker's Kusto layer: parameters, results and error codes.

Runs the real azure-kusto-data async client against the local Kusto endpoint.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import duckdb
import pytest

from common.connections import Connections
from common.contracts import ErrorCode, JobRequest
from common.errors import KustoError
from common.local_kusto import LocalKusto
from common.sample_data import ensure_database
from services.query_worker.kusto import KustoRunner, kql_literal, with_declarations

EMAIL = {"to": ["team@example.com"], "subject": "s"}

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


def job(query: str, **extra: Any) -> JobRequest:
    return JobRequest.model_validate(
        {"connection": "local", "database": "Samples", "query": query, "email": EMAIL, **extra}
    )


def test_parameter_values_travel_as_kusto_literals() -> None:
    assert kql_literal("TEXAS' | take 1") == "TEXAS' | take 1"
    assert kql_literal(5) == "5"
    assert kql_literal(2.5) == "2.5"
    assert kql_literal(True) == "true"
    assert kql_literal(float("inf")) == "real(inf)"


def test_declarations_are_added_only_when_the_query_has_none() -> None:
    declared = with_declarations("T | where x > n and s == name", {"n": 1, "name": "a"})
    assert declared.startswith("declare query_parameters(n:long, name:string);\n")
    own = "declare query_parameters(n:int);\nT | where x > n"
    assert with_declarations(own, {"n": 1}) == own
    assert with_declarations("T", {}) == "T"


async def test_a_parameter_filters_without_being_spliced_into_the_text(
    runner: KustoRunner, sample: tuple[Path, LocalKusto]
) -> None:
    hostile = 'TEXAS" or 1==1 or State=="'
    empty = await runner.run(
        job("StormEvents | where State == state | count", parameters={"state": hostile}), "t;1"
    )
    assert empty.rows == [[0]]

    result = await runner.run(
        job(
            "StormEvents | where State == state and DamageProperty >= min_damage | count",
            parameters={"state": "TEXAS", "min_damage": 5000},
        ),
        "t;2",
    )
    with duckdb.connect(str(sample[0]), read_only=True) as con:
        [(expected,)] = con.execute(
            "SELECT count(*) FROM StormEvents WHERE State = 'TEXAS' AND DamageProperty >= 5000"
        ).fetchall()
    assert expected > 0
    assert result.rows == [[expected]]
    assert result.columns[0].type in ("long", "int")


async def test_a_control_command_returns_its_table(runner: KustoRunner) -> None:
    result = await runner.run(job(".show tables", action="control_command"), "t;3")
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
        await runner.run(job(query), "t;4")
    assert raised.value.code is code
    assert raised.value.retryable is False
    assert raised.value.message


async def test_servertimeout_is_honoured_by_the_endpoint(sample: tuple[Path, LocalKusto]) -> None:
    connections = Connections()
    connections.add_local("local", sample[1].url)
    kusto = KustoRunner(connections, timeout=0.5)
    try:
        with pytest.raises(KustoError) as raised:
            await kusto.run(job(HEAVY_QUERY), "t;5")
    finally:
        await kusto.close()
    assert raised.value.code is ErrorCode.REQUEST_TIMEOUT
    # The server's own answer, not the client's deadline (which is 10 s later).
    assert "servertimeout" in raised.value.message


async def test_an_unreachable_cluster_is_retryable() -> None:
    connections = Connections()
    connections.add_local("local", "http://127.0.0.1:9")
    kusto = KustoRunner(connections, timeout=5)
    try:
        with pytest.raises(KustoError) as raised:
            await kusto.run(job("StormEvents | count"), "t;6")
    finally:
        await kusto.close()
    assert raised.value.code is ErrorCode.KUSTO_UNAVAILABLE
    assert raised.value.retryable is True
