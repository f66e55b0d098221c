"""Flows, fired slots and idempotency keys, in the same SQL database as history.

Several trigger replicas share this store. Firing a slot is claiming a row
whose primary key is ``(flow, slot)``: the first replica's insert wins, the
other's conflicts and fires nothing. Slots are claimed in batches, and a
batch's claim is committed only after its runs were handed to the broker,
without the slots whose run the broker refused; a replica that dies in
between leaves the whole batch free for the next replica that looks.

A fired slot's row is what keeps a second replica from firing it again, and
the latest one per flow is what a scheduler starting up resumes from; the
rest are forgotten after a while (:meth:`FlowStore.forget_slots`), so the
table holds about a day of slots rather than every slot ever fired. Every
change to a flow also moves one revision number, so that a scheduler learns
with one small read that it has nothing to load again.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator, Collection, Iterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from common.contracts.flows import Flow, read_back
from common.contracts.messages import utcnow
from common.platform.database import SqlStore, insert_ignore
from services.trigger.preconditions import IfMatch, PreconditionFailed

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
    sa.Index("ix_flow_slots_fired_at", "fired_at"),
)

#: One row whose revision goes up with every change to ``flows``, in the same transaction: a
#: scheduler reads it to learn whether anything changed since it last looked. The baseline
#: revision inserts it.
changes = sa.Table(
    "flow_changes",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("revision", sa.BigInteger, nullable=False),
)

idempotency = sa.Table(
    "run_requests",
    metadata,
    sa.Column("flow", sa.String(64), primary_key=True),
    sa.Column("key", sa.String(255), primary_key=True),
    sa.Column("run_id", sa.String(64), nullable=False),
    sa.Column("created_at", UtcDateTime, nullable=False),
)

#: Chained runs' slots start with this; every other slot is a scheduled instant.
CHAINED = "after:"
#: How many flows or slots one statement names at most.
_CHUNK = 500


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


def _stored(row: Any, last_slot: dt.datetime | None = None) -> StoredFlow:
    return StoredFlow(
        flow=read_back(row.document),
        version=row.version,
        anchor=_utc(row.anchor),
        created_at=_utc(row.created_at),
        updated_at=_utc(row.updated_at),
        last_slot=last_slot,
    )


@dataclass(frozen=True)
class Signature:
    """What changes whenever a flow is saved, or deleted and created again: tells a cached copy is stale."""

    version: int
    updated_at: dt.datetime


@dataclass(frozen=True)
class SlotClaim:
    flow: str
    #: A scheduled instant as :func:`~services.trigger.scheduler.slot_key` writes it, or ``after:<run id>``.
    slot: str
    run_id: str


@dataclass
class Claimed:
    """The slots of a batch this caller won; those it releases before the batch ends stay free."""

    won: frozenset[tuple[str, str]]
    released: set[tuple[str, str]] = field(default_factory=set)

    def __contains__(self, key: object) -> bool:
        return key in self.won

    def release(self, flow: str, slot: str) -> None:
        """Give back a slot this batch won (its run could not be started)."""
        if (flow, slot) not in self.won:
            raise KeyError(f"slot {slot!r} of flow {flow!r} was not won by this batch")
        self.released.add((flow, slot))


def _chunks(items: Sequence[Any]) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), _CHUNK):
        yield items[start : start + _CHUNK]


def _scheduled_slot() -> sa.ColumnElement[bool]:
    return ~fired.c.slot.startswith(CHAINED, autoescape=True)


def _last_slot() -> sa.ScalarSelect[Any]:
    """The flow's latest scheduled slot fired, found through the primary key's index, not by a scan."""
    return (
        sa.select(fired.c.slot)
        .where((fired.c.flow == flows.c.name) & _scheduled_slot())
        .order_by(fired.c.slot.desc())
        .limit(1)
        .correlate(flows)
        .scalar_subquery()
    )


_SCHEDULED = flows.c.enabled.is_(True) & flows.c.trigger_kind.in_(("cron", "every"))


class FlowStore(SqlStore):
    metadata = metadata

    # -- flows -------------------------------------------------------------

    async def revision(self) -> int:
        """A number that went up if any flow was created, changed or deleted since it was last read."""
        async with self.engine.connect() as conn:
            return int((await conn.execute(sa.select(changes.c.revision))).scalar_one())

    @staticmethod
    async def _changed(conn: AsyncConnection) -> None:
        # Last in its transaction: concurrent writers queue on this row only until they commit.
        await conn.execute(changes.update().values(revision=changes.c.revision + 1))

    async def save(
        self,
        flow: Flow,
        *,
        create_only: bool = False,
        if_match: IfMatch | None = None,
        now: dt.datetime | None = None,
    ) -> tuple[StoredFlow, bool]:
        """Create or replace *flow*; returns it and whether it was created.

        With *if_match*, only a flow at one of its versions is replaced, and
        none is created: `PreconditionFailed` otherwise. The version is
        compared in the UPDATE itself, so of two writers that read the same
        version, one changes no row and is refused.
        """
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
            if if_match is not None and not if_match.matches(current.version if current else None):
                raise PreconditionFailed(flow.name, current.version if current else None)
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
                where = flows.c.name == flow.name
                if if_match is not None:
                    # The row as it was read: a writer that committed meanwhile moved its version.
                    where &= flows.c.version == current.version
                updated = await conn.execute(
                    flows.update().where(where).values(version=flows.c.version + 1, anchor=anchor, **fields)
                )
                if not updated.rowcount:
                    raise PreconditionFailed(flow.name, await self._version(conn, flow.name))
                created = False
            row = (await conn.execute(sa.select(flows).where(flows.c.name == flow.name))).one()
            await self._changed(conn)
        return _stored(row), created

    @staticmethod
    async def _version(conn: AsyncConnection, name: str) -> int | None:
        found = await conn.execute(sa.select(flows.c.version).where(flows.c.name == name))
        return found.scalar_one_or_none()

    async def get(self, name: str) -> StoredFlow | None:
        async with self.engine.connect() as conn:
            row = (await conn.execute(sa.select(flows).where(flows.c.name == name))).first()
        return None if row is None else _stored(row)

    async def all(self) -> list[StoredFlow]:
        async with self.engine.connect() as conn:
            rows = (await conn.execute(sa.select(flows).order_by(flows.c.name))).all()
        return [_stored(row) for row in rows]

    async def delete(self, name: str, *, if_match: IfMatch | None = None) -> bool:
        """Delete the flow *name*; False if there is none. With *if_match*, see :meth:`save`."""
        async with self.engine.begin() as conn:
            await conn.execute(fired.delete().where(fired.c.flow == name))
            await conn.execute(idempotency.delete().where(idempotency.c.flow == name))
            where = flows.c.name == name
            if if_match is not None and not if_match.any:
                assert if_match.versions is not None
                where &= flows.c.version.in_(sorted(if_match.versions))
            deleted = await conn.execute(flows.delete().where(where))
            if if_match is not None and not deleted.rowcount:
                # Raised inside the transaction: the slots and keys deleted above come back.
                raise PreconditionFailed(name, await self._version(conn, name))
            if deleted.rowcount:
                await self._changed(conn)
        return bool(deleted.rowcount)

    async def signatures(self) -> dict[str, Signature]:
        """Each enabled flow with a cron or every trigger, by name: what tells whether it changed."""
        query = sa.select(flows.c.name, flows.c.version, flows.c.updated_at).where(_SCHEDULED)
        async with self.engine.connect() as conn:
            rows = (await conn.execute(query)).all()
        return {row.name: Signature(row.version, _utc(row.updated_at)) for row in rows}

    async def scheduled(self, names: Collection[str] | None = None) -> list[StoredFlow]:
        """Enabled flows with a cron or every trigger (of *names* only, if given), with their latest slot."""
        query = sa.select(flows, _last_slot().label("last_slot")).where(_SCHEDULED)
        if names is None:
            batches: list[Sequence[str] | None] = [None]
        else:
            batches = list(_chunks(sorted(names)))
        found: list[StoredFlow] = []
        async with self.engine.connect() as conn:
            for batch in batches:
                selected = query if batch is None else query.where(flows.c.name.in_(batch))
                for row in (await conn.execute(selected)).all():
                    last = dt.datetime.fromisoformat(row.last_slot) if row.last_slot else None
                    found.append(_stored(row, last))
        return found

    async def followers(self, parent: str) -> list[StoredFlow]:
        """Enabled flows chained after *parent*."""
        query = sa.select(flows).where(flows.c.enabled.is_(True) & (flows.c.after_flow == parent))
        async with self.engine.connect() as conn:
            rows = (await conn.execute(query)).all()
        return [_stored(row) for row in rows]

    # -- firing ------------------------------------------------------------

    @asynccontextmanager
    async def claim(self, claims: Collection[SlotClaim]) -> AsyncIterator[Claimed]:
        """Claim a batch of slots at once: yields the ones this caller won.

        ``INSERT ... ON CONFLICT DO NOTHING ... RETURNING``, a few hundred rows
        a statement, in one transaction that commits when the block exits normally,
        less the slots the block released, and rolls back entirely when it
        raises. A replica claiming the same slots meanwhile waits for that
        outcome, then wins exactly the slots left free. Every batch inserts in
        the same (flow, slot) order, so two replicas' batches never deadlock.
        """
        if not claims:
            yield Claimed(frozenset())
            return
        fired_at = utcnow()
        rows = [
            {"flow": claim.flow, "slot": claim.slot, "run_id": claim.run_id, "fired_at": fired_at}
            for claim in sorted(claims, key=lambda claim: (claim.flow, claim.slot))
        ]
        async with self.engine.begin() as conn:
            # Executed for many rows, SQLAlchemy sends them as multi-row statements in this order.
            claiming = insert_ignore(conn, fired).returning(fired.c.flow, fired.c.slot)
            inserted = await conn.execute(claiming, rows)
            claimed = Claimed(frozenset((row.flow, row.slot) for row in inserted))
            yield claimed
            for released in _chunks(sorted(claimed.released)):
                await conn.execute(
                    fired.delete().where(sa.tuple_(fired.c.flow, fired.c.slot).in_(list(released)))
                )

    async def forget_slots(self, *, scheduled_before: dt.datetime, chained_before: dt.datetime) -> int:
        """Delete fired slots no replica will claim again; returns how many went.

        A scheduled slot fired before *scheduled_before* goes unless it is its
        flow's latest (where a scheduler starting up resumes from). A chained
        run's slot goes once its parent run is past *chained_before*: history
        no longer has that run, so it can neither end again nor be re-run.
        """
        newer = fired.alias("newer")
        superseded = sa.exists().where(
            (newer.c.flow == fired.c.flow)
            & (newer.c.slot > fired.c.slot)
            & ~newer.c.slot.startswith(CHAINED, autoescape=True)
        )
        async with self.engine.begin() as conn:
            scheduled = await conn.execute(
                fired.delete().where((fired.c.fired_at < scheduled_before) & _scheduled_slot() & superseded)
            )
            chained = await conn.execute(
                fired.delete().where(
                    (fired.c.fired_at < chained_before) & fired.c.slot.startswith(CHAINED, autoescape=True)
                )
            )
        return int(scheduled.rowcount or 0) + int(chained.rowcount or 0)

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
