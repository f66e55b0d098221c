"""Alerts' state in SQL, on SQLite and PostgreSQL: one evaluation per run, however often it is
handled; replicas evaluating at once take turns; a thousand instances written in batches."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from common.contracts.messages import utcnow
from services.trigger.alert_notices import Held, sort_out
from services.trigger.alert_states import Instance, Notice, Outcome, Rules, State, evaluate
from services.trigger.alert_store import AlertStore, Verdict


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def database_url(
    request: pytest.FixtureRequest, tmp_path: Path, postgres_database: Any
) -> AsyncIterator[str]:
    if request.param == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path / 'alerts.db'}"
        return
    async with postgres_database() as url:
        yield url


@pytest.fixture
async def store(database_url: str) -> AsyncIterator[AlertStore]:
    alerts = AlertStore(database_url)
    await alerts.ensure_schema()
    try:
        yield alerts
    finally:
        await alerts.close()


def deciding(found: dict[str, Outcome], calls: list[dict[str, Instance]], rules: Rules | None = None) -> Any:
    """A decision that evaluates *found* and records what it was given."""

    def decide(stored: dict[str, Instance], held: list[Held]) -> Verdict:
        calls.append(stored)
        evaluation = evaluate(rules or Rules(), stored, found, utcnow())
        told = sorted(f"{t.key}:{t.notice}" for t in evaluation.transitions if t.notice is not None)
        return Verdict(evaluation, {"told": told})

    return decide


async def test_an_evaluation_is_decided_once_per_run_and_repeated_when_handled_again(
    store: AlertStore,
) -> None:
    calls: list[dict[str, Instance]] = []
    first = await store.evaluate("f", "q", "run-1", deciding({"a": Outcome.HOLDS}, calls))
    again = await store.evaluate("f", "q", "run-1", deciding({"a": Outcome.CLEAR}, calls))

    assert first == {"told": ["a:firing"]}
    assert again == {"told": ["a:firing"], "repeated": True}
    assert len(calls) == 1
    assert {key: i.state for key, i in (await store.states("f", "q")).items()} == {"a": State.FIRING}
    [transition] = await store.history("f", "q")
    assert (transition["key"], transition["before"], transition["after"], transition["notice"]) == (
        "a",
        "ok",
        "firing",
        "firing",
    )


async def test_the_next_run_reads_the_instances_the_last_one_left(store: AlertStore) -> None:
    calls: list[dict[str, Instance]] = []
    rules = Rules(pending_evaluations=2)
    assert await store.evaluate("f", "q", "r1", deciding({"a": Outcome.HOLDS}, calls, rules)) == {"told": []}
    assert await store.evaluate("f", "q", "r2", deciding({"a": Outcome.HOLDS}, calls, rules)) == {
        "told": ["a:firing"]
    }
    assert calls[1]["a"].state is State.PENDING
    assert await store.evaluate("f", "q", "r3", deciding({}, calls, rules)) == {"told": ["a:resolved"]}
    # Resolved instances are not kept; other alerts are apart.
    assert await store.states("f", "q") == {}
    assert await store.states("f", "other") == {}


async def test_replicas_evaluating_one_alert_at_once_take_turns_and_tell_each_change_once(
    database_url: str,
) -> None:
    replicas = [AlertStore(database_url) for _ in range(3)]
    await replicas[0].ensure_schema()
    try:
        calls: list[dict[str, Instance]] = []
        # Nine runs of one alert at once, the same three runs delivered to each replica.
        outcomes = await asyncio.gather(
            *(
                replica.evaluate("f", "q", f"run-{run}", deciding({"a": Outcome.HOLDS}, calls))
                for run in range(3)
                for replica in replicas
            )
        )
    finally:
        for replica in replicas:
            await replica.close()
    assert len(calls) == 3
    fresh = [outcome for outcome in outcomes if not outcome.get("repeated")]
    assert sorted(str(outcome["told"]) for outcome in fresh) == sorted(["['a:firing']", "[]", "[]"])


async def test_a_thousand_keyed_instances_are_stored_and_resolved_in_batches(store: AlertStore) -> None:
    calls: list[dict[str, Instance]] = []
    keys = [f"EventId={index}" for index in range(1000)]
    fired = await store.evaluate("f", "q", "r1", deciding(dict.fromkeys(keys, Outcome.HOLDS), calls))
    assert len(fired["told"]) == 1000
    assert len(await store.states("f", "q")) == 1000
    half = await store.evaluate("f", "q", "r2", deciding(dict.fromkeys(keys[:500], Outcome.HOLDS), calls))
    assert half["told"] == sorted(f"{key}:{Notice.RESOLVED}" for key in keys[500:])
    assert len(await store.states("f", "q")) == 500
    assert len(await store.history("f", "q", limit=5000)) == 1500


async def test_forget_deletes_old_evaluations_and_transitions_and_keeps_the_instances(
    store: AlertStore,
) -> None:
    calls: list[dict[str, Instance]] = []
    await store.evaluate("f", "q", "r1", deciding({"a": Outcome.HOLDS}, calls))
    assert await store.forget(evaluated_before=utcnow() - dt.timedelta(days=1)) == 0
    assert await store.forget(evaluated_before=utcnow() + dt.timedelta(seconds=1)) == 1
    assert await store.history("f", "q") == []
    assert set(await store.states("f", "q")) == {"a"}


def muting(found: dict[str, Outcome], window: str | None, seen: list[list[Held]]) -> Any:
    """A decision in (or, with no *window*, after) a mute window, as the alert step sorts it out."""

    def decide(stored: dict[str, Instance], held: list[Held]) -> Verdict:
        seen.append(held)
        evaluation = evaluate(Rules(), stored, found, utcnow())
        sorted_out = sort_out(Rules(), evaluation, muting=window, held=held)
        told = [f"{t.key}:{t.notice}" for t in sorted_out.told]
        return Verdict(evaluation, {"told": told}, sorted_out.withheld, sorted_out.hold, sorted_out.release)

    return decide


async def test_notices_a_window_holds_are_kept_with_why_and_forgotten_once_released(
    store: AlertStore,
) -> None:
    seen: list[list[Held]] = []
    assert await store.evaluate(
        "f", "q", "r1", muting({"a": Outcome.HOLDS, "b": Outcome.HOLDS}, "nights", seen)
    ) == {"told": []}
    assert await store.evaluate("f", "q", "r2", muting({"a": Outcome.HOLDS}, "nights", seen)) == {"told": []}
    released = await store.evaluate("f", "q", "r3", muting({"a": Outcome.HOLDS}, None, seen))
    after = await store.evaluate("f", "q", "r4", muting({"a": Outcome.HOLDS}, None, seen))

    # b fired and resolved inside the window: nothing to tell of it; a still fires: told once.
    assert released == {"told": ["a:firing"]}
    assert after == {"told": []}
    assert [[(h.key, h.notice, h.before) for h in held] for held in seen] == [
        [],
        [("a", Notice.FIRING, State.OK), ("b", Notice.FIRING, State.OK)],
        [
            ("a", Notice.FIRING, State.OK),
            ("b", Notice.FIRING, State.OK),
            ("b", Notice.RESOLVED, State.FIRING),
        ],
        [],
    ]
    reasons = {(t["key"], t["notice"]): t["held"] for t in await store.history("f", "q")}
    assert reasons == {
        ("a", "firing"): "muted:nights",
        ("b", "firing"): "muted:nights",
        ("b", "resolved"): "muted:nights",
    }


async def test_an_evaluation_whose_notices_cannot_be_kept_records_nothing(store: AlertStore) -> None:
    calls: list[dict[str, Instance]] = []

    async def failing(verdict: Verdict) -> None:
        raise OSError("the blob store is away")

    with pytest.raises(OSError, match="blob store"):
        await store.evaluate("f", "q", "r1", deciding({"a": Outcome.HOLDS}, calls), failing)
    assert await store.states("f", "q") == {}
    assert await store.history("f", "q") == []
    assert await store.evaluate("f", "q", "r1", deciding({"a": Outcome.HOLDS}, calls)) == {
        "told": ["a:firing"]
    }


async def test_the_row_an_instance_fired_with_is_kept_until_it_resolves(store: AlertStore) -> None:
    def firing_with(row: dict[str, Any]) -> Any:
        def decide(stored: dict[str, Instance], held: list[Held]) -> Verdict:
            evaluation = evaluate(Rules(), stored, {"a": Outcome.HOLDS}, utcnow())
            instances = {key: dataclasses.replace(i, row=row) for key, i in evaluation.instances.items()}
            fresh = dataclasses.replace(evaluation, instances=instances) if not stored else evaluation
            return Verdict(fresh, {})

        return decide

    await store.evaluate("f", "q", "r1", firing_with({"EventId": 1, "State": "TEXAS"}))
    await store.evaluate("f", "q", "r2", firing_with({"EventId": 1, "State": "changed"}))

    assert (await store.states("f", "q"))["a"].row == {"EventId": 1, "State": "TEXAS"}
