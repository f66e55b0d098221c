"""The delivery ledger: one email (or webhook post) per intended delivery.

Delivery is at-least-once underneath: a message can be redelivered while its
first delivery is still sending (a dropped connection requeues it at once).
Before sending, a delivery claims its row, keyed by run, step and item (the
whole step, or one row of a per-row step). A claim that exists says what to
do: already sent (skip), held by a live worker (come back when its lease runs
out), or abandoned (take it over).

A claim is a lease: the worker holding it renews it (``claimed_at``) every
third of the lease while the delivery is under way, so a worker that died is
found out within one lease, and one that is merely slow (a relay taking its
time) keeps its claim. ``claimed_at`` is also the holder's token: every write
of the holder names the value it last wrote, so a worker that lost its claim
to a taker learns so instead of overwriting the taker's.

The row's ``detail`` says who holds it (``holder``, ``since``) and, once an
email was composed and kept, what may have reached the relay (``sending``:
the kept copy); when sent, what was recorded.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from dataclasses import dataclass
from enum import StrEnum
from types import TracebackType
from typing import Any, Self

import sqlalchemy as sa
import structlog

from common.contracts.messages import utcnow
from common.platform.database import OUTAGES, SqlStore, insert_ignore, read_utc

log = structlog.get_logger(__name__)

metadata = sa.MetaData()

deliveries = sa.Table(
    "deliveries",
    metadata,
    sa.Column("run_id", sa.String(64), primary_key=True),
    sa.Column("step_id", sa.String(64), primary_key=True),
    sa.Column("item", sa.String(32), primary_key=True),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("claimed_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("sent_at", sa.DateTime(timezone=True)),
    sa.Column("detail", sa.JSON),
)

#: ``claimed_at`` of a claim given back: long past any lease, so the next delivery takes it at once.
RELEASED = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


class Claim(StrEnum):
    MINE = "mine"
    SENT = "sent"
    BUSY = "busy"


@dataclass(frozen=True)
class Key:
    """One delivery: a run's step, and the item of it (``once``, ``row-3``, ``once.<resend>``)."""

    run_id: str
    step_id: str
    item: str

    def where(self) -> sa.ColumnElement[bool]:
        return (
            (deliveries.c.run_id == self.run_id)
            & (deliveries.c.step_id == self.step_id)
            & (deliveries.c.item == self.item)
        )


@dataclass(frozen=True)
class Claimed:
    """What claiming a delivery found."""

    claim: Claim
    #: Sent: what was recorded. Mine: the row's detail now, with what an earlier holder left
    #: (``sending``). Busy: the holder's (``holder``, ``since``).
    detail: dict[str, Any]
    #: Mine: this claim's token. Busy: when the holder last renewed its claim.
    claimed_at: dt.datetime
    #: Mine: whether the claim was someone else's before (abandoned or given back).
    taken_over: bool = False


class Ledger(SqlStore):
    metadata = metadata

    async def claim(
        self, key: Key, *, holder: str, lease: dt.timedelta, now: dt.datetime | None = None
    ) -> Claimed:
        """Claim a delivery for *holder*; says who has it and, when sent, what was recorded."""
        now = now or utcnow()
        mine = {"holder": holder, "since": now.isoformat()}
        async with self.engine.begin() as conn:
            inserted = await conn.execute(
                insert_ignore(conn, deliveries).values(
                    run_id=key.run_id,
                    step_id=key.step_id,
                    item=key.item,
                    state="claimed",
                    claimed_at=now,
                    detail=mine,
                )
            )
            if inserted.rowcount:
                return Claimed(Claim.MINE, mine, now)
            row = (await conn.execute(sa.select(deliveries).where(key.where()))).one()
            detail = dict(row.detail or {})
            if row.state == "sent":
                return Claimed(Claim.SENT, detail, read_utc(row.claimed_at))
            if read_utc(row.claimed_at) > now - lease:
                return Claimed(Claim.BUSY, detail, read_utc(row.claimed_at))
            # The holder went quiet for longer than its lease, or gave the claim back: take
            # over, keeping what it left (a kept copy it may have sent), unless another taker
            # was quicker.
            detail.update(mine)
            taken = await conn.execute(
                deliveries.update()
                .where(key.where() & (deliveries.c.state == "claimed"))
                .where(deliveries.c.claimed_at == row.claimed_at)
                .values(claimed_at=now, detail=detail)
            )
            if not taken.rowcount:
                return Claimed(Claim.BUSY, detail, now)
            return Claimed(Claim.MINE, detail, now, taken_over=True)

    async def renew(
        self,
        key: Key,
        token: dt.datetime,
        *,
        detail: dict[str, Any] | None = None,
        now: dt.datetime | None = None,
    ) -> dt.datetime | None:
        """Renew the claim held with *token* (and replace its detail); its new token, None if lost."""
        # Tokens only move forward, even if the clock steps back.
        now = max(now or utcnow(), token + dt.timedelta(microseconds=1))
        values: dict[str, Any] = {"claimed_at": now}
        if detail is not None:
            values["detail"] = detail
        async with self.engine.begin() as conn:
            renewed = await conn.execute(
                deliveries.update()
                .where(key.where() & (deliveries.c.state == "claimed"))
                .where(deliveries.c.claimed_at == token)
                .values(**values)
            )
        return now if renewed.rowcount else None

    async def sent(self, key: Key, detail: dict[str, Any]) -> None:
        """Record the delivery as sent, whoever holds its claim now: the receiver has it."""
        async with self.engine.begin() as conn:
            await conn.execute(
                deliveries.update()
                .where(key.where() & (deliveries.c.state == "claimed"))
                .values(state="sent", sent_at=utcnow(), detail=detail)
            )

    async def release(self, key: Key, token: dt.datetime, *, keep: bool) -> None:
        """Give back the claim held with *token*, so the next delivery may send at once.

        With *keep*, the row stays, with what it says may have reached the receiver (the kept
        copy), for the next delivery to send again as it is; without, it goes.
        """
        mine = key.where() & (deliveries.c.state == "claimed") & (deliveries.c.claimed_at == token)
        async with self.engine.begin() as conn:
            if keep:
                await conn.execute(deliveries.update().where(mine).values(claimed_at=RELEASED))
            else:
                await conn.execute(deliveries.delete().where(mine))

    async def row(self, key: Key) -> dict[str, Any] | None:
        """The delivery's row as stored, or None."""
        async with self.engine.connect() as conn:
            row = (await conn.execute(sa.select(deliveries).where(key.where()))).one_or_none()
        return None if row is None else dict(row._mapping)


class Hold:
    """A claim this worker holds, renewed every *every* seconds until it is recorded or given back.

    Writes to the claim (renewals, what is being sent, giving it back) go one at a time,
    each with the token the last one left.
    """

    def __init__(self, ledger: Ledger, key: Key, claimed: Claimed, *, every: float) -> None:
        assert claimed.claim is Claim.MINE
        self.ledger = ledger
        self.key = key
        self.token = claimed.claimed_at
        #: The row's detail as this worker last wrote it.
        self.detail = dict(claimed.detail)
        self.taken_over = claimed.taken_over
        self.every = every
        #: Another worker took the claim over (this one could not renew it for a whole lease).
        self.lost = False
        #: Recorded as sent, or given back: nothing is left to renew.
        self.ended = False
        #: The receiver took the delivery: whatever happens next, the claim is not given back.
        self.accepted = False
        self._lock = asyncio.Lock()
        self._renewing: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Self:
        self._renewing = asyncio.create_task(self._renew_now_and_then())
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        renewing, self._renewing = self._renewing, None
        if renewing is not None:
            renewing.cancel()
            await asyncio.gather(renewing, return_exceptions=True)

    async def _renew_now_and_then(self) -> None:
        while True:
            await asyncio.sleep(self.every)
            try:
                if not await self.renew():
                    if self.lost:
                        log.warning("delivery claim taken over by another worker", item=self.key.item)
                    return
            except OUTAGES as exc:
                # The ledger is away for a moment; the claim holds until its lease runs out.
                log.warning("could not renew a delivery claim", item=self.key.item, error=str(exc)[:200])

    async def renew(self, detail: dict[str, Any] | None = None) -> bool:
        """Renew the claim (with *detail* added to what the row says); False once it is lost."""
        async with self._lock:
            if self.lost or self.ended:
                return False
            updated = {**self.detail, **detail} if detail is not None else None
            token = await self.ledger.renew(self.key, self.token, detail=updated)
            if token is None:
                self.lost = True
                return False
            self.token = token
            if updated is not None:
                self.detail = updated
            return True

    async def sent(self, recorded: dict[str, Any]) -> None:
        async with self._lock:
            await self.ledger.sent(self.key, recorded)
            self.ended = True

    async def release(self) -> None:
        """Give the claim back at once; if the ledger is away, its lease gives it back instead."""
        async with self._lock:
            if self.lost or self.ended:
                return
            self.ended = True
            try:
                await self.ledger.release(self.key, self.token, keep="sending" in self.detail)
            except OUTAGES as exc:
                log.warning("could not give a delivery claim back", item=self.key.item, error=str(exc)[:200])
