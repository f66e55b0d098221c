"""The ``adxflow`` command: run services, run the demo, talk to the APIs."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

import aiohttp
import yaml

from common.config import Settings, load_settings
from common.errors import AdxflowError
from common.logs import configure_logging
from common.runtime import Runtime

SERVICES = ("trigger", "query_worker", "render", "notifier", "history")

#: The sample jobs of ``adxflow demo``: a pie of the states with the most
#: storm events, and a time chart of events per day.
DEMO_JOBS: list[dict[str, Any]] = [
    {
        "connection": "local",
        "database": "Samples",
        "query": "StormEvents | summarize Events = count() by State | top 10 by Events",
        "chart": "piechart",
        "title": "Storm events by state (top 10)",
        "email": {"to": ["team@example.com"], "subject": "Storm events by state", "importance": "normal"},
    },
    {
        "connection": "local",
        "database": "Samples",
        "query": (
            "StormEvents | where DamageProperty >= min_damage"
            " | summarize Events = count() by bin(StartTime, 1d) | order by StartTime asc"
        ),
        "parameters": {"min_damage": 0},
        "chart": "timechart",
        "title": "Storm events per day",
        "email": {"to": ["team@example.com"], "subject": "Storm events per day", "importance": "high"},
    },
]


async def _until_stopped() -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()


def _service_context(name: str, runtime: Runtime) -> AbstractAsyncContextManager[Any]:
    from services.history import service as history
    from services.notifier import service as notifier
    from services.query_worker import service as query_worker
    from services.render import service as render
    from services.trigger import service as trigger

    modules: dict[str, Callable[[Runtime], AbstractAsyncContextManager[Any]]] = {
        "trigger": trigger.running,
        "query_worker": query_worker.running,
        "render": render.running,
        "notifier": notifier.running,
        "history": history.running,
    }
    return modules[name](runtime)


async def serve(name: str, settings: Settings) -> None:
    """One service in this process, against RabbitMQ (for containers)."""
    if settings.amqp_url is None:
        raise AdxflowError(
            f"serve {name}: set ADXFLOW_AMQP_URL; a single service cannot share the in-process "
            "broker with the others (use 'adxflow up' for everything in one process)"
        )
    async with Runtime.build(settings, name=name) as runtime, _service_context(name, runtime):
        print(f"adxflow {name} running", file=sys.stderr)
        await _until_stopped()
        await runtime.broker.close()


async def up(settings: Settings) -> None:
    from services.embedded import embedded

    async with embedded(settings) as system:
        broker = "RabbitMQ" if settings.amqp_url else "in-process broker"
        print(f"adxflow up ({broker})")
        print(f"  trigger API   {system.trigger_url}/v1/jobs")
        print(f"  run history   {system.history_url}/v1/runs")
        print(f"  Kusto (local) {system.kusto.url}  connection 'local', database '{system.kusto.database}'")
        if system.outbox is not None:
            print(f"  outbox        {system.outbox.directory}  (SMTP on 127.0.0.1:{system.outbox.port})")
        else:
            print(f"  SMTP relay    {settings.smtp_host}:{settings.smtp_port}")
        print("Ctrl-C to stop.", flush=True)
        await _until_stopped()


async def _wait_for_run(session: aiohttp.ClientSession, url: str, timeout: float) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        async with session.get(url) as response:
            if response.status == 200:
                run: dict[str, Any] = await response.json()
                if run["status"] in ("succeeded", "failed"):
                    return run
        if loop.time() > deadline:
            raise AdxflowError(f"run at {url} did not finish within {timeout:g} s")
        await asyncio.sleep(0.05)


def format_run(run: dict[str, Any]) -> str:
    duration = run.get("duration_ms")
    lines = [
        f"run {run['run_id']}  {run['status']}"
        + (f"  {duration:.0f} ms" if duration is not None else "")
        + f"  {run.get('flow') or ''}"
        + (f" — {run['description']}" if run.get("description") else "")
    ]
    for step in run.get("steps", []):
        took = step.get("duration_ms")
        rows = step.get("row_count")
        line = f"  {step['step_id']:<16} {step['service']:<13} {step['status']:<10}"
        line += f" {took:>8.1f} ms" if took is not None else f" {'-':>8}   "
        if rows is not None:
            line += f"  {rows} rows"
        if step.get("error"):
            line += f"  {step['error']['code']}: {step['error']['message']}"
        lines.append(line)
    return "\n".join(lines)


async def demo(settings: Settings, timeout: float = 120.0) -> Path:
    """Start embedded mode, run the sample jobs, print their runs; return the last email."""
    from services.embedded import embedded

    async with embedded(settings) as system, aiohttp.ClientSession() as session:
        broker = "RabbitMQ" if settings.amqp_url else "the in-process broker"
        print(f"adxflow demo: embedded mode through {broker}; Kusto at {system.kusto.url}", flush=True)
        locations = []
        for job in DEMO_JOBS:
            async with session.post(f"{system.trigger_url}/v1/jobs", json=job) as response:
                body = await response.json()
                if response.status != 202:
                    raise AdxflowError(f"job refused: {body}")
                locations.append(response.headers["Location"])
        failed = False
        for location in locations:
            run = await _wait_for_run(session, location, timeout)
            print(format_run(run), flush=True)
            failed = failed or run["status"] != "succeeded"
        if failed:
            raise AdxflowError("a demo run failed; see the steps above")
        if system.outbox is None:
            raise AdxflowError(
                "the demo reads its email from the embedded outbox; unset ADXFLOW_EMBEDDED_SMTP"
            )
        messages = system.outbox.messages()
        if not messages:
            raise AdxflowError("no email arrived in the outbox")
        return messages[-1].resolve()


def _load_document(path: str) -> Any:
    text = sys.stdin.read() if path == "-" else Path(path).read_text(encoding="utf-8")
    return yaml.safe_load(text)


def _auth_headers() -> dict[str, str]:
    token = os.environ.get("ADXFLOW_API_TOKEN")
    return {"Authorization": f"Bearer {token}"} if token else {}


async def submit(url: str, path: str) -> None:
    document = _load_document(path)
    async with (
        aiohttp.ClientSession(headers=_auth_headers()) as session,
        session.post(f"{url.rstrip('/')}/v1/jobs", json=document) as response,
    ):
        body = await response.json()
        print(json.dumps(body, indent=2))
        if response.status != 202:
            raise SystemExit(1)


async def runs(url: str, run_id: str | None) -> None:
    async with aiohttp.ClientSession(headers=_auth_headers()) as session:
        target = f"{url.rstrip('/')}/v1/runs" + (f"/{run_id}" if run_id else "")
        async with session.get(target) as response:
            body = await response.json()
            if response.status != 200:
                print(json.dumps(body, indent=2), file=sys.stderr)
                raise SystemExit(1)
    if run_id:
        print(format_run(body))
    else:
        for run in body["runs"]:
            print(f"{run['run_id']}  {run['status']:<9}  {run['submitted_at']}  {run.get('flow') or ''}")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="adxflow", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("up", help="run all five services in one process on embedded defaults")
    serve_cmd = commands.add_parser("serve", help="run one service (for containers; needs ADXFLOW_AMQP_URL)")
    serve_cmd.add_argument("service", choices=SERVICES)
    commands.add_parser("demo", help="run two sample report jobs end to end and print the last email's path")
    submit_cmd = commands.add_parser("submit", help="submit a job (JSON or YAML file, '-' for stdin)")
    submit_cmd.add_argument("file")
    submit_cmd.add_argument("--url", default="http://127.0.0.1:8080")
    runs_cmd = commands.add_parser("runs", help="list runs, or show one run with its steps")
    runs_cmd.add_argument("run_id", nargs="?")
    runs_cmd.add_argument("--url", default="http://127.0.0.1:8081")
    return parser


def main(argv: list[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    try:
        settings = load_settings()
        if args.command == "demo":
            # The demo's own output is the report; keep logs to warnings unless asked.
            level = os.environ.get("ADXFLOW_LOG_LEVEL", "WARNING")
            configure_logging("embedded", level=level, fmt=settings.log_format)
            settings = settings.model_copy(update={"trigger_port": 0, "history_port": 0, "smtp_port": 0})
            print(asyncio.run(demo(settings)))
        elif args.command == "up":
            configure_logging("embedded", level=settings.log_level, fmt=settings.log_format)
            asyncio.run(up(settings))
        elif args.command == "serve":
            configure_logging(args.service, level=settings.log_level, fmt=settings.log_format)
            asyncio.run(serve(args.service, settings))
        elif args.command == "submit":
            asyncio.run(submit(args.url, args.file))
        elif args.command == "runs":
            asyncio.run(runs(args.url, args.run_id))
    except AdxflowError as exc:
        print(f"adxflow: {exc.message}", file=sys.stderr)
        raise SystemExit(2) from None
