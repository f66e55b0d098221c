"""Alerts on RabbitMQ and PostgreSQL with trigger processes killed and replicated: two replicas
evaluating one alert at once tell each change once, a replica killed with evaluations in hand
leaves them to the other, and a pending alert counts on across a trigger killed between its
evaluations or after one, before its message was acknowledged.

Evaluations are made to overlap, and a kill to land inside one, by holding the alert's row lock
from the test: an evaluation waits on it, in PostgreSQL where the test can see it wait."""

from __future__ import annotations

import signal
import urllib.parse
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest

from tests.conftest import Waiter
from tests.e2e.conftest import Hooks, System
from tests.e2e.test_alerts import ALERT_FLOW, evaluate, set_incidents, subjects
from tests.e2e.test_processes import Deployment, answer_ready, deployment_of, free_port
from tests.proxy import Proxy

#: The services besides the trigger, whose processes each test starts as it needs.
OTHER_SERVICES = ("history", "query_worker", "render", "notifier")
RUNS = 8
ALERT_STEP = "open"


@pytest.fixture
async def deployed(
    tmp_path: Path,
    namespace: str,
    amqp_url: str,
    postgres_database: Callable[[], AbstractAsyncContextManager[str]],
) -> AsyncIterator[tuple[Deployment, str]]:
    """Every service but the trigger as a process, on RabbitMQ and a fresh PostgreSQL database
    (its SQLAlchemy URL beside the deployment)."""
    async with (
        postgres_database() as url,
        deployment_of(tmp_path, namespace, amqp_url, ADXFLOW_DATABASE_URL=url) as deployment,
    ):
        deployment.log_dir = tmp_path
        for service in OTHER_SERVICES:
            await deployment.start(service)
        yield deployment, url


def dsn_of(url: str) -> str:
    return url.replace("postgresql+asyncpg://", "postgresql://", 1)


def through(proxy: Proxy, url: str) -> str:
    """*url* with its host and port replaced by the proxy's."""
    parts = urllib.parse.urlsplit(url)
    credentials = parts.netloc.rpartition("@")[0]
    netloc = f"{credentials}@127.0.0.1:{proxy.port}" if credentials else f"127.0.0.1:{proxy.port}"
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc))


def upstream_of(url: str) -> tuple[str, int]:
    parts = urllib.parse.urlsplit(url)
    assert parts.hostname is not None, url
    assert parts.port is not None, url
    return parts.hostname, parts.port


def system_at(
    trigger_url: str, deployment: Deployment, session: aiohttp.ClientSession, wait: Waiter
) -> System:
    """The e2e helpers' view of the deployment, through the trigger at *trigger_url*."""
    return System(trigger_url, deployment.history_url, deployment.smtp, session, {}, Hooks(url=""), wait)


@asynccontextmanager
async def alert_locked(dsn: str, flow: str) -> AsyncIterator[asyncpg.Connection]:
    """The alert's row locked as an evaluation locks it: evaluations wait until the block ends."""
    conn = await asyncpg.connect(dsn)
    try:
        async with conn.transaction():
            locked = await conn.fetch(
                "SELECT flow FROM alerts WHERE flow = $1 AND step_id = $2 FOR UPDATE", flow, ALERT_STEP
            )
            assert len(locked) == 1
            yield conn
    finally:
        await conn.close()


async def waiting_ports(conn: asyncpg.Connection) -> list[int]:
    """The client ports of the sessions whose evaluation waits for the alert's row lock."""
    # Read afresh: a transaction otherwise sees the sessions as they were when it first looked.
    await conn.execute("SELECT pg_stat_clear_snapshot()")
    rows = await conn.fetch(
        "SELECT client_port FROM pg_stat_activity WHERE datname = current_database() "
        "AND pid <> pg_backend_pid() AND wait_event_type = 'Lock' AND query LIKE 'UPDATE alerts %'"
    )
    return [row["client_port"] for row in rows]


async def recorded(dsn: str, flow: str) -> tuple[list[dict[str, Any]], list[str]]:
    """The alert's transitions in the order written, and the runs its evaluations were recorded for."""
    conn = await asyncpg.connect(dsn)
    try:
        transitions = await conn.fetch(
            "SELECT key, run_id, before, after, notice FROM alert_transitions WHERE flow = $1 ORDER BY id",
            flow,
        )
        runs = await conn.fetch("SELECT run_id FROM alert_evaluations WHERE flow = $1", flow)
    finally:
        await conn.close()
    return [dict(row) for row in transitions], [row["run_id"] for row in runs]


def steps_of(run: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {step["step_id"]: step for step in run["steps"]}


def told(run: dict[str, Any]) -> dict[str, Any]:
    """What the run's alert step said of its evaluation."""
    alert: dict[str, Any] = steps_of(run)[f"{ALERT_STEP}.alert"]["detail"]["alert"]
    return alert


def mail_status(run: dict[str, Any]) -> str:
    mail = steps_of(run)["mail"]
    if mail["status"] == "skipped":
        assert "the alert has nothing new to tell" in mail["detail"]["reason"], mail
    return str(mail["status"])


@pytest.mark.rabbitmq
@pytest.mark.postgres
@pytest.mark.timeout(180)
async def test_two_trigger_replicas_tell_each_change_once_and_a_killed_one_leaves_its_evaluations(
    deployed: tuple[Deployment, str], wait_until: Waiter
) -> None:
    deployment, url = deployed
    dsn = dsn_of(url)
    flow = ALERT_FLOW["name"]
    # Replica b reaches PostgreSQL through a proxy: the sessions on its ports are b's.
    async with Proxy(*upstream_of(dsn)) as proxy, aiohttp.ClientSession() as session:
        b_url = f"http://127.0.0.1:{free_port()}"
        await deployment.start("trigger", "trigger-a")
        await deployment.start(
            "trigger",
            "trigger-b",
            ADXFLOW_TRIGGER_PORT=b_url.rsplit(":", 1)[1],
            ADXFLOW_DATABASE_URL=through(proxy, url),
        )

        async def all_ready() -> bool:
            return await deployment.ready(session) and await answer_ready(session, [b_url])

        await wait_until(all_ready, timeout=60, what="the services and both triggers to be ready")
        a = system_at(deployment.trigger_url, deployment, session, wait_until)
        b = system_at(b_url, deployment, session, wait_until)

        # A first evaluation finds nothing: the alert's row exists, and is quiet.
        await set_incidents(a, [])
        await a.save_flow(ALERT_FLOW)
        assert mail_status(await evaluate(b)) == "skipped"

        async def burst(conn: asyncpg.Connection) -> tuple[list[str], list[int]]:
            """RUNS runs started through the two replicas in turn; once every evaluation waits for
            the lock, the ports they wait on."""
            started = [await (a if index % 2 else b).start_flow(flow) for index in range(RUNS)]

            async def all_waiting() -> bool:
                return len(await waiting_ports(conn)) == RUNS

            await wait_until(all_waiting, timeout=60, what=f"{RUNS} evaluations waiting for the alert's lock")
            return [body["run_id"] for body in started], await waiting_ports(conn)

        await set_incidents(a, [(1, "TEXAS"), (2, "OHIO")])
        async with alert_locked(dsn, flow) as conn:
            firing, ports = await burst(conn)
            b_ports = proxy.server_ports()
            # Both replicas hold evaluations of the alert, which go on together when the lock goes.
            on_b = [port for port in ports if port in b_ports]
            assert 0 < len(on_b) < RUNS, (ports, b_ports)
        runs = [await a.finished(run_id) for run_id in firing]
        assert [run["status"] for run in runs] == ["succeeded"] * RUNS
        assert sorted(mail_status(run) for run in runs) == ["skipped"] * (RUNS - 1) + ["succeeded"]
        assert sorted(told(run)["deliver"] for run in runs) == [False] * (RUNS - 1) + [True]
        assert subjects(a) == ["2 new, 0 still firing, 0 resolved"]

        # Every instance resolves; replica b is killed while its evaluations wait for the lock.
        await set_incidents(a, [])
        async with alert_locked(dsn, flow) as conn:
            resolving, ports = await burst(conn)
            b_ports = proxy.server_ports()
            assert any(port in b_ports for port in ports), (ports, b_ports)
            assert await deployment.kill("trigger-b") == -signal.SIGKILL

            async def all_on_a() -> bool:
                # b's sessions may still wait, dead: PostgreSQL hears of it once they get the lock.
                return len([port for port in await waiting_ports(conn) if port not in b_ports]) == RUNS

            await wait_until(all_on_a, timeout=60, what=f"replica a to hold all {RUNS} evaluations")
        runs = [await a.finished(run_id) for run_id in resolving]
        assert [run["status"] for run in runs] == ["succeeded"] * RUNS
        assert sorted(mail_status(run) for run in runs) == ["skipped"] * (RUNS - 1) + ["succeeded"]
        assert subjects(a) == ["2 new, 0 still firing, 0 resolved", "0 new, 0 still firing, 2 resolved"]

    transitions, evaluated = await recorded(dsn, flow)
    [fired_by] = {t["run_id"] for t in transitions if t["notice"] == "firing"}
    [resolved_by] = {t["run_id"] for t in transitions if t["notice"] == "resolved"}
    assert fired_by in firing
    assert resolved_by in resolving
    assert [(t["key"], t["before"], t["after"], t["notice"]) for t in transitions] == [
        ("EventId=1", "ok", "firing", "firing"),
        ("EventId=2", "ok", "firing", "firing"),
        ("EventId=1", "firing", "ok", "resolved"),
        ("EventId=2", "firing", "ok", "resolved"),
    ]
    # Each run evaluated once: the first, and both bursts.
    assert len(evaluated) == len(set(evaluated)) == 1 + 2 * RUNS
    assert set(firing) | set(resolving) <= set(evaluated)


PENDING_FLOW: dict[str, Any] = {
    **ALERT_FLOW,
    "name": "incident-pending",
    "steps": [
        {**ALERT_FLOW["steps"][0], "alert": {"key_columns": ["EventId"], "pending_for": 3}},
        ALERT_FLOW["steps"][1],
    ],
}


@pytest.mark.rabbitmq
@pytest.mark.postgres
@pytest.mark.timeout(180)
@pytest.mark.parametrize("moment", ["between-evaluations", "after-evaluating-before-the-ack"])
async def test_a_pending_alert_counts_on_across_a_trigger_killed(
    deployed: tuple[Deployment, str], amqp_url: str, wait_until: Waiter, moment: str
) -> None:
    deployment, url = deployed
    dsn = dsn_of(url)
    flow = PENDING_FLOW["name"]
    # The first trigger reaches RabbitMQ through a proxy, which can hold what it sends.
    async with Proxy(*upstream_of(amqp_url)) as proxy, aiohttp.ClientSession() as session:
        await deployment.start("trigger", "trigger-1", ADXFLOW_AMQP_URL=through(proxy, amqp_url))

        async def all_ready() -> bool:
            return await deployment.ready(session)

        await wait_until(all_ready, timeout=60, what="the services to be ready")
        system = system_at(deployment.trigger_url, deployment, session, wait_until)
        await set_incidents(system, [(1, "TEXAS")])
        await system.save_flow(PENDING_FLOW)
        first = await evaluate(system, flow)
        assert (told(first)["state"], mail_status(first)) == ("pending", "skipped")

        if moment == "between-evaluations":
            second = await evaluate(system, flow)
            assert await deployment.kill("trigger-1") == -signal.SIGKILL
            await deployment.start("trigger", "trigger-2")
        else:
            async with alert_locked(dsn, flow) as conn:
                run_id = (await system.start_flow(flow))["run_id"]

                async def waiting() -> bool:
                    return len(await waiting_ports(conn)) == 1

                await wait_until(waiting, timeout=60, what="the second evaluation to wait for the lock")
                # From here RabbitMQ hears nothing from the trigger: neither what its evaluation
                # causes nor the acknowledgement.
                proxy.hold()

            async def evaluated() -> bool:
                return run_id in (await recorded(dsn, flow))[1]

            await wait_until(evaluated, timeout=30, what="the second evaluation to be recorded")
            assert await deployment.kill("trigger-1") == -signal.SIGKILL
            proxy.cut()
            await deployment.start("trigger", "trigger-2")
            # The alert message comes back to the new trigger, which finds its evaluation done.
            second = await system.finished(run_id)
            assert told(second)["repeated"] is True
        await wait_until(all_ready, timeout=60, what="the second trigger to be ready")
        assert second["status"] == "succeeded"
        assert (told(second)["state"], mail_status(second)) == ("pending", "skipped")
        assert subjects(system) == []

        third = await evaluate(system, flow)
        assert (told(third)["state"], mail_status(third)) == ("firing", "succeeded")
        assert subjects(system) == ["1 new, 0 still firing, 0 resolved"]

    transitions, evaluated_runs = await recorded(dsn, flow)
    assert [(t["run_id"], t["before"], t["after"], t["notice"]) for t in transitions] == [
        (first["run_id"], "ok", "pending", None),
        (third["run_id"], "pending", "firing", "firing"),
    ]
    assert sorted(evaluated_runs) == sorted(run["run_id"] for run in (first, second, third))
