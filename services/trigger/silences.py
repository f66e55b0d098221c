"""Silences: an operator's "not now" for a flow's alerts, until a time, with a comment.

A silence names a flow and optionally one alert step of it and one instance key. While it
lasts, the alert is evaluated and its state recorded as ever; what it would have told about
the instances the silence covers is recorded as silenced, not delivered. A silence ends at
its time or when it is deleted; either way it stays in the table as history.
"""

from __future__ import annotations

import datetime as dt
import enum
from dataclasses import asdict, dataclass
from typing import Any, Literal

import sqlalchemy as sa

from common.contracts.errors import AdxflowError
from common.contracts.messages import new_id, utcnow
from common.platform.database import SqlStore, read_utc
from services.trigger.alert_notices import Silence

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


class SilenceState(enum.StrEnum):
    ACTIVE = "active"
    #: Ended before its time (deleted).
    ENDED = "ended"
    #: Its time came.
    EXPIRED = "expired"


#: Which silences a listing shows: those in force, those over (ended or expired), or all.
Listed = Literal["active", "ended", "all"]
LISTINGS: tuple[Listed, ...] = ("active", "ended", "all")


@dataclass(frozen=True)
class StoredSilence:
    id: str
    flow: str
    step_id: str | None
    key: str | None
    starts_at: dt.datetime
    ends_at: dt.datetime
    comment: str
    created_by: str
    created_at: dt.datetime
    ended_at: dt.datetime | None

    def state(self, now: dt.datetime) -> SilenceState:
        if self.ended_at is not None:
            return SilenceState.ENDED
        return SilenceState.ACTIVE if now < self.ends_at else SilenceState.EXPIRED


class SilenceOver(AdxflowError):
    """A silence asked to end that has ended or expired already."""

    def __init__(self, silence: StoredSilence, now: dt.datetime) -> None:
        state = silence.state(now)
        at = silence.ended_at if state is SilenceState.ENDED else silence.ends_at
        assert at is not None
        super().__init__(f"silence {silence.id!r} is over: it {state.value} at {at.isoformat()}")
        self.silence = silence


class SilenceStore(SqlStore):
    """Silences, in the shared database."""

    metadata = metadata

    async def create(
        self,
        *,
        flow: str,
        step_id: str | None,
        key: str | None,
        ends_at: dt.datetime,
        comment: str,
        created_by: str,
        now: dt.datetime | None = None,
    ) -> StoredSilence:
        """A new silence of *flow* (its step *step_id*, its instance *key*), from now to *ends_at*."""
        now = now or utcnow()
        silence = StoredSilence(
            id=new_id(),
            flow=flow,
            step_id=step_id,
            key=key,
            starts_at=now,
            ends_at=ends_at,
            comment=comment,
            created_by=created_by,
            created_at=now,
            ended_at=None,
        )
        async with self.engine.begin() as conn:
            await conn.execute(silences.insert().values(**asdict(silence)))
        return silence

    async def get(self, silence_id: str) -> StoredSilence | None:
        async with self.engine.connect() as conn:
            row = (await conn.execute(sa.select(silences).where(silences.c.id == silence_id))).first()
        return _silence(row) if row is not None else None

    async def find(
        self, *, flow: str | None = None, state: Listed = "active", now: dt.datetime, limit: int = 100
    ) -> list[StoredSilence]:
        """The silences (of *flow*) in *state* at *now*, newest first, at most *limit*."""
        query = sa.select(silences)
        if flow is not None:
            query = query.where(silences.c.flow == flow)
        in_force = _in_force(now)
        if state == "active":
            query = query.where(in_force)
        elif state == "ended":
            query = query.where(~in_force)
        query = query.order_by(silences.c.created_at.desc(), silences.c.id.desc()).limit(limit)
        async with self.engine.connect() as conn:
            return [_silence(row) for row in (await conn.execute(query)).all()]

    async def end(self, silence_id: str, now: dt.datetime | None = None) -> StoredSilence | None:
        """End the silence now; None if there is none by that id, :class:`SilenceOver` if it is over."""
        now = now or utcnow()
        async with self.engine.begin() as conn:
            ended = await conn.execute(
                silences.update().where((silences.c.id == silence_id) & _in_force(now)).values(ended_at=now)
            )
            row = (await conn.execute(sa.select(silences).where(silences.c.id == silence_id))).first()
        if row is None:
            return None
        silence = _silence(row)
        if not ended.rowcount:
            raise SilenceOver(silence, now)
        return silence

    async def active(self, flow: str, step_id: str, now: dt.datetime) -> list[Silence]:
        """The silences over *flow*'s alert *step_id* at *now*, oldest first."""
        query = (
            sa.select(silences.c.id, silences.c.key, silences.c.ends_at)
            .where(
                (silences.c.flow == flow)
                & (silences.c.step_id.is_(None) | (silences.c.step_id == step_id))
                & (silences.c.starts_at <= now)
                & _in_force(now)
            )
            .order_by(silences.c.created_at, silences.c.id)
        )
        async with self.engine.connect() as conn:
            rows = (await conn.execute(query)).all()
        return [Silence(row.id, row.key, read_utc(row.ends_at)) for row in rows]


def _in_force(now: dt.datetime) -> sa.ColumnElement[bool]:
    """Neither ended nor expired at *now*."""
    return silences.c.ended_at.is_(None) & (silences.c.ends_at > now)


def _silence(row: Any) -> StoredSilence:
    return StoredSilence(
        id=row.id,
        flow=row.flow,
        step_id=row.step_id,
        key=row.key,
        starts_at=read_utc(row.starts_at),
        ends_at=read_utc(row.ends_at),
        comment=row.comment,
        created_by=row.created_by,
        created_at=read_utc(row.created_at),
        ended_at=read_utc(row.ended_at),
    )
