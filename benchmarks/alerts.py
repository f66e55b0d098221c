"""Alerts: a keyed alert of 1,000 and of 10,000 instances evaluated once a minute, on SQLite and
on PostgreSQL; the time and memory of one evaluation, its SQL statements, and where its time goes.

Everything runs in this process, as the trigger runs an ``alert`` step: ``Alerts.perform``
(``services/trigger/alerting.py``) over an ``AlertStore`` on a SQLite file or a fresh
PostgreSQL database, and a folder blob store. The alert is a ``run_query`` step's with
``key_columns: [EventId]``; its query's result, *instances* rows of four columns (the event
id, a state, a type and a time), is written to the blob store as the query worker writes one
before each evaluation, and the evaluation is handed the run at its alert step with that
query's output. Each evaluation is a run of its own, one simulated minute after the last:
the clock the alert and its store read is driven, nothing waits. An alert's life is its
*first* evaluation (every row new: every instance fires), then minutes of *steady* state
(the same rows: every instance still firing, nothing to tell), then minutes of *churn* (each
minute the oldest 1% of the events are gone from the result, resolved, and as many new ones
fire). Each round lives one alert of each size through those minutes, on each database.

*Time* is ``perform``'s, from the message to the step's output, the blob read included, with
the garbage collected before each evaluation. It is split into phases, each timed where it
runs: the blob store's streaming and parsing of the result (``result_rows``); the rest of
reading the rows into an outcome per key; in the store's transaction, reading the alert's
stored instances (the ``SELECT`` and the objects made of its rows), the rules
(``alert_states.evaluate``), the step's output built from what they decided, writing the
instances and transitions (the store's ``_write``), and the rest of the transaction (taking
the alert's lock, recording the evaluation, the commit). The SQL statements' own time, from
SQLAlchemy's ``before_cursor_execute`` to its ``after_cursor_execute``, is counted across them.
*Statements* are the cursor executions of one evaluation; a batch of rows written at once is
one. *Memory*: the peak Python allocation of one evaluation above what was allocated before it
(``tracemalloc``, in a round of its own, since tracing slows everything), and this process's
peak resident set above its resident set before the evaluation (``VmHWM``, reset through
``/proc/self/clear_refs``, in the timed rounds). *Per instance* is an evaluation's time divided
by its instances; the ratio of 10,000 instances to 1,000 is taken within each round: 1 is
linear, 10 quadratic.

The clock is driven: the alert step's own clock, and ``utcnow`` where ``alert_store`` stamps its
rows; the phases inside the store are timed by wrapping its ``_instances`` and ``_write``
and the ``evaluate`` that ``alerting`` calls: the benchmark knows those names.
"""

from __future__ import annotations

import datetime as dt
import gc
import statistics
import time
import tracemalloc
from collections import defaultdict
from collections.abc import AsyncIterator, Iterator
from contextlib import AsyncExitStack, ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from unittest import mock

import sqlalchemy as sa

from benchmarks.figures import Section, Target
from benchmarks.servers import fresh_database, unique
from common.contracts.flows import Flow, RunTemplate
from common.contracts.messages import RunContext, RunMessage, StepOutput, TriggerKind
from common.contracts.results import Column, ResultSet
from common.contracts.topology import Topology
from common.platform.blobs.folder import FolderBlobStore
from common.platform.blobs.interface import artifact_key
from common.platform.broker.memory import InProcessBroker
from common.platform.config import Settings
from common.platform.connections import Connections
from common.platform.runtime import Runtime
from services.trigger import alert_store, alerting
from services.trigger.alert_notices import Held
from services.trigger.alert_states import Evaluation, Instance, evaluate
from services.trigger.alert_store import AlertStore, Decide, Keep, Verdict

STEP = "open"
QUERY = "Incidents | project EventId, State, EventType, StartTime"
COLUMNS = [
    Column(name="EventId", type="long"),
    Column(name="State", type="string"),
    Column(name="EventType", type="string"),
    Column(name="StartTime", type="datetime"),
]
STATES = ("TEXAS", "OHIO", "KANSAS", "IOWA", "FLORIDA", "NEBRASKA", "GEORGIA", "MAINE")
#: Of the events, those gone from the result each churning minute, and as many new ones.
CHURN = 0.01
START = dt.datetime(2026, 12, 7, 8, 0, tzinfo=dt.UTC)
SCENARIOS = {
    "first": "first evaluation (all new)",
    "steady": "steady (all still firing)",
    "churn": "churn (1% resolved, 1% new)",
}
#: The phases of an evaluation, as the report names them.
PHASES = {
    "read": "blob read and parse",
    "rows": "rows to outcomes",
    "stored": "stored instances read",
    "rules": "rules",
    "output": "step output",
    "written": "instances and transitions written",
    "rest": "rest of the transaction",
}


def flow(name: str) -> dict[str, Any]:
    return {
        "name": name,
        "connection": "local",
        "database": "Samples",
        "steps": [{"id": STEP, "action": "run_query", "query": QUERY, "alert": {"key_columns": ["EventId"]}}],
    }


def rows(first: int, count: int) -> list[list[Any]]:
    """Events *first* to *first* + *count*, in order."""
    return [
        [event, STATES[event % len(STATES)], "Flood", f"2026-12-07T07:{event % 60:02d}:00Z"]
        for event in range(first, first + count)
    ]


class Phases:
    """Seconds spent in each part of one evaluation, and the SQL statements it executed."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self.statements = 0

    @contextmanager
    def timed(self, name: str) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] += time.perf_counter() - started


class TimedBlobs(FolderBlobStore):
    """A folder blob store that adds the time spent streaming each result to ``phases``."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.phases = Phases()

    async def result_rows(self, key: str) -> AsyncIterator[tuple[list[Column], list[list[Any]]]]:
        batches = super().result_rows(key)
        while True:
            with self.phases.timed("read"):
                try:
                    batch = await anext(batches)
                except StopAsyncIteration:
                    return
            yield batch


class TimedStore(AlertStore):
    """An alert store that times its evaluations, their decisions and their statements."""

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.phases = Phases()
        self._began: list[float] = []
        sa.event.listen(self.engine.sync_engine, "before_cursor_execute", self._before)
        sa.event.listen(self.engine.sync_engine, "after_cursor_execute", self._after)

    def _before(self, *_: Any) -> None:
        self.phases.statements += 1
        self._began.append(time.perf_counter())

    def _after(self, *_: Any) -> None:
        self.phases.seconds["sql"] += time.perf_counter() - self._began.pop()

    async def evaluate(
        self, flow: str, step_id: str, run_id: str, decide: Decide, keep: Keep | None = None
    ) -> dict[str, Any]:
        def timed(stored: dict[str, Instance], held: list[Held]) -> Verdict:
            with self.phases.timed("decide"):
                return decide(stored, held)

        with self.phases.timed("evaluate"):
            return await super().evaluate(flow, step_id, run_id, timed, keep)


@dataclass(frozen=True)
class Evaluated:
    seconds: float
    #: Seconds of each of ``PHASES``, and of the SQL statements in all of them (``sql``).
    phases: dict[str, float]
    statements: int
    #: Peak resident set above the resident set before, in bytes (None when traced).
    rss: int | None
    #: Peak Python allocation above what was allocated before, in bytes (None when not traced).
    traced: int | None
    counts: dict[str, int]


def _status(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def _reset_peak() -> None:
    """Set this process's peak resident set (``VmHWM``) back to its resident set now."""
    Path("/proc/self/clear_refs").write_text("5")


class Bench:
    """One database's alert store, the blob store, and the driven clock both read."""

    def __init__(self, store: TimedStore, runtime: Runtime) -> None:
        self.store = store
        self.runtime = runtime
        self.blobs = runtime.blobs
        assert isinstance(self.blobs, TimedBlobs)
        self.now = START
        self.alerts = alerting.Alerts(store, runtime, clock=self.clock)

    def clock(self) -> dt.datetime:
        return self.now

    @contextmanager
    def driven(self) -> Iterator[None]:
        """The alert and its store read this bench's clock; the rules and the store's reading and
        writing of instances are timed."""
        read, write = alert_store._instances, alert_store._write

        def rules(*args: Any, **kwargs: Any) -> Evaluation:
            with self.store.phases.timed("rules"):
                return evaluate(*args, **kwargs)

        async def stored(*args: Any) -> dict[str, Instance]:
            with self.store.phases.timed("stored"):
                return await read(*args)

        async def written(*args: Any) -> None:
            with self.store.phases.timed("written"):
                await write(*args)

        with ExitStack() as stack:
            # The store stamps its own rows (when an evaluation was recorded) with utcnow.
            stack.enter_context(mock.patch.object(alert_store, "utcnow", self.clock))
            stack.enter_context(mock.patch.object(alerting, "evaluate", rules))
            stack.enter_context(mock.patch.object(alert_store, "_instances", stored))
            stack.enter_context(mock.patch.object(alert_store, "_write", written))
            yield

    async def message(self, name: str, first: int, count: int) -> RunMessage:
        """A run of the alert's flow at its alert step, its query having found events *first* on."""
        run_id = unique("run-")
        key = artifact_key(run_id, STEP, 1, "result.json")
        result = ResultSet(columns=COLUMNS, rows=rows(first, count))
        ref = await self.blobs.put(key, result.to_json_bytes(), "application/json")
        output = StepOutput(
            row_count=count, columns=[column.name for column in COLUMNS], artifacts={"result": ref}
        )
        context = RunContext(flow=name, trigger=TriggerKind.SCHEDULE, scheduled_for=self.now)
        run = RunTemplate.of(Flow.model_validate(flow(name))).new_run(context, run_id)
        return run.model_copy(update={"step_id": f"{STEP}.alert", "outputs": {STEP: output}})

    async def evaluation(self, message: RunMessage, *, traced: bool) -> Evaluated:
        blobs, store = self.blobs, self.store
        blobs.phases = store.phases = Phases()
        gc.collect()
        if traced:
            tracemalloc.start()
            before = tracemalloc.get_traced_memory()[0]
        else:
            _reset_peak()
            resident = _status("VmRSS")
        started = time.perf_counter()
        try:
            output = await self.alerts.perform(message)
            seconds = time.perf_counter() - started
            if traced:
                peak = tracemalloc.get_traced_memory()[1] - before
        finally:
            if traced:
                tracemalloc.stop()
        spent = {**blobs.phases.seconds, **store.phases.seconds}
        phases = {
            "read": spent["read"],
            "rows": seconds - spent["evaluate"] - spent["read"],
            "stored": spent["stored"],
            "rules": spent["rules"],
            "output": spent["decide"] - spent["rules"],
            "written": spent["written"],
            "rest": spent["evaluate"] - spent["decide"] - spent["stored"] - spent["written"],
            "sql": spent["sql"],
        }
        return Evaluated(
            seconds=seconds,
            phases=phases,
            statements=store.phases.statements,
            rss=None if traced else _status("VmHWM") - resident,
            traced=peak if traced else None,
            counts={
                name: output.detail["alert"]["counts"][name] for name in ("new", "still_firing", "resolved")
            },
        )

    async def life(self, size: int, minutes: int, *, traced: bool = False) -> dict[str, list[Evaluated]]:
        """A new alert of *size* instances through its first evaluation, then steady and churning minutes."""
        name = unique("alert-")
        churn = max(1, round(size * CHURN))
        lived: dict[str, list[Evaluated]] = {scenario: [] for scenario in SCENARIOS}
        plan = [("first", 0), *(("steady", 0) for _ in range(minutes))]
        plan += [("churn", churn * (minute + 1)) for minute in range(minutes)]
        for scenario, first in plan:
            self.now += dt.timedelta(minutes=1)
            message = await self.message(name, first, size)
            done = await self.evaluation(message, traced=traced)
            expected = {
                "first": {"new": size, "still_firing": 0, "resolved": 0},
                "steady": {"new": 0, "still_firing": size, "resolved": 0},
                "churn": {"new": churn, "still_firing": size - churn, "resolved": churn},
            }[scenario]
            if done.counts != expected:
                raise RuntimeError(f"{scenario} evaluation of {size:,} instances told {done.counts}")
            lived[scenario].append(done)
        return lived


@dataclass
class Lives:
    """The evaluations of each round's alerts, by size and scenario; and of the traced ones."""

    rounds: list[dict[int, dict[str, list[Evaluated]]]] = field(default_factory=list)
    traced: dict[int, dict[str, list[Evaluated]]] = field(default_factory=dict)


async def measure(bench: Bench, sizes: tuple[int, ...], rounds: int, minutes: int) -> Lives:
    lives = Lives()
    with bench.driven():
        # Warm up: the first evaluation in a process pays for imports, statement caches, connections.
        await bench.life(sizes[0], 1)
        for _ in range(rounds):
            lives.rounds.append({size: await bench.life(size, minutes) for size in sizes})
        for size in sizes:
            lives.traced[size] = await bench.life(size, minutes, traced=True)
    return lives


def _median(values: list[float]) -> float:
    return statistics.median(values)


def report(section: Section, database: str, lives: Lives, sizes: tuple[int, ...]) -> None:
    """Each scenario's figures for *database*: each round's median over its evaluations."""
    mib = 2**20
    small, large = sizes[0], sizes[-1]
    for scenario, title in SCENARIOS.items():
        on = f"{database}, {title}"
        for size in sizes:
            at = f"{on}, {size:,} instances"
            each = [life[size][scenario] for life in lives.rounds]
            section.add(f"{at}: time", "ms", [_median([e.seconds for e in one]) * 1000 for one in each])
            section.add(
                f"{at}: SQL statements",
                "",
                [_median([e.statements for e in one]) for one in each],
                Target(size / 100) if size == large and scenario == "first" else None,
            )
            section.add(
                f"{at}: peak allocated (tracemalloc)",
                "MiB",
                [(e.traced or 0) / mib for e in lives.traced[size][scenario]],
            )
        section.add(
            f"{on}, {large:,} instances: peak RSS above RSS before",
            "MiB",
            [_median([(e.rss or 0) / mib for e in life[large][scenario]]) for life in lives.rounds],
        )
        ratios = [
            (_median([e.seconds for e in life[large][scenario]]) / large)
            / (_median([e.seconds for e in life[small][scenario]]) / small)
            for life in lives.rounds
        ]
        section.add(f"{on}: time per instance, {large:,} ÷ {small:,} instances", "×", ratios, Target(1.5))
        every = [e for life in lives.rounds for e in life[large][scenario]]
        spent = {phase: _median([e.phases[phase] for e in every]) * 1000 for phase in [*PHASES, "sql"]}
        total = _median([e.seconds for e in every]) * 1000
        slowest = max(PHASES, key=lambda phase: spent[phase])
        parts = ", ".join(f"{PHASES[phase]} {spent[phase]:,.0f}" for phase in PHASES)
        section.notes.append(
            f"{on}, {large:,} instances, median ms over {len(every)} evaluations: {parts} (of "
            f"{total:,.0f} in all; the most, {PHASES[slowest]}: {spent[slowest] / total:.0%}); the SQL "
            f"statements' own time, in all phases: {spent['sql']:,.0f}."
        )


def runtime_in(workdir: Path) -> Runtime:
    """What the alerts read their settings and results from: a timed folder blob store in *workdir*."""
    return Runtime(
        settings=Settings(data_dir=workdir),
        broker=InProcessBroker(Topology(unique("bench-alerts-"))),
        blobs=TimedBlobs(workdir / "blobs"),
        connections=Connections(),
    )


async def run(section: Section, workdir: Path, *, quick: bool) -> None:
    sizes = (20, 200) if quick else (1_000, 10_000)
    rounds = 1 if quick else 5
    minutes = 2 if quick else 5
    async with runtime_in(workdir) as runtime:
        for database in ("SQLite", "PostgreSQL"):
            async with AsyncExitStack() as stack:
                if database == "SQLite":
                    url = f"sqlite+aiosqlite:///{workdir / 'alerts.db'}"
                else:
                    url = await stack.enter_async_context(fresh_database())
                store = TimedStore(url)
                stack.push_async_callback(store.close)
                await store.ensure_schema()
                lives = await measure(Bench(store, runtime), sizes, rounds, minutes)
            report(section, database, lives, sizes)
    section.notes.append(
        f"{rounds} round(s) after one alert of {sizes[0]:,} instances to warm up; an alert's life is its "
        f"first evaluation, {minutes} steady minutes and {minutes} churning ones, and the traced round "
        "one more such life of each size."
    )


METHOD = f"""
{__doc__.split(chr(10) + chr(10), 1)[1].strip()}

Targets: the time per instance at 10,000 instances ≤ 1.5 × the time per instance at 1,000, in
every scenario on both databases (no work that grows faster than the instances); a first
evaluation of 10,000 instances, which writes 10,000 instances and 10,000 transitions, in at most
100 statements (the writes batched).

What bounds an evaluation (the notes under the table give each phase's median at 10,000
instances) is writing. An instance still firing changes at every evaluation, since holding
moves its ``last_held``, so a steady minute rewrites every instance (deleted and inserted
again, 500 rows a statement) much as a first evaluation writes every instance and its
transition. On SQLite most of that is Python, SQLAlchemy making each row's parameters, and
the statements' own time a fraction; on PostgreSQL the statements take most of it. Reading
the stored instances back into objects comes next, then the rules; streaming and parsing the
result from the blob store is a few percent. Memory follows the instances held as objects at
once (stored, found and decided), about 1 KiB each; the result is streamed a chunk at a time,
never held whole.
"""

IF_MISSED = """
*Time per instance*: a ratio above 1.5 is work growing faster than the instances; the phase
that grew says where (the notes give each phase at 10,000 instances), as a delete by
``key IN (...)``, which PostgreSQL reads as a scan of all the alert's instances, once did.
*Statements*: the store writes 500 rows a statement; more statements mean rows written one by one.
"""
