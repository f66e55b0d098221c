"""A result over the row cap, read from an endpoint in another process, with
the worker's peak memory recorded in the test output (a figure, not a target:
the targets live in the benchmarks)."""

from __future__ import annotations

import asyncio
import socket
import sys
import tracemalloc
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from common.platform.connections import Connections
from services.embedded.kusto.database import ensure_database
from services.query_worker.kusto import KustoRunner

BIG = 'range i from 1 to 150000 step 1 | extend s = strcat("row-", tostring(i))'


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture
async def endpoint(tmp_path: Path, wait_until: Callable[..., Any]) -> AsyncIterator[str]:
    ensure_database(tmp_path, count=1000)
    port = free_port()
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "services.embedded.kusto.endpoint",
        "--data-dir",
        str(tmp_path),
        "--port",
        str(port),
        "--read-only",
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        async with aiohttp.ClientSession() as session:

            async def up() -> bool:
                try:
                    async with session.get(url) as response:
                        return response.status == 200
                except aiohttp.ClientError:
                    return False

            await wait_until(up, timeout=60, what="the local Kusto endpoint")
        yield url
    finally:
        process.terminate()
        await process.wait()


async def test_a_result_over_the_row_cap_is_cut_while_read(
    endpoint: str, record_property: Callable[[str, object], None]
) -> None:
    connections = Connections()
    connections.add_local("local", endpoint)
    kusto = KustoRunner(connections, timeout=120)
    tracemalloc.start()
    try:
        read = await kusto.run(
            connection="local",
            database="Samples",
            text=BIG,
            command=False,
            client_request_id="adxflow;memory",
            max_rows=100_000,
            max_bytes=64 * 2**20,
            truncate=True,
            head=50,
        )
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
        await kusto.close()

    assert read.truncated is True
    assert read.row_count == 100_000
    assert read.note is not None
    assert "100,000" in read.note
    peak_mb = round(peak / 2**20, 1)
    record_property("worker_peak_python_heap_mb", peak_mb)
    print(f"\nreading 150,000 rows capped at 100,000: worker peak Python heap {peak_mb} MB")
