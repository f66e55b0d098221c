"""Faults on the real servers: RabbitMQ restarts and PostgreSQL restarts while
jobs are in flight, and nothing is lost or sent twice. The servers are the ones every test
shares, so these run alone (``serial``)."""

from __future__ import annotations

import asyncio
import email
import email.policy
from typing import Any

import pytest

from tests.e2e.conftest import System

pytestmark = pytest.mark.serial

JOB: dict[str, Any] = {
    "connection": "local",
    "database": "Samples",
    "query": "StormEvents | summarize Events = count() by State | top 3 by Events",
    "email": {"to": ["team@example.com"], "subject": "Job"},
}


async def rabbitmqctl(*args: str) -> str:
    process = await asyncio.create_subprocess_exec(
        "rabbitmqctl", *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    stdout, stderr = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 0, stderr.decode()
    return stdout.decode()


@pytest.mark.rabbitmq
@pytest.mark.timeout(300)
@pytest.mark.parametrize("system", ["rabbitmq"], indirect=True)
async def test_a_broker_restart_with_200_jobs_in_flight_loses_no_run_and_sends_no_email_twice(
    system: System,
) -> None:
    jobs = [{**JOB, "email": {**JOB["email"], "subject": f"Job {index}"}} for index in range(200)]

    async def submit(job: dict[str, Any]) -> dict[str, Any] | None:
        async with system.session.post(f"{system.trigger_url}/v1/jobs", json=job) as response:
            if response.status == 202:
                body: dict[str, Any] = await response.json()
                return body
            # Refused while reconnecting: the client was told, nothing was accepted.
            assert response.status == 503
            return None

    first = await asyncio.gather(*(submit(job) for job in jobs[:100]))
    await system.smtp.wait_for_message(timeout=60)
    # RabbitMQ itself goes away and comes back, with its durable queues.
    await rabbitmqctl("stop_app")
    try:
        stopped = asyncio.gather(*(submit(job) for job in jobs[100:]))
    finally:
        await rabbitmqctl("start_app")
        await rabbitmqctl("await_startup")
    second = await stopped
    accepted = [body for body in [*first, *second] if body is not None]
    assert len(accepted) >= 100

    runs = [await system.finished(body["run_id"], timeout=240) for body in accepted]
    assert [run["status"] for run in runs] == ["succeeded"] * len(accepted)

    async def all_delivered() -> bool:
        return len(system.smtp.messages()) >= len(accepted)

    await system.wait_until(all_delivered, timeout=30, what="every email")
    messages = [
        email.message_from_bytes(path.read_bytes(), policy=email.policy.default)
        for path in system.smtp.messages()
    ]
    ids = [message["Message-ID"] for message in messages]
    assert len(ids) == len(set(ids)) == len(accepted)


async def pg_ctl(action: str) -> None:
    versions = await asyncio.create_subprocess_exec("ls", "/etc/postgresql", stdout=asyncio.subprocess.PIPE)
    version = (await versions.communicate())[0].decode().split()[0]
    process = await asyncio.create_subprocess_exec(
        "pg_ctlcluster",
        "--skip-systemctl-redirect",
        version,
        "main",
        action,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    _, stderr = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 0, stderr.decode()


@pytest.mark.rabbitmq
@pytest.mark.postgres
@pytest.mark.timeout(300)
@pytest.mark.parametrize("system", ["rabbitmq+postgres"], indirect=True)
async def test_a_postgres_restart_under_history_loses_no_status_event(system: System) -> None:
    jobs = [{**JOB, "email": {**JOB["email"], "subject": f"Job {index}"}} for index in range(40)]
    accepted = list(await asyncio.gather(*(system.submit(job) for job in jobs[:20])))
    await system.smtp.wait_for_message(timeout=60)
    await pg_ctl("restart")
    accepted += await asyncio.gather(*(system.submit(job) for job in jobs[20:]))

    runs = [await system.finished(body["run_id"], timeout=240) for body in accepted]
    assert [run["status"] for run in runs] == ["succeeded"] * len(accepted)
    for run in runs:
        latest = {step["step_id"]: step["status"] for step in run["steps"]}
        assert latest == dict.fromkeys(["trigger", "query", "query.render", "notify", "record"], "succeeded")

    async def all_delivered() -> bool:
        return len(system.smtp.messages()) >= len(accepted)

    await system.wait_until(all_delivered, timeout=30, what="every email")
    ids = [
        email.message_from_bytes(path.read_bytes(), policy=email.policy.default)["Message-ID"]
        for path in system.smtp.messages()
    ]
    assert len(ids) == len(set(ids)) == len(accepted)
