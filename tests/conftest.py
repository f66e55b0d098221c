"""Shared fixtures: real servers, random names per test, cleanup afterwards.

RabbitMQ, PostgreSQL and MariaDB are the machine's own (started by scripts/test.sh
when they are not running); a test that needs one fails if it is unreachable rather
than passing without it.
"""

from __future__ import annotations

import asyncio
import os
import urllib.error
import urllib.request
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import asyncmy
import asyncpg
import pytest
from sqlalchemy.engine import make_url

from common.contracts.topology import Topology
from common.platform.broker.interface import Broker
from common.platform.broker.memory import InProcessBroker
from common.platform.broker.rabbitmq import RabbitBroker
from tests.blob_backends import Backend, blob_backend

AMQP_URL = os.environ.get("ADXFLOW_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")
POSTGRES_DSN = os.environ.get("ADXFLOW_TEST_POSTGRES_DSN", "postgresql://postgres@127.0.0.1:5432/postgres")
#: The test user scripts/test.sh creates, which may create and drop databases.
MARIADB_URL = os.environ.get(
    "ADXFLOW_TEST_MARIADB_URL", "mysql+asyncmy://adxflow_test:adxflow_test@127.0.0.1:3306"
)
AZURITE_BLOB_ENDPOINT = os.environ.get(
    "ADXFLOW_TEST_AZURITE_BLOB_ENDPOINT", "http://127.0.0.1:10000/devstoreaccount1"
)
#: Azurite's one built-in account; its key is public, published in Azurite's documentation.
AZURITE_ACCOUNT = "devstoreaccount1"
AZURITE_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
AZURITE_START = (
    ".tools/node_modules/.bin/azurite-blob --blobHost 127.0.0.1 --blobPort 10000 "
    "--loose --skipApiVersionCheck --inMemoryPersistence --disableTelemetry &"
)


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


@asynccontextmanager
async def _mariadb_database() -> AsyncIterator[str]:
    """A fresh MariaDB database for one test (its SQLAlchemy URL, password and all), dropped afterwards."""
    name = random_name("adxflow_test_")
    server = make_url(MARIADB_URL)

    async def admin(statement: str) -> None:
        connection = await asyncmy.connect(
            host=server.host, port=server.port or 3306, user=server.username, password=server.password or ""
        )
        try:
            async with connection.cursor() as cursor:
                await cursor.execute(statement)
        finally:
            await connection.ensure_closed()

    await admin(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4")
    try:
        yield server.set(database=name).render_as_string(hide_password=False)
    finally:
        await admin(f"DROP DATABASE IF EXISTS `{name}`")


@pytest.fixture
def mariadb_database() -> Callable[[], AbstractAsyncContextManager[str]]:
    """A factory for fresh MariaDB databases, as `postgres_database` is for PostgreSQL."""
    return _mariadb_database


@dataclass(frozen=True)
class Azurite:
    """Where Azurite's blob service answers, and the connection string of its account there."""

    blob_endpoint: str
    connection_string: str


def _server_of(url: str) -> str:
    """The ``Server`` header of whatever answers at *url*; OSError if nothing does."""
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return str(response.headers.get("Server", ""))
    except urllib.error.HTTPError as refused:
        # Unsigned, the request is refused; that it is answered is what matters.
        with refused:
            return str(refused.headers.get("Server", ""))


@pytest.fixture(scope="session")
def azurite() -> Azurite:
    """The Azurite blob emulator (scripts/test.sh starts it); fails, naming the command, if it is away."""
    try:
        served_by: str | None = _server_of(f"{AZURITE_BLOB_ENDPOINT}?comp=list")
    except OSError as exc:
        served_by, reason = None, str(exc)
    if served_by is None:
        pytest.fail(
            f"Azurite is not reachable at {AZURITE_BLOB_ENDPOINT} ({reason}); run scripts/test.sh, "
            f"or start it with: {AZURITE_START}"
        )
    if "Azurite" not in served_by:
        pytest.fail(f"{AZURITE_BLOB_ENDPOINT} answers, but not as Azurite (Server: {served_by!r})")
    connection_string = (
        f"DefaultEndpointsProtocol=http;AccountName={AZURITE_ACCOUNT};AccountKey={AZURITE_KEY};"
        f"BlobEndpoint={AZURITE_BLOB_ENDPOINT};"
    )
    return Azurite(AZURITE_BLOB_ENDPOINT, connection_string)


@pytest.fixture(params=["folder", pytest.param("azure", marks=pytest.mark.azurite)])
async def blobs(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Backend]:
    """The same blob store behaviour tests run against the folder store and Azure Blob Storage."""
    connection_string = (
        request.getfixturevalue("azurite").connection_string if request.param == "azure" else None
    )
    async with blob_backend(request.param, tmp_path / "blobs", connection_string) as backend:
        yield backend


Waiter = Callable[..., Awaitable[None]]


async def poll_until(predicate: Callable[[], Awaitable[bool]], timeout: float = 10.0, what: str = "") -> None:
    """Ask *predicate* every 20 ms until it holds; an AssertionError naming *what* after *timeout* s."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not await predicate():
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what or predicate}")
        await asyncio.sleep(0.02)


@pytest.fixture
def wait_until() -> Waiter:
    """Poll an observable condition with a deadline (for state reached through a server)."""
    return poll_until


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "adxflow"
