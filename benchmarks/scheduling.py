"""Scheduling: 10,000 flows on a one-minute schedule, fired by the trigger service alone.

The trigger runs as one ``adxflow serve trigger`` process on a fresh RabbitMQ namespace and
PostgreSQL database, with nothing consuming the queues its runs go to. The flows (each a
``run_query`` step on ``every: 1m``) are written into that database directly through the
trigger's ``FlowStore`` (``save``, 8 at a time), not through the API, before the trigger
starts. The trigger loads them once, then every second only checks whether any flow changed,
and sleeps until the instant the next slot is due. At the slot it claims the due slots in
batches (one multi-row insert each, several batches at a time) and starts every run of a
batch at once, each with two confirmed publishes: the trigger step's status event, which
carries the run, then the run itself to its first step. This process consumes the query
queue, where that second message arrives, and notes when each run arrives and which slot it
is for. Lateness is arrival minus slot time, for the first slot after the last flow was
written. The trigger's CPU is its process's user plus system time over the minute that
starts at that slot. From the slot until the last run arrived, the machine's CPU is the share
of all its cores busy, and the time they spent busy in all (RabbitMQ and PostgreSQL included),
beside the trigger's and this process's own.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import math
import os
import time
from collections import defaultdict
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path

from benchmarks.figures import Section, Target, percentile
from benchmarks.servers import (
    AMQP_URL,
    Services,
    clean_environment,
    cpu_seconds,
    fresh_database,
    fresh_namespace,
)
from common.contracts.flows import Flow
from common.contracts.messages import StepKind
from common.contracts.topology import Topology
from common.platform.broker.interface import Delivery
from common.platform.broker.rabbitmq import RabbitBroker
from services.trigger.store import FlowStore


def flow(name: str, every: str) -> Flow:
    return Flow.model_validate(
        {
            "name": name,
            "connection": "local",
            "database": "Samples",
            "trigger": {"every": every},
            "steps": [{"id": "count", "action": "run_query", "query": "StormEvents | count"}],
        }
    )


async def insert(database_url: str, count: int, every: str, anchor: dt.datetime | None = None) -> float:
    """Write *count* flows through the FlowStore, saved at *anchor* (now without); the seconds it took."""
    store = FlowStore(database_url)
    writers = asyncio.Semaphore(8)

    async def save(number: int) -> None:
        async with writers:
            await store.save(flow(f"every-minute-{number:05d}", every), now=anchor)

    try:
        await store.ensure_schema()
        started = time.perf_counter()
        await asyncio.gather(*(save(number) for number in range(count)))
        return time.perf_counter() - started
    finally:
        await store.close()


async def _until(moment: float) -> None:
    await asyncio.sleep(max(0.0, moment - time.time()))


@dataclass(frozen=True)
class Cpu:
    """CPU seconds used since boot: by every core busy and in all, by the trigger, by this process."""

    busy: float
    total: float
    trigger: float
    consumer: float

    @classmethod
    def now(cls, trigger_pid: int) -> Cpu:
        ticks = [int(field) for field in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        idle = ticks[3] + ticks[4]
        per_second = os.sysconf("SC_CLK_TCK")
        return cls(
            (sum(ticks) - idle) / per_second,
            sum(ticks) / per_second,
            cpu_seconds(trigger_pid),
            time.process_time(),
        )

    def __sub__(self, earlier: Cpu) -> Cpu:
        return Cpu(
            self.busy - earlier.busy,
            self.total - earlier.total,
            self.trigger - earlier.trigger,
            self.consumer - earlier.consumer,
        )


async def run(section: Section, workdir: Path, *, quick: bool) -> None:
    count = 20 if quick else 10_000
    interval = 5 if quick else 60
    every = f"{interval}s"
    arrivals: dict[float, list[float]] = defaultdict(list)
    #: Set once every flow has fired for the slot.
    complete: dict[float, asyncio.Event] = defaultdict(asyncio.Event)
    #: CPU used when the last run of each slot arrived.
    cpu_at_last: dict[float, Cpu] = {}
    trigger_pid = 0

    async def arrived(delivery: Delivery) -> None:
        at = time.time()
        scheduled = json.loads(delivery.body)["context"]["scheduled_for"]
        slot = dt.datetime.fromisoformat(scheduled.replace("Z", "+00:00")).timestamp()
        arrivals[slot].append(at)
        if len(arrivals[slot]) == count:
            cpu_at_last[slot] = Cpu.now(trigger_pid)
            complete[slot].set()

    connections = workdir / "connections.yaml"
    connections.write_text('connections:\n  local: {cluster: "http://127.0.0.1:9", auth: none}\n')
    async with AsyncExitStack() as stack:
        namespace = await stack.enter_async_context(fresh_namespace())
        database_url = await stack.enter_async_context(fresh_database())
        broker = await stack.enter_async_context(
            RabbitBroker(AMQP_URL, Topology(namespace), connection_name="bench-scheduling")
        )
        env = {
            **clean_environment(),
            "ADXFLOW_AMQP_URL": AMQP_URL,
            "ADXFLOW_NAMESPACE": namespace,
            "ADXFLOW_DATABASE_URL": database_url,
            "ADXFLOW_DATA_DIR": str(workdir / "data"),
            "ADXFLOW_CONNECTIONS_FILE": str(connections),
            "ADXFLOW_LOG_LEVEL": "WARNING",
        }
        trigger = await stack.enter_async_context(Services(env, workdir / "logs"))
        await broker.consume(broker.topology.step_queue(StepKind.QUERY), arrived, prefetch=500)
        # Flows saved before a slot that passes while the trigger is not yet running would fire
        # that slot late, when it starts. Where the writing may not end well before the next slot,
        # the flows are saved as of that slot, so the first they fire is the one after.
        start = time.time()
        upcoming = (math.floor(start / interval) + 1) * interval
        anchor = None
        if upcoming - start < interval * 5 / 6:
            anchor = dt.datetime.fromtimestamp(upcoming, dt.UTC)
        writing = await insert(database_url, count, every, anchor)
        await trigger.start(("trigger",))
        trigger_pid = trigger.pid("trigger")
        # The first slot the flows fire once the trigger runs.
        slot = (math.floor(max(time.time(), upcoming if anchor else 0) / interval) + 1) * interval
        await _until(slot)
        at_slot = Cpu.now(trigger_pid)
        await _until(slot + interval)
        used = cpu_seconds(trigger_pid) - at_slot.trigger
        fired_in_time = len(arrivals[slot])
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(complete[slot].wait(), 5 if quick else 60)
    late = sorted(at - slot for at in arrivals[slot])
    earlier = sum(len(times) for fired, times in arrivals.items() if fired < slot)
    if earlier:
        section.notes.append(f"{earlier} runs fired for an earlier slot, as the trigger started.")
    section.add("flows written through the FlowStore", "flows/s", [count / writing])
    section.add(f"runs fired for the slot within {interval} s", "runs", [fired_in_time])
    section.add("runs fired for the slot in all", "runs", [len(late)], Target(count, at_least=True))
    if late:
        section.add("firing lateness p50", "s", [percentile(late, 50)])
        section.add("firing lateness p99", "s", [percentile(late, 99)], Target(1.0))
        section.add("firing lateness max", "s", [late[-1]])
        section.add("runs fired a second, from the slot to the last run", "runs/s", [len(late) / late[-1]])
    section.add(f"trigger CPU time over the {interval} s from the slot", "s", [used])
    section.add("trigger CPU use over that time", "% of a core", [used / interval * 100])
    if slot in cpu_at_last:
        burst = cpu_at_last[slot] - at_slot
        busy = burst.busy / burst.total * 100
        section.add("machine CPU busy from the slot to the last run", "% of all cores", [busy])
        section.add("CPU time from the slot to the last run, every process", "s", [burst.busy])
        section.add("of which the trigger's", "s", [burst.trigger])
        section.add("of which this process's, consuming the runs", "s", [burst.consumer])
    section.notes.append(
        f"{count:,} flows on `every: {every}`; one slot observed, so each figure has one run. "
        "The scheduler wakes at the slot; it looks for changed flows every second "
        "(`ADXFLOW_SCHEDULER_POLL_SECONDS`, default 1)."
    )


METHOD = __doc__.split("\n\n", 1)[1].strip() + "\n\nTarget: firing lateness p99 ≤ 1 s."

IF_MISSED = """
Firing is CPU-bound on this machine. Each run is two confirmed publishes (the run's first status
event, then its slip) and a claimed row; the figures above split the burst's CPU between the trigger,
this benchmark's consumer and everything else (RabbitMQ, PostgreSQL, the kernel). In the trigger most
of a run's time goes to the AMQP client publishing and to building the run message, and one
connection's confirmed publishes level off at about two thousand a second however many are in
flight, so ten thousand runs take several seconds of both cores whatever the scheduler does. Several
trigger replicas share a burst: each claims different batches.
"""
