"""Flows end to end: every action, per-row delivery, conditions, parameters as
data, and chained flows, through the real services."""

from __future__ import annotations

import email
import email.policy
import json
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import duckdb
import pytest

from tests.e2e.conftest import System


def base(name: str, steps: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    return {"name": name, "connection": "local", "database": "Samples", "steps": steps, **extra}


def parse(path: Path) -> EmailMessage:
    message = email.message_from_bytes(path.read_bytes(), policy=email.policy.default)
    assert isinstance(message, EmailMessage)
    return message


def expected(sample: Path, sql: str) -> list[tuple[Any, ...]]:
    with duckdb.connect(str(sample), read_only=True) as con:
        return con.execute(sql).fetchall()


def step(run: dict[str, Any], step_id: str) -> dict[str, Any]:
    return next(s for s in run["steps"] if s["step_id"] == step_id)


async def test_every_action_in_one_flow(system: System, sample_database: Path) -> None:
    flow = base(
        "everything",
        [
            {
                "id": "top",
                "action": "run_query",
                "query": "StormEvents | where State == state | summarize Events = count() by EventType"
                " | top 3 by Events",
            },
            {
                "id": "chart",
                "action": "run_query_and_render_chart",
                "query": "StormEvents | summarize Events = count() by State | top 5 by Events",
                "chart": "piechart",
                "title": "Top states",
            },
            {"id": "tables", "action": "run_show_command", "command": ".show tables"},
            {
                "id": "append",
                "action": "run_control_command_and_render_chart",
                "command": ".set-or-append Summary <| StormEvents | summarize n = count() by State",
            },
            {
                "id": "background",
                "action": "run_async_control_command",
                "command": ".set-or-append async ByType <| StormEvents | summarize n = count() by EventType",
                "poll_seconds": 0.1,
            },
            {
                "id": "mail",
                "action": "send_email",
                "to": ["team@example.com"],
                "bcc": ["audit@example.com"],
                "subject": "Top {{ steps.top.first_row.EventType }} in {{ run.parameters.state }}",
                "body_html": "{{ steps.chart.body_html }}<p>load {{ steps.background.operation.state }}</p>",
                "attachments": ["chart"],
                "importance": "high",
            },
            {
                "id": "hook",
                "action": "post_webhook",
                "url": system.hooks.url,
                "body": '{"rows": {{ steps.top.row_count }}, "state": {{ run.parameters.state | tojson }}}',
            },
        ],
        parameters={"state": {"type": "string", "default": "TEXAS"}},
    )
    await system.save_flow(flow)
    started = await system.start_flow("everything", state="KANSAS")
    run = await system.finished(started["run_id"])

    assert run["status"] == "succeeded", run
    assert run["flow"] == "everything"
    assert run["trigger"] == "manual"
    assert run["parameters"] == {"state": "KANSAS"}
    [(top_type, _)] = expected(
        sample_database,
        "SELECT EventType, count(*) n FROM StormEvents WHERE State = 'KANSAS'"
        " GROUP BY 1 ORDER BY n DESC LIMIT 1",
    )
    message = parse(system.smtp.messages()[-1])
    assert message["Subject"] == f"Top {top_type} in KANSAS"
    html = message.get_body(("html",))
    assert html is not None
    assert "<p>load Completed</p>" in html.get_content()
    inline = [p for p in message.walk() if p.get_content_type() == "image/png" and p["Content-ID"]]
    assert len(inline) == 1
    assert f"cid:{inline[0]['Content-ID'].strip('<>')}" in html.get_content()
    assert {part.get_filename() for part in message.iter_attachments()} >= {"chart.csv", "chart.png"}
    assert "audit@example.com" not in str(message)

    [(headers, body)] = system.hooks.received
    assert json.loads(body) == {"rows": 3, "state": "KANSAS"}
    assert headers["Idempotency-Key"] == f"{run['run_id']}.hook"

    assert step(run, "tables")["row_count"] >= 1
    assert step(run, "background")["detail"]["operation"]["state"] == "Completed"
    assert "set-or-append" in step(run, "append")["detail"]["text"]
    assert step(run, "top")["detail"]["parameters"] == {"state": "KANSAS"}
    assert step(run, "chart.render")["artifacts"]["chart_png"]["content_type"] == "image/png"


async def test_per_row_delivery_sends_one_email_per_matching_row(
    system: System, sample_database: Path
) -> None:
    flow = base(
        "incidents",
        [
            {
                "id": "deadly",
                "action": "run_query",
                "query": "StormEvents | where DeathsDirect >= 3 | project EventId, State, DeathsDirect",
            },
            {
                "id": "page",
                "action": "send_email",
                "for_each": "deadly",
                "when": "{{ row.DeathsDirect >= 5 }}",
                "to": ["ops@example.com"],
                "subject": "Incident {{ row.EventId }} in {{ row.State }}",
                "body_html": "<p>{{ row.DeathsDirect }} deaths</p>",
            },
        ],
    )
    await system.save_flow(flow)
    run = await system.finished((await system.start_flow("incidents"))["run_id"])

    matching = expected(sample_database, "SELECT EventId, State FROM StormEvents WHERE DeathsDirect >= 5")
    assert 0 < len(matching) < 50
    subjects = sorted(parse(path)["Subject"] for path in system.smtp.messages())
    assert subjects == sorted(f"Incident {event} in {state}" for event, state in matching)
    page = step(run, "page")
    assert page["detail"]["deliveries"] == len(matching)
    assert (
        page["detail"]["rows"]
        == expected(sample_database, "SELECT count(*) FROM StormEvents WHERE DeathsDirect >= 3")[0][0]
    )


async def test_a_parameter_with_kql_syntax_is_only_data(system: System, sample_database: Path) -> None:
    flow = base(
        "by-state",
        [
            {"id": "n", "action": "run_query", "query": "StormEvents | where State == state | count"},
            {
                "id": "mail",
                "action": "send_email",
                "to": ["team@example.com"],
                "subject": "{{ steps.n.first_row.Count }} events",
            },
        ],
        parameters={"state": {"type": "string"}},
    )
    await system.save_flow(flow)
    hostile = 'TEXAS" or State != "x'
    first = await system.finished((await system.start_flow("by-state", state=hostile))["run_id"])
    second = await system.finished((await system.start_flow("by-state", state="TEXAS"))["run_id"])

    assert (first["status"], second["status"]) == ("succeeded", "succeeded")
    [(texas,)] = expected(sample_database, "SELECT count(*) FROM StormEvents WHERE State = 'TEXAS'")
    subjects = sorted(parse(path)["Subject"] for path in system.smtp.messages())
    assert subjects == sorted(["0 events", f"{texas} events"])


async def test_a_false_condition_skips_delivery_and_the_run_says_so(system: System) -> None:
    flow = base(
        "quiet-check",
        [
            {"id": "q", "action": "run_query", "query": "StormEvents | where State == 'NOWHERE'"},
            {
                "id": "mail",
                "action": "send_email",
                "when": "{{ steps.q.row_count > 0 }}",
                "to": ["team@example.com"],
                "subject": "rows!",
            },
        ],
        trigger={"every": "1m"},
    )
    await system.save_flow(flow)
    run = await system.finished((await system.start_flow("quiet-check"))["run_id"])

    assert run["status"] == "succeeded"
    mail = step(run, "mail")
    assert mail["status"] == "skipped"
    assert mail["detail"]["reason"].startswith("when was false")
    assert system.smtp.messages() == []


async def test_a_chained_flow_starts_after_its_parent(system: System) -> None:
    parent = base("nightly-load", [{"id": "q", "action": "run_query", "query": "StormEvents | count"}])
    child = base(
        "after-load",
        [{"id": "q", "action": "run_query", "query": "StormEvents | take 1"}],
        trigger={"after": {"flow": "nightly-load", "status": ["succeeded"]}},
    )
    await system.save_flow(parent)
    await system.save_flow(child)
    started = await system.start_flow("nightly-load")
    parent_run = await system.finished(started["run_id"])
    assert parent_run["status"] == "succeeded"

    children: list[dict[str, Any]] = []

    async def child_finished() -> bool:
        children[:] = await system.runs_of("after-load")
        return bool(children) and children[0]["status"] == "succeeded"

    await system.wait_until(child_finished, timeout=30, what="the chained run")
    assert len(children) == 1
    assert children[0]["trigger"] == "after"
    assert children[0]["parent_run_id"] == started["run_id"]


@pytest.mark.parametrize("system", ["in_process"], indirect=True)
async def test_from_query_draws_what_the_render_operator_asks_for(system: System) -> None:
    flow = base(
        "rendered",
        [
            {
                "id": "per_day",
                "action": "run_query_and_render_chart",
                "query": "StormEvents | summarize Events = count() by bin(StartTime, 1d)"
                ' | render timechart with (title="Events per day")',
                "chart": "from_query",
            },
            {"id": "mail", "action": "send_email", "to": ["team@example.com"], "subject": "rendered"},
        ],
    )
    await system.save_flow(flow)
    run = await system.finished((await system.start_flow("rendered"))["run_id"])

    assert run["status"] == "succeeded", run
    render = step(run, "per_day.render")
    assert render["detail"]["drawn_as"] == "timechart"
    assert render["detail"]["columns_used"]["x"] == "StartTime"
    assert step(run, "per_day")["detail"]["visualization"] == "timechart"
    message = parse(system.smtp.messages()[-1])
    assert "Events per day" in message.get_body(("html",)).get_content()
