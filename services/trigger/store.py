"""Flows, fired slots and idempotency keys, in the same SQL database as history.

Several trigger replicas share this store. Firing a slot is claiming a row
whose primary key is ``(flow, slot)``: the first replica's insert wins, the
other's conflicts and fires nothing. Slots are claimed in batches, each claim
committed at once with a lease (``claimed_until``), so no transaction stays
open while the runs are handed to the broker; then the claims of the runs the
broker took are settled (the lease cleared) and those it refused released
(deleted), in one more transaction. A replica that dies, or loses its
database, between the two leaves its claims leased: once the lease runs out,
any replica takes them over (:meth:`FlowStore.take_over`) and starts their runs
again under the same run ids, which every service downstream is idempotent on.

A fired slot's row is what keeps a second replica from firing it again, and
the latest one per flow is what a scheduler starting up resumes from; the
rest are forgotten after a while (:meth:`FlowStore.forget_slots`), so the
table holds about a day of slots rather than every slot ever fired. Every
change to a flow also moves one revision number, so that a scheduler learns
with one small read that it has nothing to load again, and every save is
kept as a version in the same transaction (:mod:`services.trigger.versions`).
"""

from __future__ import annotations

import datetime as dt
import enum
from collections.abc import Collection, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from common.contracts.flows import Flow, read_back
from common.contracts.messages import utcnow
from common.platform.database import SqlStore, insert_ignore, read_utc
from services.trigger import versions as kept
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
    #: Set while the slot's run is being started, until then; null once the broker took it.
    sa.Column("claimed_until", UtcDateTime),
    sa.Index("ix_flow_slots_fired_at", "fired_at"),
    sa.Index("ix_flow_slots_claimed_until", "claimed_until"),
)

#: Every save of a flow (see :mod:`services.trigger.versions`), kept when the flow is deleted.
flow_versions = sa.Table(
    "flow_versions",
    metadata,
    sa.Column("flow", sa.String(64), primary_key=True),
    sa.Column("version", sa.Integer, primary_key=True),
    #: The YAML text as saved.
    sa.Column("definition", sa.Text, nullable=False),
    sa.Column("document", sa.JSON, nullable=False),
    sa.Column("saved_at", UtcDateTime, nullable=False),
    #: ``token`` or ``local``; null for the version a flow was at when versions began to be kept.
    sa.Column("saved_by", sa.String(128)),
    sa.Column("summary", sa.String(1024), nullable=False),
    sa.Column("restored_from", sa.Integer),
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
    #: Set while the key's run is being started, until then; null once the broker took it.
    sa.Column("claimed_until", UtcDateTime),
)

#: Chained runs' slots start with this; every other slot is a scheduled instant.
CHAINED = "after:"
#: How many flows or slots one statement names at most.
_CHUNK = 500


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
        anchor=read_utc(row.anchor),
        created_at=read_utc(row.created_at),
        updated_at=read_utc(row.updated_at),
        last_slot=last_slot,
    )


#: What a flow's history lists of each version: all but what it saved.
_LISTED = [column for column in flow_versions.c if column.name not in ("definition", "document")]


def _listed(row: Any) -> dict[str, Any]:
    return {
        "flow": row.flow,
        "version": row.version,
        "saved_at": read_utc(row.saved_at),
        "saved_by": row.saved_by,
        "summary": row.summary,
        "restored_from": row.restored_from,
    }


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

    @property
    def key(self) -> tuple[str, str]:
        return self.flow, self.slot


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
        definition: str | None = None,
        saved_by: str | None = None,
        restored_from: int | None = None,
    ) -> tuple[StoredFlow, bool]:
        """Create or replace *flow*; returns it and whether it was created.

        With *if_match*, only a flow at one of its versions is replaced, and
        none is created: `PreconditionFailed` otherwise. The version is
        compared in the UPDATE itself, so of two writers that read the same
        version, one changes no row and is refused.

        The save is kept as a version in the same transaction: *definition*
        (the YAML as saved; the document dumped as YAML without it), *saved_by*,
        and the version it restores, if it is a restore. A flow created under a
        name that has versions already (it was deleted) numbers on from them.
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
                last = await conn.execute(
                    sa.select(sa.func.max(flow_versions.c.version)).where(flow_versions.c.flow == flow.name)
                )
                first = (last.scalar_one_or_none() or 0) + 1
                await conn.execute(
                    flows.insert().values(name=flow.name, version=first, anchor=now, created_at=now, **fields)
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
            # A number is kept once; only a replica of the release before versions, numbering a flow
            # it created again from 1, can meet a row of its number, which no longer says what it is.
            await conn.execute(
                flow_versions.delete().where(
                    (flow_versions.c.flow == flow.name) & (flow_versions.c.version == row.version)
                )
            )
            await conn.execute(
                flow_versions.insert().values(
                    flow=flow.name,
                    version=row.version,
                    definition=definition if definition is not None else kept.definition(document, None),
                    document=document,
                    saved_at=now,
                    saved_by=saved_by,
                    summary=kept.summarize(
                        current.document if current else None, document, restored_from=restored_from
                    )[:1024],
                    restored_from=restored_from,
                )
            )
            await self._changed(conn)
        return _stored(row), created

    async def versions(self, name: str) -> list[kept.SavedVersion]:
        """Every kept version of the flow *name*, newest first, without what each saved; empty if none."""
        query = (
            sa.select(*_LISTED).where(flow_versions.c.flow == name).order_by(flow_versions.c.version.desc())
        )
        async with self.engine.connect() as conn:
            rows = (await conn.execute(query)).all()
        return [kept.SavedVersion(**_listed(row)) for row in rows]

    async def version(self, name: str, number: int) -> kept.FlowVersion | None:
        """One version with its definition and document; None if the flow has no such version."""
        where = (flow_versions.c.flow == name) & (flow_versions.c.version == number)
        async with self.engine.connect() as conn:
            row = (await conn.execute(sa.select(flow_versions).where(where))).first()
        if row is None:
            return None
        return kept.FlowVersion(**_listed(row), definition=row.definition, document=row.document)

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
        return {row.name: Signature(row.version, read_utc(row.updated_at)) for row in rows}

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

    async def claim(
        self, claims: Collection[SlotClaim], *, lease: dt.timedelta, now: dt.datetime | None = None
    ) -> frozenset[tuple[str, str]]:
        """Claim a batch of slots at once: the ``(flow, slot)`` pairs this caller won.

        ``INSERT ... ON CONFLICT DO NOTHING ... RETURNING``, a few hundred rows a
        statement, committed before this returns. The won claims are leased for
        *lease*: :meth:`settle` them once their runs were handed to the broker.
        Every batch inserts in the same (flow, slot) order, so two replicas'
        batches never deadlock.
        """
        if not claims:
            return frozenset()
        fired_at = now or utcnow()
        rows = [
            {
                "flow": claim.flow,
                "slot": claim.slot,
                "run_id": claim.run_id,
                "fired_at": fired_at,
                "claimed_until": fired_at + lease,
            }
            for claim in sorted(claims, key=lambda claim: (claim.flow, claim.slot))
        ]
        async with self.engine.begin() as conn:
            # Executed for many rows, SQLAlchemy sends them as multi-row statements in this order.
            claiming = insert_ignore(conn, fired).returning(fired.c.flow, fired.c.slot)
            inserted = await conn.execute(claiming, rows)
            return frozenset((row.flow, row.slot) for row in inserted)

    async def settle(
        self, started: Collection[tuple[str, str]], released: Collection[tuple[str, str]] = ()
    ) -> None:
        """End the leases of claimed slots: *started* ones stay fired, *released* ones are free again."""
        if not started and not released:
            return
        async with self.engine.begin() as conn:
            for chunk in _chunks(sorted(started)):
                await conn.execute(
                    fired.update()
                    .where(sa.tuple_(fired.c.flow, fired.c.slot).in_(list(chunk)))
                    .values(claimed_until=None)
                )
            for chunk in _chunks(sorted(released)):
                # Only a claim still leased: one settled meanwhile (taken over and started) stays.
                await conn.execute(
                    fired.delete().where(
                        sa.tuple_(fired.c.flow, fired.c.slot).in_(list(chunk))
                        & fired.c.claimed_until.is_not(None)
                    )
                )

    async def take_over(
        self, now: dt.datetime, *, lease: dt.timedelta, limit: int = _CHUNK
    ) -> list[SlotClaim]:
        """Claim anew up to *limit* claims whose lease ran out before they were settled.

        Their replica died, or lost its database, between claiming and settling:
        whether their runs started is unknown, so the caller starts them again
        and settles them. Of replicas taking over at once, each claim goes to one.
        """
        expired = (
            sa.select(fired.c.flow, fired.c.slot)
            .where(fired.c.claimed_until < now)
            .order_by(fired.c.flow, fired.c.slot)
            .limit(limit)
        )
        taking = (
            fired.update()
            .where(sa.tuple_(fired.c.flow, fired.c.slot).in_(expired) & (fired.c.claimed_until < now))
            .values(claimed_until=now + lease)
            .returning(fired.c.flow, fired.c.slot, fired.c.run_id)
        )
        async with self.engine.begin() as conn:
            taken = (await conn.execute(taking)).all()
        return [SlotClaim(row.flow, row.slot, row.run_id) for row in taken]

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

    async def request(
        self, flow: str, key: str, run_id: str, *, lease: dt.timedelta, now: dt.datetime | None = None
    ) -> tuple[str, RequestState]:
        """Record an Idempotency-Key for *run_id*, or find the run it stands for already.

        Returns the run id the key stands for and what its caller is to do (see
        :class:`RequestState`). A key recorded here, or taken over, is leased like
        a slot's claim: :meth:`settle_request` it once the broker took the run, or
        :meth:`release_request` it if the run could not be started.
        """
        now = now or utcnow()
        where = (idempotency.c.flow == flow) & (idempotency.c.key == key)
        async with self.engine.begin() as conn:
            result = await conn.execute(
                insert_ignore(conn, idempotency).values(
                    flow=flow, key=key, run_id=run_id, created_at=now, claimed_until=now + lease
                )
            )
            if result.rowcount:
                return run_id, RequestState.NEW
            row = (
                await conn.execute(sa.select(idempotency.c.run_id, idempotency.c.claimed_until).where(where))
            ).first()
            if row is None:
                # Released between the insert and the read: the caller tries again.
                return run_id, RequestState.STARTING
            if row.claimed_until is None:
                return str(row.run_id), RequestState.STARTED
            taking = (
                idempotency.update()
                .where(where & (idempotency.c.claimed_until < now))
                .values(claimed_until=now + lease)
            )
            if (await conn.execute(taking)).rowcount:
                return str(row.run_id), RequestState.TAKEN_OVER
            return str(row.run_id), RequestState.STARTING

    async def settle_request(self, flow: str, key: str) -> None:
        """The key's run was handed to the broker: the key stands for it from now on."""
        where = (idempotency.c.flow == flow) & (idempotency.c.key == key)
        async with self.engine.begin() as conn:
            await conn.execute(idempotency.update().where(where).values(claimed_until=None))

    async def release_request(self, flow: str, key: str) -> None:
        """The key's run could not be started: the key is free for the client's retry."""
        where = (
            (idempotency.c.flow == flow)
            & (idempotency.c.key == key)
            & idempotency.c.claimed_until.is_not(None)
        )
        async with self.engine.begin() as conn:
            await conn.execute(idempotency.delete().where(where))


class RequestState(enum.Enum):
    """Where a run request's Idempotency-Key stands."""

    #: Recorded now: start the run.
    NEW = "new"
    #: Its run was started: answer with it.
    STARTED = "started"
    #: Another request is starting its run now: ask again in a moment.
    STARTING = "starting"
    #: A request that was starting its run stopped without saying how it went: start it again.
    TAKEN_OVER = "taken_over"


class FlowExists(Exception):
    def __init__(self, name: str) -> None:
        super().__init__(f"flow {name!r} already exists")
        self.name = name
