"""Reading the run history: runs listed and filtered, one run with its steps, a flow's recent runs."""

from __future__ import annotations

import datetime as dt
from typing import Any

import sqlalchemy as sa

from common.contracts.messages import RunStatus
from common.platform.database import SqlStore
from services.history.store.schema import runs, steps, utc
from services.history.store.views import duration_ms, run_view, steps_view


class RunQueries(SqlStore):
    """The history store's reads."""

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
        return [run_view(row) for row in rows]

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
        view = run_view(run)
        view["steps"] = steps_view(step_rows, utc(run.submitted_at))
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
            (row.status, duration_ms(utc(row.submitted_at) or utc(row.started_at), utc(row.finished_at)))
            for row in rows
        ]

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
