"""The links a report carries: the run's page in the history UI, and each query in the web UI."""

from __future__ import annotations

import base64
import gzip
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from common.contracts.flows import Flow, new_run
from common.contracts.messages import RunContext, StepOutput, TriggerKind, new_id
from common.platform.connections import Connections, ManagedIdentity, NoAuth
from common.platform.deep_links import default_literal, query_link
from services.notifier.links import query_links, run_page

FLOW = {
    "name": "storms",
    "connection": "prod",
    "database": "Samples",
    "parameters": {"min_deaths": {"type": "long", "default": 3}},
    "steps": [
        {"id": "deadly", "action": "run_query", "query": "StormEvents | where DeathsDirect >= min_deaths"},
        {
            "id": "local_copy",
            "action": "run_query",
            "connection": "local",
            "database": "Other DB",
            "parameters": {"state": {"type": "string", "value": "TEXAS"}},
            "query": "StormEvents | where State == state",
        },
        {"id": "mail", "action": "send_email", "to": ["team@example.com"], "subject": "Storms"},
    ],
}


def linked_text(link: str) -> tuple[str, str]:
    """The database a link opens and the query text it carries."""
    parts = urlsplit(link)
    [packed] = parse_qs(parts.query)["query"]
    return parts.path, gzip.decompress(base64.b64decode(packed)).decode("utf-8")


def message_with(outputs: dict[str, dict[str, Any]]) -> Any:
    flow = Flow.model_validate(FLOW)
    message = new_run(flow, RunContext(flow=flow.name, trigger=TriggerKind.MANUAL), new_id())
    done = {step: StepOutput(row_count=1, detail=detail) for step, detail in outputs.items()}
    return message.model_copy(update={"outputs": done}), flow


def connections(**local: Any) -> Connections:
    return Connections(
        {
            "prod": ManagedIdentity(cluster="https://help.kusto.windows.net", auth="managed_identity"),
            "local": NoAuth(cluster="http://127.0.0.1:8082", auth="none", **local),
        }
    )


def test_a_query_on_a_cluster_links_its_text_as_sent_with_the_values_the_run_used() -> None:
    message, flow = message_with(
        {
            "deadly": {"text": FLOW["steps"][0]["query"], "parameters": {"min_deaths": 5}},
            "local_copy": {"text": "StormEvents | where State == state", "parameters": {"state": 'TEX"AS'}},
        }
    )
    links = query_links(message, flow, connections())

    # The local http endpoint has no web UI: only the cluster's query is linked.
    assert list(links) == ["deadly"]
    assert links["deadly"].startswith("https://help.kusto.windows.net/Samples?query=")
    path, text = linked_text(links["deadly"])
    assert path == "/Samples"
    declared = "declare query_parameters(min_deaths:long = long(5));"
    assert text == f"{declared}\nStormEvents | where DeathsDirect >= min_deaths"


def test_a_connection_may_name_its_own_ui_or_none() -> None:
    message, flow = message_with(
        {"local_copy": {"text": "StormEvents | where State == state", "parameters": {"state": 'TEX"AS'}}}
    )
    links = query_links(message, flow, connections(ui_url="https://ui.example/clusters/local/"))
    path, text = linked_text(links["local_copy"])
    assert path == "/clusters/local/Other%20DB"
    assert links["local_copy"].startswith("https://ui.example/clusters/local/Other%20DB?query=")
    assert text == 'declare query_parameters(state:string = "TEX\\"AS");\nStormEvents | where State == state'
    assert query_links(message, flow, connections(ui_url="https://ui.example", query_links=False)) == {}


def test_a_step_that_did_not_say_what_it_sent_or_a_connection_gone_is_not_linked() -> None:
    message, flow = message_with({"deadly": {}})
    assert query_links(message, flow, connections()) == {}
    message, flow = message_with({"deadly": {"text": "StormEvents | take 1", "parameters": {}}})
    assert query_links(message, flow, Connections()) == {}


def test_the_run_page_is_the_history_ui_not_the_api() -> None:
    assert run_page("https://history.example/", "r1") == "https://history.example/ui/runs/r1"


@pytest.mark.parametrize(
    ("kind", "value", "literal"),
    [
        ("string", 'a"b\\c\nd', '"a\\"b\\\\c\\nd"'),
        ("bool", True, "true"),
        ("int", 7, "int(7)"),
        ("long", 2**40, f"long({2**40})"),
        ("real", 0.5, "real(0.5)"),
        ("real", float("inf"), "real(+inf)"),
        ("datetime", "2026-03-01T06:00:00Z", "datetime(2026-03-01T06:00:00Z)"),
        ("timespan", "1.02:00:00", "timespan(1.02:00:00)"),
        ("string", None, "string(null)"),
    ],
)
def test_a_parameter_is_declared_with_its_value_as_a_kql_literal(kind: str, value: Any, literal: str) -> None:
    assert default_literal(kind, value) == literal


def test_a_link_is_the_same_for_the_same_query() -> None:
    first = query_link("https://c.kusto.windows.net", "db", "T | take 1", {})
    assert first == query_link("https://c.kusto.windows.net", "db", "T | take 1", {})
    assert query_link(None, "db", "T | take 1", {}) is None
