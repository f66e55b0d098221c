"""Flows checked against the operator's limits."""

from __future__ import annotations

import datetime as dt

import pytest

from common.connections import Connections
from common.flows import Flow
from common.webhooks import WebhookPolicy
from services.trigger.validation import FlowInvalid, check_flow


def check(**step: object) -> list[tuple[str, str]]:
    flow = Flow.model_validate(
        {
            "name": "limits",
            "connection": "local",
            "database": "Samples",
            "steps": [{"id": "q", "action": "run_query", "query": "StormEvents | take 10", **step}],
        }
    )
    connections = Connections()
    connections.add_local("local", "http://127.0.0.1:31415")
    try:
        check_flow(
            flow,
            connections=connections,
            policy=WebhookPolicy(named={}, allowed_hosts=[]),
            minimum_interval=dt.timedelta(minutes=1),
            maximum_timeout=600,
            maximum_rows=1_000_000,
            maximum_bytes=100 * 2**20,
        )
    except FlowInvalid as exc:
        return exc.problems
    return []


def test_a_step_within_the_limits_passes() -> None:
    assert check(timeout_seconds=600, max_rows=1_000_000, max_bytes=2**20) == []


@pytest.mark.parametrize(
    ("step", "field"),
    [
        ({"timeout_seconds": 601}, "steps[0].timeout_seconds"),
        ({"max_rows": 1_000_001}, "steps[0].max_rows"),
        ({"max_bytes": 200 * 2**20}, "steps[0].max_bytes"),
        ({"query": "StormEvents | facet by State"}, "steps[0].query"),
    ],
)
def test_a_step_beyond_the_operators_limits_is_refused_naming_the_field(
    step: dict[str, object], field: str
) -> None:
    assert [found for found, _ in check(**step)] == [field]
