"""Doing a run's work again, end to end: a resend reaches the SMTP server a
second time, and a run that failed on a missing table succeeds when re-run
once the table exists, with both attempts in its history."""

from __future__ import annotations

import email
import email.policy
from typing import Any

from tests.e2e.conftest import System

JOB: dict[str, Any] = {
    "connection": "local",
    "database": "Samples",
    "query": "StormEvents | summarize Events = count() by State | top 3 by Events",
    "email": {"to": ["team@example.com"], "subject": "Storms again"},
}


def attempts(run: dict[str, Any], step_id: str) -> list[tuple[int, str]]:
    return [(s["attempt"], s["status"]) for s in run["steps"] if s["step_id"] == step_id]


async def post(system: System, path: str, body: dict[str, Any] | None = None) -> tuple[int, Any, str]:
    async with system.session.post(f"{system.history_url}{path}", json=body) as response:
        return response.status, await response.json(), response.headers.get("Location", "")


async def test_a_resend_delivers_the_email_again_as_a_new_attempt(system: System) -> None:
    run_id = (await system.submit(JOB))["run_id"]
    run = await system.finished(run_id)
    assert run["status"] == "succeeded", run
    assert len(system.smtp.messages()) == 1

    status, body, location = await post(system, f"/v1/runs/{run_id}/resend", {"step": "notify"})

    assert status == 202, body
    assert location == f"/v1/runs/{run_id}"
    assert body["queued"] == {"run_id": run_id, "step_id": "notify", "attempt": 2}

    async def delivered_twice() -> bool:
        return len(system.smtp.messages()) == 2

    await system.wait_until(delivered_twice, timeout=30, what="the resent email")

    async def recorded() -> bool:
        latest = await system.run(run_id)
        return latest is not None and (2, "succeeded") in attempts(latest, "notify")

    await system.wait_until(recorded, timeout=30, what="the resend in the history")
    again = await system.run(run_id)
    assert again is not None
    assert again["status"] == "succeeded"
    assert attempts(again, "notify") == [(1, "succeeded"), (2, "succeeded")]
    assert attempts(again, "record") == [(1, "succeeded")]
    sent = [
        email.message_from_bytes(path.read_bytes(), policy=email.policy.default)
        for path in system.smtp.messages()
    ]
    assert [message["Subject"] for message in sent] == ["Storms again", "Storms again"]
    assert sent[0]["Message-ID"] != sent[1]["Message-ID"]
    resent = next(s for s in again["steps"] if s["step_id"] == "notify" and s["attempt"] == 2)
    assert resent["artifacts"]["email"]["content_type"] == "message/rfc822"
    assert resent["queued_at"] is not None


async def test_a_run_failed_on_a_missing_table_succeeds_when_re_run_after_it_exists(system: System) -> None:
    table = "LateArrivals"
    flow = {
        "name": "late-table",
        "connection": "local",
        "database": "Samples",
        "steps": [
            {"id": "arrivals", "action": "run_query_and_render_chart", "query": f"{table} | count"},
            {"id": "mail", "action": "send_email", "to": ["team@example.com"], "subject": "Arrivals"},
        ],
    }
    await system.save_flow(flow)
    run_id = (await system.start_flow("late-table"))["run_id"]
    failed = await system.finished(run_id)
    assert failed["status"] == "failed"
    assert failed["failed_step"] == "arrivals"
    assert failed["error"]["code"] == "KustoSemanticError"

    status, body, _ = await post(system, f"/v1/runs/{run_id}/resend")
    assert status == 409
    assert "sent no email" in body["error"]["message"]

    create = {
        **JOB,
        "action": "control_command",
        "query": f".set-or-append {table} <| StormEvents | take 3",
    }
    created = await system.finished((await system.submit(create))["run_id"])
    assert created["status"] == "succeeded", created
    emails_before = len(system.smtp.messages())

    status, body, location = await post(system, f"/v1/runs/{run_id}/rerun")

    assert status == 202, body
    assert location == f"/v1/runs/{run_id}"
    assert body["queued"]["attempt"] == 2
    assert body["run"]["status"] == "running"
    status, again, _ = await post(system, f"/v1/runs/{run_id}/rerun")
    assert status == 409, again

    async def succeeded() -> bool:
        latest = await system.run(run_id)
        return latest is not None and latest["status"] == "succeeded"

    await system.wait_until(succeeded, timeout=60, what="the re-run")
    run = await system.run(run_id)
    assert run is not None
    assert attempts(run, "arrivals") == [(1, "failed"), (2, "succeeded")]
    first, second = (s for s in run["steps"] if s["step_id"] == "arrivals")
    assert first["error"]["code"] == "KustoSemanticError"
    assert second["row_count"] == 1
    assert second["query"]["text"] == f"{table} | count"
    assert attempts(run, "trigger") == [(1, "succeeded")]
    assert attempts(run, "mail") == [(1, "succeeded")]
    assert run["error"] is None
    assert len(system.smtp.messages()) == emails_before + 1

    status, body, _ = await post(system, f"/v1/runs/{run_id}/rerun")
    assert status == 409
    assert "only a failed run" in body["error"]["message"]
    assert (await post(system, "/v1/runs/nope/rerun"))[0] == 404
