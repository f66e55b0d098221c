"""The example flows: valid, and each runs against the embedded sample data.
Applied and run through the command line, as a user would: every example on the in-process
system, the scope-step examples on RabbitMQ too, and the parallel dashboard against a slow cluster.
"""

from __future__ import annotations

import asyncio
import email
import email.policy
import io
import json
import os
import re
import sys
from collections.abc import AsyncIterator
from csv import DictReader
from dataclasses import dataclass
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import asyncpg
import pyarrow.parquet as pq
import pytest
import yaml
from azure.kusto.data import KustoClient, KustoConnectionStringBuilder

from services.launcher.client import validate_file
from tests.e2e.conftest import Hooks, System
from tests.proxy import SlowKusto

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
CONDITIONAL = EXAMPLES / "conditional-queries.yaml"
DASHBOARD = EXAMPLES / "storm-dashboard.yaml"
SUMMARY = EXAMPLES / "daily-summary-to-postgres.yaml"
EXPORT = EXAMPLES / "parquet-export.yaml"
IMPORT = EXAMPLES / "nightly-import-from-postgres.yaml"
#: How long the slow cluster holds each query, in seconds.
QUERY_DELAY = 2.0


@pytest.fixture
async def slow_kusto() -> Any:
    async with SlowKusto(QUERY_DELAY) as proxy:
        yield proxy


@pytest.fixture
async def reports(postgres_database: Any) -> AsyncIterator[str]:
    """The operator's database ``reports``: a fresh database on the machine's PostgreSQL."""
    async with postgres_database() as url:
        yield url


@pytest.fixture
def operator_connections(hooks: Hooks, slow_kusto: SlowKusto, reports: str, tmp_path: Path) -> dict[str, Any]:
    """The Slack channel the conditional example names, here the test's receiver; a connection
    ``slow`` that reaches the local endpoint through the slow proxy; and the database ``reports``
    the examples write into and read from, its URL by reference."""
    secret = tmp_path / "reports-url"
    secret.write_text(reports)
    return {
        "connections": {"slow": {"cluster": slow_kusto.url, "auth": "none"}},
        "webhooks": {"incidents-slack": {"url": hooks.url}},
        # Flows may write any of its tables, and read it.
        "databases": {"reports": {"url_secret": {"file": str(secret)}, "tables": ["*"], "reads": True}},
    }


async def cli(system: System, *args: str) -> tuple[int, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "services",
        *args,
        env={
            **os.environ,
            "ADXFLOW_TRIGGER_URL": system.trigger_url,
            "ADXFLOW_HISTORY_URL": system.history_url,
        },
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    output, _ = await asyncio.wait_for(process.communicate(), 120)
    assert process.returncode is not None
    return process.returncode, output.decode()


def test_every_example_is_valid() -> None:
    files = sorted(EXAMPLES.glob("*.yaml"))
    assert len(files) >= 6
    assert {path.name: validate_file(path) for path in files} == {path.name: [] for path in files}


@dataclass(frozen=True)
class Incidents:
    """The conditional example's incidents, asked of the sample data by a query of the test's own."""

    resolved: set[int]
    #: Per active incident: how many earlier events of its state and type there are.
    active: dict[int, int]


def incidents_in(kusto_url: str) -> Incidents:
    as_of = yaml.safe_load(CONDITIONAL.read_text())["parameters"]["as_of"]["default"]
    query = f"""
        let as_of = datetime({as_of});
        StormEvents
        | where DeathsDirect > 0 and StartTime >= as_of - 7d and StartTime <= as_of
        | project EventId, State, EventType, Started = StartTime, Active = EndTime > as_of
        | join kind=leftouter (StormEvents | project State, EventType, Earlier = StartTime)
            on State, EventType
        | summarize Similar = countif(Earlier < Started) by EventId, Active
    """
    client = KustoClient(KustoConnectionStringBuilder.with_no_authentication(kusto_url))
    try:
        rows = client.execute("Samples", query).primary_results[0].rows
    finally:
        client.close()
    return Incidents(
        resolved={row["EventId"] for row in rows if not row["Active"]},
        active={row["EventId"]: row["Similar"] for row in rows if row["Active"]},
    )


def mails(system: System) -> list[EmailMessage]:
    found = []
    for path in system.smtp.messages():
        parsed = email.message_from_bytes(path.read_bytes(), policy=email.policy.default)
        assert isinstance(parsed, EmailMessage)
        found.append(parsed)
    return found


def html_of(mail: EmailMessage) -> str:
    part = mail.get_body(preferencelist=("html",))
    assert part is not None
    return str(part.get_content())


async def assert_conditional_queries_delivered(system: System) -> None:
    """Resolved incidents went to Slack, one message each; active ones by email, each with its
    similar incidents as a pie chart, inline and attached."""
    expected = await asyncio.to_thread(incidents_in, system.kusto_url)
    assert expected.resolved, "the sample data has resolved incidents in the week"
    assert expected.active, "the sample data has active incidents in the week"
    assert all(similar > 0 for similar in expected.active.values())

    posts = [json.loads(body) for _, body in system.hooks.received]
    assert len(posts) == len(expected.resolved)
    posted = set()
    for post in posts:
        # An incoming-webhook message: the fallback text, and Block Kit blocks with the row's cells.
        assert post["text"].startswith("Resolved: ")
        assert post["blocks"][0]["type"] == "header"
        cells = dict(
            field["text"].removeprefix("*").split("*\n", 1)
            for block in post["blocks"]
            for field in block.get("fields", [])
        )
        assert cells["Status"] == "resolved"
        posted.add(int(cells["EventId"]))
    assert posted == expected.resolved

    active = {
        int(str(mail["Subject"]).rsplit("event ", 1)[1]): mail
        for mail in mails(system)
        if str(mail["Subject"]).startswith("Active: ")
    }
    assert set(active) == set(expected.active)
    for event, mail in active.items():
        assert mail["To"] == "incidents@example.com"
        (csv,) = [part for part in mail.iter_attachments() if part.get_filename() == "similar.csv"]
        months = list(DictReader(io.StringIO(csv.get_content())))
        assert sum(int(month["Incidents"]) for month in months) == expected.active[event]
        (chart,) = [part for part in mail.walk() if part["Content-ID"]]
        assert chart.get_content_type() == "image/png"
        assert f"cid:{chart['Content-ID'].strip('<>')}" in html_of(mail), "the pie chart is in the body"
        assert {part.get_filename() for part in mail.iter_attachments()} >= {"similar.csv", "similar.png"}


async def assert_dashboard_mailed(system: System) -> None:
    """One email with the three branches' charts in its body and their files attached."""
    (dashboard,) = [mail for mail in mails(system) if str(mail["Subject"]).startswith("Storm dashboard")]
    html = html_of(dashboard)
    for step in yaml.safe_load(DASHBOARD.read_text())["steps"][0]["parallel"]:
        assert step["steps"][0]["title"] in html
    charts = [part for part in dashboard.walk() if part["Content-ID"]]
    assert len(charts) == 2, "the time chart and the bar chart inline; the damage step is a table"
    for chart in charts:
        assert f"cid:{chart['Content-ID'].strip('<>')}" in html
    attached = {part.get_filename() for part in dashboard.iter_attachments()}
    assert attached >= {"per_day.csv", "per_day.png", "by_type.csv", "by_type.png", "costly.csv"}


async def run_through_cli(system: System, name: str) -> dict[str, Any]:
    """Run flow *name* with ``run --wait`` and answer the run as history has it."""
    code, output = await cli(system, "run", name, "--wait")
    assert code == 0, f"{name}: {output}"
    assert "run succeeded" in output, output
    (run,) = await system.runs_of(name)
    return await system.finished(run["run_id"])


@pytest.mark.parametrize("system", ["in_process"], indirect=True)
async def test_every_example_applies_and_runs_on_the_sample_data(system: System, reports: str) -> None:
    code, output = await cli(system, "flows", "apply", "-f", str(EXAMPLES))
    assert code == 0, output
    assert output.count(" created;") == len(list(EXAMPLES.glob("*.yaml")))
    code, listed = await cli(system, "flows", "list")
    assert code == 0, listed
    assert "every day at 08:00 Europe/Berlin" in listed

    for path in sorted(EXAMPLES.glob("*.yaml")):
        name = yaml.safe_load(path.read_text())["name"]
        code, output = await cli(system, "run", name, "--wait")
        assert code == 0, f"{name}: {output}"
        assert "run succeeded" in output, output

    code, history = await cli(system, "runs", "list", "--flow", "async-rebuild")
    assert code == 0, history
    assert "succeeded" in history
    run_id = history.split()[0]
    code, shown = await cli(system, "runs", "show", run_id)
    assert code == 0, shown
    assert "rebuild" in shown
    subjects = [path.read_text(errors="replace") for path in system.smtp.messages()]
    assert any("Rebuild Completed" in text for text in subjects)
    await assert_dashboard_mailed(system)
    await assert_conditional_queries_delivered(system)
    await assert_minute_check_mailed_each_event_once(system)
    await assert_parquet_export_mailed_as_a_link(system)
    await assert_daily_summary_upserted(system, reports)
    await assert_nightly_import_ingested_each_row_once(system, reports)


async def assert_parquet_export_mailed_as_a_link(system: System) -> None:
    """The export example: an email linking (not attaching) a Parquet file of the query's rows."""
    document = yaml.safe_load(EXPORT.read_text())
    query = document["steps"][0]["query"]
    (mail,) = [mail for mail in mails(system) if str(mail["Subject"]).startswith("Storm events ")]
    assert list(mail.iter_attachments()) == []
    [url] = re.findall(r'href="([^"]+/v1/artifacts/[^"]+\.parquet)"', html_of(mail))
    assert re.search(r"/storms-\d{4}-\d{2}-\d{2}\.parquet$", url), url
    async with system.session.get(url) as response:
        assert response.status == 200
        file = pq.ParquetFile(io.BytesIO(await response.read()))
    table = file.read()
    client = KustoClient(KustoConnectionStringBuilder.with_no_authentication(system.kusto_url))
    try:
        rows = (await asyncio.to_thread(client.execute, "Samples", query)).primary_results[0].rows
    finally:
        client.close()
    assert table.num_rows == len(rows) > 0
    assert table.column("State").to_pylist() == [row["State"] for row in rows]
    assert file.metadata.row_group(0).column(0).compression == "ZSTD"


async def assert_minute_check_mailed_each_event_once(system: System) -> None:
    """The alert example: an email per deadly event, each naming its event; none on the next run."""
    events = await asyncio.to_thread(event_ids, system.kusto_url, "StormEvents | where DeathsDirect >= 5")

    def told() -> list[str]:
        return [str(mail["Subject"]) for mail in mails(system) if str(mail["Subject"]).startswith("Deadly:")]

    first = told()
    assert len(first) == len(events) > 1
    assert {int(subject.rsplit("event ", 1)[1].rstrip(")")) for subject in first} == events
    code, output = await cli(system, "run", "deadly-storm-check", "--wait")
    assert code == 0, output
    assert told() == first


async def assert_daily_summary_upserted(system: System, reports: str) -> None:
    """The SQL aggregation example: one row a day and state since its first day, each as the
    sample data has it; a second run leaves the same rows."""
    since = yaml.safe_load(SUMMARY.read_text())["parameters"]["since"]["default"]
    query = f"""
        StormEvents
        | where StartTime >= datetime({since})
        | extend Day = bin(StartTime, 1d)
        | summarize Events = count(), Deaths = sum(DeathsDirect), Damage = sum(DamageProperty)
            by Day, State
    """
    client = KustoClient(KustoConnectionStringBuilder.with_no_authentication(system.kusto_url))
    try:
        rows = (await asyncio.to_thread(client.execute, "Samples", query)).primary_results[0].rows
    finally:
        client.close()
    expected = {(row["Day"], row["State"]): (row["Events"], row["Deaths"], row["Damage"]) for row in rows}

    async def summary() -> dict[tuple[Any, str], tuple[int, int, int]]:
        connection = await asyncpg.connect(reports.replace("postgresql+asyncpg://", "postgresql://", 1))
        try:
            found = await connection.fetch(
                'SELECT "Day", "State", "Events", "Deaths", "Damage" FROM storm_daily_summary'
            )
        finally:
            await connection.close()
        return {(row["Day"], row["State"]): (row["Events"], row["Deaths"], row["Damage"]) for row in found}

    first = await summary()
    code, output = await cli(system, "run", "daily-summary-to-postgres", "--wait")
    assert code == 0, output

    assert len(expected) > 20
    assert first == expected
    assert await summary() == expected


async def assert_nightly_import_ingested_each_row_once(system: System, reports: str) -> None:
    """The import example: the summary's rows in PostgreSQL are in the Kusto table, each once;
    a second run finds nothing newer and ingests nothing."""
    connection = await asyncpg.connect(reports.replace("postgresql+asyncpg://", "postgresql://", 1))
    try:
        found = await connection.fetch('SELECT "Day", "State", "Events" FROM storm_daily_summary')
    finally:
        await connection.close()
    expected = sorted((row["Day"], row["State"], row["Events"]) for row in found)

    def ingested() -> list[tuple[Any, str, int]]:
        client = KustoClient(KustoConnectionStringBuilder.with_no_authentication(system.kusto_url))
        try:
            rows = client.execute("Samples", "StormDailySummary").primary_results[0].rows
        finally:
            client.close()
        return sorted((row["Day"], row["State"], row["Events"]) for row in rows)

    first = await asyncio.to_thread(ingested)
    before = {run["run_id"] for run in await system.runs_of("nightly-import-from-postgres")}
    code, output = await cli(system, "run", "nightly-import-from-postgres", "--wait")
    assert code == 0, output
    (latest,) = [
        run for run in await system.runs_of("nightly-import-from-postgres") if run["run_id"] not in before
    ]
    again = await system.finished(latest["run_id"])

    assert len(expected) > 20
    assert first == expected
    (load,) = [step for step in again["steps"] if step["step_id"] == "load"]
    assert load["detail"]["rows"] == 0
    assert await asyncio.to_thread(ingested) == expected


def event_ids(kusto_url: str, query: str) -> set[int]:
    client = KustoClient(KustoConnectionStringBuilder.with_no_authentication(kusto_url))
    try:
        return {row["EventId"] for row in client.execute("Samples", query).primary_results[0].rows}
    finally:
        client.close()


@pytest.mark.parametrize("system", ["rabbitmq"], indirect=True)
async def test_the_scope_step_examples_run_on_rabbitmq(system: System) -> None:
    for path in (CONDITIONAL, DASHBOARD):
        code, output = await cli(system, "flows", "apply", "-f", str(path))
        assert code == 0, output
    conditional = await run_through_cli(system, "conditional-queries")
    dashboard = await run_through_cli(system, "storm-dashboard")

    each = next(step for step in conditional["steps"] if step["step_id"] == "each_incident")
    expected = await asyncio.to_thread(incidents_in, system.kusto_url)
    total = len(expected.resolved) + len(expected.active)
    counted = (each["detail"]["total"], each["detail"]["succeeded"], each["detail"]["failed"])
    assert counted == (total, total, 0)
    queries = next(step for step in dashboard["steps"] if step["step_id"] == "queries")
    assert (queries["detail"]["total"], queries["detail"]["succeeded"]) == (3, 3)
    await assert_conditional_queries_delivered(system)
    await assert_dashboard_mailed(system)


@pytest.mark.parametrize("system", ["in_process"], indirect=True)
async def test_the_parallel_dashboard_takes_about_as_long_as_its_slowest_query(
    system: System, slow_kusto: SlowKusto, tmp_path: Path
) -> None:
    # The local endpoint answers one query at a time; the proxy's delay is where time goes, and
    # three delays waited out one after another would take their sum.
    slow_kusto.upstream = system.kusto_url
    document = yaml.safe_load(DASHBOARD.read_text())
    document["connection"] = "slow"
    slow = tmp_path / "storm-dashboard.yaml"
    slow.write_text(yaml.safe_dump(document))
    code, output = await cli(system, "flows", "apply", "-f", str(slow))
    assert code == 0, output

    run = await run_through_cli(system, "storm-dashboard")

    assert len(slow_kusto.spans) == 3
    # Every query arrived before the first one was answered: they were waited on together.
    assert max(arrived for arrived, _ in slow_kusto.spans) < min(answered for _, answered in slow_kusto.spans)
    duration = run["duration_ms"] / 1000
    assert QUERY_DELAY <= duration < 3 * QUERY_DELAY, duration
    await assert_dashboard_mailed(system)


@pytest.mark.parametrize("system", ["in_process"], indirect=True)
async def test_a_failing_run_makes_run_wait_exit_non_zero(system: System) -> None:
    await system.save_flow(
        {
            "name": "broken",
            "connection": "local",
            "database": "Samples",
            "steps": [{"id": "q", "action": "run_query", "query": "NoSuchTable | count"}],
        }
    )
    code, output = await cli(system, "run", "broken", "--wait")
    assert code == 1
    assert "KustoSemanticError" in output
    code, output = await cli(system, "run", "broken", "--param", "x=1")
    assert code != 0
    assert "parameters.x" in output


@pytest.mark.parametrize("system", ["in_process"], indirect=True)
async def test_a_reader_that_goes_away_stops_the_command_line_quietly(system: System) -> None:
    code, output = await cli(system, "flows", "apply", "-f", str(EXAMPLES / "minute-check.yaml"))
    assert code == 0, output
    read, write = os.pipe()
    os.close(read)  # as `adxflow flows list | head -0` would: nobody reads what it prints
    try:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "services",
            "flows",
            "list",
            env={
                **os.environ,
                "ADXFLOW_TRIGGER_URL": system.trigger_url,
                "ADXFLOW_HISTORY_URL": system.history_url,
            },
            stdout=write,
            stderr=asyncio.subprocess.PIPE,
        )
    finally:
        os.close(write)
    _, errors = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 1
    assert errors.decode() == ""
