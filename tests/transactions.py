"""A broker that looks, at every publish, for a transaction left open on the test's PostgreSQL database.

The rule it checks: no database transaction stays open across a broker
publish. Every publish asks PostgreSQL for the sessions of the database that
are inside a transaction; a store that publishes with its transaction open
shows up as ``idle in transaction`` at that moment. (So would another task's
transaction under way meanwhile: the tests that use it do one thing at a time.)
"""

from __future__ import annotations

import asyncpg

from common.contracts.topology import Topology
from common.platform.broker.memory import InProcessBroker


class TransactionWatchingBroker(InProcessBroker):
    def __init__(self, topology: Topology, database_url: str) -> None:
        super().__init__(topology)
        self._dsn = database_url.replace("postgresql+asyncpg://", "postgresql://", 1)
        self._database = database_url.rsplit("/", 1)[1]
        #: For each publish, its routing key and how many transactions were open then.
        self.open_at_publish: list[tuple[str, int]] = []

    async def publish(
        self, routing_key: str, body: bytes, *, message_id: str | None = None, delay: float | None = None
    ) -> None:
        watcher = await asyncpg.connect(self._dsn)
        try:
            open_transactions = await watcher.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid() "
                "AND state IN ('idle in transaction', 'idle in transaction (aborted)')",
                self._database,
            )
        finally:
            await watcher.close()
        self.open_at_publish.append((routing_key, int(open_transactions)))
        await super().publish(routing_key, body, message_id=message_id, delay=delay)
