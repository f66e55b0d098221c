"""Silences and a flow's alert state through the trigger API over real HTTP.

The trigger runs with its SQLite store under the test's directory; alert states are seeded
through the alert store on the same database, as evaluations would leave them.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr

from common.contracts.flows import Flow
from common.contracts.messages import utcnow
from common.platform.config import Settings
from services.trigger.alert_board import alert_steps
from services.trigger.alert_notices import Held
from services.trigger.alert_states import Instance, Outcome, evaluate
from services.trigger.alert_store import AlertStore, Verdict
from services.trigger.alerting import rules_of
from tests.services.trigger.test_flows_api import Api, serving

DEADLY: dict[str, Any] = {
    "name": "deadly",
    "connection": "local",
    "database": "Samples",
    "steps": [
        {
            "id": "events",
            "action": "run_query",
            "query": "StormEvents | where DeathsDirect >= 5 | project EventId, State",
            "alert": {"key_columns": ["EventId"], "repeat_every": "4h"},
        },
        {
            "id": "count",
            "action": "run_query",
            "query": "StormEvents | count",
            "alert": {"condition": "{{ steps.count.first_row.Count > 5 }}"},
        },
        {"id": "mail", "action": "send_email", "to": ["oncall@example.com"], "subject": "deadly"},
    ],
}
QUIET: dict[str, Any] = {
    "name": "quiet",
    "connection": "local",
    "database": "Samples",
    "steps": [{"id": "q", "action": "run_query", "query": "StormEvents | take 1"}],
}


@pytest.fixture
async def api(tmp_path: Path, namespace: str) -> AsyncIterator[Api]:
    async with serving(tmp_path, namespace) as running:
        for flow in (DEADLY, QUIET):
            assert (await running.put(flow)).status == 201
        yield running


def asked(**changes: Any) -> dict[str, Any]:
    return {"flow": "deadly", "step": "events", "for": "2h", "comment": "known; on it", **changes}


def instant(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00"))


async def test_a_silence_is_set_read_listed_ended_once_and_kept(api: Api) -> None:
    before = utcnow()
    created = await api.call("POST", "/v1/silences", asked(key="EventId=42"))

    assert created.status == 201, created.body
    silence = created.body
    assert created.headers["Location"] == f"/v1/silences/{silence['id']}"
    assert {name: silence[name] for name in ("flow", "step", "key", "comment", "created_by", "state")} == {
        "flow": "deadly",
        "step": "events",
        "key": "EventId=42",
        "comment": "known; on it",
        "created_by": "local",
        "state": "active",
    }
    assert silence["ended_at"] is None
    starts = instant(silence["starts_at"])
    assert before <= starts <= utcnow()
    assert instant(silence["ends_at"]) - starts == dt.timedelta(hours=2)
    assert (await api.call("GET", f"/v1/silences/{silence['id']}")).body == silence

    listed = await api.call("GET", "/v1/silences?flow=deadly")
    assert [one["id"] for one in listed.body["silences"]] == [silence["id"]]
    assert (await api.call("DELETE", f"/v1/silences/{silence['id']}")).status == 204
    again = await api.call("DELETE", f"/v1/silences/{silence['id']}")
    assert (again.status, again.error["code"]) == (409, "Conflict")
    assert "is over: it ended at" in again.error["message"]
    assert (await api.call("GET", "/v1/silences?flow=deadly")).body == {"silences": []}
    [ended] = (await api.call("GET", "/v1/silences?flow=deadly&state=ended")).body["silences"]
    assert (ended["id"], ended["state"]) == (silence["id"], "ended")
    assert ended["ended_at"] is not None
    assert len((await api.call("GET", "/v1/silences?state=all")).body["silences"]) == 1
    assert (await api.call("DELETE", "/v1/silences/nope")).status == 404
    assert (await api.call("GET", "/v1/silences/nope")).status == 404


async def test_until_is_a_time_with_its_offset_kept_in_utc(api: Api) -> None:
    until = (
        (utcnow() + dt.timedelta(days=2))
        .replace(microsecond=0)
        .astimezone(dt.timezone(dt.timedelta(hours=2)))
    )

    created = await api.call(
        "POST", "/v1/silences", {"flow": "deadly", "until": until.isoformat(), "comment": "x"}
    )

    assert created.status == 201, created.body
    assert created.body["ends_at"] == until.astimezone(dt.UTC).isoformat().replace("+00:00", "Z")
    assert (created.body["step"], created.body["key"]) == (None, None)


@pytest.mark.parametrize(
    ("body", "field", "problem"),
    [
        (asked(flow="nope"), "flow", "'nope' is not a saved flow"),
        (asked(flow="quiet", step=None), "flow", "has no step with an alert"),
        (asked(step="mail"), "step", "'mail' is not a step of 'deadly' with an alert (events, count)"),
        (asked(step="count", key="EventId=42"), "key", "has no key_columns"),
        (asked(key="42"), "key", "an instance is named EventId=..."),
        ({k: v for k, v in asked().items() if k != "for"}, "until", "give until (a time) or for"),
        (asked(until="2099-01-01T00:00:00Z"), "until", "give until (a time) or for"),
        (asked(**{"for": None}, until="2020-01-01T00:00:00Z"), "until", "has passed"),
        (asked(**{"for": None}, until="2999-01-01T00:00:00+00:00"), "until", "more than a year away"),
        (asked(**{"for": None}, until="2099-01-01T00:00:00"), "until", "timezone"),
        (asked(**{"for": "2y"}), "for", "is not a duration"),
        (asked(**{"for": "400d"}), "for", "longer than a year"),
        (asked(comment="   "), "comment", "say why"),
        (asked(comment="x" * 1025), "comment", "at most 1024"),
        ({k: v for k, v in asked().items() if k != "comment"}, "comment", "required"),
        (asked(creator="me"), "creator", "Extra inputs"),
    ],
)
async def test_a_bad_silence_is_refused_naming_its_field(
    api: Api, body: dict[str, Any], field: str, problem: str
) -> None:
    refused = await api.call("POST", "/v1/silences", body)

    assert refused.status == 400, refused.body
    assert refused.error["code"] == "InvalidRequest"
    named = refused.fields()
    assert field in named, named
    assert problem in named[field]
    assert (await api.call("GET", "/v1/silences?state=all")).body == {"silences": []}


@pytest.mark.parametrize(
    ("query", "field"), [("state=over", "state"), ("limit=0", "limit"), ("limit=x", "limit")]
)
async def test_a_bad_listing_is_refused_naming_its_parameter(api: Api, query: str, field: str) -> None:
    refused = await api.call("GET", f"/v1/silences?{query}")

    assert refused.status == 400
    assert list(refused.fields()) == [field]


async def test_with_a_token_a_silence_says_it_was_set_with_it(tmp_path: Path, namespace: str) -> None:
    token = {"Authorization": "Bearer s3cret"}
    async with serving(tmp_path, namespace, api_token=SecretStr("s3cret")) as api:
        assert (await api.call("PUT", "/v1/flows/deadly", DEADLY, headers=token)).status == 201
        assert (await api.call("POST", "/v1/silences", asked())).status == 401
        created = await api.call("POST", "/v1/silences", asked(), headers=token)

    assert (created.status, created.body["created_by"]) == (201, "token")


async def seed(tmp_path: Path) -> None:
    """Two evaluations of the keyed alert (EventId 1 and 2 fire, then 2 resolves and 3 fires) and one of
    the whole-flow alert, stored as the trigger keeps them; instance 1 fired with its row."""
    flow = Flow.model_validate(DEADLY)
    store = AlertStore(Settings(data_dir=tmp_path).resolved_database_url)
    rules = rules_of(alert_steps(flow)["events"])
    row = {"EventId": 1, "State": "<b>TEXAS</b>"}

    def deciding(found: dict[str, Outcome]) -> Any:
        def decide(stored: dict[str, Instance], held: list[Held]) -> Verdict:
            evaluation = evaluate(rules, stored, found, utcnow())
            fired = {
                key: dataclasses.replace(instance, row=row) if key == "EventId=1" and not stored else instance
                for key, instance in evaluation.instances.items()
            }
            return Verdict(dataclasses.replace(evaluation, instances=fired), {})

        return decide

    try:
        first = {"EventId=1": Outcome.HOLDS, "EventId=2": Outcome.HOLDS}
        await store.evaluate("deadly", "events", "r1", deciding(first))
        second = {"EventId=1": Outcome.HOLDS, "EventId=3": Outcome.HOLDS}
        await store.evaluate("deadly", "events", "r2", deciding(second))
        await store.evaluate("deadly", "count", "r2", deciding({"": Outcome.CLEAR}))
    finally:
        await store.close()


async def test_a_flows_alerts_show_each_instance_its_transitions_and_the_silences_over_it(
    api: Api, tmp_path: Path
) -> None:
    await seed(tmp_path)
    one = (await api.call("POST", "/v1/silences", asked(key="EventId=1"))).body
    everything = (
        await api.call("POST", "/v1/silences", {"flow": "deadly", "for": "1d", "comment": "all"})
    ).body

    answer = await api.call("GET", "/v1/flows/deadly/alerts")

    assert answer.status == 200, answer.body
    body = answer.body
    assert body["flow"] == "deadly"
    assert [silence["id"] for silence in body["silences"]] == [everything["id"], one["id"]]
    events, count = body["alerts"]
    assert (events["step"], events["state"], events["key_columns"]) == ("events", "firing", ["EventId"])
    assert [(i["key"], i["state"]) for i in events["instances"]] == [
        ("EventId=1", "firing"),
        ("EventId=3", "firing"),
    ]
    first, third = events["instances"]
    assert first["row"] == {"EventId": 1, "State": "<b>TEXAS</b>"}
    assert third["row"] is None
    # The oldest silence in force that covers an instance is the one it is silenced by.
    assert (first["silenced_by"], third["silenced_by"]) == (one["id"], everything["id"])
    assert (first["silenced_until"], third["silenced_until"]) == (one["ends_at"], everything["ends_at"])
    assert instant(first["next_repeat"]) - instant(first["notified_at"]) == dt.timedelta(hours=4)
    assert first["since"] is not None
    assert first["pending_count"] == 0
    assert [(t["key"], t["before"], t["after"], t["notice"], t["run_id"]) for t in events["transitions"]] == [
        ("EventId=3", "ok", "firing", "firing", "r2"),
        ("EventId=2", "firing", "ok", "resolved", "r2"),
        ("EventId=2", "ok", "firing", "firing", "r1"),
        ("EventId=1", "ok", "firing", "firing", "r1"),
    ]
    assert events["transitions"][0]["held"] is None
    assert (count["step"], count["state"], count["key_columns"], count["instances"]) == (
        "count",
        "ok",
        [],
        [],
    )
    assert (await api.call("GET", "/v1/flows/quiet/alerts")).body == {
        "flow": "quiet",
        "alerts": [],
        "silences": [],
    }
    assert (await api.call("GET", "/v1/flows/nope/alerts")).status == 404
