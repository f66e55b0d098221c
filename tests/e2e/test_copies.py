"""Copies into the operator's database end to end: a flow's query result written into a PostgreSQL
table by the query worker (upsert by key, so each run leaves one row a key), in process and on
RabbitMQ; a copy running a query of its own, with parameters and caps; a database that goes away
mid-copy and comes back (a proxy takes it away; the server itself is left alone), the copy retried
until it lands once; a table that does not fit failing the run at once; a flow naming a database or
a table the operator did not allow, or a copy that is not one of the two forms, refused at save."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from azure.kusto.data import KustoClient, KustoConnectionStringBuilder
from sqlalchemy.engine import make_url

from tests.e2e.conftest import System
from tests.proxy import Proxy


@pytest.fixture
async def reports(postgres_database: Any) -> AsyncIterator[str]:
    """The operator's reporting database: a fresh PostgreSQL database."""
    async with postgres_database() as url:
        yield url


@pytest.fixture
async def line(reports: str) -> AsyncIterator[Proxy]:
    """A line to the reporting database that a test can take away and bring back."""
    url = make_url(reports)
    async with Proxy(url.host or "127.0.0.1", url.port or 5432) as proxy:
        yield proxy


@pytest.fixture
def operator_connections(reports: str, line: Proxy, tmp_path: Path) -> dict[str, Any]:
    """The reporting database as ``reports``, and the same database through the line as ``distant``."""
    secret = tmp_path / "reports-url"
    secret.write_text(reports)
    distant = tmp_path / "distant-url"
    distant.write_text(make_url(reports).set(port=line.port).render_as_string(hide_password=False))
    return {
        "databases": {
            "reports": {"url_secret": {"file": str(secret)}, "tables": ["daily_*"]},
            "distant": {"url_secret": {"file": str(distant)}, "tables": ["daily_*"]},
        }
    }


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


def expected(kusto_url: str, query: str = QUERY) -> dict[str, tuple[int, int]]:
    """The sample data's answer to *query*, asked by the test itself."""
    client = KustoClient(KustoConnectionStringBuilder.with_no_authentication(kusto_url))
    try:
        rows = client.execute("Samples", query).primary_results[0].rows
    finally:
        client.close()
    return {row["State"]: (row["Events"], row["Deaths"]) for row in rows}


async def connect(url: str) -> asyncpg.Connection:
    return await asyncpg.connect(url.replace("postgresql+asyncpg://", "postgresql://", 1))


async def stored(url: str, table: str = "daily_summary") -> dict[str, tuple[int, int]]:
    connection = await connect(url)
    try:
        rows = await connection.fetch(f'SELECT "State", "Events", "Deaths" FROM {table}')
    finally:
        await connection.close()
    found = {row["State"]: (row["Events"], row["Deaths"]) for row in rows}
    assert len(found) == len(rows), f"{table} holds a state more than once"
    return found


def step(run: dict[str, Any], step_id: str, attempt: int | None = None) -> dict[str, Any]:
    """The step's latest attempt in *run*, or the attempt asked for."""
    found = [s for s in run["steps"] if s["step_id"] == step_id and attempt in (None, s["attempt"])]
    assert found, f"{step_id} has no attempt {attempt} in {run['steps']}"
    return max(found, key=lambda s: s["attempt"])


def attempts(run: dict[str, Any], step_id: str) -> list[tuple[int, str]]:
    return sorted((s["attempt"], s["status"]) for s in run["steps"] if s["step_id"] == step_id)


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
async def test_a_copy_the_operator_did_not_allow_or_of_no_one_form_is_refused_at_save_naming_the_field(
    system: System,
) -> None:
    own = {"source": None, "query": QUERY}
    for copy, field, problem in (
        ({"database": "warehouse"}, "steps[1].database", "'warehouse'"),
        ({"table": "secrets"}, "steps[1].table", "'secrets' is not one database 'reports' allows"),
        ({"mode": "merge", "key_columns": []}, "steps[1].key_columns", "mode merge matches rows by key"),
        ({"query": QUERY}, "steps[1]", "exactly one of 'source' (an earlier query step's result) or 'query'"),
        ({"source": None}, "steps[1]", "exactly one of 'source'"),
        ({"kusto_database": "Samples"}, "steps[1].kusto_database", "belongs to a copy with its own query"),
        ({"max_rows": 10}, "steps[1].max_rows", "copy of source 'summary' writes that step's stored result"),
        ({**own, "query": ".show tables"}, "steps[1].query", "is a control command"),
        ({**own, "connection": "elsewhere"}, "steps[1].connection", "'elsewhere' is not a configured"),
        ({**own, "query": "StormEvents | facet by State"}, "steps[1].query", "facet"),
    ):
        async with system.session.put(
            f"{system.trigger_url}/v1/flows/daily-summary", json=summary_flow(**copy)
        ) as response:
            body = await response.json()
        assert response.status == 400, (copy, body)
        fields = {problem["field"]: problem["message"] for problem in body["error"]["fields"]}
        assert problem in fields.get(field, ""), (copy, fields)
    # The form with its own query and parameters is saved (save_flow asserts it).
    await system.save_flow(summary_flow(**own, parameters={"p": {"type": "long", "value": "{{ 1 + 2 }}"}}))


OWN_QUERY = (
    "StormEvents | where DeathsDirect >= least "
    "| summarize Events = count(), Deaths = sum(DeathsDirect) by State"
)


def own_query_flow(**copy: Any) -> dict[str, Any]:
    """A flow of one step: a copy running a query of its own, a run's parameter sent typed."""
    return {
        "name": "deadly-summary",
        "connection": "local",
        "database": "Samples",
        "parameters": {"least": {"type": "long", "default": 1}},
        "steps": [
            {
                "id": "save",
                "action": "copy_to_database",
                "database": "reports",
                "table": "daily_deadly",
                "query": OWN_QUERY,
                "kusto_database": "Samples",
                "mode": "merge",
                "key_columns": ["State"],
                **copy,
            }
        ],
    }


@pytest.mark.parametrize("system", ["in_process", "rabbitmq"], indirect=True)
async def test_a_copy_runs_its_own_query_with_the_runs_parameters_and_history_shows_what_it_sent(
    system: System, reports: str
) -> None:
    await system.save_flow(own_query_flow())
    deadly = await asyncio.to_thread(expected, system.kusto_url, OWN_QUERY.replace("least", "1"))
    deadlier = await asyncio.to_thread(expected, system.kusto_url, OWN_QUERY.replace("least", "3"))

    first = await system.finished((await system.start_flow("deadly-summary"))["run_id"])
    landed = await stored(reports, "daily_deadly")
    again = await system.finished((await system.start_flow("deadly-summary", least=3))["run_id"])

    assert (first["status"], again["status"]) == ("succeeded", "succeeded")
    assert landed == deadly
    assert len(deadly) > len(deadlier) > 3
    # Merge: the states without an event this deadly are gone.
    assert await stored(reports, "daily_deadly") == deadlier
    save = step(again, "save")
    assert save["detail"]["text"] == OWN_QUERY
    assert save["detail"]["parameters"] == {"least": 3}
    assert save["detail"]["client_request_id"] == f"adxflow;{again['run_id']};save;1"
    assert (save["detail"]["rows"], save["detail"]["source_rows"]) == (len(deadlier), len(deadlier))
    assert (save["detail"]["mode"], save["detail"]["truncated"]) == ("merge", False)
    assert "result" in save["artifacts"]


@pytest.mark.parametrize("system", ["in_process"], indirect=True)
async def test_a_copys_own_query_over_its_cap_fails_the_run_naming_the_cap_and_leaves_the_table(
    system: System, reports: str
) -> None:
    await system.save_flow(own_query_flow())
    first = await system.finished((await system.start_flow("deadly-summary"))["run_id"])
    before = await stored(reports, "daily_deadly")
    assert first["status"] == "succeeded"

    await system.save_flow(own_query_flow(max_rows=3))
    capped = await system.finished((await system.start_flow("deadly-summary", least=3))["run_id"])

    assert (capped["status"], capped["failed_step"]) == ("failed", "save")
    assert attempts(capped, "save") == [(1, "failed")]
    error = step(capped, "save")["error"]
    assert error["code"] == "ResultTooLarge"
    assert "more than 3 rows (the step's max_rows)" in error["message"]
    assert step(capped, "save")["detail"]["text"] == OWN_QUERY
    assert len(before) > 3
    assert await stored(reports, "daily_deadly") == before


EVENTS = "StormEvents | summarize Events = count(), Deaths = sum(DeathsDirect) by State"


def appending_flow(table: str) -> dict[str, Any]:
    """A query, then its result appended into *table* of the database behind the line."""
    return {
        "name": "appended",
        "connection": "local",
        "database": "Samples",
        "steps": [
            {"id": "summary", "action": "run_query", "query": EVENTS},
            {
                "id": "save",
                "action": "copy_to_database",
                "database": "distant",
                "table": table,
                "source": "summary",
            },
        ],
    }


@pytest.mark.parametrize("system", ["in_process", "rabbitmq"], indirect=True)
async def test_a_database_gone_mid_copy_and_back_gets_each_row_once_through_the_retries(
    system: System, reports: str, line: Proxy
) -> None:
    want = await asyncio.to_thread(expected, system.kusto_url, EVENTS)
    await system.save_flow(appending_flow("daily_events"))
    admin = await connect(reports)
    try:
        await admin.execute('CREATE TABLE daily_events ("State" text, "Events" bigint, "Deaths" bigint)')
        # The test's lock on the table keeps the copy inside its transaction, its ledger row written,
        # until the test lets go.
        holding = admin.transaction()
        await holding.start()
        await admin.execute("LOCK TABLE daily_events IN SHARE MODE")
        run_id = (await system.start_flow("appended"))["run_id"]

        async def copy_waits_for_the_table() -> bool:
            # A transaction sees one snapshot of the server's activity: the holding one would not
            # see the copy arrive.
            watch = await connect(reports)
            try:
                waiting = await watch.fetch(
                    "SELECT client_port FROM pg_stat_activity "
                    "WHERE datname = current_database() AND wait_event_type = 'Lock'"
                )
            finally:
                await watch.close()
            return any(row["client_port"] in line.server_ports() for row in waiting)

        await system.wait_until(copy_waits_for_the_table, timeout=30, what="the copy to wait for the table")
        line.down()

        async def failed_once() -> bool:
            run = await system.run(run_id)
            return run is not None and (1, "failed") in attempts(run, "save")

        async def tried_again() -> bool:
            return line.waiting() > 0

        await system.wait_until(failed_once, timeout=30, what="the first attempt to fail")
        await system.wait_until(tried_again, timeout=30, what="the next attempt to reach for the database")
        await holding.rollback()
        line.up()
        run = await system.finished(run_id)
        ledger = await admin.fetch("SELECT step_id, rows FROM adxflow_copies WHERE run_id = $1", run_id)
    finally:
        await admin.close()

    assert run["status"] == "succeeded", run
    # The second attempt waited for the database while it was away, and landed once it was back.
    assert attempts(run, "save") == [(1, "failed"), (2, "succeeded")]
    first = step(run, "save", attempt=1)["error"]
    assert (first["code"], first["retryable"]) == ("DatabaseUnavailable", True)
    assert "'distant'" in first["message"]
    assert step(run, "save")["detail"]["rows"] == len(want)
    assert await stored(reports, "daily_events") == want
    assert [(row["step_id"], row["rows"]) for row in ledger] == [("save", len(want))]


@pytest.mark.parametrize("system", ["in_process", "rabbitmq"], indirect=True)
async def test_a_table_whose_column_does_not_fit_fails_the_run_at_the_copy_at_once_naming_it(
    system: System, reports: str
) -> None:
    admin = await connect(reports)
    try:
        await admin.execute('CREATE TABLE daily_typed ("State" text, "Events" date, "Deaths" bigint)')
        await admin.execute("""INSERT INTO daily_typed VALUES ('KEPT', '2026-01-01', 1)""")
    finally:
        await admin.close()
    flow = appending_flow("daily_typed")
    flow["steps"][1]["database"] = "reports"
    await system.save_flow(flow)

    run = await system.finished((await system.start_flow("appended"))["run_id"])

    assert (run["status"], run["failed_step"]) == ("failed", "save")
    assert attempts(run, "save") == [(1, "failed")]
    error = step(run, "save")["error"]
    assert (error["code"], error["retryable"]) == ("TableMismatch", False)
    assert "column 'Events' of table 'daily_typed' is DATE" in error["message"]
    assert "Kusto long" in error["message"]
    admin = await connect(reports)
    try:
        rows = await admin.fetch('SELECT "State" FROM daily_typed')
        ledger = await admin.fetchval("SELECT count(*) FROM adxflow_copies")
    finally:
        await admin.close()
    assert [row["State"] for row in rows] == ["KEPT"]
    assert ledger == 0
