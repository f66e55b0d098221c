"""Faults against the five services as separate processes, and what every accepted job became.

Run: ``.venv/bin/python -m benchmarks.reliability [--jobs N] [--only NAME ...] [--output PATH]``;
it writes ``docs/reliability.md`` and exits non-zero when a scenario lost, duplicated or left
a run unfinished. Each scenario gets a fresh RabbitMQ namespace and PostgreSQL database, submits
a batch of one-chart report jobs (each with its own email), injects its fault once a part of the
batch has been delivered, and then waits for every accepted run to end and every email to arrive.

The broker scenario stops and starts the RabbitMQ application of this machine with
``rabbitmqctl`` and the database scenario terminates the connections of its own database, so
run it when nothing else uses RabbitMQ.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import email.parser
import email.policy
import os
import signal
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import asyncpg
import sqlalchemy as sa
from alembic import command
from alembic.config import Config

from benchmarks import direct
from benchmarks.servers import (
    POSTGRES_DSN,
    KustoEndpoint,
    Services,
    deployment,
    sample_database,
    unique,
)
from common.platform.database import connect
from common.platform.schema import MIGRATIONS
from services.embedded.outbox import Outbox
from services.history.store.schema import runs, steps

DEFAULT_OUTPUT = Path(__file__).resolve().parents[1] / "docs" / "reliability.md"
#: How long a scenario waits for its batch to drain after the fault before calling what is left stuck.
DRAIN_TIMEOUT = 300.0
TERMINAL = {"succeeded", "failed", "cancelled"}


@dataclass
class Outcome:
    name: str
    fault: str
    submitted: int = 0
    accepted: int = 0
    statuses: Counter[str] = field(default_factory=Counter)
    #: Distinct emails received (one per job at most).
    emails: int = 0
    #: Byte-identical second copies, same Message-ID: a kept copy sent again (README, "When things fail").
    resends: int = 0
    #: Second copies that differ: a second composition, the duplicate that must not happen.
    duplicates: int = 0
    drain_seconds: float = 0.0
    note: str = ""
    #: Rows recorded before the scenario (by an older release) that no longer read back.
    lost_before: int = 0

    @property
    def lost(self) -> int:
        """Accepted runs the history never recorded, and runs from before that are gone."""
        return self.accepted - sum(self.statuses.values()) + self.lost_before

    @property
    def stuck(self) -> int:
        """Recorded runs that had not ended when the wait was over."""
        return sum(count for status, count in self.statuses.items() if status not in TERMINAL)

    @property
    def missing_emails(self) -> int:
        return max(0, self.statuses["succeeded"] - self.emails)

    @property
    def clean(self) -> bool:
        return self.lost == 0 and self.stuck == 0 and self.duplicates == 0 and self.missing_emails == 0

    def row(self) -> list[str]:
        statuses = ", ".join(f"{count} {status}" for status, count in sorted(self.statuses.items())) or "none"
        return [
            self.name,
            self.fault,
            str(self.submitted),
            str(self.accepted),
            statuses,
            str(self.emails),
            str(self.resends),
            str(self.duplicates),
            str(self.lost),
            str(self.stuck),
            f"{self.drain_seconds:.1f} s",
        ]


class Mailbox:
    """The SMTP server of a scenario: each email's copies by subject, so a second copy shows."""

    def __init__(self, directory: Path) -> None:
        self.outbox = Outbox(directory)
        self._parser = email.parser.BytesHeaderParser(policy=email.policy.default)

    @property
    def port(self) -> int:
        return self.outbox.port

    def subjects(self) -> Counter[str]:
        return Counter(subject for subject, _ in self._copies())

    def copies(self) -> dict[str, list[bytes]]:
        """Every copy received of each subject, as its bytes."""
        found: dict[str, list[bytes]] = {}
        for subject, data in self._copies():
            found.setdefault(subject, []).append(data)
        return found

    def _copies(self) -> list[tuple[str, bytes]]:
        copies = []
        for path in self.outbox.messages():
            data = path.read_bytes()
            copies.append((str(self._parser.parsebytes(data)["Subject"]), data))
        return copies

    async def wait_for(self, count: int, timeout: float) -> None:
        async with asyncio.timeout(timeout):
            while sum(self.subjects().values()) < count:
                await self.outbox.wait_for_message(timeout=timeout)


@dataclass
class Scenario:
    name: str
    fault: str
    #: Performs the fault on the running services; returns a note for the report, if any.
    inject: Callable[[Services, Mailbox, str], Awaitable[str]]
    #: Settings for the services of this scenario.
    settings: dict[str, str] = field(default_factory=dict)
    #: Given the database's URL, runs before the services start.
    prepare: Callable[[str], Awaitable[None]] | None = None
    #: After the batch: how many rows from before the scenario read back, of how many.
    kept: Callable[[aiohttp.ClientSession, Services], Awaitable[tuple[int, int]]] | None = None


async def _kill_and_restart(services: Services, service: str) -> str:
    os.kill(services.pid(service), signal.SIGKILL)
    await services.processes[service].wait()
    await services.start((service,))
    return ""


async def _terminate_and_restart(services: Services, service: str) -> str:
    began = time.perf_counter()
    services.processes[service].send_signal(signal.SIGTERM)
    code = await services.processes[service].wait()
    took = time.perf_counter() - began
    await services.start((service,))
    return f"{service} exited {code} {took:.1f} s after SIGTERM"


async def _rabbitmqctl(*args: str) -> None:
    process = await asyncio.create_subprocess_exec(
        "rabbitmqctl", *args, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE
    )
    _, stderr = await asyncio.wait_for(process.communicate(), 120)
    if process.returncode != 0:
        raise RuntimeError(f"rabbitmqctl {' '.join(args)}: {stderr.decode()}")


async def _broker_outage(services: Services, mailbox: Mailbox, database_url: str) -> str:
    began = time.perf_counter()
    await _rabbitmqctl("stop_app")
    try:
        await asyncio.sleep(10)  # the outage itself: how long the broker stays away
    finally:
        await _rabbitmqctl("start_app")
        await _rabbitmqctl("await_startup")
    return f"broker away {time.perf_counter() - began:.0f} s"


async def _database_connections_terminated(services: Services, mailbox: Mailbox, database_url: str) -> str:
    name = database_url.rsplit("/", 1)[1]
    terminated = 0
    admin = await asyncpg.connect(POSTGRES_DSN)
    try:
        for _ in range(3):
            rows = await admin.fetch(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE datname = $1 AND pid <> pg_backend_pid()",
                name,
            )
            terminated += len(rows)
            await asyncio.sleep(1)  # spaced out, so reconnected pools are cut again
    finally:
        await admin.close()
    return f"{terminated} connections terminated in three rounds"


async def _smtp_down(services: Services, mailbox: Mailbox, database_url: str) -> str:
    await mailbox.outbox.close()
    try:
        await asyncio.sleep(30)  # the outage itself: the relay refuses connections for 30 s
    finally:
        await mailbox.outbox.start()
    return "relay refused connections for 30 s"


#: Runs of the previous release left in the database of the upgrade scenario.
OLD_RUNS = 200


async def _previous_release(database_url: str) -> None:
    """The schema the release before migrations made, holding its runs and their steps.

    ``0001_baseline`` creates exactly those tables; without its ``alembic_version`` row the
    database is what that release's ``create_all`` left.
    """

    def baseline_then_forget(connection: sa.Connection) -> None:
        config = Config()
        config.set_main_option("script_location", str(MIGRATIONS))
        config.attributes["connection"] = connection
        command.upgrade(config, "0001_baseline")
        connection.execute(sa.text("DROP TABLE alembic_version"))

    engine = connect(database_url)
    now = dt.datetime.now(dt.UTC)
    try:
        async with engine.begin() as conn:
            await conn.run_sync(baseline_then_forget)
            await conn.execute(
                runs.insert(),
                [
                    {"run_id": f"old-{index}", "status": "succeeded", "flow": "old", "updated_at": now}
                    for index in range(OLD_RUNS)
                ],
            )
            await conn.execute(
                steps.insert(),
                [
                    {
                        "run_id": f"old-{index}",
                        "step_id": "query",
                        "attempt": 1,
                        "position": 0,
                        "kind": "query",
                        "service": "query_worker",
                        "status": "succeeded",
                        "row_count": index,
                    }
                    for index in range(OLD_RUNS)
                ],
            )
    finally:
        await engine.dispose()


async def _rolling_restart(services: Services, mailbox: Mailbox, database_url: str) -> str:
    """Every service restarted one after the other, as a rollout replaces them, then the old runs counted."""
    for service in ("trigger", "history", "query_worker", "render", "notifier"):
        services.processes[service].send_signal(signal.SIGTERM)
        await services.processes[service].wait()
        await services.start((service,))
    return "the database upgraded from the previous release's schema as the services started"


async def _old_runs_kept(session: aiohttp.ClientSession, services: Services) -> tuple[int, int]:
    """How many of the previous release's runs read back with their steps, of how many."""
    kept = 0
    for index in range(OLD_RUNS):
        async with session.get(f"{services.history_url}/v1/runs/old-{index}") as response:
            if response.status == 200 and (await response.json())["steps"][0]["row_count"] == index:
                kept += 1
    return kept, OLD_RUNS


def _killing(service: str) -> Callable[[Services, Mailbox, str], Awaitable[str]]:
    async def inject(services: Services, mailbox: Mailbox, database_url: str) -> str:
        return await _kill_and_restart(services, service)

    return inject


def _terminating(service: str) -> Callable[[Services, Mailbox, str], Awaitable[str]]:
    async def inject(services: Services, mailbox: Mailbox, database_url: str) -> str:
        return await _terminate_and_restart(services, service)

    return inject


SCENARIOS = [
    Scenario(
        "kill-query-worker", "kill -9 of the query-worker mid-batch, restarted", _killing("query_worker")
    ),
    Scenario("kill-render", "kill -9 of render mid-batch, restarted", _killing("render")),
    Scenario("kill-notifier", "kill -9 of the notifier mid-batch, restarted", _killing("notifier")),
    Scenario("kill-history", "kill -9 of history mid-batch, restarted", _killing("history")),
    Scenario("broker", "RabbitMQ stopped for 10 s mid-batch, then started", _broker_outage),
    Scenario("database", "PostgreSQL connections terminated mid-batch", _database_connections_terminated),
    Scenario("smtp", "SMTP relay down 30 s mid-batch", _smtp_down),
    Scenario(
        "sigterm-query-worker",
        "SIGTERM of the query-worker mid-batch, restarted",
        _terminating("query_worker"),
    ),
    Scenario("sigterm-notifier", "SIGTERM of the notifier mid-batch, restarted", _terminating("notifier")),
    Scenario(
        "upgrade",
        "started on the previous release's schema holding its runs; every service restarted mid-batch",
        _rolling_restart,
        prepare=_previous_release,
        kept=_old_runs_kept,
    ),
]


async def _submit(session: aiohttp.ClientSession, services: Services, subject: str) -> str | None:
    """The run id of the job, or None when the trigger refused it (then nothing was accepted)."""
    for _ in range(60):
        try:
            async with session.post(f"{services.trigger_url}/v1/jobs", json=direct.job(subject)) as response:
                if response.status == 202:
                    return str((await response.json())["run_id"])
                if response.status != 503:
                    raise RuntimeError(f"job refused with {response.status}: {await response.text()}")
        except aiohttp.ClientConnectionError:
            pass
        await asyncio.sleep(0.5)  # the trigger is reconnecting: ask again shortly
    return None


async def _statuses(session: aiohttp.ClientSession, services: Services, runs: list[str]) -> Counter[str]:
    statuses: Counter[str] = Counter()
    for run_id in runs:
        try:
            async with session.get(f"{services.history_url}/v1/runs/{run_id}") as response:
                if response.status == 200:
                    statuses[(await response.json())["status"]] += 1
        except aiohttp.ClientConnectionError:
            continue
    return statuses


async def run_scenario(scenario: Scenario, kusto: KustoEndpoint, workdir: Path, jobs: int) -> Outcome:
    outcome = Outcome(scenario.name, scenario.fault)
    mailbox = Mailbox(workdir / "mail")
    await mailbox.outbox.start()
    try:
        async with (
            deployment(workdir, kusto, mailbox.port, scenario.prepare, **scenario.settings) as services,
            aiohttp.ClientSession() as session,
        ):
            tag = unique("R")
            subjects = [f"{tag} {index}" for index in range(jobs)]
            submitting = asyncio.gather(*(_submit(session, services, subject) for subject in subjects))
            # The fault strikes once a fifth of the batch has been delivered.
            await mailbox.wait_for(max(1, jobs // 5), timeout=120)
            fault_at = time.perf_counter()
            outcome.note = await scenario.inject(services, mailbox, services.env["ADXFLOW_DATABASE_URL"])
            runs = [run_id for run_id in await submitting if run_id is not None]
            outcome.submitted, outcome.accepted = jobs, len(runs)
            deadline = time.perf_counter() + DRAIN_TIMEOUT
            while time.perf_counter() < deadline:
                statuses = await _statuses(session, services, runs)
                delivered = sum(mailbox.subjects()[subject] > 0 for subject in subjects)
                if (
                    sum(statuses[status] for status in TERMINAL) == len(runs)
                    and delivered >= statuses["succeeded"]
                ):
                    break
                await asyncio.sleep(0.5)  # polling the history API: nothing to wait on across processes
            outcome.drain_seconds = time.perf_counter() - fault_at
            outcome.statuses = await _statuses(session, services, runs)
            received = mailbox.copies()
            for subject in subjects:
                copies = received.get(subject, [])
                distinct = len(set(copies))
                outcome.emails += min(1, distinct)
                outcome.resends += len(copies) - distinct
                outcome.duplicates += max(0, distinct - 1)
            if scenario.kept is not None:
                kept, before = await scenario.kept(session, services)
                outcome.lost_before = before - kept
                outcome.note += f"; {kept} of the {before} runs from before read back with their steps"
    finally:
        await mailbox.outbox.close()
    return outcome


def markdown(outcomes: list[Outcome], jobs: int, seconds: float, command: str) -> str:
    started = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    header = [
        "scenario",
        "fault",
        "jobs submitted",
        "accepted",
        "runs by final status",
        "emails received",
        "identical resends",
        "duplicates",
        "lost",
        "stuck",
        "time to drain",
    ]
    lines = [
        "# Reliability under faults",
        "",
        f"Written by `{command}` on {started}, in {seconds / 60:.1f} min."
        " Run the command again to refresh it; do not edit by hand.",
        "",
        "The five services run as separate `adxflow serve` processes on RabbitMQ and PostgreSQL, query the"
        " local Kusto endpoint (a process of its own) and mail an SMTP server in the script. Each scenario"
        f" submits {jobs} one-chart report jobs, each with its own email, and injects its fault once a fifth"
        " of them has been delivered. *Lost* counts accepted runs the history never recorded, *stuck* runs"
        " that had not ended when the wait was over. *Emails received* counts distinct emails;"
        " *duplicates* counts second copies that differ from the first (a second composition), and"
        " *identical resends* second copies equal to the first byte for byte, with its Message-ID: the"
        " notifier sends its kept copy again when it cannot know whether the relay kept the first (it was"
        " killed or cut off after sending the data and before the relay's reply was recorded; SMTP gives a"
        " sender no way to ask), and mailbox stores that drop a repeated Message-ID show it once."
        " *Time to drain* runs from the fault to the last run ended and the last email received.",
        "",
        "| " + " | ".join(header) + " |",
        "| " + " | ".join("---" for _ in header) + " |",
        *("| " + " | ".join(outcome.row()) + " |" for outcome in outcomes),
        "",
    ]
    notes = [f"- {outcome.name}: {outcome.note}" for outcome in outcomes if outcome.note]
    if notes:
        lines += ["Notes:", "", *notes, ""]
    verdict = all(outcome.clean for outcome in outcomes)
    resends = sum(outcome.resends for outcome in outcomes)
    lines.append(
        f"Every scenario: 0 lost, 0 duplicated, 0 stuck ({resends} identical"
        f" resend{'' if resends == 1 else 's'} in all)."
        if verdict
        else "**Not every scenario was clean**: see the lost, duplicates and stuck columns."
    )
    return "\n".join(lines) + "\n"


async def run(jobs: int, only: list[str]) -> list[Outcome]:
    outcomes = []
    with tempfile.TemporaryDirectory(prefix="adxflow-reliability-") as scratch:
        async with KustoEndpoint(sample_database()) as kusto:
            for scenario in SCENARIOS:
                if only and scenario.name not in only:
                    continue
                print(f"{scenario.name}: {scenario.fault} ...", flush=True)
                workdir = Path(scratch) / scenario.name
                workdir.mkdir()
                outcome = await run_scenario(scenario, kusto, workdir, jobs)
                print(f"  {' | '.join(outcome.row())}", flush=True)
                outcomes.append(outcome)
    return outcomes


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.reliability", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--jobs", type=int, default=50, help="jobs per scenario (default 50)")
    parser.add_argument(
        "--output", type=Path, help=f"default {DEFAULT_OUTPUT}, written only when every scenario runs"
    )
    parser.add_argument(
        "--only",
        nargs="+",
        default=[],
        choices=[scenario.name for scenario in SCENARIOS],
        help="run only these",
    )
    args = parser.parse_args()
    began = time.perf_counter()
    outcomes = asyncio.run(run(args.jobs, args.only))
    command = "python -m benchmarks.reliability" + (f" --jobs {args.jobs}" if args.jobs != 50 else "")
    text = markdown(outcomes, args.jobs, time.perf_counter() - began, command)
    output = args.output or (None if args.only else DEFAULT_OUTPUT)
    if output is not None:
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(text, encoding="utf-8")
    print(text)
    sys.exit(0 if all(outcome.clean for outcome in outcomes) else 1)


if __name__ == "__main__":
    main()
