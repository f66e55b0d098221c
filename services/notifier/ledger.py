"""The delivery ledger: one email (or webhook post) per intended delivery.

Delivery is at-least-once underneath: a message can be redelivered while its
first delivery is still sending (a dropped connection requeues it at once).
Before sending, a delivery claims its row, keyed by run, step and item (the
whole step, or one row of a per-row step). A claim that exists says what to
do: already sent (skip), being sent by someone else right now (come back
later), or abandoned by a worker that died (take it over and send; the stable
Message-ID lets a receiver drop the rare duplicate this can still cause).
"""

from __future__ import annotations

import datetime as dt
from enum import StrEnum
from typing import Any

import sqlalchemy as sa

from common.contracts.messages import utcnow
from common.platform.database import SqlStore, insert_ignore

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


class Claim(StrEnum):
    MINE = "mine"
    SENT = "sent"
    BUSY = "busy"


def _utc(value: dt.datetime) -> dt.datetime:
    return value if value.tzinfo else value.replace(tzinfo=dt.UTC)


class Ledger(SqlStore):
    metadata = metadata

    async def claim(
        self, run_id: str, step_id: str, item: str, *, lease: dt.timedelta, now: dt.datetime | None = None
    ) -> tuple[Claim, dict[str, Any]]:
        """Claim a delivery; returns who has it and, when sent, what was recorded."""
        now = now or utcnow()
        key = (
            (deliveries.c.run_id == run_id) & (deliveries.c.step_id == step_id) & (deliveries.c.item == item)
        )
        async with self.engine.begin() as conn:
            inserted = await conn.execute(
                insert_ignore(conn, deliveries).values(
                    run_id=run_id, step_id=step_id, item=item, state="claimed", claimed_at=now, detail={}
                )
            )
            if inserted.rowcount:
                return Claim.MINE, {}
            row = (await conn.execute(sa.select(deliveries).where(key))).one()
            if row.state == "sent":
                return Claim.SENT, dict(row.detail or {})
            if _utc(row.claimed_at) > now - lease:
                return Claim.BUSY, {}
            # The claimant went quiet for longer than a delivery takes: take over,
            # unless another taker was quicker.
            taken = await conn.execute(
                deliveries.update()
                .where(key & (deliveries.c.state == "claimed") & (deliveries.c.claimed_at == row.claimed_at))
                .values(claimed_at=now)
            )
            return (Claim.MINE if taken.rowcount else Claim.BUSY), {}

    async def sent(self, run_id: str, step_id: str, item: str, detail: dict[str, Any]) -> None:
        key = (
            (deliveries.c.run_id == run_id) & (deliveries.c.step_id == step_id) & (deliveries.c.item == item)
        )
        async with self.engine.begin() as conn:
            await conn.execute(
                deliveries.update().where(key).values(state="sent", sent_at=utcnow(), detail=detail)
            )

    async def release(self, run_id: str, step_id: str, item: str) -> None:
        """Give a claim back after a failed send, so the next attempt may send."""
        key = (
            (deliveries.c.run_id == run_id) & (deliveries.c.step_id == step_id) & (deliveries.c.item == item)
        )
        async with self.engine.begin() as conn:
            await conn.execute(deliveries.delete().where(key & (deliveries.c.state == "claimed")))
