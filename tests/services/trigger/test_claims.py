"""Slot claims hold no transaction open while runs are handed to the broker, on the real PostgreSQL."""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator

import pytest

from common.contracts.messages import RunCompleted, RunStatus
from common.contracts.topology import Topology
from common.platform.broker.interface import Delivery
from services.trigger.scheduler import Chainer, Scheduler
from services.trigger.store import FlowStore
from tests.services.trigger.test_scheduler import SAVED, flow, slot_rows
from tests.transactions import TransactionWatchingBroker

pytestmark = pytest.mark.postgres


@pytest.fixture
async def store(postgres_url: str) -> AsyncIterator[FlowStore]:
    flows = FlowStore(postgres_url)
    await flows.create_schema()
    try:
        yield flows
    finally:
        await flows.close()


@pytest.fixture
async def broker(postgres_url: str) -> AsyncIterator[TransactionWatchingBroker]:
    async with TransactionWatchingBroker(Topology("trigger-claims"), postgres_url) as watching:
        yield watching


async def test_scheduled_and_chained_runs_are_started_with_no_transaction_open(
    store: FlowStore, broker: TransactionWatchingBroker
) -> None:
    for index in range(3):
        await store.save(flow(f"flow-{index}", every="1m"), now=SAVED)
    await store.save(flow("follower", after={"flow": "flow-0"}), now=SAVED)

    fired = await Scheduler(store, broker, batch_size=2).tick(SAVED + dt.timedelta(minutes=1, seconds=1))
    done = RunCompleted(run_id="p1", flow="flow-0", status=RunStatus.SUCCEEDED, finished_at=SAVED)
    await Chainer(store, broker).on_completed(Delivery(done.model_dump_json().encode(), "run.completed"))

    assert len(fired) == 3
    # Each run: its trigger step's event and its first step, the chained one's too.
    assert len(broker.open_at_publish) == 8
    assert [open_ for _, open_ in broker.open_at_publish] == [0] * 8
    assert len(await slot_rows(store)) == 4
