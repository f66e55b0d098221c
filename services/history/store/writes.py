"""Writing the run history: status events merged, attempts queued, stalled runs failed, old runs deleted.

Each write reads the run's row (locked until the transaction ends, on
PostgreSQL) with its steps in one select, asks
:mod:`services.history.transitions` what changes, and writes that.
"""

from __future__ import annotations

import datetime as dt
import itertools
from collections.abc import Mapping, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from common.contracts.messages import (
    ErrorInfo,
    RunCompleted,
    RunStatus,
    Service,
    StatusEvent,
    StepKind,
    StepStatus,
    utcnow,
)
from common.platform import metrics
from common.platform.database import SqlStore, insert_ignore
from services.history.states import Changes, RunState, StepKey, StepState
from services.history.store.schema import runs, steps, utc
from services.history.transitions import merge, queue, stall

Loaded = tuple[RunState, tuple[StepState, ...]]

_LOADING = sa.select(
    runs.c.run_id,
    runs.c.status,
    runs.c.flow,
    runs.c.step_count,
    runs.c.started_at,
    runs.c.finished_at,
    runs.c.failed_step,
    runs.c.updated_at,
    runs.c.scope_step,
    runs.c.dry_run,
    steps.c.step_id,
    steps.c.attempt,
    steps.c.position,
    steps.c.status.label("step_status"),
    steps.c.kind,
    steps.c.service,
    steps.c.flow_step,
    steps.c.finished_at.label("step_finished_at"),
    steps.c.error_code,
    steps.c.error_message,
    steps.c.detail,
).select_from(runs.outerjoin(steps, steps.c.run_id == runs.c.run_id))


class RunWrites(SqlStore):
    """The history store's writes."""

    async def apply(self, event: StatusEvent) -> RunCompleted | None:
        """Merge *event*; when it ends the run (or meets a run already ended), say how it ended."""
        [completed] = await self.apply_all([event])
        return completed

    async def apply_all(self, events: Sequence[StatusEvent]) -> list[RunCompleted | None]:
        """Merge *events* in one transaction, each as :meth:`apply` would; what each one ended.

        The events of one run are merged in the order given. Runs are locked in
        the order of their ids, so replicas merging overlapping batches at once
        wait for each other instead of deadlocking.
        """
        now = utcnow()
        order = sorted(range(len(events)), key=lambda index: events[index].run_id)
        changes: dict[int, Changes] = {}
        async with self.engine.begin() as conn:
            for run_id, group in itertools.groupby(order, key=lambda index: events[index].run_id):
                indexes = list(group)
                merged = await _merge_run(conn, run_id, [events[index] for index in indexes], now)
                changes.update(zip(indexes, merged, strict=True))
        outcomes = [changes[index] for index in range(len(events))]
        for outcome in outcomes:
            if outcome.completed is not None and outcome.ends_run:
                metrics.RUNS.labels(outcome.completed.flow, outcome.completed.status.value).inc()
        return [outcome.completed for outcome in outcomes]

    async def queue_attempt(self, run_id: str, step_id: str, *, reopen: bool) -> int | None:
        """Record a new attempt of *step_id*, queued now; returns its number.

        With *reopen* (a re-run) the run must have failed at that step, and it is
        running again once this returns; two callers racing get one attempt and
        one None. Without it (a resend) the run must have ended; its status stays.
        """
        async with self.engine.begin() as conn:
            loaded = await _load(conn, run_id)
            if loaded is None:
                return None
            queued = queue(*loaded, step_id, reopen=reopen, now=utcnow())
            if queued is None:
                return None
            attempt, changes = queued
            # Where the row is not locked (SQLite), of two re-runs racing only one finds the run failed.
            failed = runs.c.status == RunStatus.FAILED.value
            if not await _write(conn, run_id, changes, guard=failed if reopen else None):
                return None
        return attempt

    async def restore_failed(self, run_id: str, step_id: str, attempt: int, error: ErrorInfo) -> None:
        """Undo :meth:`queue_attempt` when the attempt could not be sent: the attempt failed at once."""
        now = utcnow()
        event = StatusEvent(
            run_id=run_id,
            step_id=step_id,
            attempt=attempt,
            kind=StepKind.RECORD,
            service=Service.HISTORY,
            status=StepStatus.FAILED,
            finished_at=now,
            error=error,
        )
        async with self.engine.begin() as conn:
            loaded = await _load(conn, run_id)
            if loaded is not None:
                await _write(conn, run_id, merge(*loaded, event, now))

    async def fail_stalled(self, now: dt.datetime, quiet_for: dt.timedelta) -> list[RunCompleted]:
        """Fail every unfinished run that has had no news for *quiet_for*, as Stalled.

        A compare-and-set: a run is changed only if it is still unfinished and quiet when the
        sweep writes it, so a run that ends (or has news) at the same moment keeps what that
        said. PostgreSQL's row lock makes the sweep wait for such a write and read its outcome;
        SQLite has no row locks, and the condition on the update is what keeps it.
        """
        unfinished = (RunStatus.QUEUED.value, RunStatus.RUNNING.value)
        # A parent waiting on its scope's child runs hears of them only as they end; while one is
        # unfinished (and not stalled itself) the parent is not stalled either.
        child = runs.alias("child")
        live_child = sa.exists().where(
            (child.c.parent_run_id == runs.c.run_id)
            & child.c.scope_step.is_not(None)
            & child.c.status.in_(unfinished)
        )
        still_stalled = runs.c.status.in_(unfinished) & (runs.c.updated_at < now - quiet_for) & ~live_child
        quiet = sa.select(runs.c.run_id).where(still_stalled)
        ended: list[RunCompleted] = []
        async with self.engine.begin() as conn:
            for run_id in (await conn.execute(quiet.order_by(runs.c.run_id))).scalars().all():
                loaded = await _load(conn, run_id)
                # A run that had news since the select is left alone.
                changes = None if loaded is None else stall(*loaded, now, quiet_for)
                if changes is None or not await _write(conn, run_id, changes, guard=still_stalled):
                    continue
                if changes.completed is not None:
                    ended.append(changes.completed)
        for completed in ended:
            metrics.RUNS.labels(completed.flow, completed.status.value).inc()
        return ended

    async def delete_runs(self, run_ids: Sequence[str]) -> int:
        """Delete the runs and their steps; runs already gone are no error."""
        async with self.engine.begin() as conn:
            await conn.execute(steps.delete().where(steps.c.run_id.in_(run_ids)))
            result = await conn.execute(runs.delete().where(runs.c.run_id.in_(run_ids)))
        return int(result.rowcount or 0)


async def _load(conn: AsyncConnection, run_id: str) -> Loaded | None:
    """The run and its steps, its row locked until the transaction ends (on PostgreSQL); None if none."""
    query = _LOADING.where(runs.c.run_id == run_id)
    if conn.dialect.name == "postgresql":
        query = query.with_for_update(of=runs)
    rows = (await conn.execute(query)).all()
    if not rows:
        return None
    row = rows[0]
    run = RunState(
        run_id=row.run_id,
        status=RunStatus(row.status),
        flow=row.flow,
        step_count=row.step_count,
        started_at=utc(row.started_at),
        finished_at=utc(row.finished_at),
        failed_step=row.failed_step,
        updated_at=utc(row.updated_at),
        scope_step=row.scope_step,
        dry_run=bool(row.dry_run),
    )
    attempts = tuple(
        StepState(
            step_id=row.step_id,
            attempt=row.attempt,
            position=row.position,
            status=StepStatus(row.step_status),
            kind=row.kind,
            service=row.service,
            flow_step=row.flow_step,
            finished_at=utc(row.step_finished_at),
            error_code=row.error_code,
            error_message=row.error_message,
            explained=bool(row.detail),
        )
        for row in rows
        if row.step_id is not None
    )
    return run, attempts


async def _merge_run(
    conn: AsyncConnection, run_id: str, events: Sequence[StatusEvent], now: dt.datetime
) -> list[Changes]:
    """Merge one run's events in order: the run read once, and its row updated once, after them all."""
    run, attempts = await _load(conn, run_id) or (None, ())
    merged: list[Changes] = []
    fields: dict[str, Any] = {}
    for event in events:
        changes = merge(run, attempts, event, now)
        if changes.creates_run and not await _insert_run(conn, run_id, changes.run_fields):
            # Another writer created the run since it was read: merge into what it wrote.
            run, attempts = await _load(conn, run_id) or (None, ())
            changes = merge(run, attempts, event, now)
        if not changes.creates_run:
            fields.update(changes.run_fields)
        await _write_steps(conn, run_id, changes)
        run, attempts = changes.run, changes.steps
        merged.append(changes)
    if fields:
        await _update_run(conn, run_id, fields)
    return merged


async def _write(
    conn: AsyncConnection, run_id: str, changes: Changes, *, guard: sa.ColumnElement[bool] | None = None
) -> bool:
    """Write *changes*; False, and the steps left alone, if the run's row no longer meets *guard*.

    Also False when a new step row was there already.
    """
    if changes.creates_run:
        if not await _insert_run(conn, run_id, changes.run_fields):
            return False
    elif changes.run_fields and not await _update_run(conn, run_id, changes.run_fields, guard):
        return False
    return await _write_steps(conn, run_id, changes) == len(changes.new_steps)


async def _insert_run(conn: AsyncConnection, run_id: str, values: Mapping[str, Any]) -> bool:
    result = await conn.execute(insert_ignore(conn, runs).values(run_id=run_id, **values))
    return bool(result.rowcount)


async def _update_run(
    conn: AsyncConnection, run_id: str, values: Mapping[str, Any], guard: sa.ColumnElement[bool] | None = None
) -> bool:
    where = runs.c.run_id == run_id
    if guard is not None:
        where &= guard
    result = await conn.execute(runs.update().where(where).values(**values))
    return bool(result.rowcount)


async def _write_steps(conn: AsyncConnection, run_id: str, changes: Changes) -> int:
    """Insert the new step rows and update the others; how many rows went in."""
    inserted = 0
    if changes.new_steps:
        # One insert of several rows needs the same columns in each.
        columns = set().union(*changes.new_steps)
        rows = [{"run_id": run_id, **{name: row.get(name) for name in columns}} for row in changes.new_steps]
        inserted = (await conn.execute(insert_ignore(conn, steps).values(rows))).rowcount
    for values, keys in changes.step_fields:
        await conn.execute(steps.update().where(_attempts(run_id, keys)).values(**values))
    return int(inserted or 0)


def _attempts(run_id: str, keys: Sequence[StepKey]) -> sa.ColumnElement[bool]:
    return (steps.c.run_id == run_id) & sa.tuple_(steps.c.step_id, steps.c.attempt).in_(keys)
