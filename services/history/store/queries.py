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
        children: bool = False,
        dry_run: bool | None = None,
    ) -> list[dict[str, Any]]:
        """Runs by submitted time (newest first unless *ascending*), from just past *after*.

        A run history has heard of only through a step's event (its own event is
        still on the way) has no submitted time yet, and is listed once it has. The
        child runs of for_each and parallel steps are listed under their parent's
        step (:meth:`iterations`), and here only with *children*.
        """
        if ascending:
            order = (runs.c.submitted_at.asc(), runs.c.run_id.asc())
        else:
            order = (runs.c.submitted_at.desc(), runs.c.run_id.desc())
        query = sa.select(runs).where(runs.c.submitted_at.is_not(None)).order_by(*order).limit(limit)
        if not children:
            query = query.where(runs.c.scope_step.is_(None))
        if status is not None:
            query = query.where(runs.c.status == status.value)
        if flow is not None:
            query = query.where(runs.c.flow == flow)
        if trigger is not None:
            query = query.where(runs.c.trigger_kind == trigger)
        if dry_run is not None:
            query = query.where(runs.c.dry_run.is_(dry_run))
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

    async def iterations(
        self,
        run_id: str,
        step_id: str,
        *,
        status: RunStatus | None = None,
        after: int | None = None,
        limit: int = 50,
    ) -> list[dict[str, Any]]:
        """The child runs of *run_id*'s scope step *step_id*, by iteration (or branch position).

        An iteration run again under a new id (the parent's step re-run) is listed
        by its latest run; *status* filters on that one.
        """
        latest = _latest_iterations(run_id, step_id)
        query = sa.select(latest).where(latest.c.newest == 1).order_by(latest.c.iteration).limit(limit)
        if status is not None:
            query = query.where(latest.c.status == status.value)
        if after is not None:
            query = query.where(latest.c.iteration > after)
        async with self.engine.connect() as conn:
            rows = (await conn.execute(query)).mappings().all()
        return [run_view(row) for row in rows]

    async def iteration_statuses(self, run_id: str, step_id: str) -> dict[str, int]:
        """How many iterations of the scope step stand at each status, by their latest runs."""
        latest = _latest_iterations(run_id, step_id)
        query = (
            sa.select(latest.c.status, sa.func.count()).where(latest.c.newest == 1).group_by(latest.c.status)
        )
        async with self.engine.connect() as conn:
            return {row[0]: int(row[1]) for row in (await conn.execute(query)).all()}

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
        """Each step's latest attempt: status, kind, artifacts and detail (what may be redone, counts)."""
        async with self.engine.connect() as conn:
            rows = (
                await conn.execute(
                    sa.select(
                        steps.c.step_id,
                        steps.c.attempt,
                        steps.c.kind,
                        steps.c.status,
                        steps.c.artifacts,
                        steps.c.detail,
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
                "detail": row.detail or {},
            }
            for row in rows
        }

    async def flow_runs(
        self, flow: str, since: dt.datetime, until: dt.datetime
    ) -> list[tuple[str, float | None]]:
        """Status and duration (ms, for finished runs) of each run of *flow* submitted in the window."""
        query = sa.select(runs.c.status, runs.c.submitted_at, runs.c.started_at, runs.c.finished_at).where(
            (runs.c.flow == flow)
            & (runs.c.submitted_at >= since)
            & (runs.c.submitted_at < until)
            & runs.c.scope_step.is_(None)
            # A test run says nothing of how the flow's runs go.
            & runs.c.dry_run.is_(False)
        )
        async with self.engine.connect() as conn:
            rows = (await conn.execute(query)).all()
        return [
            (row.status, duration_ms(utc(row.submitted_at) or utc(row.started_at), utc(row.finished_at)))
            for row in rows
        ]

    async def expired(
        self, cutoff: dt.datetime, limit: int, *, tests_cutoff: dt.datetime | None = None
    ) -> list[str]:
        """Up to *limit* runs submitted (or, never submitted, last heard of) before *cutoff*, and
        test runs submitted before *tests_cutoff*."""
        where = (runs.c.submitted_at < cutoff) | (
            runs.c.submitted_at.is_(None) & (runs.c.updated_at < cutoff)
        )
        if tests_cutoff is not None:
            where = where | (runs.c.dry_run.is_(True) & (runs.c.submitted_at < tests_cutoff))
        query = sa.select(runs.c.run_id).where(where).order_by(runs.c.run_id).limit(limit)
        async with self.engine.connect() as conn:
            return [row.run_id for row in (await conn.execute(query)).all()]


def _latest_iterations(run_id: str, step_id: str) -> sa.Subquery:
    """The child runs of a scope step, each numbered by how recent it is among its iteration's runs."""
    return (
        sa.select(
            runs,
            sa.func.row_number()
            .over(
                partition_by=runs.c.iteration,
                order_by=(runs.c.submitted_at.desc(), runs.c.run_id.desc()),
            )
            .label("newest"),
        )
        .where((runs.c.parent_run_id == run_id) & (runs.c.scope_step == step_id))
        .where(runs.c.submitted_at.is_not(None))
        .subquery()
    )
