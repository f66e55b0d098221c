"""Alert steps on a driven clock, through the step the trigger performs: each evaluation reads the
query's stored result, moves the instances, records them in SQL and says what it tells, one
notice per instance; silences withhold, mute windows hold until their end (across a DST change);
a restart in the middle of pending and a redelivered evaluation change nothing of that."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from common.contracts.flows import Flow, new_run
from common.contracts.messages import (
    ErrorCode,
    ErrorInfo,
    RunContext,
    StepKind,
    StepOutput,
    StepStatus,
    TriggerKind,
)
from common.contracts.mute_windows import MuteWindow
from common.contracts.results import Column, ResultSet
from common.contracts.topology import Topology
from common.platform.blobs.folder import FolderBlobStore
from common.platform.broker.memory import InProcessBroker
from common.platform.config import Settings
from common.platform.connections import Connections
from common.platform.runtime import Runtime
from services.trigger.alert_store import AlertStore
from services.trigger.alerting import Alerts
from services.trigger.mute_ends import MuteEnds
from services.trigger.silences import SilenceStore, silences
from services.trigger.starter import slot_run_id
from services.trigger.store import FlowStore

T0 = dt.datetime(2026, 3, 2, 9, 0, tzinfo=dt.UTC)
MINUTE = dt.timedelta(minutes=1)
COLUMNS = [Column(name="EventId", type="long"), Column(name="State", type="string")]
#: Nights in Berlin, 01:00 to 04:00 wall-clock time.
NIGHTS = MuteWindow(name="nights", timezone="Europe/Berlin", times=["01:00-04:00"])
QUIET_HOURS = MuteWindow(name="quiet_hours", timezone="UTC", times=["12:00-13:00"], at_end="drop")


def alert_flow(**alert: Any) -> Flow:
    return Flow.model_validate(
        {
            "name": "incidents",
            "connection": "local",
            "database": "Samples",
            "steps": [
                {
                    "id": "check",
                    "action": "run_query",
                    "query": "Incidents",
                    "alert": {"key_columns": ["EventId"], **alert},
                },
                {
                    "id": "mail",
                    "action": "send_email",
                    "for_each": "check",
                    "to": ["oncall@example.com"],
                    "subject": "{{ alert.instance.notice }} {{ row.EventId }}",
                },
            ],
        }
    )


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def database_url(
    request: pytest.FixtureRequest, tmp_path: Path, postgres_database: Any
) -> AsyncIterator[str]:
    if request.param == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path / 'alerts.db'}"
        return
    async with postgres_database() as url:
        yield url


@dataclass
class Evaluated:
    outcome: dict[str, Any]
    #: What the per-instance deliveries after it read: (notice, key), and each notice whole.
    told: list[tuple[str, str]]
    notices: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class Trigger:
    """An alert step's world: the stores, the blob store, the operator's windows, and a clock."""

    database_url: str
    blobs: FolderBlobStore
    broker: InProcessBroker
    now: dt.datetime = T0
    alerts: Alerts | None = None
    runtime: Runtime | None = None
    stores: list[AlertStore | SilenceStore] = field(default_factory=list)

    async def start(self) -> Alerts:
        """A trigger (again, as after a restart): new stores over the same database."""
        store, silence_store = AlertStore(self.database_url), SilenceStore(self.database_url)
        self.stores += [store, silence_store]
        await store.ensure_schema()
        self.runtime = Runtime(
            settings=Settings(max_deliveries=50),
            broker=self.broker,
            blobs=self.blobs,
            connections=Connections(mute_windows=[NIGHTS, QUIET_HOURS]),
        )
        self.alerts = Alerts(store, self.runtime, silence_store, clock=lambda: self.now)
        return self.alerts

    async def evaluate(
        self, flow: Flow, rows: list[tuple[int, str]] | None, *, run_id: str | None = None
    ) -> Evaluated:
        """One run's alert step over *rows* as its query's result (None: the query failed)."""
        assert self.alerts is not None
        run_id = run_id or uuid.uuid4().hex
        if rows is None:
            error = ErrorInfo(code=ErrorCode.KUSTO_SEMANTIC_ERROR, message="no such table")
            query = StepOutput(status=StepStatus.FAILED, error=error)
        else:
            result = ResultSet(columns=COLUMNS, rows=[list(row) for row in rows])
            ref = await self.blobs.put(
                f"runs/{run_id}/check/result.json", result.to_json_bytes(), "application/json"
            )
            query = StepOutput(row_count=len(rows), artifacts={"result": ref})
        run = new_run(flow, RunContext(flow=flow.name, trigger=TriggerKind.SCHEDULE), run_id)
        message = run.model_copy(update={"step_id": "check.alert", "outputs": {"check": query}})
        output = await self.alerts.perform(message)
        notices: list[dict[str, Any]] = []
        if "notices" in output.artifacts:
            notices = json.loads(await self.blobs.get(output.artifacts["notices"].key))
        told = [(notice["notice"], notice["key"]) for notice in notices]
        return Evaluated(output.detail["alert"], told, notices)

    async def silence(self, *, key: str | None, until: dt.datetime) -> str:
        silence_id = uuid.uuid4().hex
        store = next(store for store in self.stores if isinstance(store, SilenceStore))
        async with store.engine.begin() as conn:
            await conn.execute(
                silences.insert().values(
                    id=silence_id,
                    flow="incidents",
                    step_id=None,
                    key=key,
                    starts_at=self.now,
                    ends_at=until,
                    comment="known, being fixed",
                    created_by="local",
                    created_at=self.now,
                )
            )
        return silence_id

    async def held_reasons(self) -> list[tuple[str, str, str | None]]:
        store = next(store for store in self.stores if isinstance(store, AlertStore))
        return [
            (t["key"], t["notice"], t["held"]) for t in reversed(await store.history("incidents", "check"))
        ]


@pytest.fixture
async def trigger(database_url: str, tmp_path: Path) -> AsyncIterator[Trigger]:
    async with FolderBlobStore(tmp_path / "blobs") as blobs, InProcessBroker(Topology("alerting")) as broker:
        world = Trigger(database_url, blobs, broker)
        await world.start()
        try:
            yield world
        finally:
            for store in world.stores:
                await store.close()


async def test_each_instance_is_told_once_as_it_fires_and_once_as_it_resolves_with_its_row(
    trigger: Trigger,
) -> None:
    flow = alert_flow(pending_for=2)

    first = await trigger.evaluate(flow, [(1, "TEXAS"), (2, "OHIO")])
    trigger.now += MINUTE
    fired = await trigger.evaluate(flow, [(1, "TEXAS"), (2, "OHIO")])
    trigger.now += MINUTE
    quiet = await trigger.evaluate(flow, [(1, "TEXAS"), (2, "OHIO")])
    trigger.now += MINUTE
    changed = await trigger.evaluate(flow, [(2, "OHIO"), (3, "KANSAS")])

    assert (first.outcome["state"], first.told) == ("pending", [])
    assert fired.told == [("firing", "EventId=1"), ("firing", "EventId=2")]
    assert [notice["row"] for notice in fired.notices] == [
        {"EventId": 1, "State": "TEXAS"},
        {"EventId": 2, "State": "OHIO"},
    ]
    assert (quiet.told, quiet.outcome["deliver"]) == ([], False)
    # 3 is new (pending first), 1 is gone: told with the row it fired with, and since when it fired.
    assert changed.told == [("resolved", "EventId=1")]
    [resolved] = changed.notices
    assert resolved["row"] == {"EventId": 1, "State": "TEXAS"}
    assert (resolved["previous"], resolved["since"]) == ("firing", "2026-03-02T09:01:00Z")
    assert changed.outcome["counts"] == {
        "new": 0,
        "still_firing": 1,
        "resolved": 1,
        "silenced": 0,
        "held": 0,
        "released": 0,
        "dropped": 0,
    }


async def test_repeat_every_tells_a_firing_instance_again_and_keep_firing_for_rides_out_a_gap(
    trigger: Trigger,
) -> None:
    flow = alert_flow(repeat_every="10m", keep_firing_for="3m")
    seen = []
    for minute in range(12):
        # Instance 1 is missing from the result for two minutes (4 and 5): it keeps firing.
        rows = [(1, "TEXAS")] if minute not in (4, 5) else []
        trigger.now = T0 + minute * MINUTE
        seen.append((minute, (await trigger.evaluate(flow, rows)).told))

    told = [(minute, notices) for minute, notices in seen if notices]
    assert told == [(0, [("firing", "EventId=1")]), (10, [("repeat", "EventId=1")])]
    # Last held at minute 11: two minutes later it still fires, three later it resolves.
    trigger.now = T0 + 13 * MINUTE
    gone = await trigger.evaluate(flow, [])
    trigger.now = T0 + 14 * MINUTE
    assert (gone.told, (await trigger.evaluate(flow, [])).told) == ([], [("resolved", "EventId=1")])


async def test_a_mute_window_across_the_clocks_going_back_holds_until_its_wall_clock_end(
    trigger: Trigger,
) -> None:
    flow = alert_flow(mute_windows=["nights"])
    # 25 October 2026: Berlin's clocks go back at 03:00 CEST. 01:00-04:00 local is 23:00-03:00 UTC.
    before = dt.datetime(2026, 10, 24, 22, 50, tzinfo=dt.UTC)
    trigger.now = before
    assert (await trigger.evaluate(flow, [(1, "TEXAS")])).told == [("firing", "EventId=1")]

    trigger.now = dt.datetime(2026, 10, 24, 23, 30, tzinfo=dt.UTC)
    muted = await trigger.evaluate(flow, [(1, "TEXAS"), (2, "OHIO"), (3, "KANSAS")])
    trigger.now = dt.datetime(2026, 10, 25, 1, 30, tzinfo=dt.UTC)
    flapped = await trigger.evaluate(flow, [(2, "OHIO")])
    # 02:30 UTC is 03:30 CET, after the clocks went back: still the night, though four hours passed.
    trigger.now = dt.datetime(2026, 10, 25, 2, 30, tzinfo=dt.UTC)
    late = await trigger.evaluate(flow, [(2, "OHIO")])
    trigger.now = dt.datetime(2026, 10, 25, 3, 0, tzinfo=dt.UTC)
    morning = await trigger.evaluate(flow, [(2, "OHIO")])
    trigger.now += MINUTE
    after = await trigger.evaluate(flow, [(2, "OHIO")])

    assert muted.told == flapped.told == late.told == []
    assert muted.outcome["muted"] == {"window": "nights", "until": "2026-10-25T03:00:00Z", "held": 2}
    assert muted.outcome["state"] == "firing"
    # At the window's end, one notice per instance of how it is now against what was told before:
    # 1 resolved in the night, 2 started firing and still does, 3 fired and resolved unseen.
    assert morning.told == [("resolved", "EventId=1"), ("firing", "EventId=2")]
    assert morning.outcome["counts"]["released"] == 2
    assert all(notice["released"] for notice in morning.notices)
    assert after.told == []
    assert await trigger.held_reasons() == [
        ("EventId=1", "firing", None),
        ("EventId=2", "firing", "muted:nights"),
        ("EventId=3", "firing", "muted:nights"),
        ("EventId=1", "resolved", "muted:nights"),
        ("EventId=3", "resolved", "muted:nights"),
    ]


async def test_a_window_that_drops_at_its_end_tells_nothing_of_the_window_afterwards(
    trigger: Trigger,
) -> None:
    flow = alert_flow(mute_windows=["quiet_hours"])
    trigger.now = dt.datetime(2026, 3, 2, 12, 15, tzinfo=dt.UTC)
    muted = await trigger.evaluate(flow, [(1, "TEXAS")])
    trigger.now = dt.datetime(2026, 3, 2, 13, 0, tzinfo=dt.UTC)
    after = await trigger.evaluate(flow, [(1, "TEXAS"), (2, "OHIO")])

    assert muted.told == []
    assert after.told == [("firing", "EventId=2")]
    assert after.outcome["counts"]["dropped"] == 1


async def test_a_silence_by_key_withholds_that_instance_only_until_it_ends(trigger: Trigger) -> None:
    flow = alert_flow()
    silence = await trigger.silence(key="EventId=1", until=T0 + 30 * MINUTE)
    fired = await trigger.evaluate(flow, [(1, "TEXAS"), (2, "OHIO")])
    trigger.now += 40 * MINUTE
    resolved = await trigger.evaluate(flow, [])

    assert fired.told == [("firing", "EventId=2")]
    assert fired.outcome["counts"]["silenced"] == 1
    # Its state moved on regardless; once the silence is over its resolution is told.
    assert fired.outcome["firing"] == 2
    assert resolved.told == [("resolved", "EventId=1"), ("resolved", "EventId=2")]
    assert (await trigger.held_reasons())[:2] == [
        ("EventId=1", "firing", f"silenced:{silence}"),
        ("EventId=2", "firing", None),
    ]


async def test_a_silence_of_the_whole_flow_withholds_everything_but_the_state_moves(trigger: Trigger) -> None:
    flow = alert_flow()
    await trigger.silence(key=None, until=T0 + 10 * MINUTE)

    fired = await trigger.evaluate(flow, [(1, "TEXAS")])

    assert (fired.told, fired.outcome["deliver"], fired.outcome["state"]) == ([], False, "firing")


async def test_a_restart_in_the_middle_of_pending_carries_on_counting(trigger: Trigger) -> None:
    flow = alert_flow(pending_for=3)
    await trigger.evaluate(flow, [(1, "TEXAS")])
    trigger.now += MINUTE
    await trigger.evaluate(flow, [(1, "TEXAS")])

    await trigger.start()
    trigger.now += MINUTE
    fired = await trigger.evaluate(flow, [(1, "TEXAS")])

    assert fired.told == [("firing", "EventId=1")]


async def test_an_evaluation_handled_again_tells_what_it_told_and_records_nothing_more(
    trigger: Trigger,
) -> None:
    flow = alert_flow()
    first = await trigger.evaluate(flow, [(1, "TEXAS")], run_id="run-1")
    trigger.now += MINUTE
    again = await trigger.evaluate(flow, [(1, "TEXAS"), (2, "OHIO")], run_id="run-1")

    assert again.told == first.told == [("firing", "EventId=1")]
    assert again.outcome["repeated"] is True
    assert await trigger.held_reasons() == [("EventId=1", "firing", None)]


async def test_a_failed_query_is_an_error_told_once_and_no_rows_is_no_data_where_rows_are_expected(
    trigger: Trigger,
) -> None:
    flow = alert_flow(expect_rows=True)
    await trigger.evaluate(flow, [(1, "TEXAS")])
    trigger.now += MINUTE
    failed = await trigger.evaluate(flow, None)
    trigger.now += MINUTE
    still = await trigger.evaluate(flow, None)
    trigger.now += MINUTE
    empty = await trigger.evaluate(flow, [])

    # The alert as a whole is in error, told once; its instance keeps firing, untold.
    assert failed.outcome["state"] == "error"
    assert failed.outcome["firing"] == 1
    assert failed.told == [("error", "")]
    assert still.told == []
    assert (empty.outcome["state"], empty.told) == ("no_data", [("no_data", "")])
    assert empty.outcome["firing"] == 1


async def test_deliveries_over_an_alert_are_capped_and_the_count_says_how_many_were_told(
    trigger: Trigger,
) -> None:
    flow = alert_flow()
    rows = [(number, "TEXAS") for number in range(120)]

    fired = await trigger.evaluate(flow, rows)

    assert fired.outcome["counts"]["new"] == 120
    assert len(fired.notices) == 50


async def test_the_evaluation_step_reads_silences_from_the_database_only_while_they_last(
    trigger: Trigger,
) -> None:
    flow = alert_flow()
    await trigger.silence(key=None, until=T0 + MINUTE)
    store = next(store for store in trigger.stores if isinstance(store, SilenceStore))
    async with store.engine.begin() as conn:
        await conn.execute(silences.update().values(ended_at=T0))

    fired = await trigger.evaluate(flow, [(1, "TEXAS")])

    assert fired.told == [("firing", "EventId=1")]
    async with store.engine.connect() as conn:
        assert (await conn.execute(sa.select(sa.func.count()).select_from(silences))).scalar() == 1


async def test_at_a_windows_end_one_run_of_the_flow_is_started_to_tell_what_it_held(trigger: Trigger) -> None:
    flow = alert_flow(mute_windows=["nights"])
    flows = FlowStore(trigger.database_url)
    trigger.stores.append(flows)
    await flows.save(flow)
    assert trigger.runtime is not None
    replicas = [
        MuteEnds(store, flows, trigger.runtime, clock=lambda: trigger.now)
        for store in trigger.stores
        if isinstance(store, AlertStore)
    ]
    await trigger.start()
    replicas.append(MuteEnds(trigger.alerts.store, flows, trigger.runtime, clock=lambda: trigger.now))
    queue = trigger.broker.topology.step_queue(StepKind.QUERY)

    trigger.now = dt.datetime(2026, 3, 2, 0, 30, tzinfo=dt.UTC)  # 01:30 in Berlin
    await trigger.evaluate(flow, [(1, "TEXAS")])
    during = await asyncio.gather(*(replica._start_due() for replica in replicas))
    trigger.now = dt.datetime(2026, 3, 2, 3, 0, 30, tzinfo=dt.UTC)  # 04:00:30 in Berlin
    after = await asyncio.gather(*(replica._start_due() for replica in replicas))
    again = await asyncio.gather(*(replica._start_due() for replica in replicas))

    assert during == [[], []]
    # The two replicas start one run between them, and only once.
    [run_id] = [run for started in after for run in started]
    assert again == [[], []]
    assert trigger.broker.depth(queue) == 1
    assert run_id == slot_run_id("incidents", "mute-end:nights:2026-03-02T03:00:00+00:00")


async def test_a_windows_end_starts_nothing_for_a_flow_switched_off(trigger: Trigger) -> None:
    flow = alert_flow(mute_windows=["nights"])
    flows = FlowStore(trigger.database_url)
    trigger.stores.append(flows)
    await flows.save(flow.model_copy(update={"enabled": False}))
    assert trigger.alerts is not None
    assert trigger.runtime is not None
    ends = MuteEnds(trigger.alerts.store, flows, trigger.runtime, clock=lambda: trigger.now)
    trigger.now = dt.datetime(2026, 3, 2, 0, 30, tzinfo=dt.UTC)
    await trigger.evaluate(flow, [(1, "TEXAS")])
    trigger.now = dt.datetime(2026, 3, 2, 5, 0, tzinfo=dt.UTC)

    assert await ends._start_due() == []
    assert await ends.tick() is True
