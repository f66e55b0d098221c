"""Scope steps end to end: for_each over a query's rows, if with else, parallel branches.

Against the embedded system (in-process broker, SQLite) and the deployed column (RabbitMQ, and
PostgreSQL where the parameter says so), with the local Kusto endpoint and a real SMTP server.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.e2e.conftest import System

DEADLY = "StormEvents | where DeathsDirect >= 3 | top 6 by EventId asc | project EventId, State, DeathsDirect"


def _per_row_flow(hook: str, **scope: Any) -> dict[str, Any]:
    return {
        "name": "per-incident",
        "connection": "local",
        "database": "Samples",
        "steps": [
            {"id": "incidents", "action": "run_query", "query": DEADLY},
            {
                "id": "each",
                "for_each": "incidents",
                "concurrency": 2,
                **scope,
                "steps": [
                    {
                        "id": "check",
                        "if": "{{ row.DeathsDirect >= 5 }}",
                        "then": [
                            {
                                "id": "similar",
                                "action": "run_query",
                                "parameters": {"state": {"type": "string", "value": "{{ row.State }}"}},
                                "query": "StormEvents | where State == state | count",
                            },
                            {
                                "id": "post",
                                "action": "post_webhook",
                                "url": hook,
                                "body": (
                                    '{"event": {{ row.EventId }}, '
                                    '"similar": {{ steps.similar.first_row.Count }}}'
                                ),
                            },
                        ],
                        "else": [
                            {
                                "id": "small",
                                "action": "post_webhook",
                                "url": hook,
                                "body": '{"event": {{ row.EventId }}, "small": true}',
                            }
                        ],
                    }
                ],
            },
            {
                "id": "summary",
                "action": "send_email",
                "to": ["team@example.com"],
                "subject": "{{ steps.each.succeeded }} of {{ steps.each.total }} incidents handled",
                "body_html": "<p>{{ steps.each.iterations | length }} listed</p>",
            },
        ],
    }


@pytest.mark.parametrize("system", ["in_process", "rabbitmq"], indirect=True)
async def test_a_for_each_runs_its_steps_once_per_row_and_the_flow_goes_on_after_all(system: System) -> None:
    await system.save_flow(_per_row_flow(system.hooks.url))
    started = await system.start_flow("per-incident")
    run = await system.finished(started["run_id"], timeout=120)
    assert run["status"] == "succeeded", run

    bodies = [json.loads(body) for _, body in system.hooks.received]
    assert len(bodies) == 6
    assert len({body["event"] for body in bodies}) == 6
    big = [body for body in bodies if "similar" in body]
    assert big
    assert all(body["similar"] > 0 for body in big)
    mails = [path.read_text(errors="replace") for path in system.smtp.messages()]
    assert len(mails) == 1
    assert "6 of 6 incidents handled" in mails[0]
    each = next(step for step in run["steps"] if step["step_id"] == "each")
    assert each["status"] == "succeeded"
    assert (each["detail"]["total"], each["detail"]["succeeded"], each["detail"]["failed"]) == (6, 6, 0)
