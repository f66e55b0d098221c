"""The 'embedded' extra: embedded mode needs it and says so in one line; `adxflow serve` does not."""

from __future__ import annotations

import asyncio
import signal
import sys
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from common.contracts.topology import Topology
from common.platform.broker.rabbitmq import RabbitBroker
from tests.e2e.test_processes import free_port
from tests.hidden_packages import EMBEDDED_EXTRA, hiding

#: The console command, as installed here.
ADXFLOW = str(Path(sys.executable).with_name("adxflow"))
HINT = "adxflow: embedded mode needs the 'embedded' extra: pip install 'adxflow[embedded]'\n"


async def run(*argv: str, env: dict[str, str], cwd: Path) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        *argv, env=env, cwd=cwd, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    stdout, stderr = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode is not None
    return process.returncode, stdout.decode(), stderr.decode()


@pytest.fixture
def extra_hidden(tmp_path: Path) -> dict[str, str]:
    env = hiding(tmp_path / "hidden", *EMBEDDED_EXTRA)
    return {**env, "ADXFLOW_DATA_DIR": str(tmp_path / "data"), "ADXFLOW_LOG_LEVEL": "WARNING"}


@pytest.mark.parametrize("package", ["duckdb", "aiosmtpd.smtp"])
async def test_the_extra_is_unimportable_with_duckdb_and_aiosmtpd_hidden(
    tmp_path: Path, extra_hidden: dict[str, str], package: str
) -> None:
    code, _, stderr = await run(sys.executable, "-c", f"import {package}", env=extra_hidden, cwd=tmp_path)

    assert code == 1
    assert f"ModuleNotFoundError: No module named '{package.partition('.')[0]}'" in stderr


@pytest.mark.parametrize("command", [["up"], ["demo"], ["render-gallery", "gallery"]], ids=lambda c: c[0])
async def test_embedded_mode_says_how_to_install_the_extra_when_duckdb_and_aiosmtpd_are_hidden(
    tmp_path: Path, extra_hidden: dict[str, str], command: list[str]
) -> None:
    code, stdout, stderr = await run(ADXFLOW, *command, env=extra_hidden, cwd=tmp_path)

    assert (code, stdout, stderr) == (2, "", HINT)
    assert not (tmp_path / "gallery").exists()


#: Where each service, run alone, answers /readyz: its API, or a worker's health server.
READY_PORT = {
    "trigger": "ADXFLOW_TRIGGER_PORT",
    "history": "ADXFLOW_HISTORY_PORT",
    "query_worker": "ADXFLOW_HEALTH_PORT",
    "render": "ADXFLOW_HEALTH_PORT",
    "notifier": "ADXFLOW_HEALTH_PORT",
}


@pytest.mark.rabbitmq
@pytest.mark.parametrize("service", list(READY_PORT))
async def test_serve_runs_each_service_with_duckdb_and_aiosmtpd_hidden(
    tmp_path: Path,
    extra_hidden: dict[str, str],
    amqp_url: str,
    namespace: str,
    wait_until: Any,
    service: str,
) -> None:
    port = free_port()
    env = {**extra_hidden, "ADXFLOW_AMQP_URL": amqp_url, "ADXFLOW_NAMESPACE": namespace}
    env[READY_PORT[service]] = str(port)
    process = await asyncio.create_subprocess_exec(
        ADXFLOW, "serve", service, env=env, cwd=tmp_path, stderr=asyncio.subprocess.PIPE
    )
    try:
        async with aiohttp.ClientSession() as session:

            async def ready() -> bool:
                assert process.returncode is None, "the service exited"
                try:
                    async with session.get(f"http://127.0.0.1:{port}/readyz") as response:
                        return response.status == 200
                except aiohttp.ClientError:
                    return False

            await wait_until(ready, timeout=60, what=f"{service} to be ready")
        process.send_signal(signal.SIGTERM)
        _, stderr = await asyncio.wait_for(process.communicate(), 60)
        assert process.returncode == 0, stderr.decode()
        assert "Traceback" not in stderr.decode()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
        async with RabbitBroker(amqp_url, Topology(namespace), connection_name="extra-cleanup") as broker:
            await broker.delete_topology()
