"""Optimistic concurrency of flow edits over real HTTP: ETag, If-Match, 412."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from common.contracts.flows import Flow
from services.trigger.preconditions import IfMatch, PreconditionFailed, etag
from services.trigger.store import FlowStore
from tests.services.trigger.test_flows_api import STORMS, Api, flow_with, serving


@pytest.fixture
async def api(tmp_path: Path, namespace: str) -> AsyncIterator[Api]:
    async with serving(tmp_path, namespace) as running:
        yield running


async def test_get_answers_the_version_as_a_quoted_etag(api: Api) -> None:
    saved = await api.put(STORMS)
    assert saved.headers["ETag"] == '"1"'
    await api.put(flow_with(STORMS, description="again"))

    fetched = await api.call("GET", "/v1/flows/daily-storms")

    assert fetched.headers["ETag"] == '"2"'
    assert fetched.body["version"] == 2


async def test_a_put_with_the_current_etag_replaces_the_flow(api: Api) -> None:
    etag = (await api.put(STORMS)).headers["ETag"]

    replaced = await api.call(
        "PUT", "/v1/flows/daily-storms", flow_with(STORMS, description="new"), headers={"If-Match": etag}
    )

    assert replaced.status == 200
    assert replaced.headers["ETag"] == '"2"'
    assert replaced.body["document"]["description"] == "new"


async def test_a_put_with_a_stale_etag_is_refused_naming_the_current_version(api: Api) -> None:
    stale = (await api.put(STORMS)).headers["ETag"]
    await api.put(flow_with(STORMS, description="someone else's change"))

    refused = await api.call(
        "PUT", "/v1/flows/daily-storms", flow_with(STORMS, description="mine"), headers={"If-Match": stale}
    )

    assert refused.status == 412
    assert refused.error["code"] == "PreconditionFailed"
    assert "version 2" in refused.error["message"]
    assert refused.error["fields"][0]["field"] == "If-Match"
    assert refused.headers["ETag"] == '"2"'
    kept = await api.call("GET", "/v1/flows/daily-storms")
    assert kept.body["document"]["description"] == "someone else's change"


async def test_star_matches_any_existing_flow_and_never_creates_one(api: Api) -> None:
    refused = await api.call("PUT", "/v1/flows/daily-storms", STORMS, headers={"If-Match": "*"})
    assert refused.status == 412
    assert "does not exist" in refused.error["message"]
    assert (await api.call("GET", "/v1/flows/daily-storms")).status == 404

    await api.put(STORMS)
    replaced = await api.call(
        "PUT", "/v1/flows/daily-storms", flow_with(STORMS, description="x"), headers={"If-Match": "*"}
    )
    assert replaced.status == 200


async def test_a_weak_etag_never_matches_and_a_list_matches_any_of_its_tags(api: Api) -> None:
    await api.put(STORMS)

    weak = await api.call("PUT", "/v1/flows/daily-storms", STORMS, headers={"If-Match": 'W/"1"'})
    listed = await api.call("PUT", "/v1/flows/daily-storms", STORMS, headers={"If-Match": '"7", "1"'})

    assert weak.status == 412
    assert listed.status == 200


@pytest.mark.parametrize("header", ["3", '"3', "", '"3" junk'])
async def test_a_malformed_if_match_is_refused_naming_the_header(api: Api, header: str) -> None:
    await api.put(STORMS)

    refused = await api.call("PUT", "/v1/flows/daily-storms", STORMS, headers={"If-Match": header})

    assert refused.status == 400
    assert refused.error["message"].startswith("If-Match: ")


async def test_without_if_match_the_last_writer_wins_as_before(api: Api) -> None:
    await api.put(STORMS)
    second = await api.put(flow_with(STORMS, description="b"))
    third = await api.put(flow_with(STORMS, description="c"))

    assert (second.status, third.status) == (200, 200)
    assert third.body["version"] == 3


async def test_delete_honours_if_match(api: Api) -> None:
    await api.put(STORMS)
    await api.put(flow_with(STORMS, description="b"))

    stale = await api.call("DELETE", "/v1/flows/daily-storms", headers={"If-Match": '"1"'})
    assert stale.status == 412
    assert "version 2" in stale.error["message"]
    assert (await api.call("GET", "/v1/flows/daily-storms")).status == 200

    deleted = await api.call("DELETE", "/v1/flows/daily-storms", headers={"If-Match": '"2"'})
    assert deleted.status == 204
    gone = await api.call("DELETE", "/v1/flows/daily-storms", headers={"If-Match": "*"})
    assert gone.status == 412


async def test_of_two_puts_with_the_same_etag_exactly_one_wins(api: Api) -> None:
    etag = (await api.put(STORMS)).headers["ETag"]

    answers = await asyncio.gather(
        *(
            api.call(
                "PUT",
                "/v1/flows/daily-storms",
                flow_with(STORMS, description=f"writer {writer}"),
                headers={"If-Match": etag},
            )
            for writer in range(2)
        )
    )

    assert sorted(answer.status for answer in answers) == [200, 412]
    [winner] = [answer for answer in answers if answer.status == 200]
    kept = await api.call("GET", "/v1/flows/daily-storms")
    assert kept.body["version"] == 2
    assert kept.body["document"]["description"] == winner.body["document"]["description"]


@pytest.mark.postgres
async def test_on_postgresql_of_two_writers_with_one_version_exactly_one_wins_every_time(
    postgres_url: str,
) -> None:
    store = FlowStore(postgres_url)
    await store.ensure_schema()
    try:
        stored, _ = await store.save(Flow.model_validate(STORMS))
        for round_ in range(10):
            precondition = IfMatch.of(etag(stored.version))
            outcomes = await asyncio.gather(
                *(
                    store.save(
                        Flow.model_validate({**STORMS, "description": f"{round_}.{writer}"}),
                        if_match=precondition,
                    )
                    for writer in range(2)
                ),
                return_exceptions=True,
            )
            won = [outcome for outcome in outcomes if not isinstance(outcome, BaseException)]
            lost = [outcome for outcome in outcomes if isinstance(outcome, PreconditionFailed)]
            assert (len(won), len(lost)) == (1, 1), outcomes
            assert lost[0].current == stored.version + 1
            stored = won[0][0]
        current = await store.get("daily-storms")
        assert current is not None
        assert current.version == 11
        assert current.flow.description == stored.flow.description
    finally:
        await store.close()
