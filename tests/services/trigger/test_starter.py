"""Starting a run: what the trigger step publishes, and what history makes of it."""

from __future__ import annotations

import asyncio
import datetime as dt
from pathlib import Path
from typing import Any

import pytest

from common.contracts.flows import Flow, RunTemplate
from common.contracts.messages import RunContext, StatusEvent, StepOutput, StepStatus, TriggerKind
from common.contracts.topology import Topology
from common.platform.broker.interface import Delivery
from common.platform.broker.memory import InProcessBroker
from common.platform.steps import emit
from services.history.store import HistoryStore
from services.trigger.starter import launch

SLOT = dt.datetime(2026, 3, 26, 12, 0, tzinfo=dt.UTC)
NOW = SLOT + dt.timedelta(milliseconds=20)

FLOW = Flow.model_validate(
    {
        "name": "storms",
        "connection": "local",
        "database": "Samples",
        "trigger": {"every": "1m"},
        "steps": [
            {"id": "count", "action": "run_query", "query": "StormEvents | count"},
            {"id": "mail", "action": "send_email", "to": ["team@example.com"], "subject": "Storms"},
        ],
    }
)


async def status_events(broker: InProcessBroker, count: int) -> list[StatusEvent]:
    """The first *count* status events published, in order."""
    events: list[StatusEvent] = []
    enough = asyncio.Event()

    async def take(delivery: Delivery) -> None:
        events.append(StatusEvent.model_validate_json(delivery.body))
        if len(events) == count:
            enough.set()

    await broker.consume(broker.topology.status_queue, take, prefetch=1)
    await asyncio.wait_for(enough.wait(), 5)
    return events


def without_run_id(view: dict[str, Any] | None) -> dict[str, Any]:
    assert view is not None
    return {key: value for key, value in view.items() if key != "run_id"}


async def test_history_sees_the_run_the_trigger_step_reports_once_as_if_it_had_reported_twice(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("common.platform.steps.utcnow", lambda: NOW)
    monkeypatch.setattr("common.contracts.flows.utcnow", lambda: SLOT)
    context = RunContext(flow="storms", trigger=TriggerKind.SCHEDULE, scheduled_for=SLOT)
    history = HistoryStore(f"sqlite+aiosqlite:///{tmp_path / 'history.db'}")
    await history.ensure_schema()
    try:
        async with (
            InProcessBroker(Topology("starter-test")) as broker,
            InProcessBroker(Topology("starter-test-twice")) as other,
        ):
            message = await launch(broker, RunTemplate.of(FLOW), context, "once")
            assert broker.depth(broker.topology.status_queue) == 1
            # The same start told in two events, running (with the run) then succeeded.
            twice = message.model_copy(update={"run_id": "twice"})
            output = StepOutput(detail={"trigger": "schedule"})
            await emit(other, twice, StepStatus.RUNNING, started_at=twice.submitted_at, with_run=True)
            await emit(other, twice, StepStatus.SUCCEEDED, started_at=twice.submitted_at, output=output)
            once = await status_events(broker, 1)
            for event in [*once, *await status_events(other, 2)]:
                await history.apply(event)
        one_event, two_events = await history.get_run("once"), await history.get_run("twice")
    finally:
        await history.close()

    assert [(event.step_id, event.status) for event in once] == [("trigger", StepStatus.SUCCEEDED)]
    assert once[0].run is not None
    assert without_run_id(one_event) == without_run_id(two_events)
    assert one_event is not None
    assert one_event["status"] == "running"
    assert [(step["step_id"], step["status"]) for step in one_event["steps"]][:2] == [
        ("trigger", "succeeded"),
        ("count", "pending"),
    ]
