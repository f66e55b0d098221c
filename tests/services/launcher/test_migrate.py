"""`adxflow migrate`, as installed: by hand, on the configured database, with --check."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import sqlalchemy as sa

from common.contracts.topology import Topology
from common.platform.broker.rabbitmq import RabbitBroker
from common.platform.database import connect
from common.platform.schema import head
from tests.e2e.test_processes import free_port

#: The console command, as installed here.
ADXFLOW = str(Path(sys.executable).with_name("adxflow"))


def environment(env: dict[str, str]) -> dict[str, str]:
    """Only the test's own settings: none of the environment's ADXFLOW_* variables."""
    inherited = {name: value for name, value in os.environ.items() if not name.startswith("ADXFLOW_")}
    return {**inherited, "ADXFLOW_LOG_LEVEL": "WARNING", **env}


async def adxflow(*argv: str, env: dict[str, str]) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        ADXFLOW,
        *argv,
        env=environment(env),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode is not None
    return process.returncode, stdout.decode(), stderr.decode()


async def _version(url: str) -> list[str]:
    engine = connect(url)
    try:
        async with engine.connect() as conn:
            return list((await conn.execute(sa.text("SELECT version_num FROM alembic_version"))).scalars())
    finally:
        await engine.dispose()


async def test_migrate_upgrades_the_sqlite_file_of_the_data_dir_and_check_says_so(tmp_path: Path) -> None:
    env = {"ADXFLOW_DATA_DIR": str(tmp_path / "data")}
    database = tmp_path / "data" / "history.db"

    code, out, err = await adxflow("migrate", "--check", env=env)
    assert (code, err) == (1, "")
    assert "schema empty" in out
    assert "pending 0001_baseline" in out
    assert f"pending {head()}" in out

    code, out, err = await adxflow("migrate", env=env)
    assert (code, err) == (0, "")
    assert str(database) in out
    assert f"migrated to {head()}" in out
    assert "applied 0001_baseline" in out
    assert await _version(f"sqlite+aiosqlite:///{database}") == [head()]

    code, out, _ = await adxflow("migrate", env=env)
    assert code == 0
    assert f"already at {head()}" in out
    code, out, _ = await adxflow("migrate", "--check", env=env)
    assert code == 0
    assert "pending" not in out


async def test_processes_migrating_one_new_sqlite_file_together_wait_for_one_another(tmp_path: Path) -> None:
    # Separate processes: only SQLite's own write lock (BEGIN IMMEDIATE) keeps them apart.
    env = {"ADXFLOW_DATA_DIR": str(tmp_path / "data")}
    results = await asyncio.gather(*(adxflow("migrate", env=env) for _ in range(3)))
    assert [(code, err) for code, _, err in results] == [(0, "")] * 3
    outs = [out for _, out, _ in results]
    assert sum("applied 0001_baseline" in out for out in outs) == 1
    assert sum(f"schema already at {head()}" in out for out in outs) == 2
    assert await _version(f"sqlite+aiosqlite:///{tmp_path / 'data' / 'history.db'}") == [head()]


@pytest.mark.postgres
async def test_migrate_honours_the_database_url_and_masks_its_password(postgres_url: str) -> None:
    # The server trusts local connections, so any password does; it must not be printed.
    url = postgres_url.replace("postgres@", "postgres:not-to-be-printed@", 1)
    code, out, err = await adxflow("migrate", env={"ADXFLOW_DATABASE_URL": url})
    assert (code, err) == (0, "")
    assert "applied 0002_sweep_indexes" in out
    assert "not-to-be-printed" not in out
    assert "***" in out
    assert await _version(postgres_url) == [head()]


async def test_migrate_refuses_an_unreachable_database_in_one_line() -> None:
    url = "postgresql+asyncpg://postgres:not-to-be-printed@127.0.0.1:1/adxflow"
    code, out, err = await adxflow("migrate", env={"ADXFLOW_DATABASE_URL": url})
    assert code == 2
    assert out == ""
    assert err.startswith("adxflow: migrate postgresql+asyncpg://postgres:***@127.0.0.1:1/adxflow: ")
    assert "not-to-be-printed" not in err
    assert len(err.splitlines()) == 1


@pytest.mark.rabbitmq
async def test_a_service_in_check_mode_starts_only_once_adxflow_migrate_has_run(
    tmp_path: Path, amqp_url: str, namespace: str, wait_until: Any
) -> None:
    port = free_port()
    env = {
        "ADXFLOW_DATA_DIR": str(tmp_path / "data"),
        "ADXFLOW_MIGRATE": "check",
        "ADXFLOW_AMQP_URL": amqp_url,
        "ADXFLOW_NAMESPACE": namespace,
        "ADXFLOW_HEALTH_PORT": str(port),
    }
    try:
        code, _, err = await adxflow("serve", "notifier", env=env)
        assert code == 2
        assert err.startswith("adxflow: the database's schema is empty")
        assert "Run `adxflow migrate`" in err
        assert "Traceback" not in err

        code, _, _ = await adxflow("migrate", env=env)
        assert code == 0
        process = await asyncio.create_subprocess_exec(
            ADXFLOW,
            "serve",
            "notifier",
            env=environment(env),
            stderr=asyncio.subprocess.PIPE,
        )
        try:
            async with aiohttp.ClientSession() as session:

                async def ready() -> bool:
                    assert process.returncode is None, "the notifier exited"
                    try:
                        async with session.get(f"http://127.0.0.1:{port}/readyz") as response:
                            return response.status == 200
                    except aiohttp.ClientError:
                        return False

                await wait_until(ready, timeout=60, what="the notifier to be ready")
            process.send_signal(signal.SIGTERM)
            _, stderr = await asyncio.wait_for(process.communicate(), 60)
            assert process.returncode == 0, stderr.decode()
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()
    finally:
        async with RabbitBroker(amqp_url, Topology(namespace), connection_name="migrate-cleanup") as broker:
            await broker.delete_topology()
