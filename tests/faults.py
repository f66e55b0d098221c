"""Injected faults for the supervision tests: a method that fails unexpectedly once, then works.

The real method stays what runs: the fault only raises on the first call and
holds the calls after it until the test releases them, so the test can look at
the loop while it is down, then let it recover.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from structlog.typing import EventDict


class Injected(RuntimeError):
    """The unexpected exception a test injects."""


class FailOnce:
    """An async method whose first call raises :class:`Injected`; later calls wait for :meth:`release`."""

    def __init__(self, method: Callable[..., Awaitable[Any]]) -> None:
        self.method = method
        self.calls = 0
        self.raised = asyncio.Event()
        self._released = asyncio.Event()

    def release(self) -> None:
        self._released.set()

    async def __call__(self, *args: Any, **kwargs: Any) -> Any:
        self.calls += 1
        if self.calls == 1:
            self.raised.set()
            raise Injected("injected failure")
        await self._released.wait()
        return await self.method(*args, **kwargs)


class ManualClock:
    """A monotonic clock that moves only when the test moves it."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def tracebacks_of(logs: list[EventDict], loop: str) -> list[EventDict]:
    """The error lines with a traceback that a supervised *loop* wrote about the injected failure."""
    return [
        entry
        for entry in logs
        if entry.get("loop") == loop and entry.get("log_level") == "error" and entry.get("exc_info")
    ]
