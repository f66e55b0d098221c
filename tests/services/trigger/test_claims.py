"""Slot claims and run requests keep no transaction open while the broker takes a run, on PostgreSQL."""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from common.contracts.messages import RunCompleted, RunStatus
from common.contracts.topology import Topology
from common.platform.blobs.folder import FolderBlobStore
from common.platform.broker.interface import Delivery
from common.platform.config import Settings
from common.platform.connections import Connections
from common.platform.runtime import Runtime
from services.trigger import service as trigger
from services.trigger.scheduler import Chainer, Scheduler
from services.trigger.store import FlowStore, RequestState
from tests.services.trigger.test_flows_api import Api
from tests.services.trigger.test_scheduler import SAVED, flow, slot_rows
from tests.transactions import TransactionWatchingBroker

pytestmark = pytest.mark.postgres


@pytest.fixture
async def store(postgres_url: str) -> AsyncIterator[FlowStore]:
    flows = FlowStore(postgres_url)
    await flows.ensure_schema()
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

    # Two batches, one after the other: no transaction of one batch is open while the other publishes.
    scheduler = Scheduler(store, broker, batch_size=2, batches_in_flight=1)
    fired = await scheduler.tick(SAVED + dt.timedelta(minutes=1, seconds=1))
    done = RunCompleted(run_id="p1", flow="flow-0", status=RunStatus.SUCCEEDED, finished_at=SAVED)
    await Chainer(store, broker).on_completed(Delivery(done.model_dump_json().encode(), "run.completed"))

    assert len(fired) == 3
    # Each run: its trigger step's event and its first step, the chained one's too.
    assert len(broker.open_at_publish) == 8
    assert [open_ for _, open_ in broker.open_at_publish] == [0] * 8
    assert len(await slot_rows(store)) == 4


async def test_a_keyed_run_request_starts_its_run_with_no_transaction_open(
    tmp_path: Path, postgres_url: str, namespace: str
) -> None:
    # The scheduler looks once as the service starts, then not again during the test: its reads
    # are not under way while the runs are published.
    settings = Settings(
        data_dir=tmp_path, trigger_port=0, database_url=postgres_url, scheduler_poll_seconds=60
    )
    connections = Connections()
    connections.add_local("local", "http://127.0.0.1:31415")
    broker = TransactionWatchingBroker(Topology(namespace), postgres_url)
    runtime = Runtime(
        settings=settings, broker=broker, blobs=FolderBlobStore(tmp_path / "blobs"), connections=connections
    )
    async with runtime, trigger.running(runtime) as server, aiohttp.ClientSession() as session:
        api = Api(server.url, broker, session)
        await api.put(flow("on-demand").model_dump(mode="json", exclude_none=True))
        first = await api.run("on-demand", key="nightly")
        second = await api.run("on-demand", key="nightly")

    assert (first.status, second.status) == (202, 202)
    assert (first.body["repeated"], second.body["repeated"]) == (False, True)
    assert second.body["run_id"] == first.body["run_id"]
    # One run: its trigger step's event and its first step.
    assert [open_ for _, open_ in broker.open_at_publish] == [0, 0]


async def test_a_key_left_leased_by_a_request_that_stopped_is_taken_over_under_the_same_run_id(
    store: FlowStore,
) -> None:
    lease = dt.timedelta(minutes=2)
    first, state = await store.request("report", "k", "run-1", lease=lease, now=SAVED)
    assert (first, state) == ("run-1", RequestState.NEW)
    # The request stopped before settling. While the lease lasts, another waits; after, it takes over.
    assert await store.request("report", "k", "run-2", lease=lease, now=SAVED + lease / 2) == (
        "run-1",
        RequestState.STARTING,
    )
    later = SAVED + lease + dt.timedelta(seconds=1)
    assert await store.request("report", "k", "run-3", lease=lease, now=later) == (
        "run-1",
        RequestState.TAKEN_OVER,
    )
    assert await store.request("report", "k", "run-4", lease=lease, now=later) == (
        "run-1",
        RequestState.STARTING,
    )
    await store.settle_request("report", "k")
    assert await store.request("report", "k", "run-5", lease=lease, now=later) == (
        "run-1",
        RequestState.STARTED,
    )
    # Settled, a key is never released again.
    await store.release_request("report", "k")
    assert await store.request("report", "k", "run-6", lease=lease, now=later) == (
        "run-1",
        RequestState.STARTED,
    )
