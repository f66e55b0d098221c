"""The Kusto emulator's seed, proved on the local Kusto endpoint: the one-shot
container's exact command, run against an engine that starts as the emulator
does (one empty database, NetDefaultDB), builds the StormEvents table flows query."""

from __future__ import annotations

import asyncio
import sys
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import duckdb
import pytest
from azure.kusto.data import KustoConnectionStringBuilder
from azure.kusto.data.aio import KustoClient

from services.embedded.kusto.endpoint import LocalKusto
from services.embedded.kusto.seed import DEFAULT_DATABASE, SEED_ROWS, storm_events_script
from services.embedded.sample_data import STORM_EVENTS_COLUMNS, storm_events_rows
from tests.deploy.compose import ROOT, host_path, services
from tests.hidden_packages import hiding

SEED_SERVICE = "kusto-seed"
#: What the image lacks or the seed must not need: the engine and outbox of embedded mode, and duckdb-kql.
HIDDEN = ("duckdb", "duckdb_kql", "aiosmtpd")


def seed_command(cluster: str) -> list[str]:
    """The seed container's entrypoint and command, run here: this interpreter, the mounted
    script's file in the repository, and *cluster* in place of the emulator's URL."""
    service = services()[SEED_SERVICE]
    entrypoint, command = list(service["entrypoint"]), list(service["command"])
    assert entrypoint[0] == "python"
    command[command.index("--cluster") + 1] = cluster
    command[-1] = str(host_path(service, command[-1]))
    return [sys.executable, *entrypoint[1:], *command]


async def run_seed(cluster: str, env: dict[str, str] | None = None) -> str:
    process = await asyncio.create_subprocess_exec(
        *seed_command(cluster),
        cwd=ROOT,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await asyncio.wait_for(process.communicate(), 90)
    assert process.returncode == 0, stderr.decode()
    return stdout.decode()


def empty_engine(directory: Path) -> Path:
    """A DuckDB file named as the emulator's only database, with nothing in it."""
    path = directory / f"{DEFAULT_DATABASE}.duckdb"
    duckdb.connect(str(path)).close()
    return path


@pytest.fixture
async def kusto(tmp_path: Path) -> AsyncIterator[LocalKusto]:
    async with LocalKusto(empty_engine(tmp_path), writable=True) as endpoint:
        yield endpoint


async def query(client: KustoClient, database: str, text: str) -> list[list[Any]]:
    response = await client.execute(database, text)
    return [list(row) for row in response.primary_results[0].raw_rows]


def test_the_committed_script_is_what_the_generator_writes() -> None:
    service = services()[SEED_SERVICE]
    script = host_path(service, service["command"][-1])
    assert script.read_text(encoding="utf-8") == storm_events_script(SEED_ROWS)


@pytest.mark.timeout(180)
async def test_the_seed_container_builds_the_sample_table_once_however_often_it_runs(
    kusto: LocalKusto,
) -> None:
    command = services()[SEED_SERVICE]["command"]
    database = command[command.index("--database") + 1]
    rows = list(storm_events_rows(SEED_ROWS))

    output = await run_seed(kusto.url)
    assert ".set-or-replace StormEvents" in output
    # Run again, as `docker compose up` does each time: the rows are replaced, not added.
    await run_seed(kusto.url)

    kcsb = KustoConnectionStringBuilder.with_no_authentication(kusto.url)
    async with KustoClient(kcsb) as client:
        schema = await query(client, database, "StormEvents | getschema | project ColumnName, ColumnType")
        assert [tuple(column) for column in schema] == list(STORM_EVENTS_COLUMNS)
        assert await query(client, database, "StormEvents | count") == [[SEED_ROWS]]

        top = await query(
            client,
            database,
            "StormEvents | summarize Events = count() by State | order by Events desc, State asc | take 5",
        )
        by_state = Counter(row[4] for row in rows)
        assert top == [list(pair) for pair in sorted(by_state.items(), key=lambda p: (-p[1], p[0]))[:5]]

        damage = await query(client, database, "StormEvents | summarize sum(DamageProperty), max(BeginLat)")
        assert damage == [[sum(row[10] for row in rows), max(row[15] for row in rows)]]

        first = rows[0]
        (event,) = await query(
            client,
            database,
            f"StormEvents | where EventId == {first[3]}"
            " | project StartTime, Location = tostring(StormSummary.Details.Location), EventNarrative",
        )
        assert event[0].startswith(first[0].isoformat())
        assert event[1:] == [first[4], first[20]]


async def seed_module(*args: str, env: dict[str, str]) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "services.embedded.kusto.seed",
        *args,
        cwd=ROOT,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode is not None
    return process.returncode, stdout.decode(), stderr.decode()


@pytest.mark.timeout(180)
async def test_the_seed_writes_and_applies_its_script_with_duckdb_duckdb_kql_and_aiosmtpd_hidden(
    kusto: LocalKusto, tmp_path: Path
) -> None:
    env = hiding(tmp_path / "hidden", *HIDDEN)
    for package in HIDDEN:
        probe = await asyncio.create_subprocess_exec(
            sys.executable, "-c", f"import {package}", env=env, stderr=asyncio.subprocess.DEVNULL
        )
        assert await asyncio.wait_for(probe.wait(), 60) == 1, f"{package} is not hidden"

    code, stdout, stderr = await seed_module("--help", env=env)
    assert (code, stderr) == (0, "")
    assert "apply" in stdout
    assert "write" in stdout

    written = tmp_path / "storm-events.kql"
    code, _, stderr = await seed_module("write", str(written), env=env)
    assert (code, stderr) == (0, "")
    assert written.read_text(encoding="utf-8") == storm_events_script(SEED_ROWS)

    # The seed container's own command, against the local endpoint (which this process runs).
    output = await run_seed(kusto.url, env)
    assert ".set-or-replace StormEvents" in output
    command = services()[SEED_SERVICE]["command"]
    database = command[command.index("--database") + 1]
    kcsb = KustoConnectionStringBuilder.with_no_authentication(kusto.url)
    async with KustoClient(kcsb) as client:
        assert await query(client, database, "StormEvents | count") == [[SEED_ROWS]]
