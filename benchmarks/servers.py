"""What a benchmark runs against: a fresh PostgreSQL database and RabbitMQ namespace, the
local Kusto endpoint in a process of its own, an SMTP server, and the five services each
as a separate ``adxflow serve`` process.

Run as a module, it serves one DuckDB file as a Kusto endpoint (read-only unless
``--writable``) and prints its URL: ``python -m benchmarks.servers kusto PATH [--writable]``.
"""

from __future__ import annotations

import argparse
import asyncio
import email.parser
import email.policy
import os
import signal
import socket
import sys
import threading
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from types import TracebackType
from typing import Self

import aiohttp
import asyncpg

from common.contracts.topology import Topology
from common.platform.broker.rabbitmq import RabbitBroker
from services.embedded.kusto.database import ensure_database
from services.embedded.kusto.endpoint import LocalKusto
from services.embedded.outbox import Outbox

AMQP_URL = os.environ.get("ADXFLOW_BENCH_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")
POSTGRES_DSN = os.environ.get("ADXFLOW_BENCH_POSTGRES_DSN", "postgresql://postgres@127.0.0.1:5432/postgres")
#: Sample databases built once and reused between runs (the folder is ignored by git).
CACHE = Path(__file__).resolve().parents[1] / ".adxflow" / "benchmarks"
#: The console script the containers run, from this interpreter's environment.
ADXFLOW = str(Path(sys.executable).with_name("adxflow"))
SERVICES = ("trigger", "query_worker", "render", "notifier", "history")
WORKERS = ("query_worker", "render", "notifier")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def unique(prefix: str) -> str:
    return f"{prefix}{uuid.uuid4().hex[:10]}"


def sample_database(rows: int | None = None) -> Path:
    """The sample StormEvents database with *rows* rows (the default count without), built once."""
    if rows is None:
        return ensure_database(CACHE / "samples")
    return ensure_database(CACHE / f"rows-{rows}", count=rows)


def clean_environment() -> dict[str, str]:
    """This process's environment without any ``ADXFLOW_*`` setting, so only what a benchmark sets counts."""
    return {key: value for key, value in os.environ.items() if not key.startswith("ADXFLOW_")}


@asynccontextmanager
async def fresh_database() -> AsyncIterator[str]:
    """A new PostgreSQL database, as an SQLAlchemy URL; dropped afterwards."""
    name = unique("adxflow_bench_")
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


@asynccontextmanager
async def fresh_namespace() -> AsyncIterator[str]:
    """A new RabbitMQ namespace; its exchanges and queues are deleted afterwards."""
    namespace = unique("adxflow-bench-")
    try:
        yield namespace
    finally:
        async with RabbitBroker(AMQP_URL, Topology(namespace), connection_name="bench-cleanup") as broker:
            await broker.delete_topology()


class ServerProcess:
    """A server in a process of its own that prints its URL as its first line; stopped with SIGTERM."""

    def __init__(self, what: str, *arguments: str, env: dict[str, str] | None = None) -> None:
        self.what = what
        self.arguments = arguments
        self.env = env
        self.url = ""
        self._process: asyncio.subprocess.Process | None = None

    async def __aenter__(self) -> Self:
        self._process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", *self.arguments, stdout=asyncio.subprocess.PIPE, env=self.env
        )
        assert self._process.stdout is not None
        line = await asyncio.wait_for(self._process.stdout.readline(), 60)
        if not line.startswith(b"http://"):
            await self.__aexit__(None, None, None)
            raise RuntimeError(f"{self.what} did not start: {line!r}")
        self.url = line.decode().strip()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        process, self._process = self._process, None
        if process is not None and process.returncode is None:
            process.send_signal(signal.SIGTERM)
            await process.wait()


class KustoEndpoint(ServerProcess):
    """The local Kusto endpoint over a DuckDB file, in a process of its own, read-only unless *writable*."""

    def __init__(self, database: Path, *, writable: bool = False) -> None:
        flags = ("--writable",) if writable else ()
        super().__init__(
            "the Kusto endpoint",
            "benchmarks.servers",
            "kusto",
            str(database),
            *flags,
            env=clean_environment(),
        )
        self.database = database

    @property
    def pid(self) -> int:
        assert self._process is not None, "the endpoint is not running"
        return self._process.pid


class Inbox:
    """The SMTP server every email goes to, with each email's arrival time by subject.

    The arrival time is the one the server stamped on the message as it arrived
    (the name of the file it wrote), on this machine's wall clock.
    """

    def __init__(self, directory: Path) -> None:
        self.outbox = Outbox(directory)
        self.arrivals: dict[str, float] = {}
        self._changed = asyncio.Condition()
        self._task: asyncio.Task[None] | None = None
        self._parser = email.parser.BytesHeaderParser(policy=email.policy.default)

    @property
    def port(self) -> int:
        return self.outbox.port

    async def __aenter__(self) -> Inbox:
        await self.outbox.start()
        self._task = asyncio.create_task(self._sort())
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        await self.outbox.close()

    async def _sort(self) -> None:
        while True:
            path = await self.outbox.wait_for_message(timeout=86_400)
            subject = str(self._parser.parsebytes(path.read_bytes())["Subject"])
            async with self._changed:
                self.arrivals[subject] = int(path.name.split("-", 1)[0]) / 1e9
                self._changed.notify_all()

    async def arrival(self, subject: str, timeout: float) -> float:
        """When the email with *subject* arrived, waiting up to *timeout* seconds for it."""
        async with asyncio.timeout(timeout), self._changed:
            await self._changed.wait_for(lambda: subject in self.arrivals)
        return self.arrivals[subject]

    async def at_least(self, prefix: str, count: int, timeout: float) -> dict[str, float]:
        """The arrivals whose subject starts with *prefix*, once there are *count* of them."""
        async with asyncio.timeout(timeout), self._changed:
            await self._changed.wait_for(lambda: len(self.subjects(prefix)) >= count)
        return self.subjects(prefix)

    def subjects(self, prefix: str) -> dict[str, float]:
        return {subject: at for subject, at in self.arrivals.items() if subject.startswith(prefix)}


class Services:
    """The five services, each an ``adxflow serve SERVICE`` process, as the containers run them."""

    def __init__(self, env: Mapping[str, str], log_dir: Path) -> None:
        self.trigger_url = f"http://127.0.0.1:{free_port()}"
        self.history_url = f"http://127.0.0.1:{free_port()}"
        self.env = {
            **env,
            "ADXFLOW_TRIGGER_PORT": self.trigger_url.rsplit(":", 1)[1],
            "ADXFLOW_HISTORY_PORT": self.history_url.rsplit(":", 1)[1],
        }
        self.log_dir = log_dir
        self.processes: dict[str, asyncio.subprocess.Process] = {}
        self.health_urls: dict[str, str] = {}

    async def start(self, services: tuple[str, ...] = SERVICES, timeout: float = 60) -> None:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        for service in services:
            env = dict(self.env)
            if service in WORKERS:
                port = free_port()
                env["ADXFLOW_HEALTH_PORT"] = str(port)
                self.health_urls[service] = f"http://127.0.0.1:{port}"
            with (self.log_dir / f"{service}.log").open("ab") as log:
                self.processes[service] = await asyncio.create_subprocess_exec(
                    ADXFLOW, "serve", service, env=env, stdout=log, stderr=log
                )
        urls = [url for url in (self.trigger_url, self.history_url) if self._serves(url, services)]
        urls += self.health_urls.values()
        async with aiohttp.ClientSession() as session:
            async with asyncio.timeout(timeout):
                while not await self._ready(session, urls):
                    for service, process in self.processes.items():
                        if process.returncode is not None:
                            log = (self.log_dir / f"{service}.log").read_text(errors="replace")
                            raise RuntimeError(f"{service} exited with {process.returncode}: {log[-2000:]}")
                    await asyncio.sleep(0.2)

    def _serves(self, url: str, services: tuple[str, ...]) -> bool:
        return ("trigger" in services and url == self.trigger_url) or (
            "history" in services and url == self.history_url
        )

    @staticmethod
    async def _ready(session: aiohttp.ClientSession, urls: list[str]) -> bool:
        try:
            for url in urls:
                async with session.get(f"{url}/readyz") as response:
                    if response.status != 200:
                        return False
        except aiohttp.ClientError:
            return False
        return True

    def pid(self, service: str) -> int:
        return self.processes[service].pid

    async def stop(self) -> None:
        for process in self.processes.values():
            if process.returncode is None:
                process.send_signal(signal.SIGTERM)
        for process in self.processes.values():
            try:
                await asyncio.wait_for(process.wait(), 30)
            except TimeoutError:
                process.kill()
                await process.wait()

    async def __aenter__(self) -> Services:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()


@asynccontextmanager
async def deployment(
    workdir: Path,
    kusto: KustoEndpoint,
    smtp_port: int,
    prepare: Callable[[str], Awaitable[None]] | None = None,
    **settings: str,
) -> AsyncIterator[Services]:
    """The five services on a fresh namespace and database, querying *kusto*, mailing to *smtp_port*.

    *prepare*, given the database's URL, runs before the services start (to leave an older schema there).
    """
    async with AsyncExitStack() as stack:
        namespace = await stack.enter_async_context(fresh_namespace())
        database_url = await stack.enter_async_context(fresh_database())
        if prepare is not None:
            await prepare(database_url)
        connections = workdir / "connections.yaml"
        connections.write_text(f'connections:\n  local: {{cluster: "{kusto.url}", auth: none}}\n')
        env = {
            **clean_environment(),
            "ADXFLOW_AMQP_URL": AMQP_URL,
            "ADXFLOW_NAMESPACE": namespace,
            "ADXFLOW_DATABASE_URL": database_url,
            "ADXFLOW_DATA_DIR": str(workdir / "data"),
            "ADXFLOW_CONNECTIONS_FILE": str(connections),
            "ADXFLOW_SMTP_PORT": str(smtp_port),
            "ADXFLOW_LOG_LEVEL": "WARNING",
            **{f"ADXFLOW_{key.upper()}": value for key, value in settings.items()},
        }
        services = await stack.enter_async_context(Services(env, workdir / "logs"))
        await services.start()
        yield services


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time process *pid* has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _serve_kusto(path: Path, *, writable: bool) -> None:
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    with LocalKusto(path, writable=writable) as kusto:
        print(kusto.url, flush=True)
        # Nobody reads further: DuckDB's progress bars must not fill the pipe and block the server.
        with open(os.devnull, "wb") as devnull:
            os.dup2(devnull.fileno(), sys.stdout.fileno())
        stop.wait()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.servers")
    commands = parser.add_subparsers(dest="command", required=True)
    kusto = commands.add_parser("kusto", help="serve a DuckDB file as a Kusto endpoint (read-only)")
    kusto.add_argument("path", type=Path)
    kusto.add_argument("--writable", action="store_true", help="run write commands and ingestion too")
    args = parser.parse_args()
    if args.command == "kusto":
        _serve_kusto(args.path, writable=args.writable)


if __name__ == "__main__":
    main()
