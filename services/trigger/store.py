"""Flows, fired slots and idempotency keys, in the same SQL database as history.

Several trigger replicas share this store. Firing a slot is claiming a row
whose primary key is ``(flow, slot)``: the first replica's insert wins, the
other's conflicts and fires nothing. The claim is committed only after the
run was handed to the broker, so a replica that dies in between leaves the
slot free for the next tick.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from common.contracts import utcnow
from common.database import SqlStore, insert_ignore
from common.flows import Flow

metadata = sa.MetaData()
UtcDateTime = sa.DateTime(timezone=True)

flows = sa.Table(
    "flows",
    metadata,
    sa.Column("name", sa.String(64), primary_key=True),
    sa.Column("document", sa.JSON, nullable=False),
    sa.Column("version", sa.Integer, nullable=False),
    sa.Column("enabled", sa.Boolean, nullable=False),
    sa.Column("trigger_kind", sa.String(16), nullable=False),
    sa.Column("after_flow", sa.String(64)),
    #: Slots at or before this instant are never fired (the flow did not exist, or was disabled).
    sa.Column("anchor", UtcDateTime, nullable=False),
    sa.Column("created_at", UtcDateTime, nullable=False),
    sa.Column("updated_at", UtcDateTime, nullable=False),
)

fired = sa.Table(
    "flow_slots",
    metadata,
    sa.Column("flow", sa.String(64), primary_key=True),
    #: A scheduled instant (ISO UTC) or, for chained runs, ``after:<parent run id>``.
    sa.Column("slot", sa.String(64), primary_key=True),
    sa.Column("run_id", sa.String(64), nullable=False),
    sa.Column("fired_at", UtcDateTime, nullable=False),
)

idempotency = sa.Table(
    "run_requests",
    metadata,
    sa.Column("flow", sa.String(64), primary_key=True),
    sa.Column("key", sa.String(255), primary_key=True),
    sa.Column("run_id", sa.String(64), nullable=False),
    sa.Column("created_at", UtcDateTime, nullable=False),
)


def _utc(value: dt.datetime) -> dt.datetime:
    return value if value.tzinfo else value.replace(tzinfo=dt.UTC)


@dataclass(frozen=True)
class StoredFlow:
    flow: Flow
    version: int
    anchor: dt.datetime
    created_at: dt.datetime
    updated_at: dt.datetime
    #: The latest slot fired (or claimed) for this flow, if any.
    last_slot: dt.datetime | None = None

    def view(self) -> dict[str, Any]:
        return {
            "name": self.flow.name,
            "version": self.version,
            "enabled": self.flow.enabled,
            "created_at": self.created_at.isoformat(),
            "updated_at": self.updated_at.isoformat(),
            "document": self.flow.model_dump(mode="json", exclude_none=True),
        }


def _stored(row: Any, last_slot: dt.datetime | None = None) -> StoredFlow:
    return StoredFlow(
        flow=Flow.model_validate(row.document),
        version=row.version,
        anchor=_utc(row.anchor),
        created_at=_utc(row.created_at),
        updated_at=_utc(row.updated_at),
        last_slot=last_slot,
    )


class FlowStore(SqlStore):
    metadata = metadata

    # -- flows -------------------------------------------------------------

    async def save(
        self, flow: Flow, *, create_only: bool = False, now: dt.datetime | None = None
    ) -> tuple[StoredFlow, bool]:
        """Create or replace *flow*; returns it and whether it was created."""
        now = now or utcnow()
        document = flow.model_dump(mode="json", exclude_none=True)
        fields = {
            "document": document,
            "enabled": flow.enabled,
            "trigger_kind": flow.trigger.kind,
            "after_flow": flow.trigger.after.flow if flow.trigger.after else None,
            "updated_at": now,
        }
        async with self.engine.begin() as conn:
            current = (await conn.execute(sa.select(flows).where(flows.c.name == flow.name))).first()
            if current is None:
                await conn.execute(
                    flows.insert().values(name=flow.name, version=1, anchor=now, created_at=now, **fields)
                )
                created = True
            elif create_only:
                raise FlowExists(flow.name)
            else:
                changed_schedule = current.document.get("trigger") != document.get("trigger")
                re_enabled = flow.enabled and not current.enabled
                # A new schedule or a re-enabled flow starts from now: what it
                # would have fired meanwhile is not "missed".
                anchor = now if changed_schedule or re_enabled else current.anchor
                await conn.execute(
                    flows.update()
                    .where(flows.c.name == flow.name)
                    .values(version=current.version + 1, anchor=anchor, **fields)
                )
                created = False
            row = (await conn.execute(sa.select(flows).where(flows.c.name == flow.name))).one()
        return _stored(row), created

    async def get(self, name: str) -> StoredFlow | None:
        async with self.engine.connect() as conn:
            row = (await conn.execute(sa.select(flows).where(flows.c.name == name))).first()
        return None if row is None else _stored(row)

    async def all(self) -> list[StoredFlow]:
        async with self.engine.connect() as conn:
            rows = (await conn.execute(sa.select(flows).order_by(flows.c.name))).all()
        return [_stored(row) for row in rows]

    async def delete(self, name: str) -> bool:
        async with self.engine.begin() as conn:
            await conn.execute(fired.delete().where(fired.c.flow == name))
            await conn.execute(idempotency.delete().where(idempotency.c.flow == name))
            deleted = await conn.execute(flows.delete().where(flows.c.name == name))
        return bool(deleted.rowcount)

    async def scheduled(self) -> list[StoredFlow]:
        """Enabled flows with a cron or every trigger, each with its latest fired slot."""
        latest = (
            sa.select(fired.c.flow, sa.func.max(fired.c.slot).label("last_slot"))
            .where(~fired.c.slot.like("after:%"))
            .group_by(fired.c.flow)
            .subquery()
        )
        query = (
            sa.select(flows, latest.c.last_slot)
            .select_from(flows.outerjoin(latest, latest.c.flow == flows.c.name))
            .where(flows.c.enabled.is_(True) & flows.c.trigger_kind.in_(("cron", "every")))
        )
        async with self.engine.connect() as conn:
            rows = (await conn.execute(query)).all()
        return [
            _stored(row, dt.datetime.fromisoformat(row.last_slot) if row.last_slot else None) for row in rows
        ]

    async def followers(self, parent: str) -> list[StoredFlow]:
        """Enabled flows chained after *parent*."""
        query = sa.select(flows).where(flows.c.enabled.is_(True) & (flows.c.after_flow == parent))
        async with self.engine.connect() as conn:
            rows = (await conn.execute(query)).all()
        return [_stored(row) for row in rows]

    # -- firing ------------------------------------------------------------

    @asynccontextmanager
    async def claim(self, flow: str, slot: str, run_id: str) -> AsyncIterator[bool]:
        """Claim *slot* of *flow* for *run_id*: yields whether this caller won it.

        The claim commits when the block exits normally and rolls back when it
        raises, so a run that could not be started leaves the slot free.
        """
        async with self.engine.begin() as conn:
            result = await conn.execute(
                insert_ignore(conn, fired).values(flow=flow, slot=slot, run_id=run_id, fired_at=utcnow())
            )
            yield bool(result.rowcount)

    @asynccontextmanager
    async def request(self, flow: str, key: str, run_id: str) -> AsyncIterator[tuple[str, bool]]:
        """Record an Idempotency-Key for *run_id*.

        Yields the run id the key stands for and whether it is new; a repeated
        key yields the earlier run. Like :meth:`claim`, the record commits only
        if the block succeeds.
        """
        async with self.engine.begin() as conn:
            result = await conn.execute(
                insert_ignore(conn, idempotency).values(
                    flow=flow, key=key, run_id=run_id, created_at=utcnow()
                )
            )
            if result.rowcount:
                yield run_id, True
                return
            existing = (
                await conn.execute(
                    sa.select(idempotency.c.run_id).where(
                        (idempotency.c.flow == flow) & (idempotency.c.key == key)
                    )
                )
            ).scalar_one()
            yield str(existing), False


class FlowExists(Exception):
    def __init__(self, name: str) -> None:
        super().__init__(f"flow {name!r} already exists")
        self.name = name
