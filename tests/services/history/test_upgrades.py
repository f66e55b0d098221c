"""Kept messages across a rolling upgrade: dead letters and re-runs keep what a newer release wrote."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from common.contracts.flows import Flow, new_run
from common.contracts.messages import (
    SCHEMA_MINOR,
    SCHEMA_VERSION,
    SERVICE_OF,
    DeadLetterRecord,
    ErrorCode,
    ErrorInfo,
    RunContext,
    RunInfo,
    RunMessage,
    StatusEvent,
    StepKind,
    StepStatus,
    TriggerKind,
    read_message,
)
from common.contracts.topology import Topology
from common.platform.blobs.folder import FolderBlobStore
from common.platform.broker.interface import REASON_HEADER, Delivery
from common.platform.broker.memory import InProcessBroker
from common.platform.config import Settings
from common.platform.connections import Connections
from common.platform.runtime import Runtime
from services.history.dead_letters import DeadLetterStore
from services.history.reruns import Redo, RedoRefused, message_key
from services.history.service import Recorder
from services.history.store import HistoryStore

FLOW: dict[str, Any] = {
    "name": "upgrades",
    "connection": "local",
    "database": "Samples",
    "steps": [{"id": "q", "action": "run_query", "query": "StormEvents | count"}],
}


def newer_run(run_id: str = "r1") -> RunMessage:
    """A run at its query step as a newer minor wrote it: a field this release does not know."""
    flow = Flow.model_validate(FLOW)
    body = json.loads(
        new_run(flow, RunContext(flow=flow.name, trigger=TriggerKind.MANUAL), run_id).model_dump_json()
    )
    body.update(step_id="q", schema_minor=SCHEMA_MINOR + 2, trace_parent="00-abc-01")
    body["flow"]["steps"][0]["cache_minutes"] = 5
    return read_message(RunMessage, json.dumps(body))


@dataclass
class History:
    broker: InProcessBroker
    runtime: Runtime
    store: HistoryStore
    letters: DeadLetterStore
    redo: Redo
    queued: asyncio.Queue[Delivery]


@pytest.fixture
async def history(tmp_path: Path, namespace: str) -> AsyncIterator[History]:
    url = f"sqlite+aiosqlite:///{tmp_path / 'h.db'}"
    store, letters = HistoryStore(url), DeadLetterStore(url)
    await store.ensure_schema()
    await letters.ensure_schema()
    broker = InProcessBroker(Topology(namespace))
    runtime = Runtime(
        settings=Settings(data_dir=tmp_path),
        broker=broker,
        blobs=FolderBlobStore(tmp_path / "blobs"),
        connections=Connections(),
    )
    queued: asyncio.Queue[Delivery] = asyncio.Queue()
    try:
        async with runtime:
            await broker.consume(broker.topology.step_queue(StepKind.QUERY), queued.put)
            yield History(broker, runtime, store, letters, Redo(store, letters, runtime), queued)
    finally:
        await store.close()
        await letters.close()


async def test_a_refused_message_is_kept_with_its_reason_and_replayed_whole(history: History) -> None:
    body = newer_run().model_dump_json().encode()
    key = history.broker.topology.step_key(StepKind.QUERY)
    reason = "unreadable RunMessage: schema_version: schema_version 2 is newer than this reader's 1"

    await history.letters.keep(Delivery(body=body, routing_key=key, headers={REASON_HEADER: reason}))
    [letter] = await history.letters.all()

    assert letter["error"] == {"code": "UnreadableMessage", "message": reason}
    assert letter["run_id"] == "r1"
    replayed = await history.letters.replay(letter["id"], history.broker)
    assert replayed == {"run_id": "r1", "step_id": "q", "attempt": 2}
    again = json.loads((await asyncio.wait_for(history.queued.get(), 5)).body)
    assert again["trace_parent"] == "00-abc-01"
    assert again["flow"]["steps"][0]["cache_minutes"] == 5
    assert again["schema_minor"] == SCHEMA_MINOR + 2


async def test_a_step_s_dead_letter_record_replays_the_newer_fields_of_its_run(history: History) -> None:
    run = newer_run().model_copy(update={"attempt": 6})
    record = DeadLetterRecord(
        run_id=run.run_id,
        step_id=run.step_id,
        attempt=6,
        routing_key=history.broker.topology.step_key(StepKind.QUERY),
        error=ErrorInfo(code=ErrorCode.KUSTO_UNAVAILABLE, message="down", retryable=True),
        message=run,
    )
    wire = json.loads(record.model_dump_json())
    wire["operator_note"] = "from a newer release"
    await history.letters.keep(Delivery(body=json.dumps(wire).encode(), routing_key="dead"))
    [letter] = await history.letters.all()

    await history.letters.replay(letter["id"], history.broker)

    again = json.loads((await asyncio.wait_for(history.queued.get(), 5)).body)
    assert (again["attempt"], again["trace_parent"]) == (7, "00-abc-01")


def delivered(event: StatusEvent) -> Delivery:
    return Delivery(body=event.model_dump_json().encode(), routing_key="status", message_id=event.event_id)


async def test_a_re_run_sends_the_kept_run_with_the_fields_a_newer_release_wrote(history: History) -> None:
    run = newer_run()
    recorder = Recorder(history.store, history.runtime, history.redo)

    def step_event(kind: StepKind, step_id: str, status: StepStatus, **extra: Any) -> StatusEvent:
        return StatusEvent(
            run_id=run.run_id, step_id=step_id, kind=kind, service=SERVICE_OF[kind], status=status, **extra
        )

    await recorder.on_status(
        delivered(step_event(StepKind.TRIGGER, "trigger", StepStatus.SUCCEEDED, run=RunInfo.of(run)))
    )
    failure = ErrorInfo(code=ErrorCode.KUSTO_SEMANTIC_ERROR, message="no such table")
    await recorder.on_status(
        delivered(step_event(StepKind.QUERY, "q", StepStatus.FAILED, error=failure, message=run))
    )

    queued = await history.redo.rerun(run.run_id)

    assert queued == {"run_id": run.run_id, "step_id": "q", "attempt": 2}
    again = json.loads((await asyncio.wait_for(history.queued.get(), 5)).body)
    assert again["trace_parent"] == "00-abc-01"
    assert again["flow"]["steps"][0]["cache_minutes"] == 5


async def test_a_kept_run_of_a_higher_major_refuses_its_re_run_saying_why(history: History) -> None:
    body = json.loads(newer_run().model_dump_json())
    body["schema_version"] = SCHEMA_VERSION + 1
    await history.runtime.blobs.put(message_key("r1"), json.dumps(body).encode(), "application/json")

    with pytest.raises(RedoRefused, match=f"schema_version {SCHEMA_VERSION + 1} is newer"):
        await history.redo.kept("r1")
