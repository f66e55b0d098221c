"""Test runs end to end: a flow's queries run for real and its deliveries are composed and kept,
but nothing reaches the SMTP server, the webhook receiver or the operator's PostgreSQL table, and
the delivery ledger stays empty; a control command other than ``.show`` is not sent; an alert is
evaluated without a state recorded. "Send a test" reaches the allowed address alone; any other is
refused naming ``send_test_to``. A draft runs without being saved, or is refused with its problems.
History lists test runs apart, leaves them out of the flow's statistics, and no ``after:`` flow
follows one. In process and on RabbitMQ."""

from __future__ import annotations

import asyncio
import email
import email.policy
import json
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import create_async_engine

from common.contracts.dry_runs import NOT_RECORDED, NOT_RENDERED, NOT_RUN_COMMAND, NOT_SENT, NOT_WRITTEN
from services.launcher import cli
from tests.e2e.conftest import System

TESTER = "tester@qa.example.com"
QUERY = "StormEvents | summarize Events = count() by State | order by State asc"
COMMAND = ".set-or-replace DryRunMarker <| datatable(Marked:long)[1]"


@pytest.fixture(autouse=True)
def test_recipients(monkeypatch: pytest.MonkeyPatch) -> None:
    """The operator allows tests to the QA domain (read from the environment, as deployed)."""
    monkeypatch.setenv("ADXFLOW_TEST_RECIPIENTS", "*@qa.example.com")


@pytest.fixture
async def reports(postgres_database: Any) -> Any:
    async with postgres_database() as url:
        yield url


@pytest.fixture
def operator_connections(reports: str, tmp_path: Path) -> dict[str, Any]:
    secret = tmp_path / "reports-url"
    secret.write_text(reports)
    return {"databases": {"reports": {"url_secret": {"file": str(secret)}, "tables": ["daily_*"]}}}


def report_flow(hook_url: str, name: str = "storm-report") -> dict[str, Any]:
    return {
        "name": name,
        "connection": "local",
        "database": "Samples",
        "steps": [
            {"id": "storms", "action": "run_query_and_render_chart", "query": QUERY, "chart": "html_table"},
            {"id": "change", "action": "run_control_command_and_render_chart", "command": COMMAND},
            {"id": "tables", "action": "run_show_command", "command": ".show tables"},
            {
                "id": "mail",
                "action": "send_email",
                "to": ["team@example.com"],
                "cc": ["boss@example.com"],
                "bcc": ["audit@example.com"],
                "subject": "Storms: {{ steps.storms.row_count }} states",
                "body_html": "{{ steps.storms.body_html }}",
            },
            {"id": "hook", "action": "post_webhook", "url": hook_url, "format": "json"},
            {
                "id": "save",
                "action": "copy_to_database",
                "database": "reports",
                "table": "daily_storms",
                "source": "storms",
            },
        ],
    }


def step(run: dict[str, Any], step_id: str) -> dict[str, Any]:
    found = [s for s in run["steps"] if s["step_id"] == step_id]
    assert found, f"no step {step_id} in {[s['step_id'] for s in run['steps']]}"
    return max(found, key=lambda s: s["attempt"])


async def start(system: System, name: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    async with system.session.post(f"{system.trigger_url}/v1/flows/{name}/runs", json=body) as response:
        return response.status, await response.json()


async def table_exists(url: str, table: str) -> bool:
    connection = await asyncpg.connect(url.replace("postgresql+asyncpg://", "postgresql://", 1))
    try:
        return bool(await connection.fetchval("SELECT to_regclass($1) IS NOT NULL", table))
    finally:
        await connection.close()


async def ledger_rows(system: System, run_id: str) -> int:
    """The delivery ledger's rows of *run_id* (the ledger shares the history's SQLite file here)."""
    run = await system.run(run_id)
    assert run is not None
    path = Path(system.smtp.directory).parent / "adxflow" / "history.db"
    engine = create_async_engine(f"sqlite+aiosqlite:///{path}")
    try:
        async with engine.connect() as conn:
            found = await conn.execute(
                sa.text("SELECT count(*) FROM deliveries WHERE run_id = :r"), {"r": run_id}
            )
            return int(found.scalar_one())
    finally:
        await engine.dispose()


async def artifact(system: System, attempt: dict[str, Any], name: str) -> bytes:
    href = attempt["artifacts"][name]["href"]
    url = href if href.startswith("http") else f"{system.history_url}{href}"
    async with system.session.get(url) as response:
        assert response.status == 200, url
        return await response.read()


@pytest.mark.parametrize("system", ["in_process", "rabbitmq"], indirect=True)
async def test_a_test_run_runs_the_queries_and_delivers_and_writes_nothing(
    system: System, reports: str
) -> None:
    await system.save_flow(report_flow(system.hooks.url))

    status, accepted = await start(system, "storm-report", {"dry_run": True})
    assert status == 202, accepted
    run = await system.finished(accepted["run_id"])

    assert run["status"] == "succeeded", run
    assert (run["dry_run"], run["test_recipient"]) == (True, None)
    storms = step(run, "storms")
    assert storms["row_count"] > 5
    # The control command was not sent; the .show command was, and found no table the command makes.
    change = step(run, "change")
    assert change["detail"] == {"dry_run": NOT_RUN_COMMAND, "text": COMMAND}
    assert step(run, "change.render")["detail"]["dry_run"] == NOT_RENDERED
    tables = step(run, "tables")
    assert tables["status"] == "succeeded"
    assert "dry_run" not in tables["detail"]
    assert "DryRunMarker" not in json.dumps(tables["detail"])
    # The email: composed as for real and kept, never sent, its recipients listed.
    mail = step(run, "mail")
    assert mail["detail"]["dry_run"] == NOT_SENT
    assert mail["detail"]["recipients"] == ["team@example.com", "boss@example.com", "audit@example.com"]
    composed = email.message_from_bytes(await artifact(system, mail, "email"), policy=email.policy.default)
    assert composed["Subject"] == f"Storms: {storms['row_count']} states"
    assert composed["To"] == "team@example.com"
    html = composed.get_body(("html",))
    assert html is not None
    assert "<table" in html.get_content()
    # The webhook: its payload kept, its destination by host only.
    hook = step(run, "hook")
    assert hook["detail"]["dry_run"] == NOT_SENT
    assert hook["detail"]["destination"] == ["127.0.0.1"]
    payload = json.loads(await artifact(system, hook, "webhook"))
    assert (payload["run"]["id"], payload["run"]["flow"]) == (run["run_id"], "storm-report")
    # The copy: what it would write, where, and its first rows; the table never made.
    save = step(run, "save")
    assert save["detail"]["dry_run"] == NOT_WRITTEN
    assert (save["detail"]["database"], save["detail"]["table"], save["detail"]["mode"]) == (
        "reports",
        "daily_storms",
        "append",
    )
    assert save["detail"]["rows"] == storms["row_count"] == save["row_count"]
    sample = save["detail"]["sample"]
    assert sample["columns"] == ["State:string", "Events:long"]
    assert len(sample["rows"]) == 5
    assert not await table_exists(reports, "daily_storms")
    assert system.smtp.messages() == []
    assert system.hooks.received == []
    assert await ledger_rows(system, run["run_id"]) == 0


@pytest.mark.parametrize("system", ["in_process"], indirect=True)
async def test_send_a_test_reaches_the_allowed_address_alone_marked_as_a_test(system: System) -> None:
    flow = report_flow(system.hooks.url, name="storm-mail")
    flow["steps"] = [flow["steps"][0], flow["steps"][3]]
    await system.save_flow(flow)
    # Were the flow's own recipients on the envelope, the server would refuse the email.
    for address in ("team@example.com", "boss@example.com", "audit@example.com"):
        system.rejections[address] = (550, "not during a test")

    status, accepted = await start(system, "storm-mail", {"dry_run": True, "send_test_to": TESTER})
    assert status == 202, accepted
    run = await system.finished(accepted["run_id"])

    assert run["status"] == "succeeded", run
    assert run["test_recipient"] == TESTER
    mail = step(run, "mail")
    assert mail["detail"]["sent_to"] == [TESTER]
    [received] = system.smtp.messages()
    sent = email.message_from_bytes(received.read_bytes(), policy=email.policy.default)
    assert sent["To"] == TESTER
    assert (sent["Cc"], sent["Bcc"]) == (None, None)
    assert sent["Subject"].startswith("[test] Storms: ")
    assert await ledger_rows(system, run["run_id"]) == 0


@pytest.mark.parametrize("system", ["in_process"], indirect=True)
async def test_a_test_address_the_operator_does_not_allow_is_refused_naming_send_test_to(
    system: System,
) -> None:
    await system.save_flow(report_flow(system.hooks.url))

    status, refused = await start(system, "storm-report", {"dry_run": True, "send_test_to": "me@example.com"})
    assert status == 400
    assert refused["error"]["fields"][0]["field"] == "send_test_to"
    assert "ADXFLOW_TEST_RECIPIENTS" in refused["error"]["message"]
    status, refused = await start(system, "storm-report", {"send_test_to": TESTER})
    assert status == 400
    assert "dry_run" in refused["error"]["message"]
    assert system.smtp.messages() == []


@pytest.mark.parametrize("system", ["in_process"], indirect=True)
async def test_a_draft_runs_as_a_test_unsaved_or_is_refused_with_its_problems_placed(system: System) -> None:
    draft = (
        "name: draft-storms\n"
        "connection: local\n"
        "database: Samples\n"
        "steps:\n"
        "  - id: storms\n"
        "    action: run_query\n"
        f"    query: {QUERY}\n"
        "  - id: mail\n"
        "    action: send_email\n"
        "    to: [team@example.com]\n"
        "    subject: Storms\n"
    )
    url = f"{system.trigger_url}/v1/flows:test"
    async with system.session.post(url, json={"flow": draft}) as response:
        accepted = await response.json()
        assert response.status == 202, accepted
    run = await system.finished(accepted["run_id"])
    assert (run["flow"], run["trigger"], run["dry_run"], run["status"]) == (
        "draft-storms",
        "manual",
        True,
        "succeeded",
    )
    assert step(run, "mail")["detail"]["dry_run"] == NOT_SENT
    async with system.session.get(f"{system.trigger_url}/v1/flows/draft-storms") as response:
        assert response.status == 404  # not saved

    broken = draft.replace("    action: run_query\n", "    action: run_query\n    colour: red\n")
    async with system.session.post(
        url, data=broken, headers={"Content-Type": "application/yaml"}
    ) as response:
        report = await response.json()
        assert response.status == 400, report
    assert report["valid"] is False
    [problem] = report["problems"]
    assert (problem["field"], problem["line"]) == ("steps[0].colour", 7)
    assert report["error"]["code"] == "InvalidFlow"
    assert "steps[0].colour" in report["error"]["message"]
    async with system.session.post(url, json={"flow": draft, "parameters": {"nope": 1}}) as response:
        report = await response.json()
        assert response.status == 400
    assert report["problems"][0]["field"] == "parameters.nope"
    assert system.smtp.messages() == []


@pytest.mark.parametrize("system", ["in_process"], indirect=True)
async def test_test_runs_are_listed_apart_out_of_the_stats_and_start_no_following_flow(
    system: System,
) -> None:
    leader = {
        "name": "leader",
        "connection": "local",
        "database": "Samples",
        "steps": [{"id": "count", "action": "run_query", "query": "StormEvents | count"}],
    }
    follower = {**leader, "name": "follower", "trigger": {"after": {"flow": "leader"}}}
    await system.save_flow(leader)
    await system.save_flow(follower)

    _, tested = await start(system, "leader", {"dry_run": True})
    assert (await system.finished(tested["run_id"]))["status"] == "succeeded"
    real = await system.start_flow("leader")
    await system.finished(real["run_id"])

    async def followed() -> bool:
        return bool(await system.runs_of("follower"))

    await system.wait_until(followed, timeout=30, what="the follower's run")
    # Only the real run was followed: the test run ended first, and started nothing.
    [after] = await system.runs_of("follower")
    assert after["parent_run_id"] == real["run_id"]
    assert [r["run_id"] for r in (await system.get("/v1/runs?dry_run=true&flow=leader"))["runs"]] == [
        tested["run_id"]
    ]
    assert [r["run_id"] for r in (await system.get("/v1/runs?dry_run=false&flow=leader"))["runs"]] == [
        real["run_id"]
    ]
    stats = await system.get("/v1/flows/leader/stats")
    assert (stats["runs"], stats["succeeded"]) == (1, 1)


@pytest.mark.parametrize("system", ["in_process"], indirect=True)
async def test_an_alert_in_a_test_run_is_evaluated_and_records_no_state(system: System) -> None:
    flow = {
        "name": "state-alert",
        "connection": "local",
        "database": "Samples",
        "steps": [
            {
                "id": "states",
                "action": "run_query",
                "query": "StormEvents | distinct State | order by State asc | take 3",
                "alert": {"key_columns": ["State"]},
            },
            {
                "id": "mail",
                "action": "send_email",
                "to": ["oncall@example.com"],
                "subject": "{{ alert.summary }}",
            },
        ],
    }
    await system.save_flow(flow)

    _, accepted = await start(system, "state-alert", {"dry_run": True})
    run = await system.finished(accepted["run_id"])

    assert run["status"] == "succeeded", run
    evaluation = step(run, "states.alert")["detail"]
    assert evaluation["dry_run"] == NOT_RECORDED
    assert (evaluation["alert"]["state"], evaluation["alert"]["firing"]) == ("firing", 3)
    assert [one["would_be"] for one in evaluation["alert"]["found"]] == ["firing"] * 3
    # The email it would send is composed; the alert itself is as it was: never evaluated.
    assert step(run, "mail")["detail"]["dry_run"] == NOT_SENT
    async with system.session.get(f"{system.trigger_url}/v1/flows/state-alert/alerts") as response:
        alerts = await response.json()
    assert all(alert["instances"] == [] and alert["transitions"] == [] for alert in alerts["alerts"])
    assert system.smtp.messages() == []


@pytest.mark.parametrize("system", ["in_process"], indirect=True)
async def test_the_run_page_shows_a_test_run_its_previews_and_the_runs_list_marks_it(system: System) -> None:
    await system.save_flow(report_flow(system.hooks.url))
    _, accepted = await start(system, "storm-report", {"dry_run": True})
    run = await system.finished(accepted["run_id"])

    async with system.session.get(f"{system.history_url}/ui/runs/{run['run_id']}") as response:
        page = await response.text()
        assert response.status == 200
    assert "Test run — nothing was delivered" in page
    assert 'Email <span class="muted">(not sent: test run)</span>' in page
    # The payload, pretty and escaped: its quotes are entities, its keys on lines of their own.
    assert 'data-payload="webhook"' in page
    assert "&#34;run&#34;: {" in page
    assert "First rows it would write" in page
    assert NOT_RUN_COMMAND in page
    assert "Resend email" not in page
    async with system.session.get(f"{system.history_url}/ui/runs?flow=storm-report") as response:
        listing = await response.text()
    assert 'class="badge-test" data-test-run' in listing


DRAFT_FILE = f"""\
name: storms-by-mail
connection: local
database: Samples
steps:
  - id: storms
    action: run_query_and_render_chart
    query: "{QUERY}"
    chart: html_table
  - id: mail
    action: send_email
    to: [team@example.com]
    subject: Storms by state
    body_html: "{{{{ steps.storms.body_html }}}}"
  - id: save
    action: copy_to_database
    database: reports
    table: daily_storms
    source: storms
"""


@pytest.mark.parametrize("system", ["in_process"], indirect=True)
async def test_flows_test_writes_the_previews_of_a_flow_file_and_prints_where(
    system: System, reports: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    file = tmp_path / "storms.yaml"
    file.write_text(DRAFT_FILE)
    out = tmp_path / "previews"

    await asyncio.to_thread(
        cli.main, ["flows", "test", str(file), "--url", system.trigger_url, "--out", str(out)]
    )

    printed = capsys.readouterr().out.splitlines()
    assert printed[-1] == f"run succeeded: previews in {out}"
    written = {Path(line) for line in printed if line.startswith(str(out))}
    assert written == {out / "mail.email.eml", out / "mail.email.html", out / "save.sample.csv"}
    assert "<table" in (out / "mail.email.html").read_text()
    composed = email.message_from_bytes((out / "mail.email.eml").read_bytes(), policy=email.policy.default)
    assert composed["Subject"] == "Storms by state"
    rows = (out / "save.sample.csv").read_text().splitlines()
    assert rows[0] == "State,Events"
    assert len(rows) == 6
    assert f"save: {NOT_WRITTEN}" in printed
    assert system.smtp.messages() == []
    assert not await table_exists(reports, "daily_storms")


@pytest.mark.parametrize("system", ["in_process"], indirect=True)
async def test_flows_test_prints_a_refused_drafts_problems_at_their_lines_and_fails(
    system: System, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    file = tmp_path / "storms.yaml"
    file.write_text(DRAFT_FILE.replace("    chart: html_table\n", "    chart: html_table\n    colour: red\n"))

    with pytest.raises(SystemExit) as failed:
        await asyncio.to_thread(cli.main, ["flows", "test", str(file), "--url", system.trigger_url])

    assert failed.value.code == 1
    assert capsys.readouterr().out.splitlines() == [
        f"{file}:9:5: steps[0].colour: Extra inputs are not permitted"
    ]


@pytest.mark.parametrize("system", ["in_process"], indirect=True)
async def test_the_child_runs_of_a_test_run_are_test_runs_too(system: System) -> None:
    flow = {
        "name": "per-state",
        "connection": "local",
        "database": "Samples",
        "steps": [
            {"id": "states", "action": "run_query", "query": "StormEvents | distinct State | take 3"},
            {
                "id": "each",
                "for_each": "states",
                "steps": [
                    {
                        "id": "mail",
                        "action": "send_email",
                        "to": ["team@example.com"],
                        "subject": "{{ row.State }}",
                    }
                ],
            },
        ],
    }
    await system.save_flow(flow)

    _, accepted = await start(system, "per-state", {"dry_run": True})
    run = await system.finished(accepted["run_id"])

    assert run["status"] == "succeeded", run
    children = (await system.get(f"/v1/runs/{run['run_id']}/steps/each/iterations"))["iterations"]
    assert len(children) == 3
    for child in children:
        assert child["dry_run"] is True
        detail = await system.run(child["run_id"])
        assert detail is not None
        assert step(detail, "mail")["detail"]["dry_run"] == NOT_SENT
    assert system.smtp.messages() == []


@pytest.mark.parametrize("system", ["in_process"], indirect=True)
async def test_a_hostile_payload_and_sample_are_shown_escaped_on_the_run_page(
    system: System, reports: str
) -> None:
    hostile = "<script>alert(1)</script>"
    flow = {
        "name": "hostile",
        "connection": "local",
        "database": "Samples",
        "steps": [
            {"id": "q", "action": "run_query", "query": f'print Note = "{hostile}"'},
            {
                "id": "hook",
                "action": "post_webhook",
                "url": system.hooks.url,
                "body": '{"note": "{{ steps.q.first_row.Note }}"}',
            },
            {
                "id": "save",
                "action": "copy_to_database",
                "database": "reports",
                "table": "daily_notes",
                "source": "q",
            },
        ],
    }
    await system.save_flow(flow)
    _, accepted = await start(system, "hostile", {"dry_run": True})
    run = await system.finished(accepted["run_id"])
    assert run["status"] == "succeeded", run

    async with system.session.get(f"{system.history_url}/ui/runs/{run['run_id']}") as response:
        page = await response.text()
    assert hostile not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert system.hooks.received == []
