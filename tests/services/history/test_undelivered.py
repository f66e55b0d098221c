"""A run message the broker dead-letters after its delivery limit fails its run at once, and only once."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from common.contracts.flows import Flow, new_run
from common.contracts.messages import RunCompleted, RunContext, RunMessage, RunStatus, StepStatus, TriggerKind
from common.contracts.topology import Topology
from common.platform.blobs.folder import FolderBlobStore
from common.platform.broker.interface import DELIVERY_LIMIT_REACHED, Broker, Delivery
from common.platform.broker.memory import InProcessBroker
from common.platform.config import Settings
from common.platform.connections import Connections
from common.platform.runtime import Runtime
from common.platform.steps import emit
from services.history import service as history
from services.history.dead_letters import DeadLetterStore
from services.history.reruns import Redo
from services.history.service import Recorder
from services.history.store import HistoryStore
from tests.conftest import poll_until
from tests.transactions import TransactionWatchingBroker

FLOW = {
    "name": "storms",
    "connection": "local",
    "database": "Samples",
    "steps": [
        {"id": "query", "action": "run_query_and_render_chart", "query": "StormEvents | count"},
        {"id": "mail", "action": "send_email", "to": ["a@example.com"], "subject": "s"},
    ],
}


def query_message(run_id: str) -> RunMessage:
    flow = Flow.model_validate(FLOW)
    message = new_run(flow, RunContext(flow=flow.name, trigger=TriggerKind.MANUAL), run_id)
    return message.model_copy(update={"step_id": "query"})


async def _get(session: aiohttp.ClientSession, url: str) -> Any:
    async with session.get(url) as response:
        assert response.status == 200, await response.text()
        return await response.json()


async def test_a_run_message_its_service_crashes_on_fails_its_run_once_the_broker_dead_letters_it(
    broker: Broker, tmp_path: Path
) -> None:
    settings = Settings(data_dir=tmp_path, history_port=0, namespace=broker.topology.namespace)
    topology = broker.topology
    announced: list[RunCompleted] = []
    deliveries: list[Delivery] = []

    async def crashing_query_worker(delivery: Delivery) -> None:
        deliveries.append(delivery)
        raise RuntimeError("the worker crashes on this message")

    async def take(delivery: Delivery) -> None:
        announced.append(RunCompleted.model_validate_json(delivery.body))

    async with AsyncExitStack() as stack:
        blobs = await stack.enter_async_context(FolderBlobStore(tmp_path / "blobs"))
        runtime = Runtime(settings=settings, broker=broker, blobs=blobs, connections=Connections())
        server = await stack.enter_async_context(history.running(runtime))
        session = await stack.enter_async_context(aiohttp.ClientSession())
        await broker.consume(topology.run_completed_queue, take)
        await broker.consume(topology.step_queue(query_message("r").step.kind), crashing_query_worker)

        message = query_message("run-undelivered")
        await emit(broker, message, StepStatus.SUCCEEDED, step=message.itinerary[0], with_run=True)
        await broker.publish_model(
            topology.step_key(message.step.kind), message, message_id="run-undelivered:q:1"
        )

        async def run_failed() -> bool:
            async with session.get(f"{server.url}/v1/runs/run-undelivered") as response:
                return response.status == 200 and (await response.json())["status"] == "failed"

        await poll_until(run_failed, timeout=30, what="the run to fail")
        await poll_until(lambda: _true(bool(announced)), what="the run's end to be announced")

        run = await _get(session, f"{server.url}/v1/runs/run-undelivered")
        assert run["failed_step"] == "query"
        assert run["error"]["code"] == "DeliveryLimit"
        assert "was delivered more often than the broker's delivery limit" in run["error"]["message"]
        failed = [step for step in run["steps"] if step["status"] == "failed"]
        assert [(step["step_id"], step["attempt"], step["error"]["code"]) for step in failed] == [
            ("query", 1, "DeliveryLimit")
        ]
        assert [(done.run_id, done.status) for done in announced] == [("run-undelivered", RunStatus.FAILED)]
        letters = (await _get(session, f"{server.url}/v1/dead-letters"))["dead_letters"]
        assert [(letter["run_id"], letter["step_id"], letter["error"]["code"]) for letter in letters] == [
            ("run-undelivered", "query", "DeliveryLimit")
        ]
        # It was delivered until the broker gave up, not failed by anything else.
        assert len(deliveries) >= 5


@pytest.fixture
async def recorder(tmp_path: Path) -> AsyncIterator[tuple[Recorder, InProcessBroker]]:
    async with AsyncExitStack() as stack:
        url = f"sqlite+aiosqlite:///{tmp_path / 'history.db'}"
        store, letters = HistoryStore(url), DeadLetterStore(url)
        stack.push_async_callback(store.close)
        stack.push_async_callback(letters.close)
        await store.ensure_schema()
        await letters.ensure_schema()
        broker = InProcessBroker(Topology("history-undelivered"))
        runtime = Runtime(
            settings=Settings(data_dir=tmp_path),
            broker=broker,
            blobs=FolderBlobStore(tmp_path / "blobs"),
            connections=Connections(),
        )
        await stack.enter_async_context(runtime)
        yield Recorder(store, runtime, Redo(store, letters, runtime)), broker


async def test_a_dead_letter_delivered_again_fails_its_run_no_further_and_is_kept_once(
    recorder: tuple[Recorder, InProcessBroker],
) -> None:
    handler, broker = recorder
    message = query_message("run-twice")
    await emit(broker, message, StepStatus.SUCCEEDED, step=message.itinerary[0], with_run=True)
    [started] = await _drain(broker, broker.topology.status_queue)
    await handler.on_status(started)
    dead = Delivery(
        body=message.model_dump_json().encode(),
        routing_key=broker.topology.step_key(message.step.kind),
        headers={"x-first-death-reason": DELIVERY_LIMIT_REACHED},
    )

    await handler.on_dead_letter(dead)
    first = await handler.store.get_run("run-twice")
    await handler.on_dead_letter(dead)
    again = await handler.store.get_run("run-twice")

    assert first is not None
    assert again is not None
    assert (again["status"], again["error"]["code"]) == ("failed", "DeliveryLimit")
    assert again["steps"] == first["steps"]
    assert again["finished_at"] == first["finished_at"]
    assert len(await handler.redo.letters.all()) == 1
    # The run can be re-run from the step: its message was kept.
    kept = await handler.redo.kept("run-twice")
    assert kept is not None
    # Read back, a message carries the minor it was written with.
    assert kept.model_dump(exclude={"schema_minor"}) == message.model_dump(exclude={"schema_minor"})


async def test_a_message_the_broker_dead_letters_for_another_reason_fails_no_run(
    recorder: tuple[Recorder, InProcessBroker],
) -> None:
    handler, broker = recorder
    message = query_message("run-rejected")
    await handler.on_dead_letter(
        Delivery(
            body=message.model_dump_json().encode(),
            routing_key=broker.topology.step_key(message.step.kind),
            headers={"x-first-death-reason": "rejected"},
        )
    )
    assert await handler.store.get_run("run-rejected") is None
    [letter] = await handler.redo.letters.all()
    assert letter["error"] == {
        "code": "DeadLettered",
        "message": "the broker dead-lettered the message (rejected)",
    }


async def _drain(broker: InProcessBroker, queue: Any) -> list[Delivery]:
    taken: list[Delivery] = []
    while broker.depth(queue):
        taken.append(broker._queues[queue.name].get_nowait())
    return taken


async def _true(value: bool) -> bool:
    return value


@pytest.mark.postgres
async def test_a_dead_letter_is_replayed_with_no_transaction_open_and_forgotten_after(
    postgres_url: str, tmp_path: Path
) -> None:
    letters = DeadLetterStore(postgres_url)
    await letters.ensure_schema()
    try:
        async with TransactionWatchingBroker(Topology("history-replay"), postgres_url) as broker:
            message = query_message("run-replayed")
            await letters.keep(
                Delivery(
                    body=message.model_dump_json().encode(),
                    routing_key=broker.topology.step_key(message.step.kind),
                    headers={"x-first-death-reason": DELIVERY_LIMIT_REACHED},
                )
            )
            [letter] = await letters.all()
            replayed = await letters.replay(letter["id"], broker)

            assert replayed == {"run_id": "run-replayed", "step_id": "query", "attempt": 2}
            assert broker.open_at_publish == [(broker.topology.step_key(message.step.kind), 0)]
            [again] = await _drain(broker, broker.topology.step_queue(message.step.kind))
            assert RunMessage.model_validate_json(again.body).attempt == 2
            assert await letters.all() == []
    finally:
        await letters.close()
