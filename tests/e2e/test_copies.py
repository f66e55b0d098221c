"""Copies into the operator's database end to end: a flow's query result written into a PostgreSQL
table by the query worker (upsert by key, so each run leaves one row a key), in process and on
RabbitMQ; a flow naming a database or a table the operator did not allow is refused at save."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from azure.kusto.data import KustoClient, KustoConnectionStringBuilder

from tests.e2e.conftest import System


@pytest.fixture
async def reports(postgres_database: Any) -> AsyncIterator[str]:
    """The operator's reporting database: a fresh PostgreSQL database."""
    async with postgres_database() as url:
        yield url


@pytest.fixture
def operator_connections(reports: str, tmp_path: Path) -> dict[str, Any]:
    secret = tmp_path / "reports-url"
    secret.write_text(reports)
    return {"databases": {"reports": {"url_secret": {"file": str(secret)}, "tables": ["daily_*"]}}}


QUERY = "StormEvents | summarize Events = count(), Deaths = sum(DeathsDirect) by State | order by State asc"


def summary_flow(**copy: Any) -> dict[str, Any]:
    return {
        "name": "daily-summary",
        "connection": "local",
        "database": "Samples",
        "steps": [
            {"id": "summary", "action": "run_query", "query": QUERY},
            {
                "id": "save",
                "action": "copy_to_database",
                "database": "reports",
                "table": "daily_summary",
                "source": "summary",
                "mode": "upsert",
                "key_columns": ["State"],
                **copy,
            },
        ],
    }


def expected(kusto_url: str) -> dict[str, tuple[int, int]]:
    client = KustoClient(KustoConnectionStringBuilder.with_no_authentication(kusto_url))
    try:
        rows = client.execute("Samples", QUERY).primary_results[0].rows
    finally:
        client.close()
    return {row["State"]: (row["Events"], row["Deaths"]) for row in rows}


async def stored(url: str) -> dict[str, tuple[int, int]]:
    connection = await asyncpg.connect(url.replace("postgresql+asyncpg://", "postgresql://", 1))
    try:
        rows = await connection.fetch('SELECT "State", "Events", "Deaths" FROM daily_summary')
    finally:
        await connection.close()
    return {row["State"]: (row["Events"], row["Deaths"]) for row in rows}


@pytest.mark.parametrize("system", ["in_process", "rabbitmq"], indirect=True)
async def test_a_query_result_is_upserted_into_postgresql_one_row_a_key_however_often_it_runs(
    system: System, reports: str
) -> None:
    await system.save_flow(summary_flow())
    want = await asyncio.to_thread(expected, system.kusto_url)

    first = await system.finished((await system.start_flow("daily-summary"))["run_id"])
    again = await system.finished((await system.start_flow("daily-summary"))["run_id"])

    assert (first["status"], again["status"]) == ("succeeded", "succeeded")
    [save] = [step for step in again["steps"] if step["step_id"] == "save"]
    assert save["detail"]["rows"] == len(want) > 10
    assert (save["detail"]["mode"], save["detail"]["repeated"]) == ("upsert", False)
    assert await stored(reports) == want


@pytest.mark.parametrize("system", ["in_process"], indirect=True)
async def test_a_copy_the_operator_did_not_allow_is_refused_at_save_naming_the_field(system: System) -> None:
    for copy, field, problem in (
        ({"database": "warehouse"}, "steps[1].database", "'warehouse'"),
        ({"table": "secrets"}, "steps[1].table", "'secrets' is not one database 'reports' allows"),
        ({"mode": "merge", "key_columns": []}, "steps[1]", "key_columns"),
    ):
        async with system.session.put(
            f"{system.trigger_url}/v1/flows/daily-summary", json=summary_flow(**copy)
        ) as response:
            body = await response.json()
        assert response.status == 400, body
        fields = {problem["field"]: problem["message"] for problem in body["error"]["fields"]}
        assert any(name.startswith(field) and problem in message for name, message in fields.items()), fields
