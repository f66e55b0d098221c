"""Scopes: a ``for_each`` over a query's rows against the same runs submitted one by one; what
the fan-out costs per iteration, and the trigger's memory as the rows grow.

The five services run as separate ``adxflow serve`` processes on RabbitMQ and PostgreSQL,
query the local Kusto endpoint and mail the SMTP server in this process, as in the pipeline
benchmark. The source query returns *rows* storm events (``EventId``, ``State`` and two more
columns). The *scope* flow runs it, then a ``for_each`` over its rows at concurrency 20 whose
steps are a ``run_query_and_render_chart`` with the row's state as a typed query parameter and
a ``send_email`` of that chart: one email per row. The *separate* flow is those two steps alone,
the state a typed flow parameter; this process starts it once per row with
``POST /v1/flows/{name}/runs``, 20 runs in flight, each worker starting its next run once the
email of its last has arrived (the scope, too, starts an iteration as one ends). Each side's
throughput is its emails divided by the time from the first start (the scope flow's, which
includes its source query and the fan-out) to the last email's arrival.

The scope's machinery, alone, is measured with iterations that do nothing: the ``for_each``'s
one step is an ``if`` the trigger decides (false, with no steps), so an iteration is the
child run's start, that decision and the join, all in the trigger. *Per iteration* is the
parent's ``for_each`` step's time in the run history (from the fan-out to the last join
having sent the parent on) divided by the rows. Memory is the trigger process's peak resident
set (``VmHWM``, reset through ``/proc/PID/clear_refs`` before each run) over such a scope of
*rows* rows, and over one of ten times as many rows until as many iterations have ended: both
peaks cover a fan-out and the same number of joins, and differ only in the rows. The source
result is streamed once from the blob store and the iterations wait in SQL, so the peak should
not follow the rows.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
from azure.kusto.data import KustoConnectionStringBuilder
from azure.kusto.data.aio import KustoClient

from benchmarks import direct
from benchmarks.figures import Section, Target
from benchmarks.servers import (
    SERVICES,
    Inbox,
    KustoEndpoint,
    Services,
    cpu_seconds,
    deployment,
    sample_database,
    unique,
)

CONCURRENCY = 20
#: The rows iterated; their events' states become the per-row query's parameter.
SOURCE = "StormEvents | top {rows} by EventId asc | project EventId, State, EventType, StartTime"
PER_ROW = "StormEvents | where State == state | summarize Events = count() by EventType | top 10 by Events"
CHART = "piechart"
TITLE = "Storm events of the state, by type (top 10)"
TAG = {"type": "string"}


def _email(subject: str) -> dict[str, Any]:
    return {
        "id": "notify",
        "action": "send_email",
        "to": [direct.RECIPIENT],
        "subject": subject,
        "attachments": ["report"],
    }


def scope_flow(name: str, rows: int) -> dict[str, Any]:
    """The source query, then a chart and an email for each of its rows."""
    return {
        "name": name,
        "connection": "local",
        "database": direct.DATABASE,
        "parameters": {"tag": TAG},
        "steps": [
            {"id": "events", "action": "run_query", "query": SOURCE.format(rows=rows)},
            {
                "id": "each",
                "for_each": "events",
                "concurrency": CONCURRENCY,
                "max_items": rows,
                "steps": [
                    {
                        "id": "report",
                        "action": "run_query_and_render_chart",
                        "parameters": {"state": {"type": "string", "value": "{{ row.State }}"}},
                        "query": PER_ROW,
                        "chart": CHART,
                        "title": TITLE,
                    },
                    _email("{{ run.parameters.tag }} {{ row.EventId }}"),
                ],
            },
        ],
    }


def separate_flow(name: str) -> dict[str, Any]:
    """The scope's steps as a flow of their own, the row's state and event id its parameters."""
    return {
        "name": name,
        "connection": "local",
        "database": direct.DATABASE,
        "parameters": {"tag": TAG, "state": {"type": "string"}, "event": {"type": "long"}},
        "steps": [
            {
                "id": "report",
                "action": "run_query_and_render_chart",
                "query": PER_ROW,
                "chart": CHART,
                "title": TITLE,
            },
            _email("{{ run.parameters.tag }} {{ run.parameters.event }}"),
        ],
    }


def empty_flow(name: str, rows: int) -> dict[str, Any]:
    """The source query, then a ``for_each`` whose iterations do nothing but be started and joined."""
    return {
        "name": name,
        "connection": "local",
        "database": direct.DATABASE,
        "parameters": {"tag": TAG},
        "steps": [
            {"id": "events", "action": "run_query", "query": SOURCE.format(rows=rows)},
            {
                "id": "each",
                "for_each": "events",
                "concurrency": CONCURRENCY,
                "max_items": rows,
                "steps": [{"id": "nothing", "if": "{{ false }}", "then": [], "else": []}],
            },
            {
                "id": "done",
                "action": "send_email",
                "to": [direct.RECIPIENT],
                "subject": "{{ run.parameters.tag }} {{ steps.each.succeeded }} of {{ steps.each.total }}",
            },
        ],
    }


@dataclass(frozen=True)
class Side:
    #: Emails per second from the first start to the last arrival.
    throughput: float
    #: Seconds from the first start to the last arrival.
    span: float
    #: CPU seconds each service's process used over the round.
    cpu: dict[str, float]


class Bench:
    """The deployment, its HTTP session and inbox, and the flows saved on it."""

    def __init__(self, session: aiohttp.ClientSession, services: Services, inbox: Inbox) -> None:
        self.session = session
        self.services = services
        self.inbox = inbox

    async def save(self, flow: dict[str, Any]) -> None:
        async with self.session.put(
            f"{self.services.trigger_url}/v1/flows/{flow['name']}", json=flow
        ) as response:
            if response.status not in (200, 201):
                raise RuntimeError(f"flow refused with {response.status}: {await response.text()}")

    async def start(self, name: str, parameters: dict[str, Any]) -> str:
        url = f"{self.services.trigger_url}/v1/flows/{name}/runs"
        async with self.session.post(url, json={"parameters": parameters}) as response:
            if response.status != 202:
                raise RuntimeError(f"run refused with {response.status}: {await response.text()}")
            return str((await response.json())["run_id"])

    async def steps(self, run_id: str) -> list[dict[str, Any]]:
        """The run's steps in the history; none while the history has not heard of the run yet."""
        async with self.session.get(f"{self.services.history_url}/v1/runs/{run_id}") as response:
            if response.status == 404:
                return []
            if response.status != 200:
                raise RuntimeError(f"run {run_id}: the history answered {response.status}")
            return list((await response.json())["steps"])

    def cpu(self) -> dict[str, float]:
        return {service: cpu_seconds(self.services.pid(service)) for service in SERVICES}

    async def scope_round(self, name: str, rows: int, tag: str) -> Side:
        cpu = self.cpu()
        started = time.time()
        await self.start(name, {"tag": tag})
        arrived = await self.inbox.at_least(f"{tag} ", rows, timeout=60 + rows)
        return self._side(rows, started, arrived, cpu)

    async def separate_round(self, name: str, events: list[tuple[int, str]], tag: str) -> Side:
        pending = iter(events)
        cpu = self.cpu()
        started = time.time()

        async def worker() -> None:
            for event, state in pending:
                await self.start(name, {"tag": tag, "state": state, "event": event})
                await self.inbox.arrival(f"{tag} {event}", timeout=120)

        await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
        return self._side(len(events), started, self.inbox.subjects(f"{tag} "), cpu)

    def _side(self, count: int, started: float, arrived: dict[str, float], cpu: dict[str, float]) -> Side:
        if len(arrived) != count:
            raise RuntimeError(f"{len(arrived)} emails arrived for {count} rows")
        span = max(arrived.values()) - started
        after = self.cpu()
        return Side(count / span, span, {service: after[service] - cpu[service] for service in cpu})


async def source_rows(kusto: KustoEndpoint, rows: int) -> list[tuple[int, str]]:
    """The event id and state of each row the scope iterates, in order."""
    async with KustoClient(KustoConnectionStringBuilder.with_no_authentication(kusto.url)) as client:
        response = await client.execute(direct.DATABASE, SOURCE.format(rows=rows))
    table = response.primary_results[0]
    return [(int(row["EventId"]), str(row["State"])) for row in table]


async def compare(
    section: Section, bench: Bench, kusto: KustoEndpoint, *, rows: int, rounds: int, warm_up: int
) -> None:
    """Scope and separate rounds in turn (alternating which goes first); ratios taken per round."""
    scope_name, separate_name = unique("scope-"), unique("separate-")
    await bench.save(scope_flow(scope_name, rows))
    await bench.save(separate_flow(separate_name))
    warm_name = unique("scope-warm-")
    await bench.save(scope_flow(warm_name, warm_up))
    events = await source_rows(kusto, rows)
    await bench.scope_round(warm_name, warm_up, unique("warm-s-"))
    await bench.separate_round(separate_name, events[:warm_up], unique("warm-p-"))
    scope: list[Side] = []
    separate: list[Side] = []
    for number in range(rounds):
        tag = unique(f"r{number}-")
        order = ("scope", "separate") if number % 2 == 0 else ("separate", "scope")
        for side in order:
            if side == "scope":
                scope.append(await bench.scope_round(scope_name, rows, f"{tag}s"))
            else:
                separate.append(await bench.separate_round(separate_name, events, f"{tag}p"))
    pairs = list(zip(scope, separate, strict=True))
    at = f"{rows:,} rows, concurrency {CONCURRENCY}"
    section.add(f"scope throughput, {at}", "emails/s", [s.throughput for s in scope])
    section.add(f"separate runs' throughput, {at}", "emails/s", [p.throughput for p in separate])
    section.add(
        f"throughput scope ÷ separate, {at}",
        "×",
        [s.throughput / p.throughput for s, p in pairs],
        Target(0.9, at_least=True),
    )
    section.add(
        "time the scope adds per iteration (scope's span − separate runs' span) ÷ rows",
        "ms",
        [(s.span - p.span) / rows * 1000 for s, p in pairs],
    )
    for service in ("trigger", "query_worker", "render", "notifier", "history"):
        for label, sides in (("scope", scope), ("separate", separate)):
            section.add(
                f"{service} CPU per email, {label}", "ms", [side.cpu[service] / rows * 1000 for side in sides]
            )
    section.notes.append(
        f"{rows:,} rows a round, {rounds} round(s), after a scope and {warm_up} separate runs "
        f"of {warm_up} rows to warm up."
    )


@dataclass(frozen=True)
class Machinery:
    #: Seconds of the parent's for_each step, from its fan-out to its last join (None: not waited for).
    seconds: float | None
    #: The trigger's CPU seconds over the run.
    cpu: float
    #: The trigger's resident set before the run and its peak during it, in bytes.
    before: int
    peak: int


def _status(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field} in /proc/{pid}/status")


def _reset_peak(pid: int) -> None:
    """Set the process's peak resident set (``VmHWM``) back to its resident set now."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")


def _utc(text: str) -> dt.datetime:
    moment = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    return moment if moment.tzinfo else moment.replace(tzinfo=dt.UTC)


async def empty_scope(bench: Bench, name: str, rows: int, *, joins: int | None = None) -> Machinery:
    """A run of an empty-iteration scope of *rows* rows: its step's time, the trigger's CPU and memory.

    With *joins*, measured until that many iterations have ended (the rest go on unwatched);
    without, until the scope has ended and the parent has gone on.
    """
    trigger = bench.services.pid("trigger")
    tag = unique("empty-")
    _reset_peak(trigger)
    before = _status(trigger, "VmRSS")
    cpu = cpu_seconds(trigger)
    run_id = await bench.start(name, {"tag": tag})
    if joins is not None:
        await _ended(bench, run_id, joins, timeout=120 + joins / 5)
        return Machinery(None, cpu_seconds(trigger) - cpu, before, _status(trigger, "VmHWM"))
    arrived = await bench.inbox.at_least(f"{tag} ", 1, timeout=120 + rows / 5)
    peak = _status(trigger, "VmHWM")
    used = cpu_seconds(trigger) - cpu
    if f"{tag} {rows} of {rows}" not in arrived:
        raise RuntimeError(f"the scope of {rows} rows ended as {', '.join(arrived)}")
    each = await _each(bench, run_id, lambda step: bool(step["finished_at"]), timeout=30)
    seconds = (_utc(each["finished_at"]) - _utc(each["started_at"])).total_seconds()
    return Machinery(seconds, used, before, peak)


async def _ended(bench: Bench, run_id: str, joins: int, timeout: float) -> None:
    """Once the parent's for_each step has told the history that *joins* iterations ended."""

    def far_enough(step: dict[str, Any]) -> bool:
        detail = step.get("detail") or {}
        return int(detail.get("succeeded", 0)) + int(detail.get("failed", 0)) >= joins

    await _each(bench, run_id, far_enough, timeout=timeout)


async def _each(
    bench: Bench, run_id: str, ready: Callable[[dict[str, Any]], bool], timeout: float
) -> dict[str, Any]:
    """The parent's ``each`` step in the run's history, once *ready* says so."""
    async with asyncio.timeout(timeout):
        while True:
            steps = [step for step in await bench.steps(run_id) if step["step_id"] == "each"]
            if steps and ready(steps[-1]):
                return dict(steps[-1])
            await asyncio.sleep(0.2)


async def machinery(section: Section, bench: Bench, *, rows: int) -> None:
    """An empty-iteration scope of *rows* rows to its end, then one of ten times as many rows
    until as many iterations have ended (it is the last thing the deployment does)."""
    more = rows * 10
    names = {count: unique(f"empty-{count}-") for count in (rows, more)}
    for count, name in names.items():
        await bench.save(empty_flow(name, count))
    small = await empty_scope(bench, names[rows], rows)
    large = await empty_scope(bench, names[more], more, joins=rows)
    assert small.seconds is not None
    mib = 2**20
    at = f"{rows:,} empty iterations"
    section.add(f"scope machinery per iteration, {at}", "ms", [small.seconds / rows * 1000])
    section.add(f"trigger CPU per iteration, {at}", "ms", [small.cpu / rows * 1000])
    for count, run in ((rows, small), (more, large)):
        of = f"a scope of {count:,} rows"
        section.add(f"trigger peak RSS, {of}", "MiB", [run.peak / mib])
        section.add(
            f"trigger peak RSS above its RSS before the run, {of}", "MiB", [(run.peak - run.before) / mib]
        )
    section.add(
        f"trigger peak RSS, {more:,} ÷ {rows:,} rows",
        "×",
        [large.peak / small.peak],
        Target(1.2),
    )
    section.add(
        "trigger peak RSS added per 1,000 rows more",
        "MiB",
        [(large.peak - small.peak) / mib / ((more - rows) / 1000)],
    )
    section.notes.append(
        f"Empty iterations at concurrency {CONCURRENCY}: a scope of {rows:,} rows to its end, then one "
        f"of {more:,} rows until {rows:,} of its iterations had ended (by the parent step's progress in "
        "the history, told every 2 s), so that both peaks cover the fan-out and as many joins; the "
        "deployment is stopped with the rest of that scope still to run."
    )


async def run(section: Section, workdir: Path, *, quick: bool) -> None:
    rows = CONCURRENCY if quick else 1000
    rounds = 1 if quick else 2
    empty_rows = 40 if quick else 1000
    async with (
        Inbox(workdir / "smtp") as inbox,
        KustoEndpoint(sample_database()) as kusto,
        deployment(workdir, kusto, inbox.port) as services,
        aiohttp.ClientSession() as session,
    ):
        bench = Bench(session, services, inbox)
        await compare(
            section, bench, kusto, rows=rows, rounds=rounds, warm_up=rows if quick else 2 * CONCURRENCY
        )
        await machinery(section, bench, rows=empty_rows)


METHOD = f"""
{__doc__.split(chr(10) + chr(10), 1)[1].strip()}

The per-row query is `{PER_ROW}` (the state its parameter) drawn as a `{CHART}`; each email has
the chart inline and its PNG attached. Each service's CPU per email is its process's user plus
system time over the round divided by the emails: where a round's time goes.

Targets: throughput ≥ 0.9 × separate runs at concurrency {CONCURRENCY}; the trigger's peak RSS
over a scope of ten times the rows ≤ 1.2 × its peak over the smaller one.
"""

IF_MISSED = """
*Throughput*: both sides draw the same charts, so render's one process (pygal and cairosvg hold its
interpreter lock) and the machine's two cores bound them alike; the CPU per email above says what
the scope adds: the trigger starts and joins each iteration, one transaction on the scope's row
each, so one scope's joins take their turns. *Peak RSS*: the fan-out reads the source's result
whole from the blob store (its rows as Python objects) before it parks the items in SQL, so a
larger source costs what its rows take in memory, once.
"""
