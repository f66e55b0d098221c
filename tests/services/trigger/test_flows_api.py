"""The flow API over real HTTP: saving flows, refusing bad ones, starting runs.

The trigger runs with its SQLite store under the test's own directory and an
in-process broker in a namespace of its own, so no test sees another's flows,
runs or idempotency keys.
"""

from __future__ import annotations

import asyncio
import copy
import datetime as dt
import itertools
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import aiohttp
import pytest

from common.contracts.messages import RunMessage, StepKind
from common.contracts.topology import QueueSpec, Topology
from common.platform.blobs.folder import FolderBlobStore
from common.platform.broker.interface import Delivery
from common.platform.broker.memory import InProcessBroker
from common.platform.config import Settings
from common.platform.connections import Connections
from common.platform.runtime import Runtime
from services.trigger import service as trigger

HISTORY_URL = "http://history.example:8081"

STORMS: dict[str, Any] = {
    "name": "daily-storms",
    "description": "Storm damage by state, every morning",
    "connection": "local",
    "database": "Samples",
    "trigger": {"cron": "0 8 * * *", "timezone": "Europe/Berlin"},
    "steps": [
        {
            "id": "by_state",
            "action": "run_query_and_render_chart",
            "query": "StormEvents | summarize Events = count() by State",
            "chart": "piechart",
        },
        {
            "id": "mail",
            "action": "send_email",
            "to": ["team@example.com"],
            "subject": "Storms on {{ run.scheduled_for }}",
            "attachments": ["by_state"],
        },
    ],
}

#: Started on demand, with one parameter the caller must give and one with a default.
ON_DEMAND: dict[str, Any] = {
    "name": "storms-in-state",
    "connection": "local",
    "database": "Samples",
    "parameters": {
        "state": {"type": "string"},
        "min_damage": {"type": "long", "default": 10},
    },
    "steps": [
        {
            "id": "damage",
            "action": "run_query",
            "query": "StormEvents | where State == state and DamageProperty >= min_damage",
        },
    ],
}

STORMS_YAML = """\
name: weekly-storms
connection: local
database: Samples
trigger:
  cron: "30 7 * * 1"
  timezone: Europe/Berlin
steps:
  - id: by_state
    action: run_query_and_render_chart
    query: StormEvents | summarize Events = count() by State
  - id: mail
    action: send_email
    to: [team@example.com]
    subject: "Weekly storms"
    attachments: [by_state]
"""


class Answer:
    def __init__(self, status: int, body: Any, headers: Any) -> None:
        self.status = status
        self.body = body
        self.headers = headers

    @property
    def error(self) -> dict[str, Any]:
        error: dict[str, Any] = self.body["error"]
        return error

    def fields(self) -> dict[str, str]:
        """Field → message of a refusal.

        Rules the flow document checks across fields come back under ``body``
        with the path at the start of the message; those count under that path.
        """
        named: dict[str, str] = {}
        for entry in self.error.get("fields", []):
            field, message = entry["field"], entry["message"]
            if field == "body" and ": " in message:
                field, _, message = message.partition(": ")
            named[field] = message
        return named


class Api:
    def __init__(self, url: str, broker: InProcessBroker, session: aiohttp.ClientSession) -> None:
        self.url = url
        self.broker = broker
        self.session = session

    async def call(
        self,
        method: str,
        path: str,
        body: object = None,
        *,
        content_type: str = "application/json",
        headers: dict[str, str] | None = None,
    ) -> Answer:
        sent = dict(headers or {})
        data: str | None = None
        if body is not None:
            data = body if isinstance(body, str) else json.dumps(body)
            sent["Content-Type"] = content_type
        async with self.session.request(method, f"{self.url}{path}", data=data, headers=sent) as response:
            text = await response.text()
            return Answer(response.status, json.loads(text) if text else None, response.headers)

    async def put(self, flow: dict[str, Any], name: str | None = None) -> Answer:
        return await self.call("PUT", f"/v1/flows/{name or flow['name']}", flow)

    async def run(
        self, name: str, parameters: dict[str, Any] | None = None, *, key: str | None = None
    ) -> Answer:
        headers = {"Idempotency-Key": key} if key is not None else None
        body = {"parameters": parameters} if parameters is not None else None
        return await self.call("POST", f"/v1/flows/{name}/runs", body, headers=headers)

    @property
    def query_queue(self) -> QueueSpec:
        return self.broker.topology.step_queue(StepKind.QUERY)

    async def queued_runs(self, count: int) -> list[RunMessage]:
        """The first *count* messages of the query queue, taken off it."""
        taken: list[RunMessage] = []
        enough = asyncio.Event()

        async def take(delivery: Delivery) -> None:
            taken.append(RunMessage.model_validate_json(delivery.body))
            if len(taken) >= count:
                enough.set()

        await self.broker.consume(self.query_queue, take)
        await asyncio.wait_for(enough.wait(), 5)
        return taken


@pytest.fixture
async def api(tmp_path: Path, namespace: str) -> AsyncIterator[Api]:
    async with serving(tmp_path, namespace) as running:
        yield running


@asynccontextmanager
async def serving(tmp_path: Path, namespace: str, **changes: Any) -> AsyncIterator[Api]:
    """The trigger API with the test's settings, *changes* on top."""
    settings = Settings(
        data_dir=tmp_path,
        trigger_port=0,
        webhook_allowed_hosts=["hooks.example.com"],
        minimum_schedule_seconds=300,
        **changes,
    )
    connections = Connections()
    connections.add_local("local", "http://127.0.0.1:31415")
    broker = InProcessBroker(Topology(namespace))
    runtime = Runtime(
        settings=settings,
        broker=broker,
        blobs=FolderBlobStore(tmp_path / "blobs"),
        connections=connections,
        history_url=HISTORY_URL,
    )
    async with (
        runtime,
        trigger.running(runtime) as server,
        aiohttp.ClientSession() as session,
    ):
        yield Api(server.url, broker, session)


def flow_with(base: dict[str, Any], **changes: Any) -> dict[str, Any]:
    flow = copy.deepcopy(base)
    flow.update(changes)
    return flow


# -- saving, reading, listing, deleting ---------------------------------------


async def test_put_creates_then_replaces_with_a_new_version(api: Api) -> None:
    created = await api.put(STORMS)

    assert created.status == 201
    assert created.body["name"] == "daily-storms"
    assert created.body["version"] == 1

    replaced = await api.put(flow_with(STORMS, description="Storm damage, refreshed"))

    assert replaced.status == 200
    assert replaced.body["version"] == 2
    assert replaced.body["document"]["description"] == "Storm damage, refreshed"
    assert replaced.body["created_at"] == created.body["created_at"]
    fetched = await api.call("GET", "/v1/flows/daily-storms")
    assert fetched.body["version"] == 2
    assert fetched.body["document"]["description"] == "Storm damage, refreshed"


async def test_get_returns_the_document_and_its_schedule_in_words(api: Api) -> None:
    await api.put(STORMS)

    fetched = await api.call("GET", "/v1/flows/daily-storms")

    assert fetched.status == 200
    view = fetched.body
    assert view["name"] == "daily-storms"
    assert view["enabled"] is True
    assert view["trigger"] == "cron"
    assert view["schedule"] == "every day at 08:00 Europe/Berlin"
    document = view["document"]
    assert document["trigger"]["cron"] == "0 8 * * *"
    assert document["trigger"]["timezone"] == "Europe/Berlin"
    assert [step["id"] for step in document["steps"]] == ["by_state", "mail"]
    assert document["steps"][0]["chart"] == "piechart"
    assert document["steps"][1]["attachments"] == ["by_state"]
    next_fire = dt.datetime.fromisoformat(view["next_fire"])
    now = dt.datetime.now(dt.UTC)
    assert now < next_fire <= now + dt.timedelta(days=1, hours=1)
    # 08:00 in Berlin is 06:00 or 07:00 UTC, by the season.
    assert next_fire.astimezone(dt.UTC).hour in (6, 7)
    assert next_fire.minute == 0
    fires = [dt.datetime.fromisoformat(fire) for fire in view["next_fires"]]
    # The next five mornings at 08:00 Berlin time, a day apart, the first the one next_fire names.
    assert len(fires) == 5
    assert fires[0] == next_fire
    assert all(fire.astimezone(ZoneInfo("Europe/Berlin")).hour == 8 for fire in fires)
    gaps = [later - earlier for earlier, later in itertools.pairwise(fires)]
    assert all(dt.timedelta(hours=23) <= gap <= dt.timedelta(hours=25) for gap in gaps)
    assert fires == sorted(set(fires))


async def test_the_flows_list_leaves_the_next_fire_times_to_the_single_flow(api: Api) -> None:
    await api.put(STORMS)

    listed = (await api.call("GET", "/v1/flows")).body

    [view] = listed["flows"]
    assert view["next_fire"]
    assert "next_fires" not in view


async def test_a_flow_without_a_trigger_is_run_on_demand(api: Api) -> None:
    await api.put(ON_DEMAND)

    view = (await api.call("GET", "/v1/flows/storms-in-state")).body

    assert view["trigger"] == "manual"
    assert view["schedule"] == "on demand"
    assert "next_fire" not in view
    assert view["next_fires"] == []


async def test_put_takes_the_name_from_the_url_when_the_body_has_none(api: Api) -> None:
    flow = flow_with(ON_DEMAND)
    del flow["name"]

    answer = await api.put(flow, name="named-by-url")

    assert answer.status == 201
    assert answer.body["name"] == "named-by-url"
    assert (await api.call("GET", "/v1/flows/named-by-url")).status == 200


async def test_the_list_holds_every_saved_flow_by_name(api: Api) -> None:
    assert (await api.call("GET", "/v1/flows")).body == {"flows": []}
    await api.put(STORMS)
    await api.put(ON_DEMAND)

    listed = await api.call("GET", "/v1/flows")

    assert listed.status == 200
    flows = {view["name"]: view for view in listed.body["flows"]}
    assert list(flows) == ["daily-storms", "storms-in-state"]
    assert flows["daily-storms"]["schedule"] == "every day at 08:00 Europe/Berlin"
    assert flows["storms-in-state"]["schedule"] == "on demand"


async def test_delete_removes_the_flow(api: Api) -> None:
    await api.put(STORMS)

    deleted = await api.call("DELETE", "/v1/flows/daily-storms")

    assert deleted.status == 204
    gone = await api.call("GET", "/v1/flows/daily-storms")
    assert gone.status == 404
    assert gone.error["code"] == "NotFound"
    assert (await api.call("GET", "/v1/flows")).body == {"flows": []}
    assert (await api.call("DELETE", "/v1/flows/daily-storms")).status == 404


async def test_a_missing_flow_is_not_found(api: Api) -> None:
    answer = await api.call("GET", "/v1/flows/nobody")

    assert answer.status == 404
    assert answer.error["code"] == "NotFound"
    assert "nobody" in answer.error["message"]


async def test_post_creates_but_never_replaces(api: Api) -> None:
    created = await api.call("POST", "/v1/flows", STORMS)
    assert created.status == 201

    again = await api.call("POST", "/v1/flows", flow_with(STORMS, description="another"))

    assert again.status == 409
    assert again.error["code"] == "Conflict"
    assert "PUT /v1/flows/daily-storms" in again.error["message"]
    kept = (await api.call("GET", "/v1/flows/daily-storms")).body
    assert kept["version"] == 1
    assert kept["document"]["description"] == STORMS["description"]


async def test_put_refuses_a_body_naming_another_flow(api: Api) -> None:
    answer = await api.put(STORMS, name="other-name")

    assert answer.status == 400
    assert answer.error["code"] == "InvalidFlow"
    assert "'daily-storms'" in answer.error["message"]
    assert "'other-name'" in answer.error["message"]
    assert (await api.call("GET", "/v1/flows/other-name")).status == 404
    assert (await api.call("GET", "/v1/flows/daily-storms")).status == 404


@pytest.mark.parametrize("content_type", ["application/yaml", "application/x-yaml", "text/yaml"])
async def test_a_yaml_body_is_accepted(api: Api, content_type: str) -> None:
    answer = await api.call("PUT", "/v1/flows/weekly-storms", STORMS_YAML, content_type=content_type)

    assert answer.status == 201
    document = (await api.call("GET", "/v1/flows/weekly-storms")).body["document"]
    assert document["trigger"] == {"cron": "30 7 * * 1", "timezone": "Europe/Berlin", "missed": "latest"}
    assert document["steps"][1]["to"] == ["team@example.com"]
    assert document["steps"][1]["attachments"] == ["by_state"]


async def test_a_yaml_body_can_create_by_post(api: Api) -> None:
    answer = await api.call("POST", "/v1/flows", STORMS_YAML, content_type="application/yaml")

    assert answer.status == 201
    assert answer.body["name"] == "weekly-storms"


async def test_malformed_yaml_is_refused(api: Api) -> None:
    answer = await api.call(
        "PUT", "/v1/flows/weekly-storms", "steps: [unclosed", content_type="application/yaml"
    )

    assert answer.status == 400
    assert "not valid YAML" in answer.error["message"]


# -- refusals that name the field ---------------------------------------------


def _query(step_id: str = "q", text: str = "StormEvents | take 10", **extra: Any) -> dict[str, Any]:
    return {"id": step_id, "action": "run_query", "query": text, **extra}


def _chart(step_id: str = "chart") -> dict[str, Any]:
    return {"id": step_id, "action": "run_query_and_render_chart", "query": "StormEvents | take 10"}


def _email(step_id: str = "mail", **extra: Any) -> dict[str, Any]:
    return {"id": step_id, "action": "send_email", "to": ["team@example.com"], "subject": "Storms", **extra}


REFUSED: list[Any] = [
    pytest.param({"connection": "prod"}, "connection", "'prod'", id="unknown-connection"),
    pytest.param({"trigger": {"cron": "*/1 * * * *"}}, "trigger.cron", "5 minutes", id="cron-below-minimum"),
    pytest.param({"trigger": {"every": "1m"}}, "trigger.every", "5 minutes", id="every-below-minimum"),
    pytest.param(
        {"trigger": {"cron": "0 8 * * *", "timezone": "Mars/Olympus_Mons"}},
        "trigger.timezone",
        "'Mars/Olympus_Mons'",
        id="bad-timezone",
    ),
    pytest.param(
        {"steps": [_query(text="  .show tables")]},
        "steps[0].query",
        "run_control_command_and_render_chart",
        id="control-command-under-query",
    ),
    pytest.param(
        {"steps": [{"id": "tables", "action": "run_show_command", "command": ".drop table T"}]},
        "steps[0].command",
        ".show",
        id="show-command-that-is-not-show",
    ),
    pytest.param(
        {
            "steps": [
                {
                    "id": "append",
                    "action": "run_async_control_command",
                    "command": ".set-or-append T <| StormEvents",
                }
            ]
        },
        "steps[0].command",
        "'async' keyword",
        id="async-command-without-async",
    ),
    pytest.param(
        {"steps": [_query("q"), _query("q")]}, "steps[1].id", "earlier step", id="duplicate-step-id"
    ),
    pytest.param(
        {"steps": [_query(), _email(attachments=["chart"]), _chart("chart")]},
        "steps[1].attachments",
        "'chart'",
        id="attachment-of-a-later-step",
    ),
    pytest.param(
        {"steps": [_query("q"), _email(attachments=["q"])]},
        "steps[1].attachments",
        "renders a result",
        id="attachment-of-a-step-that-does-not-render",
    ),
    pytest.param(
        {"steps": [_query(), _email("first"), _email("second", for_each="first")]},
        "steps[2].for_each",
        "query step",
        id="for-each-over-a-delivery",
    ),
    pytest.param(
        {"steps": [_query(), _email(for_each="nowhere")]},
        "steps[1].for_each",
        "'nowhere'",
        id="for-each-over-no-step",
    ),
    pytest.param(
        {"steps": [_query(), _email(subject="Storms {{ steps.q.row_count ")]},
        "steps[1].subject",
        "template",
        id="template-syntax-in-subject",
    ),
    pytest.param(
        {"steps": [_query(), {"id": "hook", "action": "post_webhook", "url": "https://evil.example.net/x"}]},
        "steps[1].url",
        "allowlist",
        id="webhook-host-not-allowed",
    ),
    pytest.param(
        {
            "steps": [
                _query(),
                {
                    "id": "hook",
                    "action": "post_webhook",
                    "url": "https://hooks.example.com/in",
                    "format": "slack",
                    "title": "Rows: {{ steps.q.row_count ",
                },
            ]
        },
        "steps[1].title",
        "template",
        id="template-syntax-in-webhook-title",
    ),
    pytest.param(
        {"steps": [_query(), {"id": "hook", "action": "post_webhook", "webhook": "teams"}]},
        "steps[1].webhook",
        "'teams'",
        id="webhook-not-configured",
    ),
    pytest.param(
        {"steps": [_query(connection="elsewhere")]},
        "steps[0].connection",
        "'elsewhere'",
        id="unknown-step-connection",
    ),
    pytest.param(
        {"trigger": {"cron": "0 8 * * *"}, "parameters": {"region": {"type": "string"}}},
        "parameters.region",
        "default",
        id="scheduled-parameter-without-default",
    ),
    pytest.param(
        {"trigger": {"after": {"flow": "upstream"}}, "parameters": {"region": {"type": "string"}}},
        "parameters.region",
        "default",
        id="chained-parameter-without-default",
    ),
    pytest.param({"steps": [_query("record")]}, "steps[0].id", "reserved", id="reserved-step-id"),
]


@pytest.mark.parametrize(("change", "field", "said"), REFUSED)
async def test_an_invalid_flow_is_refused_naming_the_field(
    api: Api, change: dict[str, Any], field: str, said: str
) -> None:
    flow = flow_with(ON_DEMAND, **{"parameters": {}, **change})

    answer = await api.put(flow)

    assert answer.status == 400, answer.body
    fields = answer.fields()
    assert field in fields, answer.body
    assert said in fields[field]
    assert field in answer.error["message"]
    assert (await api.call("GET", f"/v1/flows/{flow['name']}")).status == 404


def _each(*steps: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"id": "each", "for_each": "q", "steps": list(steps), **extra}


SCOPE_REFUSED: list[Any] = [
    pytest.param(
        [_query(), _each(_query("inner", text=".show tables"))],
        "steps[1].steps[0].query",
        "is a control command",
        id="command-under-query-inside-for-each",
    ),
    pytest.param(
        [_query(), _each(_query("inner", when="{{ steps.gone.row_count > 0 }}"))],
        "steps[1].steps[0].when",
        "refers to step 'gone', which the flow does not have",
        id="unknown-step-inside-for-each",
    ),
    pytest.param(
        [_query(), _each(_email(subject="{{ steps.later.row_count }}")), _query("later")],
        "steps[1].steps[0].subject",
        "would make a cycle",
        id="later-step-inside-for-each",
    ),
    pytest.param(
        [_query(), _email(), {"id": "each", "for_each": "mail", "steps": [_query("inner")]}],
        "steps[2].for_each",
        "'mail' is not an earlier query step",
        id="for-each-over-a-delivery-step",
    ),
    pytest.param(
        [_query(), _email(subject="{{ row.State }}")],
        "steps[1].subject",
        "'row' is defined only inside a for_each",
        id="row-outside-a-scope",
    ),
    pytest.param(
        [_query(), _each(_query("inner")), _email(subject="{{ steps.inner.row_count }}")],
        "steps[2].subject",
        "runs once per row inside for_each 'each'; use steps.each.iterations",
        id="inner-step-of-a-for-each-from-outside",
    ),
    pytest.param(
        [
            _query(),
            {
                "id": "both",
                "parallel": [
                    {"id": "left", "steps": [_query("a")]},
                    {"id": "right", "steps": [_email(subject="{{ steps.a.row_count }}")]},
                ],
            },
        ],
        "steps[1].parallel[1].steps[0].subject",
        "runs at the same time in branch 'left' of parallel 'both'",
        id="step-of-a-sibling-branch",
    ),
    pytest.param(
        [_query(), _each(_query("inner"), concurrency=6, max_items=100)],
        "steps[1].concurrency",
        "at most 5 on this server",
        id="concurrency-above-the-maximum",
    ),
    pytest.param(
        [_query(), _each(_query("inner"), concurrency=5, max_items=101)],
        "steps[1].max_items",
        "at most 100 on this server",
        id="max-items-above-the-maximum",
    ),
]


@pytest.mark.parametrize(("steps", "field", "said"), SCOPE_REFUSED)
async def test_a_scope_problem_is_refused_naming_the_nested_field(
    tmp_path: Path, namespace: str, steps: list[dict[str, Any]], field: str, said: str
) -> None:
    flow = flow_with(ON_DEMAND, parameters={}, steps=steps)
    async with serving(tmp_path, namespace, scope_max_concurrency=5, scope_max_items=100) as api:
        answer = await api.put(flow)
        missing = await api.call("GET", f"/v1/flows/{flow['name']}")

    assert answer.status == 400, answer.body
    fields = answer.fields()
    assert list(fields) == [field], answer.body
    assert said in fields[field]
    assert field in answer.error["message"]
    assert missing.status == 404


async def test_a_for_each_within_the_maxima_is_saved(tmp_path: Path, namespace: str) -> None:
    flow = flow_with(
        ON_DEMAND, parameters={}, steps=[_query(), _each(_query("inner"), concurrency=5, max_items=100)]
    )
    async with serving(tmp_path, namespace, scope_max_concurrency=5, scope_max_items=100) as api:
        answer = await api.put(flow)

    assert answer.status in (200, 201), answer.body


async def test_the_cron_minimum_is_named_in_words(api: Api) -> None:
    answer = await api.put(flow_with(STORMS, trigger={"cron": "*/2 * * * *"}))

    assert answer.status == 400
    assert answer.error["code"] == "InvalidFlow"
    assert answer.error["fields"] == [
        {
            "field": "trigger.cron",
            "message": "'*/2 * * * *' fires as often as every 2 minutes, more often than "
            "the minimum interval of 5 minutes this server allows",
        }
    ]


async def test_every_problem_of_a_flow_is_reported_at_once(api: Api) -> None:
    flow = flow_with(
        STORMS,
        connection="prod",
        trigger={"cron": "*/2 * * * *", "timezone": "Europe/Berlin"},
        parameters={"region": {"type": "string"}},
    )

    answer = await api.put(flow)

    assert answer.status == 400
    assert set(answer.fields()) == {"connection", "trigger.cron", "parameters.region"}


@pytest.mark.parametrize("trigger", [{}, {"after": {"flow": "upstream"}}], ids=["manual", "after"])
async def test_a_bad_timezone_is_refused_whatever_the_trigger(api: Api, trigger: dict[str, Any]) -> None:
    flow = flow_with(ON_DEMAND, parameters={}, trigger={**trigger, "timezone": "Mars/Olympus_Mons"})

    answer = await api.put(flow)

    assert answer.status == 400
    assert "trigger.timezone" in answer.fields()


async def test_an_allowed_webhook_host_and_a_schedule_at_the_minimum_are_accepted(api: Api) -> None:
    flow = flow_with(
        ON_DEMAND,
        parameters={},
        trigger={"every": "5m"},
        steps=[_query(), {"id": "hook", "action": "post_webhook", "url": "https://hooks.example.com/in"}],
    )

    answer = await api.put(flow)

    assert answer.status == 201, answer.body
    assert answer.body["schedule"] == "every 5 minutes"


async def test_a_chain_that_would_loop_is_refused_on_the_save_that_closes_it(api: Api) -> None:
    first = flow_with(ON_DEMAND, name="a", parameters={}, trigger={"after": {"flow": "b"}})
    second = flow_with(ON_DEMAND, name="b", parameters={}, trigger={"after": {"flow": "a"}})

    saved = await api.put(first)
    assert saved.status == 201
    assert saved.body["schedule"] == "after b (succeeded)"

    refused = await api.put(second)

    assert refused.status == 400
    assert refused.error["code"] == "InvalidFlow"
    assert "b → a → b" in refused.fields()["trigger.after.flow"]
    assert (await api.call("GET", "/v1/flows/b")).status == 404


async def test_a_flow_cannot_follow_itself(api: Api) -> None:
    answer = await api.put(flow_with(ON_DEMAND, name="a", parameters={}, trigger={"after": {"flow": "a"}}))

    assert answer.status == 400
    assert "a → a" in answer.fields()["trigger.after.flow"]


async def test_a_longer_loop_is_refused_too(api: Api) -> None:
    for name, parent in (("a", "b"), ("b", "c")):
        flow = flow_with(ON_DEMAND, name=name, parameters={}, trigger={"after": {"flow": parent}})
        assert (await api.put(flow)).status == 201

    closing = flow_with(ON_DEMAND, name="c", parameters={}, trigger={"after": {"flow": "a"}})
    answer = await api.put(closing)

    assert answer.status == 400
    assert "c → a → b → c" in answer.fields()["trigger.after.flow"]


async def test_a_recipient_outside_the_allowed_domains_is_refused_naming_the_field(
    tmp_path: Path, namespace: str
) -> None:
    flow = flow_with(
        ON_DEMAND,
        parameters={},
        steps=[_query(), _email(to=["team@example.com"], cc=["boss@a.example.com", "x@evil.com"])],
    )

    async with serving(tmp_path, namespace, email_allowed_domains=["example.com"]) as api:
        answer = await api.put(flow)
        missing = await api.call("GET", f"/v1/flows/{flow['name']}")

    assert answer.status == 400, answer.body
    assert answer.error["code"] == "InvalidFlow"
    assert answer.error["fields"] == [
        {
            "field": "steps[1].cc[1]",
            "message": "'x@evil.com' is outside the domains this server sends to (example.com)",
        }
    ]
    assert missing.status == 404


async def test_recipients_in_the_allowed_domains_are_saved(tmp_path: Path, namespace: str) -> None:
    flow = flow_with(
        ON_DEMAND,
        parameters={},
        steps=[_query(), _email(to=["Team@Example.com"], bcc=["audit@eu.example.com"])],
    )

    async with serving(tmp_path, namespace, email_allowed_domains=["example.com"]) as api:
        answer = await api.put(flow)

    assert answer.status == 201, answer.body


# -- runs on demand -------------------------------------------------------------


async def test_a_run_is_accepted_and_queued_with_its_bound_parameters(api: Api) -> None:
    await api.put(ON_DEMAND)

    answer = await api.run("storms-in-state", {"state": "KANSAS"})

    assert answer.status == 202
    run_id = answer.body["run_id"]
    location = f"{HISTORY_URL}/v1/runs/{run_id}"
    assert answer.headers["Location"] == location
    assert answer.body == {"run_id": run_id, "status": "queued", "location": location, "repeated": False}
    [message] = await api.queued_runs(1)
    assert message.run_id == run_id
    assert message.step_id == "damage"
    assert message.context.flow == "storms-in-state"
    assert message.context.trigger == "manual"
    assert message.context.parameters == {"state": "KANSAS", "min_damage": 10}
    assert message.flow["name"] == "storms-in-state"
    assert "trigger" in message.outputs


async def test_parameters_are_coerced_to_their_declared_type(api: Api) -> None:
    await api.put(ON_DEMAND)

    answer = await api.run("storms-in-state", {"state": "IOWA", "min_damage": "2500"})

    assert answer.status == 202
    [message] = await api.queued_runs(1)
    assert message.context.parameters == {"state": "IOWA", "min_damage": 2500}


async def test_a_flow_without_parameters_runs_without_a_body(api: Api) -> None:
    await api.put(flow_with(ON_DEMAND, parameters={}))

    answer = await api.call("POST", "/v1/flows/storms-in-state/runs")

    assert answer.status == 202
    [message] = await api.queued_runs(1)
    assert message.run_id == answer.body["run_id"]
    assert message.context.parameters == {}


@pytest.mark.parametrize(
    ("parameters", "field", "said"),
    [
        pytest.param({"state": "KANSAS", "x": 1}, "parameters.x", "not a parameter", id="unknown"),
        pytest.param(
            {"state": "KANSAS", "min_damage": "abc"}, "parameters.min_damage", "long", id="wrong-type"
        ),
        pytest.param({"state": 7}, "parameters.state", "string", id="number-for-string"),
        pytest.param(
            {"state": "KANSAS", "min_damage": 2**63},
            "parameters.min_damage",
            "out of range",
            id="out-of-range",
        ),
        pytest.param({"min_damage": 5}, "parameters.state", "required", id="required-missing"),
        pytest.param({}, "parameters.state", "required", id="nothing-given"),
    ],
)
async def test_bad_parameters_are_refused_naming_the_parameter(
    api: Api, parameters: dict[str, Any], field: str, said: str
) -> None:
    await api.put(ON_DEMAND)

    answer = await api.run("storms-in-state", parameters)

    assert answer.status == 400
    assert answer.error["code"] == "InvalidParameters"
    [entry] = answer.error["fields"]
    assert entry["field"] == field
    assert said in entry["message"]
    assert api.broker.depth(api.query_queue) == 0


async def test_parameters_must_be_an_object(api: Api) -> None:
    await api.put(ON_DEMAND)

    answer = await api.call("POST", "/v1/flows/storms-in-state/runs", {"parameters": ["KANSAS"]})

    assert answer.status == 400
    assert answer.error["code"] == "InvalidRequest"
    assert api.broker.depth(api.query_queue) == 0


async def test_the_same_idempotency_key_starts_one_run(api: Api) -> None:
    await api.put(ON_DEMAND)

    first = await api.run("storms-in-state", {"state": "KANSAS"}, key="report-2024-06-01")
    second = await api.run("storms-in-state", {"state": "KANSAS"}, key="report-2024-06-01")

    assert (first.status, second.status) == (202, 202)
    assert first.body["repeated"] is False
    assert second.body["repeated"] is True
    assert second.body["run_id"] == first.body["run_id"]
    assert second.headers["Location"] == first.headers["Location"]
    assert api.broker.depth(api.query_queue) == 1
    [message] = await api.queued_runs(1)
    assert message.run_id == first.body["run_id"]


async def test_the_same_idempotency_key_sent_at_once_starts_one_run(api: Api) -> None:
    await api.put(ON_DEMAND)

    answers = await asyncio.gather(
        *(api.run("storms-in-state", {"state": "KANSAS"}, key="at-once") for _ in range(4))
    )

    assert [answer.status for answer in answers] == [202] * 4
    assert len({answer.body["run_id"] for answer in answers}) == 1
    assert sorted(answer.body["repeated"] for answer in answers) == [False, True, True, True]
    assert api.broker.depth(api.query_queue) == 1


async def test_a_different_idempotency_key_starts_another_run(api: Api) -> None:
    await api.put(ON_DEMAND)

    first = await api.run("storms-in-state", {"state": "KANSAS"}, key="one")
    second = await api.run("storms-in-state", {"state": "KANSAS"}, key="two")
    unkeyed = await api.run("storms-in-state", {"state": "KANSAS"})

    run_ids = {first.body["run_id"], second.body["run_id"], unkeyed.body["run_id"]}
    assert len(run_ids) == 3
    assert not second.body["repeated"]
    assert api.broker.depth(api.query_queue) == 3
    assert {message.run_id for message in await api.queued_runs(3)} == run_ids


async def test_an_idempotency_key_belongs_to_one_flow(api: Api) -> None:
    await api.put(ON_DEMAND)
    await api.put(flow_with(ON_DEMAND, name="other-storms"))

    first = await api.run("storms-in-state", {"state": "KANSAS"}, key="shared")
    second = await api.run("other-storms", {"state": "KANSAS"}, key="shared")

    assert second.body["run_id"] != first.body["run_id"]
    assert second.body["repeated"] is False
    assert api.broker.depth(api.query_queue) == 2


async def test_a_refused_run_does_not_spend_its_idempotency_key(api: Api) -> None:
    await api.put(ON_DEMAND)

    refused = await api.run("storms-in-state", {"state": "KANSAS", "min_damage": "abc"}, key="retry-me")
    accepted = await api.run("storms-in-state", {"state": "KANSAS"}, key="retry-me")

    assert refused.status == 400
    assert accepted.status == 202
    assert accepted.body["repeated"] is False
    assert api.broker.depth(api.query_queue) == 1


async def test_an_overlong_idempotency_key_is_refused(api: Api) -> None:
    await api.put(ON_DEMAND)

    answer = await api.run("storms-in-state", {"state": "KANSAS"}, key="k" * 256)

    assert answer.status == 400
    assert "Idempotency-Key" in answer.error["message"]
    assert api.broker.depth(api.query_queue) == 0


async def test_running_an_unknown_flow_is_not_found(api: Api) -> None:
    answer = await api.run("nobody", {})

    assert answer.status == 404
    assert answer.error["code"] == "NotFound"
    assert api.broker.depth(api.query_queue) == 0


async def test_a_deleted_flow_cannot_be_run(api: Api) -> None:
    await api.put(ON_DEMAND)
    await api.call("DELETE", "/v1/flows/storms-in-state")

    answer = await api.run("storms-in-state", {"state": "KANSAS"})

    assert answer.status == 404
    assert api.broker.depth(api.query_queue) == 0
