"""The delivery ledger's claims as leases, on SQLite and PostgreSQL: renewed by a live holder,
taken over from a silent one, given back at once, and never overwritten by a holder that lost them."""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from pathlib import Path

import pytest

from common.contracts.messages import utcnow
from services.notifier.ledger import RELEASED, Claim, Hold, Key, Ledger
from tests.conftest import Waiter

LEASE = dt.timedelta(seconds=10)


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def ledger(
    request: pytest.FixtureRequest,
    tmp_path: Path,
    postgres_database: Callable[[], AbstractAsyncContextManager[str]],
) -> AsyncIterator[Ledger]:
    if request.param == "sqlite":
        store = Ledger(f"sqlite+aiosqlite:///{tmp_path / 'ledger.db'}")
        await store.ensure_schema()
        try:
            yield store
        finally:
            await store.close()
        return
    async with postgres_database() as url:
        store = Ledger(url)
        await store.ensure_schema()
        try:
            yield store
        finally:
            await store.close()


KEY = Key("run-1", "notify", "once")


async def test_a_new_claim_is_mine_and_says_who_holds_it_since_when(ledger: Ledger) -> None:
    now = utcnow()
    claimed = await ledger.claim(KEY, holder="a", lease=LEASE, now=now)

    assert claimed.claim is Claim.MINE
    assert claimed.taken_over is False
    assert claimed.detail == {"holder": "a", "since": now.isoformat()}
    row = await ledger.row(KEY)
    assert row is not None
    assert (row["state"], row["detail"]) == ("claimed", claimed.detail)


async def test_a_claim_within_its_lease_is_busy_with_its_holder(ledger: Ledger) -> None:
    now = utcnow()
    await ledger.claim(KEY, holder="a", lease=LEASE, now=now)
    found = await ledger.claim(KEY, holder="b", lease=LEASE, now=now + LEASE - dt.timedelta(seconds=1))

    assert found.claim is Claim.BUSY
    assert found.detail["holder"] == "a"
    assert found.claimed_at == now


async def test_a_renewed_claim_outlives_its_first_lease_and_a_silent_one_is_taken_over(
    ledger: Ledger,
) -> None:
    start = utcnow()
    mine = await ledger.claim(KEY, holder="a", lease=LEASE, now=start)
    renewed = await ledger.renew(KEY, mine.claimed_at, now=start + LEASE / 2)
    assert renewed == start + LEASE / 2

    past_the_first = start + LEASE + dt.timedelta(seconds=1)
    assert (await ledger.claim(KEY, holder="b", lease=LEASE, now=past_the_first)).claim is Claim.BUSY

    past_the_renewal = renewed + LEASE + dt.timedelta(seconds=1)
    taken = await ledger.claim(KEY, holder="b", lease=LEASE, now=past_the_renewal)
    assert taken.claim is Claim.MINE
    assert taken.taken_over is True
    assert taken.detail["holder"] == "b"
    # The first holder comes back: its token no longer holds, so it learns that it lost the claim.
    assert await ledger.renew(KEY, renewed) is None
    row = await ledger.row(KEY)
    assert row is not None
    assert row["detail"]["holder"] == "b"


async def test_two_takers_of_one_abandoned_claim_get_it_once(ledger: Ledger) -> None:
    start = utcnow()
    await ledger.claim(KEY, holder="dead", lease=LEASE, now=start)
    later = start + LEASE * 2
    first = await ledger.claim(KEY, holder="b", lease=LEASE, now=later)
    second = await ledger.claim(KEY, holder="c", lease=LEASE, now=later)

    assert (first.claim, second.claim) == (Claim.MINE, Claim.BUSY)


async def test_a_claim_given_back_with_nothing_kept_is_gone(ledger: Ledger) -> None:
    mine = await ledger.claim(KEY, holder="a", lease=LEASE)
    await ledger.release(KEY, mine.claimed_at, keep=False)

    assert await ledger.row(KEY) is None
    again = await ledger.claim(KEY, holder="b", lease=LEASE)
    assert (again.claim, again.taken_over) == (Claim.MINE, False)


async def test_a_claim_given_back_with_a_kept_copy_is_taken_at_once_with_it(ledger: Ledger) -> None:
    mine = await ledger.claim(KEY, holder="a", lease=LEASE)
    sending = {"email": {"key": "runs/run-1/notify/kept/once.eml"}, "handovers": 1}
    token = await ledger.renew(KEY, mine.claimed_at, detail={**mine.detail, "sending": sending})
    assert token is not None
    await ledger.release(KEY, token, keep=True)

    row = await ledger.row(KEY)
    assert row is not None
    assert row["claimed_at"].replace(tzinfo=dt.UTC) == RELEASED
    # Well within any lease of the first holder: given back, it is taken at once, with what it kept.
    again = await ledger.claim(KEY, holder="b", lease=LEASE)
    assert (again.claim, again.taken_over) == (Claim.MINE, True)
    assert again.detail["sending"] == sending


async def test_a_holder_that_lost_its_claim_neither_gives_it_back_nor_renews_it(ledger: Ledger) -> None:
    start = utcnow()
    old = await ledger.claim(KEY, holder="a", lease=LEASE, now=start)
    new = await ledger.claim(KEY, holder="b", lease=LEASE, now=start + LEASE * 2)
    assert new.claim is Claim.MINE

    await ledger.release(KEY, old.claimed_at, keep=False)
    assert await ledger.renew(KEY, old.claimed_at) is None
    row = await ledger.row(KEY)
    assert row is not None
    assert (row["state"], row["detail"]["holder"]) == ("claimed", "b")


async def test_a_sent_delivery_stays_sent_with_what_was_recorded(ledger: Ledger) -> None:
    mine = await ledger.claim(KEY, holder="a", lease=LEASE)
    await ledger.sent(KEY, {"status": 202})
    # A renewal that comes late does not reopen it.
    assert await ledger.renew(KEY, mine.claimed_at) is None

    found = await ledger.claim(KEY, holder="b", lease=LEASE, now=utcnow() + LEASE * 10)
    assert (found.claim, found.detail) == (Claim.SENT, {"status": 202})


async def test_a_hold_renews_its_claim_by_itself_until_it_is_recorded(
    ledger: Ledger, wait_until: Waiter
) -> None:
    mine = await ledger.claim(KEY, holder="a", lease=LEASE)
    async with Hold(ledger, KEY, mine, every=0.05) as hold:

        async def renewed() -> bool:
            row = await ledger.row(KEY)
            return row is not None and row["claimed_at"].replace(tzinfo=dt.UTC) > mine.claimed_at

        await wait_until(renewed, timeout=10, what="the hold to renew its claim")
        # A whole lease after the claim was made, the renewed claim is still held.
        seen = await ledger.claim(KEY, holder="b", lease=LEASE, now=mine.claimed_at + LEASE)
        assert seen.claim is Claim.BUSY
        await hold.sent({"status": 200})
        assert await hold.renew() is False

    row = await ledger.row(KEY)
    assert row is not None
    assert (row["state"], row["detail"]) == ("sent", {"status": 200})


async def test_a_hold_that_lost_its_claim_says_so_and_writes_nothing(ledger: Ledger) -> None:
    start = utcnow()
    mine = await ledger.claim(KEY, holder="a", lease=LEASE, now=start)
    hold = Hold(ledger, KEY, mine, every=60)
    taken = await ledger.claim(KEY, holder="b", lease=LEASE, now=start + LEASE * 2)
    assert taken.claim is Claim.MINE

    assert await hold.renew({"sending": {"handovers": 1}}) is False
    assert hold.lost is True
    await hold.release()
    row = await ledger.row(KEY)
    assert row is not None
    assert "sending" not in row["detail"]
    assert row["detail"]["holder"] == "b"
