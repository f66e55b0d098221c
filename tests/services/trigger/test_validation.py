"""Flows checked against the operator's limits."""

from __future__ import annotations

import datetime as dt

import pytest

from common.contracts.flows import Flow
from common.platform.connections import Connections, DatabaseConfig
from common.platform.webhooks import WebhookPolicy
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


def check_recipients(allowed: list[str], **recipients: list[str]) -> list[tuple[str, str]]:
    flow = Flow.model_validate(
        {
            "name": "mail",
            "connection": "local",
            "database": "Samples",
            "steps": [
                {"id": "q", "action": "run_query", "query": "StormEvents | take 10"},
                {"id": "hook", "action": "post_webhook", "url": "https://hooks.example.com/in"},
                {"id": "mail", "action": "send_email", "subject": "Storms", **recipients},
            ],
        }
    )
    connections = Connections()
    connections.add_local("local", "http://127.0.0.1:31415")
    try:
        check_flow(
            flow,
            connections=connections,
            policy=WebhookPolicy(named={}, allowed_hosts=["hooks.example.com"]),
            minimum_interval=dt.timedelta(minutes=1),
            maximum_timeout=600,
            allowed_domains=allowed,
        )
    except FlowInvalid as exc:
        return exc.problems
    return []


def test_a_recipient_outside_the_allowed_domains_is_refused_naming_the_field() -> None:
    problems = check_recipients(
        ["example.com", "example.org"],
        to=["team@example.com"],
        cc=["ops@example.org", "x@evil.com"],
        bcc=["audit@sub.example.com"],
    )

    assert problems == [
        (
            "steps[2].cc[1]",
            "'x@evil.com' is outside the domains this server sends to (example.com, example.org)",
        )
    ]


def test_every_recipient_outside_is_named() -> None:
    problems = check_recipients(
        ["example.com"], to=["a@evil.com"], cc=["b@badexample.com"], bcc=["c@example.com.evil.net"]
    )

    assert [field for field, _ in problems] == ["steps[2].to[0]", "steps[2].cc[0]", "steps[2].bcc[0]"]


@pytest.mark.parametrize(
    "address", ["team@example.com", "Team@EXAMPLE.com", "ops@a.example.com", "ops@a.b.Example.COM"]
)
def test_the_domain_and_its_subdomains_are_allowed_in_any_case(address: str) -> None:
    assert check_recipients(["Example.com"], to=[address]) == []


@pytest.mark.parametrize("address", ["x@badexample.com", "x@example.com.evil.net", "x@example.co"])
def test_a_lookalike_domain_is_refused(address: str) -> None:
    assert [field for field, _ in check_recipients(["example.com"], to=[address])] == ["steps[2].to[0]"]


def test_an_international_domain_matches_its_punycode_spelling() -> None:
    assert check_recipients(["xn--bcher-kva.de"], to=["leser@bücher.de"]) == []
    assert check_recipients(["bücher.de"], to=["leser@post.BÜCHER.de"]) == []


def test_without_allowed_domains_every_recipient_is_accepted() -> None:
    assert check_recipients([], to=["a@anywhere.example"], cc=["b@elsewhere.example"]) == []


def test_every_problem_is_listed_in_the_order_of_the_flow() -> None:
    flow = Flow.model_validate(
        {
            "name": "many",
            "connection": "elsewhere",
            "database": "Samples",
            "parameters": {"state": {"type": "string"}},
            "trigger": {"after": {"flow": "parent"}},
            "steps": [
                {
                    "id": "q",
                    "action": "run_query",
                    "query": "StormEvents",
                    "connection": "gone",
                    "max_rows": 11,
                },
                {"id": "hook", "action": "post_webhook", "url": "https://evil.example.net/in"},
                {"id": "mail", "action": "send_email", "subject": "Storms", "to": ["x@evil.com"]},
            ],
        }
    )
    connections = Connections()
    connections.add_local("local", "http://127.0.0.1:31415")
    with pytest.raises(FlowInvalid) as caught:
        check_flow(
            flow,
            connections=connections,
            policy=WebhookPolicy(named={}, allowed_hosts=["hooks.example.com"]),
            minimum_interval=dt.timedelta(minutes=1),
            maximum_timeout=600,
            maximum_rows=10,
            allowed_domains=["example.com"],
            followed_by={"parent": "grandparent", "grandparent": "many"},
        )

    assert [field for field, _ in caught.value.problems] == [
        "connection",
        "steps[0].connection",
        "steps[0].max_rows",
        "steps[1].url",
        "steps[2].to[0]",
        "parameters.state",
        "trigger.after.flow",
    ]
    assert caught.value.problems[-1][1] == "the chain would loop: many → parent → grandparent → many"


def check_scope(
    maximum_concurrency: int = 20, maximum_items: int = 500, **scope: object
) -> list[tuple[str, str]]:
    """A for_each nested in a parallel branch, checked against the operator's scope maxima."""
    inner = {
        "id": "each",
        "for_each": "q",
        "steps": [{"id": "count", "action": "run_query", "query": "StormEvents | count"}],
        **scope,
    }
    flow = Flow.model_validate(
        {
            "name": "scoped",
            "connection": "local",
            "database": "Samples",
            "steps": [
                {"id": "q", "action": "run_query", "query": "StormEvents | take 10"},
                {
                    "id": "both",
                    "parallel": [
                        {"id": "rows", "steps": [inner]},
                        {
                            "id": "other",
                            "steps": [{"id": "o", "action": "run_query", "query": "StormEvents"}],
                        },
                    ],
                },
            ],
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
            maximum_concurrency=maximum_concurrency,
            maximum_items=maximum_items,
        )
    except FlowInvalid as exc:
        return exc.problems
    return []


def test_a_for_each_at_the_operators_maxima_passes() -> None:
    assert check_scope(concurrency=20, max_items=500) == []


def test_a_for_each_above_the_operators_maxima_is_refused_naming_each_field() -> None:
    assert check_scope(maximum_items=1_500, concurrency=21, max_items=1_501) == [
        ("steps[1].parallel[0].steps[0].concurrency", "at most 20 on this server"),
        ("steps[1].parallel[0].steps[0].max_items", "at most 1,500 on this server"),
    ]


def test_a_for_each_asking_for_nothing_gets_the_defaults_within_the_maxima() -> None:
    # The defaults (10 at once, 1,000 rows) are refused only where the operator allows less.
    assert check_scope(maximum_concurrency=10, maximum_items=1_000) == []
    assert [field for field, _ in check_scope(maximum_concurrency=9, maximum_items=999)] == [
        "steps[1].parallel[0].steps[0].concurrency",
        "steps[1].parallel[0].steps[0].max_items",
    ]


def test_the_limits_of_a_step_inside_a_scope_are_checked_at_its_nested_field() -> None:
    problems = check_scope(
        maximum_items=1_000,
        steps=[{"id": "count", "action": "run_query", "query": "T", "timeout_seconds": 601}],
    )

    assert problems == [
        ("steps[1].parallel[0].steps[0].steps[0].timeout_seconds", "at most 600 s on this server")
    ]


def test_an_alert_naming_a_mute_window_the_operator_did_not_configure_is_refused_naming_the_field() -> None:
    problems = check(alert={"key_columns": ["EventId"], "mute_windows": ["weekends"]})
    assert problems == [
        (
            "steps[0].alert.mute_windows[0]",
            "'weekends' is not a configured mute window (known: none are configured)",
        )
    ]


def check_copy(**copy: object) -> list[tuple[str, str]]:
    flow = Flow.model_validate(
        {
            "name": "copy",
            "connection": "local",
            "database": "Samples",
            "steps": [
                {
                    "id": "save",
                    "action": "copy_to_database",
                    "database": "reports",
                    "table": "daily_summary",
                    "query": "StormEvents | summarize Events = count() by State",
                    **copy,
                }
            ],
        }
    )
    connections = Connections(
        databases={
            "reports": DatabaseConfig(url="postgresql+asyncpg://reports@127.0.0.1/r", tables=["daily_*"])
        }
    )
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


def test_a_copy_with_its_own_query_within_the_limits_passes() -> None:
    assert check_copy(connection="local", kusto_database="Samples", timeout_seconds=600, max_rows=10) == []


@pytest.mark.parametrize(
    ("copy", "field"),
    [
        ({"connection": "elsewhere"}, "steps[0].connection"),
        ({"timeout_seconds": 601}, "steps[0].timeout_seconds"),
        ({"max_rows": 1_000_001}, "steps[0].max_rows"),
        ({"max_bytes": 200 * 2**20}, "steps[0].max_bytes"),
        ({"query": "StormEvents | facet by State"}, "steps[0].query"),
        ({"table": "secrets"}, "steps[0].table"),
    ],
)
def test_a_copys_own_query_beyond_the_operators_limits_is_refused_naming_the_field(
    copy: dict[str, object], field: str
) -> None:
    assert [found for found, _ in check_copy(**copy)] == [field]
