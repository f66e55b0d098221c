"""What a fanned-out step keeps while its child runs go: the parent's message, its items, their counts.

A ``for_each`` or ``parallel`` step of a run becomes one ``scopes`` row (the
parent's run message, parked there rather than in a consumer) and one
``scope_items`` row per iteration or branch. Every change is one transaction
that first writes the scope's row, so replicas of the trigger (and, embedded,
the one SQLite file) take a scope's changes one at a time:

* the fan-out inserts the items and marks the first ``concurrency`` running;
* each child's join records its item's end, and marks the next waiting items
  running in its place (``started_by`` names the item whose end started them);
* the join of the last running item finishes the scope.

What a transaction decided is published after it commits: child starts, then
``published`` set on their items; the parent's slip, then ``forwarded`` set.
A delivery handled again (a crash in between) finds its decision recorded and
publishes only what is not marked published yet, so no iteration starts
twice and the parent goes on once.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import AsyncIterable, AsyncIterator, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from common.contracts.messages import RunMessage, StepStatus, utcnow
from common.platform.database import SqlStore, read_utc

metadata = sa.MetaData()
UtcDateTime = sa.DateTime(timezone=True)

scopes = sa.Table(
    "scopes",
    metadata,
    sa.Column("run_id", sa.String(64), primary_key=True),
    sa.Column("step_id", sa.String(64), primary_key=True),
    #: The attempt of the parent's step that fanned out last (a re-run of it starts again what failed).
    sa.Column("attempt", sa.Integer, nullable=False),
    #: The parent's run message at its scope step: what goes on once every item has ended.
    sa.Column("message", sa.JSON, nullable=False),
    sa.Column("total", sa.Integer, nullable=False),
    sa.Column("concurrency", sa.Integer, nullable=False),
    sa.Column("running", sa.Integer, nullable=False),
    sa.Column("succeeded", sa.Integer, nullable=False),
    sa.Column("failed", sa.Integer, nullable=False),
    sa.Column("skipped", sa.Integer, nullable=False),
    #: An iteration failed under ``on_item_failure: stop``: nothing more starts.
    sa.Column("stopping", sa.Boolean, nullable=False),
    #: The source had more rows than ``max_items`` and the first ones were iterated.
    sa.Column("truncated", sa.Boolean, nullable=False),
    sa.Column("finished_at", UtcDateTime),
    #: The parent's slip went on after the scope finished (the broker took it).
    sa.Column("forwarded", sa.Boolean, nullable=False),
    #: The scope's end failed the parent's step, and the parent stopped there: a re-run of the
    #: failed iterations that makes every item succeed lets the parent go on.
    sa.Column("parent_stopped", sa.Boolean, nullable=False),
    #: When the parent's step last told history how far its items are.
    sa.Column("reported_at", UtcDateTime),
    sa.Column("created_at", UtcDateTime, nullable=False),
    sa.Column("updated_at", UtcDateTime, nullable=False),
)

items = sa.Table(
    "scope_items",
    metadata,
    sa.Column("run_id", sa.String(64), primary_key=True),
    sa.Column("step_id", sa.String(64), primary_key=True),
    sa.Column("item", sa.Integer, primary_key=True),
    sa.Column("child_run_id", sa.String(64), nullable=False),
    sa.Column("branch", sa.String(64)),
    sa.Column("row", sa.JSON),
    #: waiting, running, succeeded, failed or skipped.
    sa.Column("status", sa.String(16), nullable=False),
    #: The item whose end started this one (-1: the fan-out).
    sa.Column("started_by", sa.Integer),
    sa.Column("published", sa.Boolean, nullable=False),
    #: The child run's outputs at its end (each step's status, counts and first rows).
    sa.Column("outputs", sa.JSON),
    sa.Column("finished_at", UtcDateTime),
    sa.UniqueConstraint("child_run_id", name="uq_scope_items_child_run_id"),
    sa.Index("ix_scope_items_started_by", "run_id", "step_id", "started_by"),
    #: The next waiting items, in order, without a scan past those already started.
    sa.Index("ix_scope_items_status", "run_id", "step_id", "status", "item"),
)

WAITING = "waiting"
RUNNING = "running"
#: The fan-out, as the ``started_by`` of the items it starts.
FAN_OUT = -1
#: Items inserted per statement.
_BATCH = 1000
_ENDED = (StepStatus.SUCCEEDED.value, StepStatus.FAILED.value, StepStatus.SKIPPED.value)


@dataclass(frozen=True)
class Item:
    """One iteration or branch to start: its number, child run, branch and row."""

    item: int
    child_run_id: str
    branch: str | None = None
    row: dict[str, Any] | None = None


@dataclass
class Counts:
    total: int
    running: int = 0
    succeeded: int = 0
    failed: int = 0
    skipped: int = 0
    truncated: bool = False

    def as_detail(self) -> dict[str, Any]:
        return {
            "total": self.total,
            "running": self.running,
            "succeeded": self.succeeded,
            "failed": self.failed,
            "skipped": self.skipped,
            "truncated": self.truncated,
        }


@dataclass
class Decision:
    """What one transaction decided, to publish once it has committed."""

    #: The parent's message as parked (None when the scope is unknown).
    parent: RunMessage | None
    counts: Counts
    #: Items whose start is to be published.
    starts: list[Item] = field(default_factory=list)
    #: Set when the scope has finished and the parent's slip is still to go on: every item's
    #: number, status, child run and outputs, in order (as many as asked for).
    finished: list[dict[str, Any]] | None = None
    #: The scope finished before, and a re-run of a failed iteration has now made it succeed.
    resumed: bool = False
    #: The parent's step is due to tell history how far its items are.
    report: bool = False
    #: The item's end was known already (a delivery handled again).
    repeated: bool = False
    #: The scope had finished and its parent gone on before: a fan-out handled again has nothing to say.
    settled: bool = False


class ScopeStore(SqlStore):
    """The trigger's scopes, in the shared database."""

    metadata = metadata

    async def fan_out(
        self,
        parent: RunMessage,
        concurrency: int,
        entries: Iterable[Item] | AsyncIterable[Item],
        *,
        truncated: bool = False,
    ) -> Decision:
        """Park *parent* and its *entries*; the items to start first.

        A scope fanned out before is not fanned out again: a delivery handled again gets the
        starts not published yet; a new attempt of the parent's step (a re-run) starts again
        the items that failed or were skipped.
        """
        try:
            return await self._fan_out(parent, concurrency, entries, truncated=truncated)
        except sa.exc.IntegrityError:
            # The same parent fanned out at the same time elsewhere (a message published twice),
            # and that one committed first: this is now a delivery handled again.
            key = _Key(parent.run_id, parent.step_id)
            async with self.engine.begin() as conn:
                if not await _lock(conn, key, utcnow()):
                    raise
                return await self._fanned_out_before(conn, key, parent, utcnow())

    async def _fan_out(
        self,
        parent: RunMessage,
        concurrency: int,
        entries: Iterable[Item] | AsyncIterable[Item],
        *,
        truncated: bool,
    ) -> Decision:
        now = utcnow()
        key = _Key(parent.run_id, parent.step_id)
        async with self.engine.begin() as conn:
            if await _lock(conn, key, now):
                return await self._fanned_out_before(conn, key, parent, now)
            total = 0
            batch: list[dict[str, Any]] = []
            async for entry in _each(entries):
                batch.append(_item_row(key, entry))
                total += 1
                if len(batch) >= _BATCH:
                    await conn.execute(items.insert(), batch)
                    batch = []
            if batch:
                await conn.execute(items.insert(), batch)
            await conn.execute(
                scopes.insert().values(
                    run_id=parent.run_id,
                    step_id=parent.step_id,
                    attempt=parent.attempt,
                    message=parent.model_dump(mode="json"),
                    total=total,
                    concurrency=concurrency,
                    running=0,
                    succeeded=0,
                    failed=0,
                    skipped=0,
                    stopping=False,
                    truncated=truncated,
                    forwarded=False,
                    parent_stopped=False,
                    created_at=now,
                    updated_at=now,
                )
            )
            counts = Counts(total=total, truncated=truncated)
            starts = await _start_next(conn, key, counts, concurrency, FAN_OUT)
            await _write_counts(conn, key, counts, now)
            return Decision(parent=parent, counts=counts, starts=starts)

    async def _fanned_out_before(
        self, conn: AsyncConnection, key: _Key, parent: RunMessage, now: dt.datetime
    ) -> Decision:
        row = (await conn.execute(sa.select(scopes).where(key.scope))).one()
        counts = _counts(row)
        finished_clean = row.finished_at is not None and counts.failed == 0 and counts.skipped == 0
        if parent.attempt <= row.attempt or finished_clean:
            # Handled again; or a later attempt (a retry of this fan-out) that finds every item
            # succeeded, with nothing to start again: reopening the scope would park it for good.
            starts = await _unpublished(conn, key, FAN_OUT)
            settled = row.finished_at is not None and row.forwarded
            return Decision(parent=parent, counts=counts, starts=starts, repeated=True, settled=settled)
        # A re-run of the parent's step: what failed or was skipped runs again, under new child runs.
        again = (
            await conn.execute(
                sa.select(items.c.item).where(key.items, items.c.status.in_(["failed", "skipped"]))
            )
        ).scalars()
        for number in again:
            await conn.execute(
                items.update()
                .where(key.items, items.c.item == number)
                .values(
                    status=WAITING,
                    child_run_id=child_run_id(parent.run_id, parent.step_id, number, parent.attempt),
                    started_by=None,
                    published=False,
                    outputs=None,
                    finished_at=None,
                )
            )
        counts.failed = counts.skipped = 0
        await conn.execute(
            scopes.update()
            .where(key.scope)
            .values(
                attempt=parent.attempt,
                message=parent.model_dump(mode="json"),
                stopping=False,
                finished_at=None,
                forwarded=False,
                parent_stopped=False,
            )
        )
        starts = await _start_next(conn, key, counts, row.concurrency, FAN_OUT)
        await _write_counts(conn, key, counts, now)
        return Decision(parent=parent, counts=counts, starts=starts)

    async def join(
        self,
        run_id: str,
        step_id: str,
        child_run_id: str,
        status: StepStatus,
        outputs: dict[str, Any],
        *,
        stop_on_failure: bool,
        report_every: dt.timedelta,
        summary_items: int | None,
    ) -> Decision:
        """Record the end of the item run by *child_run_id*; what starts next, and whether the scope ended."""
        now = utcnow()
        key = _Key(run_id, step_id)
        async with self.engine.begin() as conn:
            if not await _lock(conn, key, now):
                return Decision(parent=None, counts=Counts(total=0))
            row = (await conn.execute(sa.select(scopes).where(key.scope))).one()
            parent = RunMessage.model_validate(row.message)
            counts = _counts(row)
            item = (
                await conn.execute(sa.select(items).where(key.items, items.c.child_run_id == child_run_id))
            ).one_or_none()
            if item is None:
                # A child run of an attempt the scope has since started again under new ids.
                return Decision(parent=None, counts=counts, repeated=True)
            was_finished = row.finished_at is not None
            if item.status == status.value:
                decision = Decision(parent=parent, counts=counts, repeated=True)
                decision.starts = await _unpublished(conn, key, item.item)
                if was_finished and not row.forwarded:
                    decision.finished = await _summary(conn, key, summary_items)
                return decision
            _move(counts, item.status, status.value)
            await conn.execute(
                items.update()
                .where(key.items, items.c.item == item.item)
                .values(status=status.value, outputs=outputs, finished_at=now)
            )
            stopping = row.stopping
            if status is StepStatus.FAILED and stop_on_failure and not stopping:
                stopping = True
                skipped = await conn.execute(
                    items.update().where(key.items, items.c.status == WAITING).values(status="skipped")
                )
                counts.skipped += skipped.rowcount
            decision = Decision(parent=parent, counts=counts)
            if not stopping and not was_finished:
                decision.starts = await _start_next(conn, key, counts, row.concurrency, item.item)
            values: dict[str, Any] = {"stopping": stopping}
            if was_finished:
                # A re-run of a failed iteration: the counts change; the parent goes on again only if
                # every item has now succeeded, and its step had failed for them (it did not go on).
                if counts.failed == 0 and counts.skipped == 0 and row.forwarded and row.parent_stopped:
                    decision.resumed = True
                    parent = parent.model_copy(update={"attempt": parent.attempt + 1})
                    decision.parent = parent
                    values.update(
                        message=parent.model_dump(mode="json"), forwarded=False, parent_stopped=False
                    )
                    decision.finished = await _summary(conn, key, summary_items)
            elif counts.running == 0 and not await _any_waiting(conn, key):
                values["finished_at"] = now
                decision.finished = await _summary(conn, key, summary_items)
            elif row.reported_at is None or now - read_utc(row.reported_at) >= report_every:
                values["reported_at"] = now
                decision.report = True
            await conn.execute(scopes.update().where(key.scope).values(**values))
            await _write_counts(conn, key, counts, now)
            return decision

    async def published(self, run_id: str, step_id: str, numbers: Sequence[int]) -> None:
        """The broker took the starts of these items."""
        if not numbers:
            return
        key = _Key(run_id, step_id)
        async with self.engine.begin() as conn:
            for start in range(0, len(numbers), _BATCH):
                chunk = list(numbers[start : start + _BATCH])
                await conn.execute(
                    items.update().where(key.items, items.c.item.in_(chunk)).values(published=True)
                )

    async def forwarded(self, run_id: str, step_id: str, *, parent_stopped: bool = False) -> None:
        """The broker took the parent's slip (or, with *parent_stopped*, the failure that ends the parent)."""
        async with self.engine.begin() as conn:
            await conn.execute(
                scopes.update()
                .where(_Key(run_id, step_id).scope)
                .values(forwarded=True, parent_stopped=parent_stopped)
            )

    async def forget(self, *, finished_before: dt.datetime) -> int:
        """Delete the scopes that finished, and went on, before the cutoff (with their items)."""
        async with self.engine.begin() as conn:
            old = (
                await conn.execute(
                    sa.select(scopes.c.run_id, scopes.c.step_id).where(
                        scopes.c.finished_at < finished_before, scopes.c.forwarded.is_(True)
                    )
                )
            ).all()
            for run_id, step_id in old:
                key = _Key(run_id, step_id)
                await conn.execute(items.delete().where(key.items))
                await conn.execute(scopes.delete().where(key.scope))
        return len(old)


async def _each(entries: Iterable[Item] | AsyncIterable[Item]) -> AsyncIterator[Item]:
    if isinstance(entries, AsyncIterable):
        async for entry in entries:
            yield entry
    else:
        for entry in entries:
            yield entry


def child_run_id(run_id: str, step_id: str, item: int, attempt: int = 1) -> str:
    """The run id of one item's child run: the same wherever and however often it is worked out.

    A re-run of the parent's step (*attempt* after the first) starts its items under new ids.
    """
    suffix = "" if attempt == 1 else f"\n{attempt}"
    return uuid.uuid5(_CHILDREN, f"{run_id}\n{step_id}\n{item}{suffix}").hex


_CHILDREN = uuid.UUID("0c6b1f8e-3f5a-4c1e-9d2b-7a4e5f6a8b90")


@dataclass(frozen=True)
class _Key:
    """One scope's rows: its own (``scope``) and its items' (``items``)."""

    run_id: str
    step_id: str

    @property
    def scope(self) -> sa.ColumnElement[bool]:
        return sa.and_(scopes.c.run_id == self.run_id, scopes.c.step_id == self.step_id)

    @property
    def items(self) -> sa.ColumnElement[bool]:
        return sa.and_(items.c.run_id == self.run_id, items.c.step_id == self.step_id)


async def _lock(conn: AsyncConnection, key: _Key, now: dt.datetime) -> bool:
    """Take the scope's row for this transaction (writing first, so SQLite locks it too); False if none."""
    result = await conn.execute(scopes.update().where(key.scope).values(updated_at=now))
    return bool(result.rowcount)


def _item_row(key: _Key, entry: Item) -> dict[str, Any]:
    return {
        "run_id": key.run_id,
        "step_id": key.step_id,
        "item": entry.item,
        "child_run_id": entry.child_run_id,
        "branch": entry.branch,
        "row": entry.row,
        "status": WAITING,
        "published": False,
    }


def _counts(row: Any) -> Counts:
    return Counts(
        total=row.total,
        running=row.running,
        succeeded=row.succeeded,
        failed=row.failed,
        skipped=row.skipped,
        truncated=row.truncated,
    )


def _move(counts: Counts, old: str, new: str) -> None:
    for status, step in ((old, -1), (new, 1)):
        if status in ("running", "succeeded", "failed", "skipped"):
            setattr(counts, status, getattr(counts, status) + step)


async def _write_counts(conn: AsyncConnection, key: _Key, counts: Counts, now: dt.datetime) -> None:
    await conn.execute(
        scopes.update()
        .where(key.scope)
        .values(
            running=counts.running,
            succeeded=counts.succeeded,
            failed=counts.failed,
            skipped=counts.skipped,
            updated_at=now,
        )
    )


async def _start_next(
    conn: AsyncConnection, key: _Key, counts: Counts, concurrency: int, started_by: int
) -> list[Item]:
    free = concurrency - counts.running
    if free <= 0:
        return []
    chosen = (
        await conn.execute(
            sa.select(items.c.item, items.c.child_run_id, items.c.branch, items.c.row)
            .where(key.items, items.c.status == WAITING)
            .order_by(items.c.item)
            .limit(free)
        )
    ).all()
    if not chosen:
        return []
    numbers = [row.item for row in chosen]
    for start in range(0, len(numbers), _BATCH):
        await conn.execute(
            items.update()
            .where(key.items, items.c.item.in_(numbers[start : start + _BATCH]))
            .values(status=RUNNING, started_by=started_by, published=False)
        )
    counts.running += len(chosen)
    return [Item(row.item, row.child_run_id, row.branch, row.row) for row in chosen]


async def _unpublished(conn: AsyncConnection, key: _Key, started_by: int) -> list[Item]:
    rows = (
        await conn.execute(
            sa.select(items.c.item, items.c.child_run_id, items.c.branch, items.c.row)
            .where(
                key.items,
                items.c.started_by == started_by,
                items.c.status == RUNNING,
                items.c.published.is_(False),
            )
            .order_by(items.c.item)
        )
    ).all()
    return [Item(row.item, row.child_run_id, row.branch, row.row) for row in rows]


async def _any_waiting(conn: AsyncConnection, key: _Key) -> bool:
    found = await conn.execute(sa.select(items.c.item).where(key.items, items.c.status == WAITING).limit(1))
    return found.first() is not None


async def _summary(conn: AsyncConnection, key: _Key, limit: int | None) -> list[dict[str, Any]]:
    query = (
        sa.select(items.c.item, items.c.child_run_id, items.c.branch, items.c.status, items.c.outputs)
        .where(key.items)
        .order_by(items.c.item)
    )
    if limit is not None:
        query = query.limit(limit)
    return [
        {
            "index": row.item,
            "run_id": row.child_run_id,
            "branch": row.branch,
            "status": row.status,
            "outputs": row.outputs or {},
        }
        for row in (await conn.execute(query)).all()
    ]
