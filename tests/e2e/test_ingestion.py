"""Ingestion into Kusto end to end: a flow's ingest_to_kusto step reads rows of the operator's
PostgreSQL database and the query worker ingests them into a table of the local Kusto endpoint (the
streaming route of azure-kusto-ingest), which the flow's next step queries; in process and on
RabbitMQ. A flow ingesting from a database the operator did not let it read, or binding a
parameter nobody gives, is refused at save naming the field."""

from __future__ import annotations

import asyncio
import datetime as dt
import uuid
from collections.abc import AsyncIterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from azure.kusto.data import KustoClient, KustoConnectionStringBuilder

from common.contracts.dry_runs import NOT_WRITTEN
from tests.e2e.conftest import System

pytestmark = pytest.mark.postgres


@pytest.fixture
async def orders(postgres_database: Any) -> AsyncIterator[str]:
    """The operator's order database: a fresh PostgreSQL database with a day of orders."""
    async with postgres_database() as url:
        connection = await asyncpg.connect(url.replace("postgresql+asyncpg://", "postgresql://", 1))
        try:
            await connection.execute(
                "CREATE TABLE orders (id bigint, placed timestamptz, region text, amount numeric(12, 2))"
            )
            await connection.executemany(
                "INSERT INTO orders VALUES ($1, $2, $3, $4)",
                [
                    (
                        n,
                        dt.datetime(2026, 12, 1 + n % 3, n % 10, tzinfo=dt.UTC),
                        ["north", "south", "ü-east"][n % 3],
                        Decimal(f"{n}.25"),
                    )
                    for n in range(1, 61)
                ],
            )
        finally:
            await connection.close()
        yield url


@pytest.fixture
def operator_connections(orders: str, tmp_path: Path) -> dict[str, Any]:
    secret = tmp_path / "orders-url"
    secret.write_text(orders)
    return {
        "databases": {
            "orders": {"url_secret": {"file": str(secret)}, "reads": True},
            "reports": {"url_secret": {"file": str(secret)}, "tables": ["daily_*"]},
        }
    }


def import_flow(table: str, **step: Any) -> dict[str, Any]:
    return {
        "name": "nightly-import",
        "connection": "local",
        "database": "Samples",
        "parameters": {"day": {"type": "datetime", "default": "2026-12-02T00:00:00Z"}},
        "steps": [
            {
                "id": "load",
                "action": "ingest_to_kusto",
                "table": table,
                "create_table": True,
                "from_sql": {
                    "database": "orders",
                    "query": "SELECT id, placed, region, amount FROM orders "
                    "WHERE placed >= :day AND placed < :day + interval '1 day' ORDER BY id",
                },
                **step,
            },
            {
                "id": "landed",
                "action": "run_query",
                "query": f"{table} | summarize Orders = count() by region",
            },
        ],
    }


def in_kusto(kusto_url: str, query: str) -> list[dict[str, Any]]:
    client = KustoClient(KustoConnectionStringBuilder.with_no_authentication(kusto_url))
    try:
        return [row.to_dict() for row in client.execute("Samples", query).primary_results[0]]
    finally:
        client.close()


@pytest.mark.parametrize("system", ["in_process", "rabbitmq"], indirect=True)
async def test_a_days_rows_are_ingested_into_kusto_and_queried_by_the_next_step(
    system: System, orders: str
) -> None:
    table = f"Orders_{uuid.uuid4().hex[:10]}"
    await system.save_flow(import_flow(table))

    run = await system.finished(
        (await system.start_flow("nightly-import", day="2026-12-03T00:00:00Z"))["run_id"]
    )

    assert run["status"] == "succeeded", run
    steps = {step["step_id"]: step for step in run["steps"]}
    # The orders placed on 3 December: n % 3 == 2.
    wanted = [n for n in range(1, 61) if n % 3 == 2]
    assert steps["load"]["detail"]["rows"] == len(wanted)
    assert (steps["load"]["detail"]["method"], steps["load"]["detail"]["repeated"]) == ("streaming", False)
    assert steps["landed"]["row_count"] == 1
    ingested = await asyncio.to_thread(in_kusto, system.kusto_url, f"{table} | order by id asc")
    assert [row["id"] for row in ingested] == wanted
    assert {row["region"] for row in ingested} == {"ü-east"}
    assert str(ingested[0]["amount"]).startswith("2.25")
    # The run page shows the SQL as run and the value bound.
    async with system.session.get(f"{system.history_url}/ui/runs/{run['run_id']}") as response:
        page = await response.text()
    assert response.status == 200
    assert "SQL on orders, as run" in page
    assert "WHERE placed &gt;= :day" in page
    assert "2026-12-03T00:00:00Z" in page


@pytest.mark.parametrize("system", ["in_process"], indirect=True)
async def test_an_ingestion_the_operator_did_not_allow_is_refused_at_save_naming_the_field(
    system: System,
) -> None:
    table = "Orders"
    for change, field, problem in (
        (
            {"from_sql": {"database": "warehouse", "query": "SELECT 1"}},
            "steps[0].from_sql.database",
            "'warehouse'",
        ),
        (
            {"from_sql": {"database": "reports", "query": "SELECT 1"}},
            "steps[0].from_sql.database",
            "not one flows may read",
        ),
        (
            {"from_sql": {"database": "orders", "query": "SELECT * FROM orders WHERE id = :id"}},
            "steps[0].from_sql.query",
            "binds :id",
        ),
        ({"connection": "prod"}, "steps[0].connection", "'prod' is not a configured connection"),
        (
            {"from_sql": None, "from_file": {"url": "https://elsewhere.example/orders.csv"}},
            "steps[0].from_file.url",
            "host 'elsewhere.example' is not in the operator's ingestion allowlist",
        ),
        (
            {"from_file": {"blob": "orders.csv"}},
            "steps[0]",
            "exactly one of 'from_sql' (a query) or 'from_file'",
        ),
        (
            {"from_sql": None, "from_file": {"blob": "../secrets.csv"}},
            "steps[0].from_file",
            "without a leading '/' or a '..'",
        ),
    ):
        async with system.session.put(
            f"{system.trigger_url}/v1/flows/nightly-import", json=import_flow(table, **change)
        ) as response:
            body = await response.json()
        assert response.status == 400, body
        fields = {problem["field"]: problem["message"] for problem in body["error"]["fields"]}
        assert any(name.startswith(field) and problem in message for name, message in fields.items()), fields


@pytest.mark.parametrize("system", ["in_process"], indirect=True)
async def test_an_ingestion_into_a_table_that_does_not_fit_fails_the_run_at_that_step(system: System) -> None:
    table = f"Orders_{uuid.uuid4().hex[:10]}"
    client = KustoClient(KustoConnectionStringBuilder.with_no_authentication(system.kusto_url))
    try:
        client.execute_mgmt(
            "Samples", f".create table {table} (id:long, placed:datetime, region:long, amount:decimal)"
        )
    finally:
        client.close()
    await system.save_flow(import_flow(table, create_table=False))

    run = await system.finished((await system.start_flow("nightly-import"))["run_id"])

    assert run["status"] == "failed"
    steps = {step["step_id"]: step for step in run["steps"]}
    assert steps["load"]["status"] == "failed"
    assert steps["load"]["error"]["code"] == "TableMismatch"
    assert "column 'region' is string in the source but long" in steps["load"]["error"]["message"]
    assert await asyncio.to_thread(in_kusto, system.kusto_url, f"{table} | count") == [{"Count": 0}]


@pytest.mark.parametrize("system", ["in_process"], indirect=True)
async def test_a_test_run_reads_the_rows_an_ingestion_would_ingest_and_ingests_nothing(
    system: System,
) -> None:
    table = f"Orders_{uuid.uuid4().hex[:10]}"
    flow = import_flow(table)
    flow["steps"] = flow["steps"][:1]
    await system.save_flow(flow)

    url = f"{system.trigger_url}/v1/flows/nightly-import/runs"
    body = {"dry_run": True, "parameters": {"day": "2026-12-03T00:00:00Z"}}
    async with system.session.post(url, json=body) as response:
        accepted = await response.json()
        assert response.status == 202, accepted
    run = await system.finished(accepted["run_id"])

    assert run["status"] == "succeeded", run
    [load] = [step for step in run["steps"] if step["step_id"] == "load"]
    wanted = [n for n in range(1, 61) if n % 3 == 2]
    assert load["detail"]["dry_run"] == NOT_WRITTEN
    assert (load["detail"]["rows"], load["row_count"]) == (len(wanted), len(wanted))
    assert load["detail"]["table"] == table
    assert [row[0] for row in load["detail"]["sample"]["rows"]] == wanted[:5]
    assert load["detail"]["sample"]["columns"][0] == "id:long"
    # Neither the table nor its staging table was made: nothing reached the cluster.
    tables = await asyncio.to_thread(in_kusto, system.kusto_url, ".show tables")
    assert not [row for row in tables if table in str(row.get("TableName"))]
