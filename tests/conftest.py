"""Shared fixtures: real servers, random names per test, cleanup afterwards.

RabbitMQ and PostgreSQL are the machine's own (started by scripts/test.sh when
they are not running); a test that needs one fails if it is unreachable rather
than passing without it.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path

import asyncpg
import pytest

from common.broker import Broker, InProcessBroker
from common.rabbitmq import RabbitBroker
from common.topology import Topology

AMQP_URL = os.environ.get("ADXFLOW_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")
POSTGRES_DSN = os.environ.get("ADXFLOW_TEST_POSTGRES_DSN", "postgresql://postgres@127.0.0.1:5432/postgres")


def random_name(prefix: str = "t") -> str:
    return f"{prefix}{uuid.uuid4().hex[:12]}"


@pytest.fixture
def namespace() -> str:
    return random_name("adxflow-test-")


@pytest.fixture
def amqp_url() -> str:
    return AMQP_URL


@pytest.fixture(params=["in_process", "rabbitmq"])
async def broker(request: pytest.FixtureRequest, namespace: str) -> AsyncIterator[Broker]:
    """The same behaviour tests run against both brokers."""
    topology = Topology(namespace)
    if request.param == "in_process":
        async with InProcessBroker(topology) as in_process:
            yield in_process
        return
    rabbit = RabbitBroker(AMQP_URL, topology, connection_name=request.node.name)
    await rabbit.start()
    try:
        yield rabbit
    finally:
        await rabbit.close()
        cleanup = RabbitBroker(AMQP_URL, topology, connection_name=f"{request.node.name}-cleanup")
        await cleanup.start()
        await cleanup.delete_topology()
        await cleanup.close()


@asynccontextmanager
async def _postgres_database() -> AsyncIterator[str]:
    """A fresh PostgreSQL database for one test, dropped afterwards."""
    name = random_name("adxflow_test_")
    admin = await asyncpg.connect(POSTGRES_DSN)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    base = POSTGRES_DSN.rsplit("/", 1)[0].replace("postgresql://", "postgresql+asyncpg://", 1)
    try:
        yield f"{base}/{name}"
    finally:
        admin = await asyncpg.connect(POSTGRES_DSN)
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()


@pytest.fixture
def postgres_database() -> Callable[[], AbstractAsyncContextManager[str]]:
    """A factory for fresh databases, for fixtures that choose their store themselves."""
    return _postgres_database


@pytest.fixture
async def postgres_url() -> AsyncIterator[str]:
    async with _postgres_database() as url:
        yield url


Waiter = Callable[..., Awaitable[None]]


async def _wait_until(
    predicate: Callable[[], Awaitable[bool]], timeout: float = 10.0, what: str = ""
) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not await predicate():
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what or predicate}")
        await asyncio.sleep(0.02)


@pytest.fixture
def wait_until() -> Waiter:
    """Poll an observable condition with a deadline (for state reached through a server)."""
    return _wait_until


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "adxflow"
