"""Retention: runs older than ``ADXFLOW_RETENTION_DAYS`` go, with everything they left; test runs
older than ``ADXFLOW_DRY_RUN_RETENTION_HOURS``, sooner.

A periodic sweep takes expired runs in batches and deletes, for each batch,
their blobs (``runs/<run_id>/``), their dead letters, then their steps and
rows. The rows go last, so a sweep interrupted half-way finds the same runs
again next time. Then every blob last written before the cutoff goes too: a
run's blobs are never older than the run. Every delete is idempotent, so
several history replicas may sweep at once.
"""

from __future__ import annotations

import datetime as dt

import sqlalchemy as sa
import structlog

from common.contracts.errors import BlobStoreError
from common.contracts.messages import utcnow
from common.platform.blobs.interface import BlobStore
from common.platform.config import Settings
from services.history.dead_letters import DeadLetterStore
from services.history.store import HistoryStore

log = structlog.get_logger(__name__)

BATCH = 200


class Retention:
    def __init__(
        self, store: HistoryStore, letters: DeadLetterStore, blobs: BlobStore, settings: Settings
    ) -> None:
        self.store = store
        self.letters = letters
        self.blobs = blobs
        self.keep_for = dt.timedelta(days=settings.retention_days)
        self.keep_tests_for = min(self.keep_for, dt.timedelta(hours=settings.dry_run_retention_hours))
        self.every = settings.retention_interval_seconds

    async def sweep(self, now: dt.datetime | None = None, batch: int = BATCH) -> int:
        """Delete every run past retention at *now*; returns how many runs went."""
        now = now or utcnow()
        cutoff = now - self.keep_for
        deleted = 0
        while True:
            run_ids = await self.store.expired(cutoff, batch, tests_cutoff=now - self.keep_tests_for)
            for run_id in run_ids:
                await self.blobs.delete_prefix(f"runs/{run_id}")
            await self.letters.delete_expired(run_ids, cutoff)
            if run_ids:
                deleted += await self.store.delete_runs(run_ids)
                log.info("expired runs deleted", runs=len(run_ids), cutoff=cutoff.isoformat())
            if len(run_ids) < batch:
                break
        # What no run row leads to any more (a step that wrote after its run was deleted, a writer
        # that died mid-file) goes by its own age.
        if blobs := await self.blobs.expire(cutoff):
            log.info("expired blobs deleted", blobs=blobs, cutoff=cutoff.isoformat())
        return deleted

    async def tick(self) -> bool:
        """One sweep, as the supervised loop runs it every interval; False if it could not finish."""
        try:
            await self.sweep()
        except (sa.exc.SQLAlchemyError, OSError, BlobStoreError):
            log.exception("retention sweep failed; retrying at the next interval")
            return False
        return True
