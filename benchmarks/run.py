"""Every benchmark on this machine, against the real servers; writes the report.

Run: ``.venv/bin/python -m benchmarks.run [--quick] [--output PATH] [--only NAME ...]``.
RabbitMQ (``ADXFLOW_BENCH_AMQP_URL``, default ``amqp://guest:guest@127.0.0.1:5672/``) and
PostgreSQL (``ADXFLOW_BENCH_POSTGRES_DSN``, default ``postgresql://postgres@127.0.0.1:5432/postgres``)
must be running; each benchmark makes its own namespace and database and removes them. The
copies benchmark also copies into MariaDB (``ADXFLOW_BENCH_MARIADB_URL``, default
``mysql+asyncmy://adxflow_test:adxflow_test@127.0.0.1:3306``) if it answers, and says so if not.
The full run takes about twenty-five minutes and writes ``docs/benchmarks.md``; ``--quick`` runs
every benchmark with tiny sizes, only to prove the harness works (its figures mean nothing).
With ``--only``, the named benchmarks' sections replace theirs in the report already at
``--output`` (written in the same mode), and the other sections stay as they were.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import sys
import tempfile
import time
import traceback
from pathlib import Path
from types import ModuleType

from benchmarks import (
    alerts,
    big_results,
    broker,
    cold_start,
    copies,
    ingestion,
    pipeline,
    rendering,
    scheduling,
    scopes,
)
from benchmarks.figures import Report, Section, merge
from benchmarks.machine import OtherWork, describe, load_after
from benchmarks.servers import AMQP_URL, POSTGRES_DSN

DEFAULT_OUTPUT = Path(__file__).resolve().parents[1] / "docs" / "benchmarks.md"

#: Name, title and module of each benchmark, in the order they run and are reported.
BENCHMARKS: list[tuple[str, str, ModuleType]] = [
    ("pipeline", "1. End to end: the pipeline against a direct script", pipeline),
    ("cold_start", "2. Cold start: `adxflow demo` to its first email", cold_start),
    ("big_results", "3. Big results: reading a 500,000-row result", big_results),
    ("rendering", "4. Rendering: charts, the table and the CSV", rendering),
    ("scheduling", "5. Scheduling: 10,000 flows on a one-minute schedule", scheduling),
    ("broker", "6. Broker ceiling: RabbitBroker with confirms", broker),
    ("scopes", "7. Scopes: a for_each of 1,000 rows against 1,000 separate runs", scopes),
    ("alerts", "8. Alerts: a 10,000-instance keyed alert evaluated every minute", alerts),
    ("copies", "9. Copies: 500,000 rows from a query into PostgreSQL", copies),
    ("ingestion", "10. Ingestion: 200,000 PostgreSQL rows into Kusto", ingestion),
]


async def run(quick: bool, only: list[str], command: str) -> Report:
    report = Report(command=command, mode="quick" if quick else "full", started=dt.datetime.now(dt.UTC))
    started = time.perf_counter()
    report.machine = await describe(AMQP_URL, POSTGRES_DSN)
    other_work = OtherWork()
    with tempfile.TemporaryDirectory(prefix="adxflow-bench-") as scratch:
        for name, title, module in BENCHMARKS:
            if only and name not in only:
                continue
            section = Section(title, module.METHOD, if_missed=getattr(module, "IF_MISSED", ""))
            report.sections.append(section)
            print(f"{title} ...", flush=True)
            workdir = Path(scratch) / name
            workdir.mkdir()
            began = time.perf_counter()
            try:
                await module.run(section, workdir, quick=quick)
            except Exception as exc:  # the report says which benchmark failed and why; the rest still run
                section.error = f"{type(exc).__name__}: {exc}"
                traceback.print_exc()
            section.seconds = time.perf_counter() - began
            for figure in section.figures:
                print(f"  {' | '.join(figure.row())}", flush=True)
    report.machine += [load_after(), other_work.row()]
    report.seconds = time.perf_counter() - started
    return report


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes: proves the harness works")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help=f"default {DEFAULT_OUTPUT}")
    parser.add_argument(
        "--only", nargs="+", default=[], choices=[name for name, _, _ in BENCHMARKS], help="run only these"
    )
    args = parser.parse_args()
    command = "python -m benchmarks.run" + (" --quick" if args.quick else "")
    command += "".join(f" --only {name}" for name in args.only)
    report = asyncio.run(run(args.quick, args.only, command))
    args.output.parent.mkdir(parents=True, exist_ok=True)
    text = report.markdown()
    if args.only and args.output.exists():
        titles = [title for _, title, _ in BENCHMARKS]
        try:
            text = merge(args.output.read_text(encoding="utf-8"), report, titles)
        except ValueError as exc:
            print(f"not merged into {args.output} ({exc}): it is replaced", flush=True)
    args.output.write_text(text, encoding="utf-8")
    print(f"wrote {args.output} in {report.seconds:.0f} s", flush=True)
    if report.failed:
        print("failed: " + ", ".join(section.title for section in report.failed), file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
