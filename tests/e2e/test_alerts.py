"""Alerts end to end: a flow over a table the test changes with control commands fires, stays
quiet, resolves; a failing query is told once as an error and once as resolved."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.e2e.conftest import Hooks, System

ALERT_FLOW: dict[str, Any] = {
    "name": "incident-alert",
    "connection": "local",
    "database": "Samples",
    "steps": [
        {
            "id": "open",
            "action": "run_query",
            "query": "Incidents | project EventId, State | order by EventId asc",
            "alert": {"key_columns": ["EventId"]},
        },
        {
            "id": "mail",
            "action": "send_email",
            "to": ["oncall@example.com"],
            "subject": (
                "{{ alert.counts.new }} new, {{ alert.counts.still_firing }} still firing, "
                "{{ alert.counts.resolved }} resolved"
            ),
            "body_html": (
                "<ul>{% for one in alert.new %}<li>new {{ one.row.EventId }} in {{ one.row.State }}</li>"
                "{% endfor %}{% for one in alert.resolved %}<li>resolved {{ one.key }}</li>{% endfor %}</ul>"
            ),
        },
    ],
}


@pytest.fixture
def operator_connections(hooks: Hooks) -> dict[str, Any]:
    """A mute window of the operator's that is always on (what it holds is never told here), and
    the on-call webhook, the test's receiver."""
    return {
        "mute_windows": [{"name": "always", "times": ["00:00-24:00"]}],
        "webhooks": {"oncall": {"url": hooks.url}},
    }


async def set_incidents(system: System, rows: list[tuple[int, str]]) -> None:
    values = ", ".join(f'{event}, "{state}"' for event, state in rows)
    command = f".set-or-replace Incidents <| datatable(EventId:long, State:string)[{values}]"
    flow = {
        "name": "incidents-admin",
        "connection": "local",
        "database": "Samples",
        "steps": [{"id": "set", "action": "run_control_command_and_render_chart", "command": command}],
    }
    await system.save_flow(flow)
    run = await system.finished((await system.start_flow("incidents-admin"))["run_id"])
    assert run["status"] == "succeeded", run


async def evaluate(system: System, flow: str = "incident-alert") -> dict[str, Any]:
    run = await system.finished((await system.start_flow(flow))["run_id"], timeout=60)
    [alert] = [step for step in run["steps"] if step["step_id"] == "open.alert"]
    assert alert["status"] == "succeeded", alert
    return run


def subjects(system: System) -> list[str]:
    found = []
    for path in system.smtp.messages():
        for line in path.read_text(errors="replace").splitlines():
            if line.startswith("Subject: "):
                found.append(line.removeprefix("Subject: "))
    return found


@pytest.mark.parametrize("system", ["in_process", "rabbitmq"], indirect=True)
async def test_a_keyed_alert_fires_per_new_row_stays_quiet_and_resolves(system: System) -> None:
    await set_incidents(system, [(1, "TEXAS"), (2, "OHIO")])
    await system.save_flow(ALERT_FLOW)

    first = await evaluate(system)
    assert first["status"] == "succeeded", first
    assert subjects(system) == ["2 new, 0 still firing, 0 resolved"]
    [mail] = system.smtp.messages()
    assert "new 1 in TEXAS" in mail.read_text()
    assert "new 2 in OHIO" in mail.read_text()

    quiet = await evaluate(system)
    assert quiet["status"] == "succeeded", quiet
    [skipped] = [step for step in quiet["steps"] if step["step_id"] == "mail"]
    assert skipped["status"] == "skipped"
    assert "the alert has nothing new to tell" in skipped["detail"]["reason"]
    assert len(system.smtp.messages()) == 1

    await set_incidents(system, [(2, "OHIO"), (3, "KANSAS")])
    await evaluate(system)
    assert subjects(system)[-1] == "1 new, 1 still firing, 1 resolved"

    await set_incidents(system, [])
    await evaluate(system)
    assert subjects(system)[-1] == "0 new, 0 still firing, 2 resolved"
    await evaluate(system)
    assert len(system.smtp.messages()) == 3


def count_alert(source: str) -> dict[str, Any]:
    return {
        "name": "count-alert",
        "connection": "local",
        "database": "Samples",
        "steps": [
            {
                "id": "open",
                "action": "run_query",
                "query": f"{source} | count",
                "alert": {"condition": "{{ steps.open.first_row.Count > 5 }}"},
            },
            {
                "id": "mail",
                "action": "send_email",
                "to": ["oncall@example.com"],
                "subject": "alert {{ alert.state }} (was {{ alert.previous }})",
            },
        ],
    }


@pytest.mark.parametrize("system", ["in_process"], indirect=True)
async def test_a_failing_query_is_told_once_as_an_error_and_once_resolved(system: System) -> None:
    await set_incidents(system, [(7, "IOWA")])
    await system.save_flow(count_alert("Incidents"))
    ok = await evaluate(system, "count-alert")
    assert ok["status"] == "succeeded"
    assert subjects(system) == []

    # The flow saved again with a query that fails: the same alert, now in error.
    await system.save_flow(count_alert("NoSuchTable"))
    broken = await system.finished((await system.start_flow("count-alert"))["run_id"])
    # The run fails at its query, and its alert tells the error once.
    assert (broken["status"], broken["failed_step"]) == ("failed", "open")
    assert subjects(system) == ["alert error (was ok)"]
    again = await system.finished((await system.start_flow("count-alert"))["run_id"])
    assert again["status"] == "failed"
    assert len(subjects(system)) == 1

    await system.save_flow(count_alert("Incidents"))
    await evaluate(system, "count-alert")
    assert subjects(system) == ["alert error (was ok)", "alert ok (was error)"]


@pytest.mark.parametrize("system", ["in_process"], indirect=True)
async def test_the_run_page_shows_what_the_alert_did(system: System) -> None:
    await set_incidents(system, [(1, "TEXAS"), (2, "OHIO")])
    await system.save_flow(ALERT_FLOW)
    fired = await evaluate(system)
    quiet = await evaluate(system)

    async def page(run: dict[str, Any]) -> str:
        async with system.session.get(f"{system.history_url}/ui/runs/{run['run_id']}") as response:
            assert response.status == 200
            return " ".join((await response.text()).split())

    first = await page(fired)
    assert 'data-alert-state="firing"' in first
    assert "(was ok)" in first
    assert "told firing" in first
    assert "<strong>New</strong> (2): <code>EventId=1</code>, <code>EventId=2</code>" in first
    second = await page(quiet)
    assert "as before" in second
    assert "nothing new to tell" in second
    assert "<strong>Still firing</strong> (2)" in second


PER_INSTANCE_FLOW: dict[str, Any] = {
    **ALERT_FLOW,
    "name": "incident-each",
    "steps": [
        ALERT_FLOW["steps"][0],
        {
            "id": "mail",
            "action": "send_email",
            "for_each": "open",
            "to": ["oncall@example.com"],
            "subject": "{{ alert.instance.notice }} {{ row.EventId }} {{ row.State }}",
        },
    ],
}


@pytest.mark.parametrize("system", ["in_process", "rabbitmq"], indirect=True)
async def test_one_email_per_instance_as_it_fires_and_as_it_resolves(system: System) -> None:
    await set_incidents(system, [(1, "TEXAS"), (2, "OHIO")])
    await system.save_flow(PER_INSTANCE_FLOW)

    await evaluate(system, "incident-each")
    assert sorted(subjects(system)) == ["firing 1 TEXAS", "firing 2 OHIO"]
    await evaluate(system, "incident-each")
    assert len(subjects(system)) == 2

    await set_incidents(system, [(2, "OHIO"), (3, "KANSAS")])
    changed = await evaluate(system, "incident-each")
    # The resolved one is told with the row it fired with: its rows are gone from the result.
    assert sorted(subjects(system)[2:]) == ["firing 3 KANSAS", "resolved 1 TEXAS"]
    [mail] = [step for step in changed["steps"] if step["step_id"] == "mail"]
    assert mail["detail"]["deliveries"] == 2

    await set_incidents(system, [])
    await evaluate(system, "incident-each")
    await evaluate(system, "incident-each")
    assert sorted(subjects(system)[4:]) == ["resolved 2 OHIO", "resolved 3 KANSAS"]


@pytest.mark.parametrize("system", ["in_process"], indirect=True)
async def test_in_a_mute_window_the_state_moves_and_nothing_is_told(system: System) -> None:
    await set_incidents(system, [(1, "TEXAS"), (2, "OHIO")])
    muted_flow = {**PER_INSTANCE_FLOW, "name": "incident-muted"}
    muted_flow["steps"] = [
        {**PER_INSTANCE_FLOW["steps"][0], "alert": {"key_columns": ["EventId"], "mute_windows": ["always"]}},
        PER_INSTANCE_FLOW["steps"][1],
    ]
    await system.save_flow(muted_flow)

    run = await evaluate(system, "incident-muted")

    [alert] = [step for step in run["steps"] if step["step_id"] == "open.alert"]
    assert alert["detail"]["alert"]["state"] == "firing"
    assert alert["detail"]["alert"]["muted"]["held"] == 2
    [mail] = [step for step in run["steps"] if step["step_id"] == "mail"]
    assert mail["status"] == "skipped"
    assert "2 held by mute window always" in mail["detail"]["reason"]
    assert subjects(system) == []
    async with system.session.get(f"{system.history_url}/ui/runs/{run['run_id']}") as response:
        page = " ".join((await response.text()).split())
    assert 'data-alert-muted="always"' in page
    assert "2 held" in page


@pytest.mark.parametrize("system", ["in_process"], indirect=True)
async def test_a_webhook_per_instance_carries_the_alert_and_the_instance_it_tells_of(system: System) -> None:
    await set_incidents(system, [(1, "TEXAS"), (2, "OHIO")])
    hooked = {**PER_INSTANCE_FLOW, "name": "incident-hook"}
    hooked["steps"] = [
        PER_INSTANCE_FLOW["steps"][0],
        {"id": "hook", "action": "post_webhook", "webhook": "oncall", "for_each": "open", "format": "json"},
    ]
    await system.save_flow(hooked)

    await evaluate(system, "incident-hook")
    await set_incidents(system, [(2, "OHIO")])
    await evaluate(system, "incident-hook")

    posts = [json.loads(body) for _, body in system.hooks.received]
    told = sorted((post["alert"]["instance"]["notice"], post["step"]["row"]["EventId"]) for post in posts)
    assert told == [("firing", 1), ("firing", 2), ("resolved", 1)]
    resolved = next(post for post in posts if post["alert"]["instance"]["notice"] == "resolved")
    assert resolved["alert"]["state"] == "firing"
    assert resolved["alert"]["counts"]["resolved"] == 1
    assert resolved["run"]["url"].endswith(f"/ui/runs/{resolved['run']['id']}")
