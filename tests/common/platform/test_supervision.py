"""Supervised loops: started again after an unexpected exception, and not ready while they do not tick."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest
from structlog.testing import capture_logs

from common.contracts.errors import DeadLetter, Requeue
from common.platform.broker.interface import Delivery
from common.platform.http import HttpServer, NotReady, health_app
from common.platform.supervision import STALE_AFTER, Backoff, Loops
from tests.conftest import poll_until
from tests.faults import FailOnce, Injected, ManualClock, tracebacks_of

QUICK = Backoff(base=0.001, cap=0.004)


def test_backoff_doubles_up_to_its_cap() -> None:
    backoff = Backoff(base=1.0, cap=10.0)
    assert [backoff.delay(failures) for failures in range(1, 7)] == [1.0, 2.0, 4.0, 8.0, 10.0, 10.0]


async def test_a_loop_that_raises_is_logged_started_again_and_stale_until_it_ticks_again() -> None:
    clock = ManualClock()
    loops = Loops(clock)
    loop = loops.loop("sweeper", 10.0, backoff=QUICK)
    done: list[int] = []

    async def work() -> None:
        done.append(len(done))

    tick = FailOnce(work)
    stop = asyncio.Event()
    with capture_logs() as logs:
        running = asyncio.create_task(loop.every(tick, stop))
        try:
            await asyncio.wait_for(tick.raised.wait(), 5)
            await poll_until(lambda: _true(tick.calls >= 2), what="the loop to be started again")
            assert await loops.check()
            clock.advance(STALE_AFTER * 10.0 + 1)
            stale = r"sweeper has not ticked for 31 s \(every 10 s\); failing: Injected"
            with pytest.raises(NotReady, match=stale):
                await loops.check()
            tick.release()
            await poll_until(lambda: _true(bool(done)), what="the loop to do its work")
            assert await loops.check()
        finally:
            stop.set()
            await asyncio.wait_for(running, 5)
    [logged] = tracebacks_of(logs, "sweeper")
    assert logged["event"] == "loop failed; starting it again"
    assert loop.failures == 0


async def test_readiness_names_a_stale_loop_and_how_long_it_has_not_ticked() -> None:
    clock = ManualClock()
    loops = Loops(clock)
    loops.loop("retention", 60.0)
    app = health_app({"loops": loops.check}, None)
    async with HttpServer(app, "127.0.0.1", 0) as server, aiohttp.ClientSession() as session:
        async with session.get(f"{server.url}/readyz") as response:
            assert (response.status, await response.json()) == (
                200,
                {"ready": True, "checks": {"loops": True}},
            )
        clock.advance(181)
        async with session.get(f"{server.url}/readyz") as response:
            assert response.status == 503
            assert await response.json() == {
                "ready": False,
                "checks": {"loops": False},
                "reasons": {"loops": "retention has not ticked for 181 s (every 60 s)"},
            }


async def test_a_supervised_handler_tries_a_failing_message_again_and_is_not_ready_meanwhile() -> None:
    loops = Loops(ManualClock())
    consumer = loops.consumer("chainer", backoff=QUICK)
    handled: list[bytes] = []

    async def handle(delivery: Delivery) -> None:
        handled.append(delivery.body)

    faulty = FailOnce(handle)
    supervised = consumer.handler(faulty)
    with capture_logs() as logs:
        handling = asyncio.create_task(supervised(Delivery(b"m", "run.completed")))
        await asyncio.wait_for(faulty.raised.wait(), 5)
        await poll_until(lambda: _true(faulty.calls >= 2), what="the message to be tried again")
        with pytest.raises(NotReady, match="chainer has been failing for 0 s: Injected: injected failure"):
            await loops.check()
        faulty.release()
        await asyncio.wait_for(handling, 5)
    assert handled == [b"m"]
    assert await loops.check()
    assert [entry["event"] for entry in tracebacks_of(logs, "chainer")] == [
        "handler failed; trying the message again"
    ]


async def test_a_supervised_handler_gives_a_message_back_after_its_tries_and_passes_dead_letters_on() -> None:
    consumer = Loops().consumer("chainer", backoff=QUICK)

    async def always_fails(delivery: Delivery) -> None:
        raise Injected("still broken")

    async def refuses(delivery: Delivery) -> None:
        raise DeadLetter

    with pytest.raises(Requeue):
        await consumer.handler(always_fails, tries=3)(Delivery(b"m", "run.completed"))
    assert consumer.failures == 3
    with pytest.raises(DeadLetter):
        await consumer.handler(refuses)(Delivery(b"m", "run.completed"))


async def _true(value: bool) -> bool:
    return value
