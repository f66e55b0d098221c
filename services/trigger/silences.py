"""Silences: an operator's "not now" for a flow's alerts, until a time, with a comment.

A silence names a flow and optionally one alert step of it and one instance key. While it
lasts, the alert is evaluated and its state recorded as ever; what it would have told about
the instances the silence covers is recorded as silenced, not delivered. A silence ends at
its time or when it is deleted; either way it stays in the table as history.
"""

from __future__ import annotations

import datetime as dt

import sqlalchemy as sa

from common.platform.database import SqlStore

metadata = sa.MetaData()
UtcDateTime = sa.DateTime(timezone=True)

silences = sa.Table(
    "alert_silences",
    metadata,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("flow", sa.String(64), nullable=False),
    #: One alert step of the flow; null: all of them.
    sa.Column("step_id", sa.String(64)),
    #: One instance (as the run page and the alert API name it); null: every instance.
    sa.Column("key", sa.String(1024)),
    sa.Column("starts_at", UtcDateTime, nullable=False),
    sa.Column("ends_at", UtcDateTime, nullable=False),
    sa.Column("comment", sa.String(1024), nullable=False),
    #: The token's label, or "local".
    sa.Column("created_by", sa.String(128), nullable=False),
    sa.Column("created_at", UtcDateTime, nullable=False),
    #: When it was deleted before its end.
    sa.Column("ended_at", UtcDateTime),
    sa.Index("ix_alert_silences_flow_ends", "flow", "ends_at"),
)


class SilenceStore(SqlStore):
    """Silences, in the shared database."""

    metadata = metadata

    async def active(self, flow: str, step_id: str, now: dt.datetime) -> list[tuple[str, str | None]]:
        """The silences over *flow*'s alert *step_id* at *now*: (id, key or None for all), oldest first."""
        query = (
            sa.select(silences.c.id, silences.c.key)
            .where(
                (silences.c.flow == flow)
                & (silences.c.step_id.is_(None) | (silences.c.step_id == step_id))
                & (silences.c.starts_at <= now)
                & (silences.c.ends_at > now)
                & silences.c.ended_at.is_(None)
            )
            .order_by(silences.c.created_at, silences.c.id)
        )
        async with self.engine.connect() as conn:
            return [(row.id, row.key) for row in (await conn.execute(query)).all()]
