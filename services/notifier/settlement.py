"""One delivery settled as a whole, whatever happens to the message that asked for it.

A delivery's claim, its send and the record of its outcome run in a task of
their own, shielded from the handler: a handler cancelled on the way (a
shutdown, a consumer cancelled because the broker connection dropped) never
leaves a claim committed without its outcome. What the cancellation changes
depends on how far the delivery got: until the send begins, the delivery
stops at the next step and gives its claim back at once (the redelivered
message may send without waiting for a lease); once the send has begun, it
runs to its end and is recorded, and the redelivered message finds it held,
then sent.

While a delivery holds its claim, the claim is renewed every third of the
lease (see :class:`~services.notifier.ledger.Hold`); a delivery that finds a
claim held by a live worker says so in the log and comes back when that lease
would run out.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import socket
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import structlog

from common.contracts.messages import utcnow
from common.platform.steps import StepPending
from services.notifier.ledger import Claim, Claimed, Hold, Key, Ledger

log = structlog.get_logger(__name__)

#: How a claimed delivery is made: with the claim held, and an event set once its message was taken away.
Deliver = Callable[[Hold, asyncio.Event], Awaitable[dict[str, Any]]]


class Stopped(Exception):
    """The message was taken away before the send began; the claim was given back."""


def check(stop: asyncio.Event) -> None:
    """Stop here if the message was taken away: nothing was sent yet."""
    if stop.is_set():
        raise Stopped


def holder_name() -> str:
    """Who holds a claim, for whoever finds it held: host, process and a tag of this worker."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


class Settlement:
    """Claims, makes and records deliveries in the *ledger*, each under a lease of *lease* seconds."""

    def __init__(self, ledger: Ledger, lease: float, *, holder: str | None = None) -> None:
        self.ledger = ledger
        self.lease = dt.timedelta(seconds=lease)
        self.holder = holder or holder_name()
        #: Deliveries still settling, their handlers gone or not.
        self._settling: set[asyncio.Task[dict[str, Any]]] = set()

    async def once(
        self, key: Key, deliver: Deliver, *, then: Callable[[], object] | None = None
    ) -> dict[str, Any]:
        """Deliver *key* with *deliver* unless it was delivered already; what the ledger keeps of it.

        *then* is called once the delivery has settled, however it ended. Raises StepPending
        while another live worker holds the claim.
        """
        stop = asyncio.Event()
        settling = asyncio.ensure_future(self._settle(key, deliver, stop))
        self._settling.add(settling)
        settling.add_done_callback(self._settling.discard)
        if then is not None:
            settling.add_done_callback(lambda _: then())
        try:
            return await asyncio.shield(settling)
        except asyncio.CancelledError:
            stop.set()
            settling.add_done_callback(_settled_late)
            raise

    async def settled(self, timeout: float) -> None:
        """Wait up to *timeout* seconds for deliveries whose handlers were cancelled to settle."""
        if self._settling:
            await asyncio.wait(set(self._settling), timeout=timeout)

    async def _settle(self, key: Key, deliver: Deliver, stop: asyncio.Event) -> dict[str, Any]:
        claimed = await self.ledger.claim(key, holder=self.holder, lease=self.lease)
        if claimed.claim is Claim.SENT:
            log.info("already delivered on an earlier delivery", item=key.item)
            return claimed.detail
        if claimed.claim is Claim.BUSY:
            raise self._waiting(key, claimed)
        async with Hold(self.ledger, key, claimed, every=self.lease.total_seconds() / 3) as hold:
            try:
                check(stop)
                return await deliver(hold, stop)
            except BaseException:
                if not hold.accepted:
                    # Nothing reached the receiver, or what may have is kept to be sent again as
                    # it is: the next delivery may go ahead now rather than after the lease.
                    await hold.release()
                raise

    def _waiting(self, key: Key, claimed: Claimed) -> StepPending:
        """Come back when the holder's lease runs out, unless the holder renews it meanwhile."""
        until = claimed.claimed_at + self.lease
        log.info(
            "delivery held by another worker; waiting out its lease",
            run_id=key.run_id,
            step_id=key.step_id,
            item=key.item,
            holder=claimed.detail.get("holder"),
            held_since=claimed.detail.get("since"),
            renewed_at=claimed.claimed_at.isoformat(),
            lease_until=until.isoformat(),
        )
        left = (until - utcnow()).total_seconds()
        return StepPending({"waiting_for": key.item}, delay=min(self.lease.total_seconds(), max(0.2, left)))


def _settled_late(settling: asyncio.Future[dict[str, Any]]) -> None:
    """How a delivery ended after its handler was cancelled: only the log hears of it."""
    if settling.cancelled():
        return
    failure = settling.exception()
    if failure is None:
        log.info("delivery settled after its message was taken away")
    elif isinstance(failure, Stopped):
        log.info("delivery stopped before sending, its message taken away; its claim was given back")
    elif isinstance(failure, StepPending):
        pass
    else:
        log.warning("delivery failed after its message was taken away", error=str(failure)[:500])
