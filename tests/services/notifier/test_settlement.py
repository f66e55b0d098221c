"""A delivery's claim, send and record settle together, through the notifier and a real SMTP
relay: a reply lost after the data is followed by the very same bytes, a handler cancelled
before the send gives its claim back at once, one cancelled mid-send still records it, a
slow relay keeps its claim alive past the lease, and a held claim is waited out and logged."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from common.contracts.errors import DeliveryError
from common.contracts.messages import ErrorCode, RunMessage, StepOutput
from common.platform.steps import StepPending
from services.notifier.ledger import RELEASED, Claim, Key
from services.notifier.service import NotifyStep, kept_key
from tests.conftest import Waiter
from tests.relay import Relay
from tests.services.notifier.conftest import NotifierFactory, PausedAfterClaim


def key_of(run: RunMessage) -> Key:
    return Key(run.run_id, run.step_id, "once")


async def row_of(step: NotifyStep, run: RunMessage) -> dict[str, Any] | None:
    return await step.ledger.row(key_of(run))


async def test_a_reply_lost_after_the_data_is_followed_by_the_very_same_bytes(
    notifier: NotifierFactory,
) -> None:
    async with notifier() as n, Relay() as relay:
        step = n.step_to(relay.port)
        run = await n.mail_run()
        relay.hang_ups = 1
        with pytest.raises(DeliveryError) as caught:
            await step.perform(run)
        given_back = await row_of(step, run)
        output = await step.perform(run)
        sent = await row_of(step, run)
        kept = await n.runtime.blobs.get(output.artifacts["email"].key)

    assert caught.value.code is ErrorCode.SMTP_UNAVAILABLE
    assert caught.value.retryable is True
    # Given back at once, with the kept copy that may have reached the relay.
    assert given_back is not None
    assert given_back["state"] == "claimed"
    assert given_back["claimed_at"].replace(tzinfo=dt.UTC) == RELEASED
    assert given_back["detail"]["sending"]["handovers"] == 1
    first, second = relay.copies
    assert first == second
    assert relay.message_ids() == [f"<{run.run_id}.mail@adxflow>"] * 2
    assert kept.rstrip(b"\r\n") == first.rstrip(b"\r\n")
    assert sent is not None
    assert (sent["state"], sent["detail"]["handovers"]) == ("sent", 2)


async def test_a_handler_cancelled_after_its_claim_gives_it_back_at_once_and_sends_nothing(
    notifier: NotifierFactory, wait_until: Waiter
) -> None:
    async with notifier() as n, Relay() as relay:
        paused = PausedAfterClaim(n.runtime.settings.resolved_database_url)
        try:
            # A lease far longer than the test: a claim left to it would hold the next delivery.
            cancelled = n.step_to(relay.port, paused, delivery_lease_seconds=600)
            run = await n.mail_run()
            handler = asyncio.create_task(cancelled.perform(run))
            await asyncio.wait_for(paused.claimed.wait(), 10)
            assert (await row_of(cancelled, run)) is not None
            handler.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await handler
            paused.resume.set()

            async def given_back() -> bool:
                return await row_of(cancelled, run) is None

            await wait_until(given_back, timeout=10, what="the cancelled claim to be given back")
            await cancelled.settlement.settled(timeout=10)
            nothing_sent = list(relay.copies)
            output = await n.step_to(relay.port, delivery_lease_seconds=600).perform(run)
        finally:
            await paused.close()

    assert handler.cancelled()
    assert nothing_sent == []
    assert output.detail["deliveries"] == 1
    assert len(relay.copies) == 1


async def test_a_handler_cancelled_mid_send_still_records_the_email(
    notifier: NotifierFactory, wait_until: Waiter
) -> None:
    answer = asyncio.Event()

    async def held() -> None:
        await answer.wait()

    async with notifier() as n, Relay() as relay:
        step = n.step_to(relay.port)
        run = await n.mail_run()
        relay.before_reply = held
        handler = asyncio.create_task(step.perform(run))

        async def arrived() -> bool:
            return len(relay.copies) == 1

        await wait_until(arrived, timeout=10, what="the email at the relay")
        handler.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await handler
        answer.set()
        await step.settlement.settled(timeout=10)
        recorded = await row_of(step, run)
        # The redelivered message finds it sent.
        output = await step.perform(run)

    assert handler.cancelled()
    assert recorded is not None
    assert (recorded["state"], recorded["detail"]["handovers"]) == ("sent", 1)
    assert output.detail["deliveries"] == 1
    assert len(relay.copies) == 1


async def test_a_slow_relay_keeps_the_claim_alive_past_its_lease(
    notifier: NotifierFactory, wait_until: Waiter
) -> None:
    answer = asyncio.Event()

    async def held() -> None:
        await answer.wait()

    lease = 0.3
    async with notifier() as n, Relay() as relay:
        slow = n.step_to(relay.port, delivery_lease_seconds=lease)
        other = n.step_to(relay.port, delivery_lease_seconds=lease)
        run = await n.mail_run()
        relay.before_reply = held
        handler = asyncio.create_task(slow.perform(run))

        async def arrived() -> bool:
            return len(relay.copies) == 1

        await wait_until(arrived, timeout=10, what="the email at the relay")
        first = await row_of(slow, run)
        assert first is not None
        claimed_at = first["claimed_at"].replace(tzinfo=dt.UTC)

        async def renewed_past_a_lease() -> bool:
            row = await row_of(slow, run)
            assert row is not None
            return row["claimed_at"].replace(tzinfo=dt.UTC) > claimed_at + dt.timedelta(seconds=lease)

        await wait_until(renewed_past_a_lease, timeout=10, what="the claim renewed past its first lease")
        # Another delivery of the message finds the claim held, not abandoned.
        with pytest.raises(StepPending):
            await other.perform(run)
        answer.set()
        output = await handler

    assert output.detail["deliveries"] == 1
    assert len(relay.copies) == 1


async def test_a_claim_held_by_a_live_worker_is_waited_out_and_logged(notifier: NotifierFactory) -> None:
    async with notifier() as n, Relay() as relay:
        step = n.step_to(relay.port)
        run = await n.mail_run()
        held = await step.ledger.claim(key_of(run), holder="elsewhere:4711", lease=step.settlement.lease)
        assert held.claim is Claim.MINE
        with capture_logs() as logs, pytest.raises(StepPending) as waiting:
            await step.perform(run)

    [line] = [entry for entry in logs if entry["event"].startswith("delivery held by another worker")]
    assert (line["run_id"], line["step_id"], line["item"]) == (run.run_id, "mail", "once")
    assert line["holder"] == "elsewhere:4711"
    assert line["held_since"] == held.detail["since"]
    until = dt.datetime.fromisoformat(line["lease_until"])
    assert until == held.claimed_at + step.settlement.lease
    assert 0 < waiting.value.delay <= step.settlement.lease.total_seconds()
    assert waiting.value.state == {"waiting_for": "once"}
    assert relay.copies == []


async def test_an_email_the_ledger_could_not_record_is_not_sent_again(
    notifier: NotifierFactory, tmp_path: Path, wait_until: Waiter
) -> None:
    database = tmp_path / "history.db"

    def rename(old: str, new: str) -> None:
        with contextlib.closing(sqlite3.connect(database, timeout=30)) as conn:
            conn.execute(f"ALTER TABLE {old} RENAME TO {new}")
            conn.commit()

    async def ledger_away() -> None:
        # The relay has the data; the ledger goes away before the notifier hears the 250.
        await asyncio.to_thread(rename, "deliveries", "deliveries_away")

    async with notifier() as n, Relay() as relay:
        step = n.step_to(relay.port, delivery_lease_seconds=0.3)
        run = await n.mail_run()
        relay.before_reply = ledger_away
        with pytest.raises(Exception, match="deliveries"):
            await step.perform(run)
        relay.before_reply = None
        await asyncio.to_thread(rename, "deliveries_away", "deliveries")
        outputs: list[StepOutput] = []

        async def delivered() -> bool:
            try:
                outputs.append(await step.perform(run))
            except StepPending:
                return False
            return True

        await wait_until(delivered, timeout=10, what="the claim to be taken over")
        recorded = await row_of(step, run)
        receipt = await n.runtime.blobs.exists(kept_key(run.run_id, run.step_id, None, "receipt.json"))

    assert receipt is True
    assert len(relay.copies) == 1
    assert outputs[0].detail["deliveries"] == 1
    assert recorded is not None
    assert (recorded["state"], recorded["detail"]["handovers"]) == ("sent", 1)
