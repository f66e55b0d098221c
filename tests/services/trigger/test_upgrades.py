"""A flow saved by a newer replica is read by this one; what people send stays strict."""

from __future__ import annotations

import copy
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import create_async_engine

from common.platform.config import Settings
from services.trigger.store import flows
from tests.services.trigger.test_flows_api import STORMS, serving


async def test_a_flow_a_newer_replica_saved_with_new_keys_is_listed_read_and_run(
    tmp_path: Path, namespace: str
) -> None:
    async with serving(tmp_path, namespace) as api:
        await api.put(STORMS)
        newer = copy.deepcopy(STORMS)
        newer["owner"] = "team-a"
        newer["steps"][0]["cache_minutes"] = 5
        engine = create_async_engine(Settings(data_dir=tmp_path).resolved_database_url)
        try:
            async with engine.begin() as conn:
                await conn.execute(sa.update(flows).values(document=newer))
        finally:
            await engine.dispose()

        fetched = await api.call("GET", "/v1/flows/daily-storms")
        listed = await api.call("GET", "/v1/flows")
        started = await api.run("daily-storms")

        assert fetched.status == 200
        assert "owner" not in fetched.body["document"]
        assert fetched.body["document"]["steps"][0]["query"] == STORMS["steps"][0]["query"]
        assert [flow["name"] for flow in listed.body["flows"]] == ["daily-storms"]
        assert started.status == 202


async def test_the_api_still_refuses_an_unknown_key_naming_it(tmp_path: Path, namespace: str) -> None:
    async with serving(tmp_path, namespace) as api:
        newer = copy.deepcopy(STORMS)
        newer["steps"][0]["cache_minutes"] = 5

        refused = await api.put(newer)

        assert refused.status == 400
        assert refused.fields() == {"steps[0].cache_minutes": "Extra inputs are not permitted"}
