"""The machine the figures were measured on: hardware, software, and how busy it was."""

from __future__ import annotations

import asyncio
import os
import platform
import resource
import sys
import time
from importlib import metadata
from pathlib import Path

import aio_pika
import asyncpg

#: How long the machine is watched, before the run, for work that is not the run's.
LOAD_SAMPLE_SECONDS = 3.0
#: The packages whose speed the figures depend on.
PACKAGES = (
    "azure-kusto-data",
    "aio-pika",
    "aiohttp",
    "aiosmtplib",
    "aiosmtpd",
    "asyncpg",
    "sqlalchemy",
    "pydantic",
    "pygal",
    "cairosvg",
    "duckdb",
    "duckdb-kql",
    "tsdownsample",
    "structlog",
)


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _memory() -> str:
    try:
        for line in Path("/proc/meminfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("MemTotal:"):
                return f"{int(line.split()[1]) / 2**20:.1f} GiB"
    except OSError:
        pass
    return "unknown"


def _cpu_times() -> tuple[int, int]:
    """(busy, total) jiffies of all cores since boot."""
    fields = [int(v) for v in Path("/proc/stat").read_text(encoding="utf-8").split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]
    return sum(fields) - idle, sum(fields)


async def background_load(seconds: float = LOAD_SAMPLE_SECONDS) -> float:
    """The fraction of all cores busy over *seconds* while this process only waits: other work."""
    busy, total = _cpu_times()
    await asyncio.sleep(seconds)
    busy2, total2 = _cpu_times()
    return (busy2 - busy) / max(total2 - total, 1)


async def server_versions(amqp_url: str, postgres_dsn: str) -> tuple[str, str]:
    connection = await aio_pika.connect(amqp_url)
    try:
        properties = connection.transport.connection.server_properties
        rabbitmq = f"{properties.get('product', 'RabbitMQ')} {properties.get('version', '?')}"
    finally:
        await connection.close()
    postgres = await asyncpg.connect(postgres_dsn)
    try:
        version = await postgres.fetchval("SHOW server_version")
    finally:
        await postgres.close()
    return rabbitmq, f"PostgreSQL {version}"


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


async def describe(amqp_url: str, postgres_dsn: str) -> list[tuple[str, str]]:
    rabbitmq, postgres = await server_versions(amqp_url, postgres_dsn)
    load = await background_load()
    one, five, fifteen = os.getloadavg()
    return [
        ("CPU", f"{os.cpu_count()} cores, {_cpu_model()}"),
        ("memory", _memory()),
        ("system", f"{platform.system()} {platform.release()} ({platform.machine()})"),
        ("Python", f"{platform.python_implementation()} {sys.version.split()[0]}"),
        ("broker", rabbitmq),
        ("database", postgres),
        ("packages", ", ".join(f"{name} {_version(name)}" for name in PACKAGES)),
        (
            "load before the run",
            f"{load:.0%} of all cores busy with other work over {LOAD_SAMPLE_SECONDS:g} s; "
            f"load average {one:.2f} / {five:.2f} / {fifteen:.2f}",
        ),
        ("started", time.strftime("%Y-%m-%d %H:%M:%S %Z")),
    ]


def load_after() -> tuple[str, str]:
    one, five, fifteen = os.getloadavg()
    return ("load average at the end", f"{one:.2f} / {five:.2f} / {fifteen:.2f}")


#: The servers' processes, whose work during the run is the run's own.
_SERVERS = frozenset({"beam.smp", "erl_child_setup", "epmd", "inet_gethost", "postgres"})


def _server_seconds() -> float:
    """CPU time of RabbitMQ's and PostgreSQL's processes, with their reaped children's."""
    ticks = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text(encoding="ascii", errors="replace")
        except OSError:
            continue  # gone meanwhile
        if text[text.find("(") + 1 : text.rfind(")")] in _SERVERS:
            ticks += sum(int(value) for value in text.rsplit(")", 1)[1].split()[11:15])
    return ticks / os.sysconf("SC_CLK_TCK")


def _own_seconds() -> float:
    """CPU time of this process and of every child process it waited for."""
    seconds = 0.0
    for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN):
        usage = resource.getrusage(who)
        seconds += usage.ru_utime + usage.ru_stime
    return seconds


class OtherWork:
    """How busy the machine was, during the run, with work that was not the run's."""

    def __init__(self) -> None:
        self._busy = _cpu_times()[0] / os.sysconf("SC_CLK_TCK")
        self._own = _own_seconds()
        self._servers = _server_seconds()
        self._started = time.monotonic()

    def row(self) -> tuple[str, str]:
        busy = _cpu_times()[0] / os.sysconf("SC_CLK_TCK") - self._busy
        own = _own_seconds() - self._own
        servers = _server_seconds() - self._servers
        other = max(0.0, busy - own - servers)
        capacity = (time.monotonic() - self._started) * (os.cpu_count() or 1)
        return (
            "other work during the run",
            f"{other / capacity:.0%} of all cores: CPU time of processes other than this run's, "
            f"RabbitMQ's and PostgreSQL's ({other:.0f} s of {capacity:.0f} core-seconds); "
            f"the run's own processes used {own:.0f} s, the two servers {servers:.0f} s",
        )
