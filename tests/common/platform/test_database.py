"""Creating the schema is safe when replicas start together."""

from __future__ import annotations

import asyncio

import pytest
import sqlalchemy as sa

from common.platform.database import SqlStore
from services.history.dead_letters import DeadLetterStore
from services.history.store import HistoryStore
from services.notifier.ledger import Ledger
from services.trigger.store import FlowStore


@pytest.mark.postgres
async def test_replicas_starting_together_create_each_table_once(postgres_url: str) -> None:
    kinds: list[type[SqlStore]] = [FlowStore, HistoryStore, DeadLetterStore, Ledger]
    # Two of each, as two replicas of every service would, all at once on an empty database.
    stores = [kind(postgres_url) for kind in kinds for _ in range(2)]
    try:
        await asyncio.gather(*(store.ensure_schema() for store in stores))
        async with stores[0].engine.connect() as conn:
            tables = set(await conn.run_sync(lambda sync: sa.inspect(sync).get_table_names()))
    finally:
        await asyncio.gather(*(store.close() for store in stores))

    expected = {table for kind in kinds for table in kind.metadata.tables}
    assert expected <= tables
