"""The README's main-job command, as a user runs it: `adxflow demo`."""

from __future__ import annotations

import asyncio
import email
import email.policy
import os
import sys
from pathlib import Path

import pytest

from common.contracts.topology import Topology
from common.platform.broker.rabbitmq import RabbitBroker


async def run_demo(tmp_path: Path, **env: str) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "services",
        "demo",
        cwd=tmp_path,
        env={**os.environ, "ADXFLOW_DATA_DIR": str(tmp_path / "data"), **env},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await asyncio.wait_for(process.communicate(), 120)
    assert process.returncode is not None
    return process.returncode, stdout.decode(), stderr.decode()


def check_output(code: int, stdout: str, stderr: str) -> None:
    assert code == 0, stderr
    lines = stdout.strip().splitlines()
    assert sum(line.startswith("run ") and " succeeded " in line for line in lines) == 2
    for service in ("trigger", "query_worker", "render", "notifier", "history"):
        timed = [line.split() for line in lines if line.startswith("  ") and " ms" in line]
        assert sum(fields[1] == service and fields[2] == "succeeded" for fields in timed) == 2, service
    last = Path(lines[-1])
    assert last.suffix == ".eml"
    message = email.message_from_bytes(last.read_bytes(), policy=email.policy.default)
    html = message.get_body(("html",))
    assert html is not None
    assert "<table" in html.get_content()
    inline = [p for p in message.walk() if p.get_content_type() == "image/png" and p["Content-ID"]]
    assert inline


async def test_demo_on_embedded_defaults(tmp_path: Path) -> None:
    check_output(*await run_demo(tmp_path))


@pytest.mark.rabbitmq
async def test_demo_through_rabbitmq(tmp_path: Path, amqp_url: str, namespace: str) -> None:
    try:
        check_output(*await run_demo(tmp_path, ADXFLOW_AMQP_URL=amqp_url, ADXFLOW_NAMESPACE=namespace))
    finally:
        async with RabbitBroker(amqp_url, Topology(namespace), connection_name="demo-cleanup") as broker:
            await broker.delete_topology()
