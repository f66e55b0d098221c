"""Alerts' state in the shared database: each instance's state, each transition, each evaluation.

An evaluation is one transaction, keyed by its run: the alert's row is locked (written first,
so SQLite takes its lock too), the instances are read, the rules decide, and the instances,
the transitions and the evaluation's outcome are written in batches. A redelivered
evaluation (the same run again) finds its outcome and repeats it, so a restart or a second
trigger replica neither re-sends nor loses a transition; two runs of one alert at once wait
for each other.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from common.contracts.messages import utcnow
from common.platform.database import SqlStore, read_utc
from services.trigger.alert_notices import Held
from services.trigger.alert_states import Evaluation, Instance, Notice, State

metadata = sa.MetaData()
UtcDateTime = sa.DateTime(timezone=True)
#: Rows written in one statement.
_BATCH = 500

alerts = sa.Table(
    "alerts",
    metadata,
    sa.Column("flow", sa.String(64), primary_key=True),
    sa.Column("step_id", sa.String(64), primary_key=True),
    #: The run that evaluated it last, and when.
    sa.Column("last_run_id", sa.String(64)),
    sa.Column("evaluated_at", UtcDateTime),
    sa.Column("updated_at", UtcDateTime, nullable=False),
)

instances = sa.Table(
    "alert_instances",
    metadata,
    sa.Column("flow", sa.String(64), primary_key=True),
    sa.Column("step_id", sa.String(64), primary_key=True),
    #: The instance's key: its key columns' values ("" for an alert without key columns).
    sa.Column("key", sa.String(1024), primary_key=True),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("since", UtcDateTime),
    sa.Column("pending_count", sa.Integer, nullable=False),
    sa.Column("last_held", UtcDateTime),
    sa.Column("notified_at", UtcDateTime),
    #: The row the instance last held with (told again when it resolves).
    sa.Column("row", sa.JSON),
)

transitions = sa.Table(
    "alert_transitions",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("flow", sa.String(64), nullable=False),
    sa.Column("step_id", sa.String(64), nullable=False),
    sa.Column("key", sa.String(1024), nullable=False),
    sa.Column("run_id", sa.String(64), nullable=False),
    sa.Column("before", sa.String(16), nullable=False),
    sa.Column("after", sa.String(16), nullable=False),
    #: What was to be told: firing, resolved, error, no_data, repeat; null when only recorded.
    sa.Column("notice", sa.String(16)),
    #: Why the notice was not delivered then: ``muted:<window>`` or ``silenced:<id>``.
    sa.Column("held", sa.String(80)),
    sa.Column("at", UtcDateTime, nullable=False),
    sa.Index("ix_alert_transitions_flow_step_at", "flow", "step_id", "at"),
)

held = sa.Table(
    "alert_held",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("flow", sa.String(64), nullable=False),
    sa.Column("step_id", sa.String(64), nullable=False),
    sa.Column("key", sa.String(1024), nullable=False),
    #: The notice a mute window holds back: firing, resolved, error, no_data, repeat.
    sa.Column("notice", sa.String(16), nullable=False),
    #: The instance's state before the notice (what was told before the window).
    sa.Column("before", sa.String(16), nullable=False),
    sa.Column("window", sa.String(64), nullable=False),
    sa.Column("run_id", sa.String(64), nullable=False),
    sa.Column("at", UtcDateTime, nullable=False),
    sa.Index("ix_alert_held_flow_step", "flow", "step_id"),
)

evaluations = sa.Table(
    "alert_evaluations",
    metadata,
    sa.Column("flow", sa.String(64), primary_key=True),
    sa.Column("step_id", sa.String(64), primary_key=True),
    sa.Column("run_id", sa.String(64), primary_key=True),
    #: What the evaluation decided, as its step's output tells it (repeated on a redelivery).
    sa.Column("outcome", sa.JSON, nullable=False),
    sa.Column("at", UtcDateTime, nullable=False),
    sa.Index("ix_alert_evaluations_at", "at"),
)


@dataclass
class Verdict:
    """What an evaluation decided: the instances and transitions, what its step says, what it holds."""

    evaluation: Evaluation
    outcome: dict[str, Any]
    #: Why a transition's notice was not delivered, by key (``muted:<window>``, ``silenced:<id>``).
    withheld: Mapping[str, str] = field(default_factory=dict)
    #: Notices to hold until the muting window ends.
    hold: Sequence[Held] = ()
    #: The held notices read are done with (sent or dropped now).
    release: bool = False


#: Given the instances as stored and the notices held, what the evaluation decides.
Decide = Callable[[dict[str, Instance], list[Held]], Verdict]
#: Given what was decided, before it is committed (the notices' blob is written there).
Keep = Callable[[Verdict], Awaitable[None]]


class AlertStore(SqlStore):
    """The trigger's alerts, in the shared database."""

    metadata = metadata

    async def evaluate(
        self, flow: str, step_id: str, run_id: str, decide: Decide, keep: Keep | None = None
    ) -> dict[str, Any]:
        """Run *decide* over the alert's instances once for *run_id*; what it said (again, if it ran).

        *keep* runs before the commit: if it fails, nothing of the evaluation is recorded.
        """
        now = utcnow()
        async with self.engine.begin() as conn:
            await _lock(conn, flow, step_id, now)
            done = (
                await conn.execute(
                    sa.select(evaluations.c.outcome).where(
                        (evaluations.c.flow == flow)
                        & (evaluations.c.step_id == step_id)
                        & (evaluations.c.run_id == run_id)
                    )
                )
            ).scalar_one_or_none()
            if done is not None:
                return {**done, "repeated": True}
            stored = await _instances(conn, flow, step_id)
            waiting = await _held(conn, flow, step_id)
            verdict = decide(stored, waiting)
            await _write(conn, flow, step_id, run_id, stored, verdict)
            await conn.execute(
                evaluations.insert().values(
                    flow=flow, step_id=step_id, run_id=run_id, outcome=verdict.outcome, at=now
                )
            )
            await conn.execute(
                alerts.update()
                .where((alerts.c.flow == flow) & (alerts.c.step_id == step_id))
                .values(last_run_id=run_id, evaluated_at=now)
            )
            if keep is not None:
                await keep(verdict)
            return verdict.outcome

    async def holding(self) -> list[tuple[str, str, dt.datetime]]:
        """Each flow and mute window with notices held, and when the first of them was held."""
        query = (
            sa.select(held.c.flow, held.c.window, sa.func.min(held.c.at).label("first"))
            .group_by(held.c.flow, held.c.window)
            .order_by(held.c.flow, held.c.window)
        )
        async with self.engine.connect() as conn:
            rows = (await conn.execute(query)).all()
        return [(row.flow, row.window, read_utc(row.first)) for row in rows if row.first is not None]

    async def states(self, flow: str, step_id: str) -> dict[str, Instance]:
        async with self.engine.connect() as conn:
            return await _instances(conn, flow, step_id)

    async def history(self, flow: str, step_id: str, limit: int = 100) -> list[dict[str, Any]]:
        """The alert's latest transitions, newest first."""
        query = (
            sa.select(transitions)
            .where((transitions.c.flow == flow) & (transitions.c.step_id == step_id))
            .order_by(transitions.c.id.desc())
            .limit(limit)
        )
        async with self.engine.connect() as conn:
            return [dict(row) for row in (await conn.execute(query)).mappings().all()]

    async def forget(self, *, evaluated_before: dt.datetime) -> int:
        """Delete the evaluations (and transitions) recorded before the cutoff; instances stay."""
        async with self.engine.begin() as conn:
            gone = await conn.execute(evaluations.delete().where(evaluations.c.at < evaluated_before))
            await conn.execute(transitions.delete().where(transitions.c.at < evaluated_before))
        return int(gone.rowcount or 0)


async def _lock(conn: AsyncConnection, flow: str, step_id: str, now: dt.datetime) -> None:
    key = (alerts.c.flow == flow) & (alerts.c.step_id == step_id)
    if (await conn.execute(alerts.update().where(key).values(updated_at=now))).rowcount:
        return
    try:
        async with conn.begin_nested():
            await conn.execute(alerts.insert().values(flow=flow, step_id=step_id, updated_at=now))
    except sa.exc.IntegrityError:
        # Another evaluation created it meanwhile: wait for its lock as an update.
        await conn.execute(alerts.update().where(key).values(updated_at=now))


async def _instances(conn: AsyncConnection, flow: str, step_id: str) -> dict[str, Instance]:
    rows = (
        await conn.execute(
            sa.select(instances).where((instances.c.flow == flow) & (instances.c.step_id == step_id))
        )
    ).all()
    return {
        row.key: Instance(
            key=row.key,
            state=State(row.state),
            since=read_utc(row.since),
            pending_count=row.pending_count,
            last_held=read_utc(row.last_held),
            notified_at=read_utc(row.notified_at),
            row=row.row,
        )
        for row in rows
    }


async def _held(conn: AsyncConnection, flow: str, step_id: str) -> list[Held]:
    query = sa.select(held).where((held.c.flow == flow) & (held.c.step_id == step_id)).order_by(held.c.id)
    return [
        Held(row.key, Notice(row.notice), State(row.before), row.window, read_utc(row.at))
        for row in (await conn.execute(query)).all()
    ]


async def _write(
    conn: AsyncConnection,
    flow: str,
    step_id: str,
    run_id: str,
    stored: Mapping[str, Instance],
    verdict: Verdict,
) -> None:
    """The instances as the evaluation left them (changed ones only), its transitions and the
    notices it holds or releases, in batches."""
    evaluation = verdict.evaluation
    after = evaluation.instances
    gone = [key for key in stored if key not in after]
    changed = [instance for key, instance in after.items() if stored.get(key) != instance]
    base = (instances.c.flow == flow) & (instances.c.step_id == step_id)
    # One key a row, a batch of rows a statement: PostgreSQL reads a batch's ``key IN (...)`` as a
    # scan of all the alert's instances, which made each evaluation's deletes quadratic in them.
    delete = instances.delete().where(base & (instances.c.key == sa.bindparam("instance_key")))
    doomed = gone + [instance.key for instance in changed if instance.key in stored]
    for start in range(0, len(doomed), _BATCH):
        await conn.execute(delete, [{"instance_key": key} for key in doomed[start : start + _BATCH]])
    rows = [
        {
            "flow": flow,
            "step_id": step_id,
            "key": instance.key,
            "state": instance.state.value,
            "since": instance.since,
            "pending_count": instance.pending_count,
            "last_held": instance.last_held,
            "notified_at": instance.notified_at,
            "row": instance.row,
        }
        for instance in changed
    ]
    for start in range(0, len(rows), _BATCH):
        await conn.execute(instances.insert(), rows[start : start + _BATCH])
    told = [
        {
            "flow": flow,
            "step_id": step_id,
            "key": transition.key,
            "run_id": run_id,
            "before": transition.before.value,
            "after": transition.after.value,
            "notice": transition.notice.value if transition.notice else None,
            "held": verdict.withheld.get(transition.key) if transition.notice else None,
            "at": transition.at,
        }
        for transition in evaluation.transitions
    ]
    for start in range(0, len(told), _BATCH):
        await conn.execute(transitions.insert(), told[start : start + _BATCH])
    if verdict.release:
        await conn.execute(held.delete().where((held.c.flow == flow) & (held.c.step_id == step_id)))
    holding = [
        {
            "flow": flow,
            "step_id": step_id,
            "key": notice.key,
            "notice": notice.notice.value,
            "before": notice.before.value,
            "window": notice.window,
            "run_id": run_id,
            "at": notice.at,
        }
        for notice in verdict.hold
    ]
    for start in range(0, len(holding), _BATCH):
        await conn.execute(held.insert(), holding[start : start + _BATCH])
