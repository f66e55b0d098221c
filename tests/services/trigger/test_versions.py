"""A flow's versions over real HTTP and in the store: listed, read, diffed, restored.

Store tests run on SQLite and on the machine's PostgreSQL; the API tests on
the trigger with its SQLite store under the test's own directory.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import yaml
from pydantic import SecretStr

from common.contracts.flows import Flow
from services.trigger.preconditions import IfMatch, PreconditionFailed, etag
from services.trigger.store import FlowStore
from tests.services.trigger.test_flows_api import STORMS, STORMS_YAML, Api, flow_with, serving

YAML = "application/yaml"

#: STORMS_YAML as a person writes it, with a comment the JSON form would lose.
COMMENTED = "# Mondays at half past seven\n" + STORMS_YAML


@pytest.fixture
async def api(tmp_path: Path, namespace: str) -> AsyncIterator[Api]:
    async with serving(tmp_path, namespace) as running:
        yield running


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path / 'flows.db'}"
    url: str = request.getfixturevalue("postgres_url")
    return url


@pytest.fixture
async def store(database_url: str) -> AsyncIterator[FlowStore]:
    flows = FlowStore(database_url)
    await flows.ensure_schema()
    try:
        yield flows
    finally:
        await flows.close()


# -- the store ------------------------------------------------------------------


async def test_every_save_is_a_version_with_its_definition_who_and_what_changed(store: FlowStore) -> None:
    await store.save(Flow.model_validate(STORMS), definition="# mine\nname: daily-storms\n", saved_by="token")
    changed = flow_with(STORMS, enabled=False)
    changed["steps"] = [*STORMS["steps"][:1], {**STORMS["steps"][1], "subject": "Storms"}]
    stored, _ = await store.save(Flow.model_validate(changed), saved_by="local")

    kept = await store.versions("daily-storms")
    newest, first = await store.version("daily-storms", 2), await store.version("daily-storms", 1)

    assert stored.version == 2
    assert [version.version for version in kept] == [2, 1]
    assert newest is not None
    assert first is not None
    assert [(listed.saved_by, listed.summary) for listed in kept] == [
        (newest.saved_by, newest.summary),
        (first.saved_by, first.summary),
    ]
    assert (first.definition, first.saved_by, first.summary) == (
        "# mine\nname: daily-storms\n",
        "token",
        "created",
    )
    assert (newest.saved_by, newest.summary) == ("local", "disabled; step mail changed")
    # Without a definition given, the document as stored, dumped as YAML in its field order.
    assert yaml.safe_load(newest.definition) == newest.document
    assert newest.definition.startswith("name: daily-storms\n")
    assert newest.saved_at >= first.saved_at
    assert await store.version("daily-storms", 3) is None


async def test_a_deleted_flows_versions_stay_and_a_flow_created_again_numbers_on(store: FlowStore) -> None:
    flow = Flow.model_validate(STORMS)
    await store.save(flow)
    await store.save(flow)
    assert await store.delete("daily-storms")

    assert [version.version for version in await store.versions("daily-storms")] == [2, 1]
    again, created = await store.save(flow)

    assert (created, again.version) == (True, 3)
    assert [version.version for version in await store.versions("daily-storms")] == [3, 2, 1]


async def test_of_two_writers_with_one_version_only_the_winners_save_is_kept(store: FlowStore) -> None:
    stored, _ = await store.save(Flow.model_validate(STORMS))
    outcomes = await asyncio.gather(
        *(
            store.save(
                Flow.model_validate({**STORMS, "description": f"writer {writer}"}),
                if_match=IfMatch.of(etag(stored.version)),
                saved_by=f"writer {writer}",
            )
            for writer in range(2)
        ),
        return_exceptions=True,
    )

    won = [outcome for outcome in outcomes if not isinstance(outcome, BaseException)]
    assert len(won) == 1
    assert [type(outcome) for outcome in outcomes if isinstance(outcome, BaseException)] == [
        PreconditionFailed
    ]
    kept = await store.versions("daily-storms")
    assert [version.version for version in kept] == [2, 1]
    second = await store.version("daily-storms", 2)
    assert second is not None
    assert second.document["description"] == won[0][0].flow.description


# -- the API ----------------------------------------------------------------------


async def test_versions_are_listed_newest_first_with_who_when_and_what(api: Api) -> None:
    await api.call("PUT", "/v1/flows/weekly-storms", COMMENTED, content_type=YAML)
    document = yaml.safe_load(STORMS_YAML)
    await api.call("PUT", "/v1/flows/weekly-storms", {**document, "description": "weekly"})

    listed = await api.call("GET", "/v1/flows/weekly-storms/versions")

    assert listed.status == 200
    assert (listed.body["flow"], listed.body["current"]) == ("weekly-storms", 2)
    entries = listed.body["versions"]
    assert [(entry["version"], entry["saved_by"], entry["restored_from"]) for entry in entries] == [
        (2, "local", None),
        (1, "local", None),
    ]
    assert [entry["summary"] for entry in entries] == ["description changed", "created"]
    assert entries[0]["saved_at"] >= entries[1]["saved_at"]


async def test_a_version_is_its_yaml_as_sent_or_its_json_dumped_in_field_order(api: Api) -> None:
    await api.call("PUT", "/v1/flows/weekly-storms", COMMENTED, content_type=YAML)
    await api.call("PUT", "/v1/flows/weekly-storms", {**yaml.safe_load(STORMS_YAML), "description": "weekly"})

    as_yaml = await api.session.get(f"{api.url}/v1/flows/weekly-storms/versions/1", headers={"Accept": YAML})
    as_json = await api.call("GET", "/v1/flows/weekly-storms/versions/2")

    assert as_yaml.status == 200
    assert as_yaml.content_type == YAML
    assert await as_yaml.text() == COMMENTED
    assert as_json.status == 200
    view = as_json.body
    assert (view["flow"], view["version"], view["saved_by"]) == ("weekly-storms", 2, "local")
    assert view["document"]["description"] == "weekly"
    keys = [line.partition(":")[0] for line in view["definition"].splitlines() if line[0] not in " -"]
    assert keys == ["name", "connection", "database", "trigger", "steps", "description"]


async def test_the_diff_of_two_versions_is_a_unified_diff_of_their_definitions(api: Api) -> None:
    await api.call("PUT", "/v1/flows/weekly-storms", STORMS_YAML, content_type=YAML)
    changed = STORMS_YAML.replace('subject: "Weekly storms"', 'subject: "Storms this week"')
    await api.call("PUT", "/v1/flows/weekly-storms", changed, content_type=YAML)

    diffed = await api.call("GET", "/v1/flows/weekly-storms/diff?from=1&to=2")
    text = await api.session.get(
        f"{api.url}/v1/flows/weekly-storms/diff?from=1&to=2", headers={"Accept": "text/plain"}
    )

    assert diffed.status == 200
    assert (diffed.body["from_version"], diffed.body["to_version"]) == (1, 2)
    lines = diffed.body["lines"]
    assert lines[:2] == ["--- weekly-storms version 1", "+++ weekly-storms version 2"]
    assert [line for line in lines if line[:1] in "+-" and line[:3] not in ("---", "+++")] == [
        '-    subject: "Weekly storms"',
        '+    subject: "Storms this week"',
    ]
    assert text.content_type == "text/plain"
    assert (await text.text()).splitlines() == lines
    same = await api.call("GET", "/v1/flows/weekly-storms/diff?from=2&to=2")
    assert same.body["lines"] == []


async def test_unknown_versions_and_bad_numbers_are_refused_naming_them(api: Api) -> None:
    await api.put(STORMS)

    unknown = await api.call("GET", "/v1/flows/daily-storms/versions/7")
    diff_unknown = await api.call("GET", "/v1/flows/daily-storms/diff?from=1&to=9")
    missing = await api.call("GET", "/v1/flows/daily-storms/diff?from=1")
    malformed = await api.call("GET", "/v1/flows/daily-storms/versions/first")
    no_flow = await api.call("GET", "/v1/flows/nobody/versions")
    restore_unknown = await api.call("POST", "/v1/flows/daily-storms/versions/4/restore")

    assert (unknown.status, unknown.error["code"]) == (404, "NotFound")
    assert unknown.error["message"] == "flow 'daily-storms' has no version 7 (its versions: 1)"
    assert diff_unknown.status == 404
    assert "no version 9" in diff_unknown.error["message"]
    assert (missing.status, missing.error["message"].split(":")[0]) == (400, "to")
    assert (malformed.status, malformed.error["message"].split(":")[0]) == (400, "version")
    assert (no_flow.status, no_flow.error["message"]) == (404, "flow 'nobody' not found")
    assert restore_unknown.status == 404
    assert "no version 4" in restore_unknown.error["message"]


async def test_a_restore_saves_the_old_definition_as_a_new_version_honouring_if_match(api: Api) -> None:
    await api.call("PUT", "/v1/flows/weekly-storms", COMMENTED, content_type=YAML)
    await api.call("PUT", "/v1/flows/weekly-storms", {**yaml.safe_load(STORMS_YAML), "description": "weekly"})

    stale = await api.call("POST", "/v1/flows/weekly-storms/versions/1/restore", headers={"If-Match": '"1"'})
    restored = await api.call(
        "POST", "/v1/flows/weekly-storms/versions/1/restore", headers={"If-Match": '"2"'}
    )

    assert stale.status == 412
    assert "version 2" in stale.error["message"]
    assert restored.status == 200
    assert (restored.body["version"], restored.headers["ETag"]) == (3, '"3"')
    assert "description" not in restored.body["document"]
    third = await api.call("GET", "/v1/flows/weekly-storms/versions/3")
    assert third.body["definition"] == COMMENTED
    assert (third.body["restored_from"], third.body["summary"]) == (1, "restored version 1")
    unchanged = await api.call("GET", "/v1/flows/weekly-storms/diff?from=1&to=3")
    assert unchanged.body["lines"] == []


async def test_a_deleted_flows_history_stays_and_a_restore_creates_it_again(api: Api) -> None:
    await api.put(STORMS)
    await api.put(flow_with(STORMS, description="second"))
    assert (await api.call("DELETE", "/v1/flows/daily-storms")).status == 204

    listed = await api.call("GET", "/v1/flows/daily-storms/versions")
    restored = await api.call("POST", "/v1/flows/daily-storms/versions/1/restore")

    assert (listed.status, listed.body["current"]) == (200, None)
    assert [entry["version"] for entry in listed.body["versions"]] == [2, 1]
    assert (restored.status, restored.body["version"]) == (201, 3)
    assert restored.body["document"]["description"] == STORMS["description"]
    assert (await api.call("GET", "/v1/flows/daily-storms")).body["version"] == 3


async def test_a_version_that_no_longer_passes_todays_checks_is_refused_naming_the_field(
    tmp_path: Path, namespace: str
) -> None:
    async with serving(tmp_path, namespace) as api:
        await api.put(STORMS)
        await api.put(flow_with(STORMS, steps=[{**STORMS["steps"][0]}]))
    # The operator narrowed where mail may go since version 1 was saved.
    async with serving(tmp_path, namespace, email_allowed_domains=["example.org"]) as api:
        refused = await api.call("POST", "/v1/flows/daily-storms/versions/1/restore")
        kept = await api.call("GET", "/v1/flows/daily-storms")

    assert refused.status == 400
    assert refused.error["code"] == "InvalidFlow"
    assert refused.error["message"].startswith("version 1 no longer passes today's checks")
    assert [field["field"] for field in refused.error["fields"]] == ["steps[1].to[0]"]
    assert kept.body["version"] == 2


async def test_with_a_token_the_saver_is_recorded_as_token(tmp_path: Path, namespace: str) -> None:
    async with serving(tmp_path, namespace, api_token=SecretStr("s3cret")) as api:
        headers = {"Authorization": "Bearer s3cret"}
        await api.call("PUT", "/v1/flows/daily-storms", STORMS, headers=headers)
        anonymous = await api.call("GET", "/v1/flows/daily-storms/versions")
        listed = await api.call("GET", "/v1/flows/daily-storms/versions", headers=headers)

    assert anonymous.status == 401
    assert [entry["saved_by"] for entry in listed.body["versions"]] == ["token"]


@pytest.mark.parametrize(
    ("accept", "media"),
    [
        (None, "application/json"),
        ("*/*", "application/json"),
        ("application/yaml", "application/yaml"),
        ("application/json, application/yaml", "application/json"),
        ("application/json;q=0.5, application/yaml", "application/yaml"),
        ("application/yaml;q=0.2, */*;q=0.8", "application/json"),
    ],
)
async def test_a_version_answers_yaml_only_when_the_request_prefers_it(
    api: Api, accept: str | None, media: str
) -> None:
    await api.call("PUT", "/v1/flows/weekly-storms", COMMENTED, content_type=YAML)

    headers = {"Accept": accept} if accept is not None else {}
    async with api.session.get(f"{api.url}/v1/flows/weekly-storms/versions/1", headers=headers) as answer:
        assert (answer.status, answer.content_type) == (200, media)
        text = await answer.text()

    assert (text == COMMENTED) is (media == YAML)
