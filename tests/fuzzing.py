"""A live service for schemathesis, which sends its requests with a blocking client.

A blocking request from the test's thread would stall a service on the test's
own event loop, so the service runs on an event loop of its own in a
background thread, started once per module and stopped through an event.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterator
from contextlib import AbstractAsyncContextManager, contextmanager
from dataclasses import dataclass
from typing import Any

import requests
from hypothesis import HealthCheck, settings

#: Opens the service and yields its base URL; closes it when the block ends.
Serving = Callable[[], AbstractAsyncContextManager[str]]

#: Enough examples per operation to find what a malformed body does, quickly and the same on every run.
FUZZ_SETTINGS = settings(
    max_examples=30, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck)
)


class ServiceThread:
    """A service on an event loop in a thread of its own; a context manager that waits for it to start."""

    def __init__(self, serving: Serving, name: str) -> None:
        self._serving = serving
        self._name = name
        self._thread = threading.Thread(target=self._run, name=f"{name}-under-test")
        self._started = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._failure: Exception | None = None
        self.url = ""

    def _run(self) -> None:
        asyncio.run(self._serve())

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        try:
            async with self._serving() as url:
                self.url = url
                self._started.set()
                await self._stop.wait()
        except Exception as exc:
            # Handed to the test's thread, which raises it.
            self._failure = exc
        finally:
            self._started.set()

    def __enter__(self) -> ServiceThread:
        self._thread.start()
        if not self._started.wait(timeout=30):
            raise AssertionError(f"{self._name} did not start within 30 s")
        if self._failure is not None:
            raise AssertionError(f"{self._name} failed to start") from self._failure
        return self

    def __exit__(self, *exc: object) -> None:
        if self._loop is not None and self._stop is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(timeout=30)
        if self._thread.is_alive():
            raise AssertionError(f"{self._name} did not stop within 30 s")
        if self._failure is not None:
            raise AssertionError(f"{self._name} failed while serving") from self._failure


@dataclass
class Live:
    """A running service's base URL, and a session that keeps its connections open."""

    url: str
    session: requests.Session


@contextmanager
def live_service(serving: Serving, name: str) -> Iterator[Live]:
    with ServiceThread(serving, name) as service, requests.Session() as session:
        yield Live(service.url, session)


def loose_answers(document: dict[str, Any]) -> list[str]:
    """Where a JSON answer of *document* is an object that may hold keys its schema does not name.

    Schemathesis checks each answer against its schema; only a closed schema
    also catches a key the handler added without its model saying so.
    """
    schemas = document["components"]["schemas"]
    loose: set[str] = set()
    for path, item in document["paths"].items():
        for method, operation in item.items():
            for status, answer in operation["responses"].items():
                schema = answer.get("content", {}).get("application/json", {}).get("schema", {})
                for name in _open_objects(schema, schemas, set()):
                    loose.add(f"{method.upper()} {path} {status}: {name}")
    return sorted(loose)


def _open_objects(schema: Any, schemas: dict[str, Any], seen: set[str]) -> Iterator[str]:
    if isinstance(schema, list):
        for item in schema:
            yield from _open_objects(item, schemas, seen)
        return
    if not isinstance(schema, dict):
        return
    ref = schema.get("$ref")
    if isinstance(ref, str):
        name = ref.rsplit("/", 1)[-1]
        if name not in seen:
            seen.add(name)
            target = schemas[name]
            if "properties" in target and target.get("additionalProperties") is not False:
                yield name
            yield from _open_objects(target, schemas, seen)
        return
    for value in schema.values():
        yield from _open_objects(value, schemas, seen)
