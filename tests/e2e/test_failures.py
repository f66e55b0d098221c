"""Failure semantics end to end: transient failures retried, exhausted ones
dead-lettered and replayable, refused operators never sent."""

from __future__ import annotations

import email
import email.policy
from pathlib import Path
from typing import Any

import pytest

from services.embedded.outbox import Outbox
from tests.e2e.conftest import System

JOB: dict[str, Any] = {
    "connection": "local",
    "database": "Samples",
    "query": "StormEvents | summarize Events = count() by State | top 3 by Events",
    "email": {"to": ["team@example.com"], "subject": "Storms"},
}


def attempts(run: dict[str, Any], step_id: str) -> list[tuple[int, str]]:
    return [(s["attempt"], s["status"]) for s in run["steps"] if s["step_id"] == step_id]


async def test_an_smtp_server_that_refuses_for_a_while_gets_the_email_once(system: System) -> None:
    system.rejections["later@example.com"] = [(451, "4.3.0 Try again later")]
    job = {**JOB, "email": {"to": ["later@example.com"], "subject": "Eventually"}}
    run = await system.finished((await system.submit(job))["run_id"])

    assert run["status"] == "succeeded", run
    assert attempts(run, "notify") == [(1, "failed"), (2, "succeeded")]
    first = next(s for s in run["steps"] if s["step_id"] == "notify" and s["attempt"] == 1)
    assert first["error"]["code"] == "SmtpRejected"
    assert first["error"]["retryable"] is True
    assert "451" in first["error"]["message"]
    assert len(system.smtp.messages()) == 1


async def test_exhausted_attempts_dead_letter_the_step_and_a_replay_finishes_the_run(system: System) -> None:
    system.rejections["down@example.com"] = [(421, "4.3.2 Service not available")] * 5
    job = {**JOB, "email": {"to": ["down@example.com"], "subject": "Replayed"}}
    run_id = (await system.submit(job))["run_id"]
    failed = await system.finished(run_id)

    assert failed["status"] == "failed"
    assert failed["failed_step"] == "notify"
    assert attempts(failed, "notify") == [(attempt, "failed") for attempt in range(1, 6)]
    assert system.smtp.messages() == []

    letters: list[dict[str, Any]] = []

    async def dead_lettered() -> bool:
        letters[:] = (await system.get("/v1/dead-letters"))["dead_letters"]
        return any(letter["run_id"] == run_id for letter in letters)

    await system.wait_until(dead_lettered, timeout=10, what="the dead letter")
    [letter] = [letter for letter in letters if letter["run_id"] == run_id]
    assert (letter["step_id"], letter["attempt"]) == ("notify", 5)
    assert letter["error"]["code"] == "SmtpRejected"

    status, body = await system.post(f"/v1/dead-letters/{letter['id']}/replay")
    assert status == 202
    assert body["replayed"]["attempt"] == 6

    async def succeeded() -> bool:
        run = await system.run(run_id)
        return run is not None and run["status"] == "succeeded"

    await system.wait_until(succeeded, timeout=30, what="the replayed run")
    assert len(system.smtp.messages()) == 1
    message = email.message_from_bytes(system.smtp.messages()[0].read_bytes(), policy=email.policy.default)
    assert message["Subject"] == "Replayed"
    assert (await system.get("/v1/dead-letters"))["dead_letters"] == [
        other for other in letters if other["id"] != letter["id"]
    ]


async def test_a_refused_operator_fails_the_run_before_anything_is_sent(system: System) -> None:
    job = {**JOB, "query": "StormEvents\n| fork (take 1) (take 2)"}
    run = await system.finished((await system.submit(job))["run_id"])

    assert run["status"] == "failed"
    query = next(s for s in run["steps"] if s["step_id"] == "query")
    assert query["error"]["code"] == "UnsupportedOperator"
    assert "'fork' at line 2, column 3" in query["error"]["message"]
    assert system.smtp.messages() == []

    flow = {
        "name": "plugins",
        "connection": "local",
        "database": "Samples",
        "steps": [
            {"id": "q", "action": "run_query", "query": "StormEvents | evaluate bag_unpack(StormSummary)"}
        ],
    }
    async with system.session.put(f"{system.trigger_url}/v1/flows/plugins", json=flow) as response:
        body = await response.json()
        assert response.status == 400
    assert body["error"]["fields"][0]["field"] == "steps[0].query"
    assert "evaluate" in body["error"]["fields"][0]["message"]


async def test_an_smtp_server_that_is_down_gets_the_email_when_it_is_back(
    system: System, tmp_path: Path
) -> None:
    port = system.smtp.port
    await system.smtp.close()
    run_id = (await system.submit({**JOB, "email": {"to": ["team@example.com"], "subject": "Back"}}))[
        "run_id"
    ]

    async def first_attempt_failed() -> bool:
        run = await system.run(run_id)
        return run is not None and (1, "failed") in attempts(run, "notify")

    await system.wait_until(first_attempt_failed, timeout=30, what="a failed delivery")
    async with Outbox(tmp_path / "back", port=port) as back:
        run = await system.finished(run_id)
        assert run["status"] == "succeeded", run
        first = next(s for s in run["steps"] if s["step_id"] == "notify" and s["attempt"] == 1)
        assert first["error"]["code"] == "SmtpUnavailable"
        assert len(back.messages()) == 1


@pytest.mark.parametrize("system", ["in_process"], indirect=True)
async def test_a_result_over_its_cap_fails_or_is_truncated_and_flagged(system: System) -> None:
    def flow(name: str, on_too_large: str) -> dict[str, Any]:
        return {
            "name": name,
            "connection": "local",
            "database": "Samples",
            "steps": [
                {
                    "id": "events",
                    "action": "run_query_and_render_chart",
                    "query": "StormEvents | project EventId, State | take 50",
                    "max_rows": 5,
                    "on_too_large": on_too_large,
                },
                {"id": "mail", "action": "send_email", "to": ["team@example.com"], "subject": name},
            ],
        }

    await system.save_flow(flow("capped-fail", "fail"))
    await system.save_flow(flow("capped-cut", "truncate"))
    failed = await system.finished((await system.start_flow("capped-fail"))["run_id"])
    cut = await system.finished((await system.start_flow("capped-cut"))["run_id"])

    assert failed["status"] == "failed"
    assert failed["error"]["code"] == "ResultTooLarge"
    assert "max_rows" in failed["error"]["message"]
    assert cut["status"] == "succeeded"
    assert cut["truncated"] is True
    events = next(s for s in cut["steps"] if s["step_id"] == "events")
    assert events["row_count"] == 5
    [path] = system.smtp.messages()
    message = email.message_from_bytes(path.read_bytes(), policy=email.policy.default)
    html = message.get_body(("html",))
    assert html is not None
    assert "showing 5 of more rows" in html.get_content()
