"""Silences in SQL, on SQLite and PostgreSQL: created, listed by state newest first, ended once and
kept as history, and in force over the steps and instances they name."""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from services.trigger.silences import SilenceOver, SilenceState, SilenceStore

T0 = dt.datetime(2026, 3, 1, 6, 0, tzinfo=dt.UTC)
HOUR = dt.timedelta(hours=1)


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def store(
    request: pytest.FixtureRequest, tmp_path: Path, postgres_database: Any
) -> AsyncIterator[SilenceStore]:
    if request.param == "sqlite":
        silences = SilenceStore(f"sqlite+aiosqlite:///{tmp_path / 'silences.db'}")
        await silences.ensure_schema()
        try:
            yield silences
        finally:
            await silences.close()
        return
    async with postgres_database() as url:
        silences = SilenceStore(url)
        await silences.ensure_schema()
        try:
            yield silences
        finally:
            await silences.close()


async def silence(store: SilenceStore, at: dt.datetime, **changes: Any) -> Any:
    asked: dict[str, Any] = {
        "flow": "storms",
        "step_id": None,
        "key": None,
        "ends_at": at + HOUR,
        "comment": "maintenance",
        "created_by": "local",
        **changes,
    }
    return await store.create(now=at, **asked)


async def test_a_silence_is_created_and_read_back_as_it_was_given(store: SilenceStore) -> None:
    created = await silence(store, T0, step_id="deadly", key="EventId=42", created_by="token")

    fetched = await store.get(created.id)

    assert fetched == created
    assert (fetched.flow, fetched.step_id, fetched.key) == ("storms", "deadly", "EventId=42")
    assert (fetched.starts_at, fetched.ends_at, fetched.created_at) == (T0, T0 + HOUR, T0)
    assert (fetched.comment, fetched.created_by, fetched.ended_at) == ("maintenance", "token", None)
    assert fetched.state(T0) is SilenceState.ACTIVE
    assert fetched.state(T0 + HOUR) is SilenceState.EXPIRED
    assert await store.get("nope") is None


async def test_listings_show_the_state_asked_for_newest_first_and_per_flow(store: SilenceStore) -> None:
    first = await silence(store, T0)
    second = await silence(store, T0 + dt.timedelta(minutes=1), ends_at=T0 + 3 * HOUR)
    other = await silence(store, T0 + dt.timedelta(minutes=2), flow="other")
    ended = await silence(store, T0 + dt.timedelta(minutes=3))
    await store.end(ended.id, now=T0 + dt.timedelta(minutes=4))
    later = T0 + 2 * HOUR

    def ids(found: list[Any]) -> list[str]:
        return [one.id for one in found]

    assert ids(await store.find(flow="storms", now=T0 + dt.timedelta(minutes=5))) == [second.id, first.id]
    assert ids(await store.find(flow="storms", now=later)) == [second.id]
    assert ids(await store.find(flow="storms", state="ended", now=later)) == [ended.id, first.id]
    assert ids(await store.find(flow="storms", state="all", now=later)) == [ended.id, second.id, first.id]
    assert ids(await store.find(state="all", now=later, limit=2)) == [ended.id, other.id]


async def test_ending_a_silence_ends_it_now_once_and_keeps_it(store: SilenceStore) -> None:
    created = await silence(store, T0)
    at = T0 + dt.timedelta(minutes=10)

    ended = await store.end(created.id, now=at)

    assert ended is not None
    assert (ended.ended_at, ended.state(at)) == (at, SilenceState.ENDED)
    assert await store.get(created.id) == ended
    with pytest.raises(SilenceOver, match="is over: it ended at"):
        await store.end(created.id, now=at + dt.timedelta(minutes=1))
    assert await store.end("nope", now=at) is None


async def test_an_expired_silence_cannot_be_ended(store: SilenceStore) -> None:
    created = await silence(store, T0)

    with pytest.raises(SilenceOver, match="is over: it expired at") as over:
        await store.end(created.id, now=T0 + 2 * HOUR)

    assert over.value.silence.ended_at is None
    assert (await store.get(created.id)) == created


async def test_active_silences_cover_their_step_or_every_step(store: SilenceStore) -> None:
    whole_flow = await silence(store, T0)
    one_step = await silence(store, T0 + dt.timedelta(minutes=1), step_id="deadly", key="EventId=42")
    await silence(store, T0 + dt.timedelta(minutes=2), step_id="other")
    ended = await silence(store, T0 + dt.timedelta(minutes=3), step_id="deadly")
    await store.end(ended.id, now=T0 + dt.timedelta(minutes=4))

    at = T0 + dt.timedelta(minutes=5)
    covering = await store.active("storms", "deadly", at)
    assert [(one.id, one.key, one.ends_at) for one in covering] == [
        (whole_flow.id, None, whole_flow.ends_at),
        (one_step.id, "EventId=42", one_step.ends_at),
    ]
    assert await store.active("storms", "deadly", T0 + 2 * HOUR) == []
    assert await store.active("elsewhere", "deadly", at) == []
