"""Supervised loops: the work a service does on its own, besides consuming queues.

The scheduler, the stall watcher and retention are loops. Each runs under a
:class:`Loop`: an unexpected exception (a bug, an error nobody classified) is
logged with its traceback and the loop starts again after an exponential
backoff (capped), instead of ending silently and leaving the service up but
doing nothing. Every good tick is recorded (monotonic time, and the
``adxflow_loop_ticks_total`` metric); readiness fails, naming the loop and how
long ago it last ticked, once a loop has gone :data:`STALE_AFTER` of its
intervals without a good tick, whether it is crashing, stuck or failing on an
outage it catches itself.

A consumer is not a loop: it has no interval to miss. The chainer (the
trigger's consumer of ended runs) is supervised as a consumer
(:meth:`Loop.handler`): an unexpected exception in its handler is logged with
its traceback and the same message is tried again in place with the same
backoff, a few times, then given back to the broker (whose delivery limit
dead-letters it, kept for replay, rather than losing it). While the handler
fails, readiness names it and since when; its next success clears that. The
``consumers`` check already says whether its queue is attached.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import structlog

from common.contracts.errors import DeadLetter, Requeue
from common.platform import metrics
from common.platform.broker.interface import Delivery, Handler
from common.platform.http import NotReady

log = structlog.get_logger(__name__)

#: A loop is stale once this many of its intervals passed without a good tick.
STALE_AFTER = 3
#: Tries of one message by a supervised handler before it goes back to the broker.
HANDLER_TRIES = 5


@dataclass(frozen=True)
class Backoff:
    """Exponential backoff after consecutive failures: *base* × 2^(failures−1), capped at *cap*."""

    base: float = 1.0
    cap: float = 60.0

    def delay(self, failures: int) -> float:
        return min(self.cap, self.base * 2 ** max(0, failures - 1))


async def _wait(stop: asyncio.Event | None, seconds: float) -> None:
    """Wait *seconds*, or less if *stop* is set meanwhile."""
    if stop is None:
        await asyncio.sleep(seconds)
        return
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)


class Loop:
    """One supervised loop: its name, its interval, and when it last ticked well."""

    def __init__(
        self,
        name: str,
        interval: float,
        *,
        backoff: Backoff | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.name = name
        self.interval = interval
        self.backoff = backoff or Backoff(cap=max(1.0, min(60.0, interval)))
        self._clock = clock
        #: A loop counts as having ticked when it starts, so a fresh one is not stale.
        self.last_tick = clock()
        #: Failures since the last good tick, and when the first of them happened.
        self.failures = 0
        self.failing_since: float | None = None
        self.error: str | None = None

    def ticked(self) -> None:
        """Record a good tick: the loop did its work."""
        self.last_tick = self._clock()
        self.failures = 0
        self.failing_since = None
        self.error = None
        metrics.LOOP_TICKS.labels(self.name).inc()

    def failed(self, exc: BaseException) -> float:
        """Record an unexpected failure; how long to wait before trying again."""
        self.failures += 1
        if self.failing_since is None:
            self.failing_since = self._clock()
        self.error = f"{type(exc).__name__}: {exc}"[:300]
        metrics.LOOP_FAILURES.labels(self.name).inc()
        return self.backoff.delay(self.failures)

    def problem(self) -> str | None:
        """Why this loop is not healthy now; None when it is."""
        now = self._clock()
        since = now - self.last_tick
        if since > STALE_AFTER * self.interval:
            failing = f"; failing: {self.error}" if self.error else ""
            return f"{self.name} has not ticked for {since:.0f} s (every {self.interval:g} s){failing}"
        return None

    async def run(self, body: Callable[[], Awaitable[None]], stop: asyncio.Event) -> None:
        """Run *body* until *stop* is set, starting it again after an unexpected exception.

        *body* is the loop itself: it returns once *stop* is set and calls
        :meth:`ticked` after each round of work that went well.
        """
        while not stop.is_set():
            try:
                await body()
            except Exception as exc:
                delay = self.failed(exc)
                log.exception("loop failed; starting it again", loop=self.name, retry_in=delay)
                await _wait(stop, delay)

    async def every(self, tick: Callable[[], Awaitable[object]], stop: asyncio.Event) -> None:
        """Run *tick* every interval until *stop* is set, supervised (see :meth:`run`).

        *tick* catches the failures it expects (an outage) and answers False
        for a round that did not do its work; anything else counts as a good tick.
        """

        async def body() -> None:
            while not stop.is_set():
                if await tick() is not False:
                    self.ticked()
                await _wait(stop, self.interval)

        await self.run(body, stop)

    def handler(self, handle: Handler, *, tries: int = HANDLER_TRIES) -> Handler:
        """*handle*, supervised as a consumer: see the module's docstring."""

        async def supervised(delivery: Delivery) -> None:
            for attempt in range(1, tries + 1):
                try:
                    await handle(delivery)
                except (DeadLetter, Requeue):
                    raise
                except Exception as exc:
                    delay = self.failed(exc)
                    if attempt == tries:
                        log.exception("handler failed; the message goes back to the queue", loop=self.name)
                        raise Requeue from exc
                    log.exception("handler failed; trying the message again", loop=self.name, retry_in=delay)
                    await _wait(None, delay)
                else:
                    self.ticked()
                    return

        return supervised

    def handler_problem(self) -> str | None:
        """Why this consumer is not healthy now: it is failing; None when it is not."""
        if self.failing_since is None:
            return None
        since = self._clock() - self.failing_since
        return f"{self.name} has been failing for {since:.0f} s: {self.error}"


class Loops:
    """The supervised loops and consumers of a process, for its readiness."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._loops: dict[str, Loop] = {}
        self._consumers: dict[str, Loop] = {}

    def loop(self, name: str, interval: float, *, backoff: Backoff | None = None) -> Loop:
        """A loop of this process, ticking every *interval* seconds."""
        self._loops[name] = Loop(name, interval, backoff=backoff, clock=self.clock)
        return self._loops[name]

    def consumer(self, name: str, *, backoff: Backoff | None = None) -> Loop:
        """A supervised consumer of this process (see :meth:`Loop.handler`)."""
        self._consumers[name] = Loop(name, float("inf"), backoff=backoff or Backoff(), clock=self.clock)
        return self._consumers[name]

    def __bool__(self) -> bool:
        return bool(self._loops or self._consumers)

    def problems(self) -> list[str]:
        found = [loop.problem() for loop in self._loops.values()]
        found += [consumer.handler_problem() for consumer in self._consumers.values()]
        return [problem for problem in found if problem is not None]

    async def check(self) -> bool:
        """The readiness check: every loop ticked lately and no consumer is failing."""
        if problems := self.problems():
            raise NotReady("; ".join(problems))
        return True
