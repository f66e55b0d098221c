"""Runs and steps in SQL: SQLite in embedded mode, PostgreSQL when deployed.

One code path (SQLAlchemy Core, async). Status events may arrive twice or out
of order (redelivery, several producers), so applying one is an idempotent
merge: a step's status only moves forward, a terminal run stays terminal, and
an event for a run not seen yet creates a placeholder the run's own event
fills in later.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from common.contracts.messages import (
    ErrorCode,
    ErrorInfo,
    RunCompleted,
    RunInfo,
    RunStatus,
    Service,
    StatusEvent,
    StepKind,
    StepStatus,
    utcnow,
)
from common.platform import metrics
from common.platform.database import SqlStore, insert_ignore

metadata = sa.MetaData()

UtcDateTime = sa.DateTime(timezone=True)

runs = sa.Table(
    "runs",
    metadata,
    sa.Column("run_id", sa.String(64), primary_key=True),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("flow", sa.String(64)),
    sa.Column("description", sa.Text),
    sa.Column("trigger_kind", sa.String(16)),
    sa.Column("scheduled_for", UtcDateTime),
    sa.Column("parent_run_id", sa.String(64)),
    sa.Column("connection", sa.String(128)),
    sa.Column("database", sa.String(256)),
    sa.Column("parameters", sa.JSON),
    sa.Column("step_count", sa.Integer),
    sa.Column("submitted_at", UtcDateTime),
    sa.Column("started_at", UtcDateTime),
    sa.Column("finished_at", UtcDateTime),
    sa.Column("failed_step", sa.String(64)),
    sa.Column("error_code", sa.String(64)),
    sa.Column("error_message", sa.Text),
    sa.Column("updated_at", UtcDateTime, nullable=False),
    sa.Index("ix_runs_submitted_at", "submitted_at"),
    sa.Index("ix_runs_flow_submitted_at", "flow", "submitted_at"),
)

steps = sa.Table(
    "steps",
    metadata,
    sa.Column("run_id", sa.String(64), sa.ForeignKey("runs.run_id", ondelete="CASCADE"), primary_key=True),
    sa.Column("step_id", sa.String(64), primary_key=True),
    sa.Column("attempt", sa.Integer, primary_key=True),
    sa.Column("position", sa.Integer, nullable=False),
    sa.Column("flow_step", sa.String(64)),
    sa.Column("kind", sa.String(32), nullable=False),
    sa.Column("service", sa.String(32), nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    #: Set when history itself queued the attempt (a resend or a re-run); derived otherwise.
    sa.Column("queued_at", UtcDateTime),
    sa.Column("started_at", UtcDateTime),
    sa.Column("finished_at", UtcDateTime),
    sa.Column("row_count", sa.BigInteger),
    sa.Column("error_code", sa.String(64)),
    sa.Column("error_message", sa.Text),
    sa.Column("retryable", sa.Boolean),
    sa.Column("artifacts", sa.JSON),
    sa.Column("detail", sa.JSON),
)

_STEP_RANK = {
    StepStatus.PENDING: 0,
    StepStatus.RUNNING: 1,
    StepStatus.SUCCEEDED: 2,
    StepStatus.FAILED: 2,
    StepStatus.SKIPPED: 2,
}


def _utc(value: dt.datetime | None) -> dt.datetime | None:
    """SQLite hands datetimes back naive; they were stored as UTC."""
    if value is None or value.tzinfo is not None:
        return value
    return value.replace(tzinfo=dt.UTC)


class HistoryStore(SqlStore):
    metadata = metadata

    # -- writing -----------------------------------------------------------

    async def apply(self, event: StatusEvent) -> RunCompleted | None:
        """Merge *event*; when it ends the run (or meets a run already ended), say how it ended.

        Saying it again on a redelivered event is deliberate: whoever acts on a
        completed run must be idempotent anyway, and this way a crash between
        the commit and the announcement cannot lose it.
        """
        [completed] = await self.apply_all([event])
        return completed

    async def apply_all(self, events: Sequence[StatusEvent]) -> list[RunCompleted | None]:
        """Merge *events* in one transaction, each as :meth:`apply` would; what each one ended.

        The events of one run are merged in the order given. Runs are locked in
        the order of their ids, so replicas merging overlapping batches at once
        wait for each other instead of deadlocking.
        """
        order = sorted(range(len(events)), key=lambda index: events[index].run_id)
        merged: dict[int, tuple[bool, tuple[str, str | None, dt.datetime | None] | None]] = {}
        async with self.engine.begin() as conn:
            for index in order:
                merged[index] = await self._merge_event(conn, events[index])
        return [self._completion(event, *merged[index]) for index, event in enumerate(events)]

    async def _merge_event(
        self, conn: AsyncConnection, event: StatusEvent
    ) -> tuple[bool, tuple[str, str | None, dt.datetime | None] | None]:
        """Whether the run had ended before *event*, and, if the event may end it, how it stands after."""
        run = await self._lock_run(conn, event.run_id)
        ended_before = run is not None and RunStatus(run.status).terminal
        if run is None:
            await self._insert_run(conn, event.run_id, event.run)
        elif event.run is not None and run.connection is None:
            await conn.execute(
                runs.update().where(runs.c.run_id == event.run_id).values(**_run_fields(event.run))
            )
        if event.run is not None:
            await self._ensure_steps(conn, event.run_id, event.run)
            run = None  # changed here: read again where needed
        position = await self._merge_step(conn, event)
        settled = await self._settle_run(conn, event, run, position)
        goes_on = event.continues or event.retrying
        if not event.status.terminal or (event.status is StepStatus.FAILED and goes_on):
            return ended_before, None
        return ended_before, settled

    @staticmethod
    def _completion(
        event: StatusEvent, ended_before: bool, settled: tuple[str, str | None, dt.datetime | None] | None
    ) -> RunCompleted | None:
        if settled is None:
            return None
        status, flow, finished_at = settled
        if not RunStatus(status).terminal or flow is None:
            return None
        if not ended_before:
            metrics.RUNS.labels(flow, status).inc()
        return RunCompleted(
            run_id=event.run_id,
            flow=flow,
            status=RunStatus(status),
            finished_at=_utc(finished_at) or utcnow(),
        )

    async def _lock_run(self, conn: AsyncConnection, run_id: str) -> Any:
        """The run's row, locked until the transaction ends (on PostgreSQL); None if there is none."""
        query = sa.select(runs).where(runs.c.run_id == run_id)
        if conn.dialect.name == "postgresql":
            query = query.with_for_update()
        return (await conn.execute(query)).first()

    async def _insert_run(self, conn: AsyncConnection, run_id: str, info: RunInfo | None) -> None:
        values: dict[str, Any] = {"run_id": run_id, "status": RunStatus.QUEUED.value, "updated_at": utcnow()}
        if info is not None:
            values.update(_run_fields(info))
        await conn.execute(insert_ignore(conn, runs).values(**values))

    async def _ensure_steps(self, conn: AsyncConnection, run_id: str, info: RunInfo) -> None:
        known = {
            row.step_id: row.position
            for row in await conn.execute(
                sa.select(steps.c.step_id, steps.c.position).where(steps.c.run_id == run_id)
            )
        }
        missing: list[dict[str, Any]] = [
            {
                "run_id": run_id,
                "step_id": step.id,
                "attempt": 1,
                "position": position,
                "kind": step.kind.value,
                "service": step.service.value,
                "flow_step": step.flow_step,
                "status": StepStatus.PENDING.value,
                "artifacts": {},
                "detail": {},
            }
            for position, step in enumerate(info.itinerary)
            if step.id not in known
        ]
        if missing:
            await conn.execute(insert_ignore(conn, steps).values(missing))
        for position, step in enumerate(info.itinerary):
            if step.id in known and known[step.id] != position:
                # A step that reported before the run's own event got a guessed position.
                await conn.execute(
                    steps.update()
                    .where((steps.c.run_id == run_id) & (steps.c.step_id == step.id))
                    .values(position=position)
                )

    async def _merge_step(self, conn: AsyncConnection, event: StatusEvent) -> int:
        """Merge the event into its step's row; returns the step's position in the run."""
        key = (
            (steps.c.run_id == event.run_id)
            & (steps.c.step_id == event.step_id)
            & (steps.c.attempt == event.attempt)
        )
        current = (await conn.execute(sa.select(steps.c.status, steps.c.position).where(key))).first()
        fields: dict[str, Any] = {"status": event.status.value}
        if event.started_at is not None:
            fields["started_at"] = event.started_at
        if event.finished_at is not None:
            fields["finished_at"] = event.finished_at
        if event.row_count is not None:
            fields["row_count"] = event.row_count
        if event.artifacts:
            fields["artifacts"] = {name: ref.model_dump() for name, ref in event.artifacts.items()}
        if event.detail:
            fields["detail"] = event.detail
        if event.error is not None:
            fields.update(
                error_code=event.error.code.value,
                error_message=event.error.message,
                retryable=event.error.retryable,
            )
        if current is None:
            position = await self._position_of(conn, event)
            await conn.execute(
                insert_ignore(conn, steps).values(
                    run_id=event.run_id,
                    step_id=event.step_id,
                    attempt=event.attempt,
                    position=position,
                    kind=event.kind.value,
                    service=event.service.value,
                    **{"artifacts": {}, "detail": {}, **fields},
                )
            )
            return position
        if _STEP_RANK[StepStatus(current.status)] > _STEP_RANK[event.status]:
            # An older event arriving late: keep what is known, but fill gaps.
            fields = {k: v for k, v in fields.items() if k == "started_at"}
            if not fields:
                return int(current.position)
        await conn.execute(steps.update().where(key).values(**fields))
        return int(current.position)

    async def _position_of(self, conn: AsyncConnection, event: StatusEvent) -> int:
        row = (
            await conn.execute(
                sa.select(steps.c.position)
                .where((steps.c.run_id == event.run_id) & (steps.c.step_id == event.step_id))
                .limit(1)
            )
        ).first()
        if row is not None:
            return int(row.position)
        count = (
            await conn.execute(
                sa.select(sa.func.count()).select_from(steps).where(steps.c.run_id == event.run_id)
            )
        ).scalar_one()
        return int(count)

    async def _settle_run(
        self, conn: AsyncConnection, event: StatusEvent, run: Any = None, position: int | None = None
    ) -> tuple[str, str | None, dt.datetime | None]:
        """Derive the run's status from the step event just merged; the run's status, flow and end after.

        *run* is the run's row as locked, if it has not changed since; *position* the step's.
        """
        if run is None:
            run = (await conn.execute(sa.select(runs).where(runs.c.run_id == event.run_id))).one()
        if RunStatus(run.status).terminal:
            if not await self._reopens(conn, run, event):
                return run.status, run.flow, run.finished_at
            run = (await conn.execute(sa.select(runs).where(runs.c.run_id == event.run_id))).one()
        now = utcnow()
        values: dict[str, Any] = {"updated_at": now}
        started = _utc(run.started_at)
        if event.started_at is not None and (started is None or event.started_at < started):
            values["started_at"] = event.started_at
        if event.status is StepStatus.FAILED and not (event.continues or event.retrying):
            values.update(
                status=RunStatus.FAILED.value,
                finished_at=event.finished_at or now,
                failed_step=event.step_id,
                error_code=event.error.code.value if event.error else None,
                error_message=event.error.message if event.error else None,
            )
            await conn.execute(
                steps.update()
                .where((steps.c.run_id == event.run_id) & (steps.c.status == StepStatus.PENDING.value))
                .values(status=StepStatus.SKIPPED.value)
            )
        elif event.status is StepStatus.SUCCEEDED and await self._is_last_step(
            conn, event, run.step_count, position
        ):
            failed = await self._first_failed_step(conn, event.run_id)
            if failed is None:
                values.update(status=RunStatus.SUCCEEDED.value, finished_at=event.finished_at or now)
            else:
                values.update(
                    status=RunStatus.FAILED.value,
                    finished_at=event.finished_at or now,
                    failed_step=failed.step_id,
                    error_code=failed.error_code,
                    error_message=failed.error_message,
                )
        elif event.status is not StepStatus.PENDING:
            values["status"] = RunStatus.RUNNING.value
        await conn.execute(runs.update().where(runs.c.run_id == event.run_id).values(**values))
        return values.get("status", run.status), run.flow, values.get("finished_at", run.finished_at)

    async def _reopens(self, conn: AsyncConnection, run: Any, event: StatusEvent) -> bool:
        """A failed run comes back to life when its failed step is tried again (a replay).

        The newer attempt's first event may be its end (a quick step reports only that).
        """
        if run.status != RunStatus.FAILED.value or event.step_id != run.failed_step:
            return False
        if event.status is StepStatus.PENDING:
            return False
        failed = (
            await conn.execute(
                sa.select(sa.func.max(steps.c.attempt)).where(
                    (steps.c.run_id == event.run_id)
                    & (steps.c.step_id == event.step_id)
                    & (steps.c.status == StepStatus.FAILED.value)
                    & (steps.c.attempt < event.attempt)
                )
            )
        ).scalar_one()
        if failed is None:
            return False
        await self._reopen(conn, event.run_id)
        return True

    async def _reopen(self, conn: AsyncConnection, run_id: str) -> None:
        """Set a failed run running again, with the steps its failure skipped due again."""
        await conn.execute(
            runs.update()
            .where(runs.c.run_id == run_id)
            .values(
                status=RunStatus.RUNNING.value,
                finished_at=None,
                failed_step=None,
                error_code=None,
                error_message=None,
                updated_at=utcnow(),
            )
        )
        # Steps skipped because this one failed are due again; those a condition skipped stay so.
        skipped = await conn.execute(
            sa.select(steps.c.step_id, steps.c.attempt, steps.c.detail).where(
                (steps.c.run_id == run_id) & (steps.c.status == StepStatus.SKIPPED.value)
            )
        )
        for row in skipped.all():
            if not row.detail:
                await conn.execute(
                    steps.update()
                    .where(
                        (steps.c.run_id == run_id)
                        & (steps.c.step_id == row.step_id)
                        & (steps.c.attempt == row.attempt)
                    )
                    .values(status=StepStatus.PENDING.value)
                )

    async def queue_attempt(self, run_id: str, step_id: str, *, reopen: bool) -> int | None:
        """Record a new attempt of *step_id*, queued now; returns its number.

        With *reopen* (a re-run) the run must have failed at that step, and it is
        running again once this returns; two callers racing get one attempt and
        one None. Without it (a resend) the run must have ended; its status stays.
        """
        async with self.engine.begin() as conn:
            run = await self._lock_run(conn, run_id)
            if run is None:
                return None
            status = RunStatus(run.status)
            if not status.terminal:
                return None
            if reopen:
                failed = (
                    await conn.execute(sa.select(runs.c.failed_step).where(runs.c.run_id == run_id))
                ).scalar_one()
                if status is not RunStatus.FAILED or failed != step_id:
                    return None
            latest = (
                await conn.execute(
                    sa.select(
                        steps.c.attempt, steps.c.position, steps.c.kind, steps.c.service, steps.c.flow_step
                    )
                    .where((steps.c.run_id == run_id) & (steps.c.step_id == step_id))
                    .order_by(steps.c.attempt.desc())
                    .limit(1)
                )
            ).first()
            if latest is None:
                return None
            attempt = int(latest.attempt) + 1
            if reopen:
                claimed = await conn.execute(
                    runs.update()
                    .where((runs.c.run_id == run_id) & (runs.c.status == RunStatus.FAILED.value))
                    .values(updated_at=utcnow())
                )
                if not claimed.rowcount:
                    return None
                await self._reopen(conn, run_id)
            inserted = await conn.execute(
                insert_ignore(conn, steps).values(
                    run_id=run_id,
                    step_id=step_id,
                    attempt=attempt,
                    position=latest.position,
                    flow_step=latest.flow_step,
                    kind=latest.kind,
                    service=latest.service,
                    status=StepStatus.PENDING.value,
                    queued_at=utcnow(),
                    artifacts={},
                    detail={},
                )
            )
            if not inserted.rowcount:
                return None
        return attempt

    async def restore_failed(self, run_id: str, step_id: str, attempt: int, error: ErrorInfo) -> None:
        """Undo :meth:`queue_attempt` when the attempt could not be sent: the attempt failed at once."""
        event = StatusEvent(
            run_id=run_id,
            step_id=step_id,
            attempt=attempt,
            kind=StepKind.RECORD,
            service=Service.HISTORY,
            status=StepStatus.FAILED,
            finished_at=utcnow(),
            error=error,
        )
        async with self.engine.begin() as conn:
            await self._lock_run(conn, run_id)
            await self._merge_step(conn, event)
            await self._settle_run(conn, event)

    async def _first_failed_step(self, conn: AsyncConnection, run_id: str) -> Any:
        """The first step whose latest attempt failed (an attempt retried successfully does not count)."""
        rows = (
            await conn.execute(
                sa.select(
                    steps.c.step_id,
                    steps.c.attempt,
                    steps.c.status,
                    steps.c.error_code,
                    steps.c.error_message,
                )
                .where(steps.c.run_id == run_id)
                .order_by(steps.c.position, steps.c.attempt)
            )
        ).all()
        latest = {row.step_id: row for row in rows}
        return next((row for row in latest.values() if row.status == StepStatus.FAILED.value), None)

    async def _is_last_step(
        self, conn: AsyncConnection, event: StatusEvent, step_count: int | None, position: int | None = None
    ) -> bool:
        """Whether the event's step ends the itinerary; unknown until the run's own event came."""
        if step_count is None:
            return False
        if position is not None:
            return position == step_count - 1
        position = (
            await conn.execute(
                sa.select(steps.c.position)
                .where((steps.c.run_id == event.run_id) & (steps.c.step_id == event.step_id))
                .limit(1)
            )
        ).scalar_one()
        return bool(position == step_count - 1)

    async def fail_stalled(self, now: dt.datetime, quiet_for: dt.timedelta) -> list[RunCompleted]:
        """Fail every unfinished run that has had no news for *quiet_for*, as Stalled."""
        cutoff = now - quiet_for
        ended: list[RunCompleted] = []
        async with self.engine.begin() as conn:
            stalled = (
                await conn.execute(
                    sa.select(runs.c.run_id, runs.c.flow, runs.c.updated_at).where(
                        runs.c.status.in_((RunStatus.QUEUED.value, RunStatus.RUNNING.value))
                        & (runs.c.updated_at < cutoff)
                    )
                )
            ).all()
            for run in stalled:
                waiting = (
                    await conn.execute(
                        sa.select(steps.c.step_id, steps.c.status)
                        .where(
                            (steps.c.run_id == run.run_id)
                            & steps.c.status.in_((StepStatus.RUNNING.value, StepStatus.PENDING.value))
                        )
                        .order_by(steps.c.position)
                        .limit(1)
                    )
                ).first()
                since = _iso(_utc(run.updated_at))
                where = f"step {waiting.step_id!r} was {waiting.status}" if waiting else "no step was running"
                message = (
                    f"no progress since {since} ({quiet_for.total_seconds():g} s without news); {where}. "
                    "A service may have stopped, or its queue is not being consumed."
                )
                await conn.execute(
                    runs.update()
                    .where(runs.c.run_id == run.run_id)
                    .values(
                        status=RunStatus.FAILED.value,
                        finished_at=now,
                        updated_at=now,
                        failed_step=waiting.step_id if waiting else None,
                        error_code=ErrorCode.STALLED.value,
                        error_message=message,
                    )
                )
                await conn.execute(
                    steps.update()
                    .where((steps.c.run_id == run.run_id) & (steps.c.status == StepStatus.RUNNING.value))
                    .values(
                        status=StepStatus.FAILED.value,
                        finished_at=now,
                        error_code=ErrorCode.STALLED.value,
                        error_message=message,
                        retryable=False,
                    )
                )
                await conn.execute(
                    steps.update()
                    .where((steps.c.run_id == run.run_id) & (steps.c.status == StepStatus.PENDING.value))
                    .values(status=StepStatus.SKIPPED.value)
                )
                if run.flow is not None:
                    ended.append(
                        RunCompleted(
                            run_id=run.run_id, flow=run.flow, status=RunStatus.FAILED, finished_at=now
                        )
                    )
        for completed in ended:
            metrics.RUNS.labels(completed.flow, completed.status.value).inc()
        return ended

    # -- reading -----------------------------------------------------------

    async def list_runs(
        self,
        *,
        status: RunStatus | None = None,
        flow: str | None = None,
        trigger: str | None = None,
        since: dt.datetime | None = None,
        until: dt.datetime | None = None,
        limit: int = 50,
        ascending: bool = False,
        after: tuple[dt.datetime, str] | None = None,
    ) -> list[dict[str, Any]]:
        """Runs by submitted time (newest first unless *ascending*), from just past *after*.

        A run history has heard of only through a step's event (its own event is
        still on the way) has no submitted time yet, and is listed once it has.
        """
        if ascending:
            order = (runs.c.submitted_at.asc(), runs.c.run_id.asc())
        else:
            order = (runs.c.submitted_at.desc(), runs.c.run_id.desc())
        query = sa.select(runs).where(runs.c.submitted_at.is_not(None)).order_by(*order).limit(limit)
        if status is not None:
            query = query.where(runs.c.status == status.value)
        if flow is not None:
            query = query.where(runs.c.flow == flow)
        if trigger is not None:
            query = query.where(runs.c.trigger_kind == trigger)
        if since is not None:
            query = query.where(runs.c.submitted_at >= since)
        if until is not None:
            query = query.where(runs.c.submitted_at < until)
        if after is not None:
            at, run_id = after
            if ascending:
                query = query.where(
                    (runs.c.submitted_at > at) | ((runs.c.submitted_at == at) & (runs.c.run_id > run_id))
                )
            else:
                query = query.where(
                    (runs.c.submitted_at < at) | ((runs.c.submitted_at == at) & (runs.c.run_id < run_id))
                )
        async with self.engine.connect() as conn:
            rows = (await conn.execute(query)).mappings().all()
        return [_run_view(row) for row in rows]

    async def get_run(self, run_id: str) -> dict[str, Any] | None:
        async with self.engine.connect() as conn:
            run = (await conn.execute(sa.select(runs).where(runs.c.run_id == run_id))).mappings().first()
            if run is None:
                return None
            step_rows = (
                (
                    await conn.execute(
                        sa.select(steps)
                        .where(steps.c.run_id == run_id)
                        .order_by(steps.c.position, steps.c.attempt)
                    )
                )
                .mappings()
                .all()
            )
        view = _run_view(run)
        view["steps"] = _steps_view(step_rows, _utc(run.submitted_at))
        view["truncated"] = any(step["truncated"] for step in view["steps"])
        return view

    async def latest_attempts(self, run_id: str) -> dict[str, dict[str, Any]]:
        """Each step's latest attempt: status, kind and artifacts, for deciding what may be redone."""
        async with self.engine.connect() as conn:
            rows = (
                await conn.execute(
                    sa.select(
                        steps.c.step_id, steps.c.attempt, steps.c.kind, steps.c.status, steps.c.artifacts
                    )
                    .where(steps.c.run_id == run_id)
                    .order_by(steps.c.position, steps.c.attempt)
                )
            ).all()
        return {
            row.step_id: {
                "attempt": row.attempt,
                "kind": row.kind,
                "status": row.status,
                "artifacts": row.artifacts or {},
            }
            for row in rows
        }

    async def flow_runs(
        self, flow: str, since: dt.datetime, until: dt.datetime
    ) -> list[tuple[str, float | None]]:
        """Status and duration (ms, for finished runs) of each run of *flow* submitted in the window."""
        query = sa.select(runs.c.status, runs.c.submitted_at, runs.c.started_at, runs.c.finished_at).where(
            (runs.c.flow == flow) & (runs.c.submitted_at >= since) & (runs.c.submitted_at < until)
        )
        async with self.engine.connect() as conn:
            rows = (await conn.execute(query)).all()
        return [
            (row.status, _duration_ms(_utc(row.submitted_at) or _utc(row.started_at), _utc(row.finished_at)))
            for row in rows
        ]

    # -- retention ---------------------------------------------------------

    async def expired(self, cutoff: dt.datetime, limit: int) -> list[str]:
        """Up to *limit* runs submitted (or, never submitted, last heard of) before *cutoff*."""
        query = (
            sa.select(runs.c.run_id)
            .where(
                (runs.c.submitted_at < cutoff)
                | (runs.c.submitted_at.is_(None) & (runs.c.updated_at < cutoff))
            )
            .order_by(runs.c.run_id)
            .limit(limit)
        )
        async with self.engine.connect() as conn:
            return [row.run_id for row in (await conn.execute(query)).all()]

    async def delete_runs(self, run_ids: Sequence[str]) -> int:
        """Delete the runs and their steps; runs already gone are no error."""
        async with self.engine.begin() as conn:
            await conn.execute(steps.delete().where(steps.c.run_id.in_(run_ids)))
            result = await conn.execute(runs.delete().where(runs.c.run_id.in_(run_ids)))
        return int(result.rowcount or 0)


def _run_fields(info: RunInfo) -> dict[str, Any]:
    return {
        "flow": info.flow,
        "description": info.description,
        "trigger_kind": info.trigger.value,
        "scheduled_for": info.scheduled_for,
        "parent_run_id": info.parent_run_id,
        "connection": info.connection,
        "database": info.database,
        "parameters": info.parameters,
        "step_count": len(info.itinerary),
        "submitted_at": info.submitted_at,
    }


def _duration_ms(start: dt.datetime | None, end: dt.datetime | None) -> float | None:
    if start is None or end is None:
        return None
    return round((end - start).total_seconds() * 1000, 1)


def _iso(value: dt.datetime | None) -> str | None:
    value = _utc(value)
    return value.isoformat().replace("+00:00", "Z") if value else None


def _run_view(row: Any) -> dict[str, Any]:
    submitted, started, finished = _utc(row.submitted_at), _utc(row.started_at), _utc(row.finished_at)
    return {
        "run_id": row.run_id,
        "flow": row.flow,
        "description": row.description,
        "status": row.status,
        "trigger": row.trigger_kind,
        "scheduled_for": _iso(_utc(row.scheduled_for)),
        "parent_run_id": row.parent_run_id,
        "connection": row.connection,
        "database": row.database,
        "parameters": row.parameters or {},
        "submitted_at": _iso(submitted),
        "started_at": _iso(started or submitted),
        "finished_at": _iso(finished),
        "duration_ms": _duration_ms(submitted or started, finished),
        "failed_step": row.failed_step,
        "error": {"code": row.error_code, "message": row.error_message} if row.error_code else None,
    }


def _queued_at(
    row: Any,
    submitted: dt.datetime | None,
    finished: dict[tuple[str, int], dt.datetime],
    passed: dict[int, dt.datetime],
) -> dt.datetime | None:
    """When an attempt was queued: recorded, or when what sent it there ended.

    A first attempt was sent on by the step before it (the run's submission for
    the first step), a later one by its failed predecessor.
    """
    if row.queued_at is not None:
        return _utc(row.queued_at)
    if row.attempt > 1:
        return finished.get((row.step_id, row.attempt - 1))
    before = [position for position in passed if position < row.position]
    return passed[max(before)] if before else submitted


def _steps_view(rows: Sequence[Any], submitted: dt.datetime | None = None) -> list[dict[str, Any]]:
    views = []
    finished_of: dict[tuple[str, int], dt.datetime] = {}
    #: When the run got past each position: the end of its first attempt that did not fail.
    passed: dict[int, dt.datetime] = {}
    for row in rows:
        started, finished = _utc(row.started_at), _utc(row.finished_at)
        queued = _queued_at(row, submitted, finished_of, passed)
        if queued is not None and started is not None:
            queued = min(queued, started)
        if finished is not None:
            finished_of[(row.step_id, row.attempt)] = finished
            if row.status != StepStatus.FAILED.value:
                passed.setdefault(row.position, finished)
        detail = row.detail or {}
        views.append(
            {
                "step_id": row.step_id,
                "flow_step": row.flow_step,
                "attempt": row.attempt,
                "kind": row.kind,
                "service": row.service,
                "status": row.status,
                "queued_at": _iso(queued),
                "started_at": _iso(started),
                "finished_at": _iso(finished),
                "duration_ms": _duration_ms(started, finished),
                "row_count": row.row_count,
                "query": (
                    {"text": detail["text"], "parameters": detail.get("parameters") or {}}
                    if isinstance(detail.get("text"), str)
                    else None
                ),
                "truncated": bool(detail.get("truncated")),
                "error": (
                    {"code": row.error_code, "message": row.error_message, "retryable": bool(row.retryable)}
                    if row.error_code
                    else None
                ),
                "artifacts": row.artifacts or {},
                "detail": row.detail or {},
            }
        )
    return views
