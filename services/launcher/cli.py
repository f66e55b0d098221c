"""The ``adxflow`` command: run services, run the demo, talk to the APIs."""

from __future__ import annotations

import argparse
import asyncio
import importlib
import os
import sys
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING, Any

from common.contracts.errors import AdxflowError
from common.platform.config import Settings, load_settings
from common.platform.logs import configure_logging

if TYPE_CHECKING:
    from common.platform.serving import Running

# The services, the HTTP client and the Kusto client are imported where they are used, so
# a container's `adxflow healthcheck` probe starts in a fraction of the time.

SERVICES = ("trigger", "query_worker", "render", "notifier", "history")
#: The commands that run embedded mode, and what its extra installs, by import name.
EMBEDDED_COMMANDS = ("up", "demo", "render-gallery")
EMBEDDED_EXTRA = ("duckdb", "aiosmtpd")

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


def _running(name: str) -> Running:
    # Only the named service is imported: a worker alone never loads the others' libraries.
    module = importlib.import_module(f"services.{name}.service")
    running: Running = module.running
    return running


def _require_embedded_extra() -> None:
    """Return if embedded mode's stand-ins can be imported; name the missing extra otherwise."""
    try:
        importlib.import_module("services.launcher.system")
    except ModuleNotFoundError as exc:
        if (exc.name or "").partition(".")[0] not in EMBEDDED_EXTRA:
            raise
        raise AdxflowError(
            "embedded mode needs the 'embedded' extra: pip install 'adxflow[embedded]'"
        ) from None


def healthcheck(settings: Settings, service: str | None) -> None:
    """Return if *service* in this container answers /healthz; raise otherwise (a container's probe).

    Without a service, any of the ports a service may serve on will do: a container runs one.
    """
    ports = {"trigger": settings.trigger_port, "history": settings.history_port}
    candidates = (
        [ports.get(service, settings.health_port)] if service else [*ports.values(), settings.health_port]
    )
    # Straight to loopback, whatever proxy the environment names.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    problems = []
    for port in candidates:
        url = f"http://127.0.0.1:{port}/healthz"
        try:
            with opener.open(url, timeout=5) as response:
                if response.status == 200:
                    return
                problems.append(f"{url}: {response.status}")
        except OSError as exc:
            problems.append(f"{url}: {exc}")
    raise AdxflowError("not healthy: " + "; ".join(problems))


async def migrate(settings: Settings, *, check: bool = False) -> bool:
    """Upgrade the configured database to this release's schema, or with *check* say what is pending.

    Prints from which revision to which; returns whether the schema is (now) at head.
    """
    import sqlalchemy as sa

    from common.platform.database import connect
    from common.platform.schema import migrate as upgrade
    from common.platform.schema import state

    engine = connect(settings.resolved_database_url)
    # The URL may carry a password: print it masked.
    where = engine.url.render_as_string(hide_password=True)
    try:
        found = await state(engine)
        if check:
            print(f"{where}: schema {found.describe()}; this release's is {found.head}")
            for revision in found.pending:
                print(f"  pending {revision}")
            return found.at_head
        migration = await upgrade(engine)
    except (sa.exc.SQLAlchemyError, OSError) as exc:
        reason = getattr(exc, "orig", None) or exc
        raise AdxflowError(f"migrate {where}: {reason}") from None
    finally:
        await engine.dispose()
    if found.newer:
        print(f"{where}: schema {found.describe()}; left as it is (adxflow never downgrades)")
    elif migration.applied:
        print(f"{where}: schema {found.describe()}; migrated to {migration.after}")
        for revision in migration.applied:
            print(f"  applied {revision}")
    else:
        print(f"{where}: schema already at {migration.after}")
    return True


async def up(settings: Settings) -> None:
    from common.platform.serving import until_stopped
    from services.launcher.system import embedded_system

    async with embedded_system(settings) as system:
        broker = "RabbitMQ" if settings.amqp_url else "in-process broker"
        print(f"adxflow up ({broker})")
        print(f"  trigger API   {system.trigger_url}/v1/jobs")
        print(f"  run history   {system.history_url}/  (API {system.history_url}/v1/runs)")
        print(f"  Kusto (local) {system.kusto.url}  connection 'local', database '{system.kusto.database}'")
        if system.outbox is not None:
            print(f"  outbox        {system.outbox.directory}  (SMTP on 127.0.0.1:{system.outbox.port})")
        else:
            print(f"  SMTP relay    {settings.smtp_host}:{settings.smtp_port}")
        print(f"  webhooks      {system.hooks.directory}  (posts to webhook names not configured)")
        print("Ctrl-C to stop.", flush=True)
        await until_stopped()


async def demo(settings: Settings, timeout: float = 120.0) -> Path:
    """Start embedded mode, run the sample jobs, print their runs; return the last email."""
    import aiohttp

    from services.launcher.client import format_run, wait_for_run
    from services.launcher.system import embedded_system

    async with embedded_system(settings) as system, aiohttp.ClientSession() as session:
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
            run = await wait_for_run(session, location, timeout)
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


def _parser() -> argparse.ArgumentParser:
    trigger_url = os.environ.get("ADXFLOW_TRIGGER_URL", "http://127.0.0.1:8080")
    history_url = os.environ.get("ADXFLOW_HISTORY_URL", "http://127.0.0.1:8081")
    parser = argparse.ArgumentParser(prog="adxflow", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("up", help="run all five services in one process on embedded defaults")
    serve_cmd = commands.add_parser("serve", help="run one service (for containers; needs ADXFLOW_AMQP_URL)")
    serve_cmd.add_argument("service", choices=SERVICES)
    commands.add_parser("demo", help="run two sample report jobs end to end and print the last email's path")
    migrate_cmd = commands.add_parser(
        "migrate", help="upgrade the database (ADXFLOW_DATABASE_URL) to this release's schema"
    )
    migrate_cmd.add_argument(
        "--check", action="store_true", help="only show the revision and what is pending; exit 1 if any"
    )
    health_cmd = commands.add_parser("healthcheck", help="exit 0 if the service in this container is alive")
    health_cmd.add_argument("service", nargs="?", choices=SERVICES)

    gallery_cmd = commands.add_parser(
        "render-gallery",
        help="draw every chart kind from the sample data, with an email preview, into a folder",
    )
    gallery_cmd.add_argument("out_dir", type=Path, help="where the pictures and index.html go")

    flows_cmd = commands.add_parser(
        "flows", help="apply, list and validate flows; their versions; start one from a template"
    )
    flows = flows_cmd.add_subparsers(dest="flows_command", required=True)
    apply_cmd = flows.add_parser("apply", help="create or replace flows from a file or a folder of files")
    apply_cmd.add_argument(
        "-f", "--file", required=True, help="a flow file (YAML or JSON) or a folder of them"
    )
    apply_cmd.add_argument("--url", default=trigger_url, help="trigger API (env ADXFLOW_TRIGGER_URL)")
    apply_cmd.add_argument(
        "--if-match",
        type=int,
        metavar="VERSION",
        help="replace the flow only if it is still at this version (one file; refused if saved since)",
    )
    list_cmd = flows.add_parser("list", help="the saved flows, their schedules and next fire times")
    list_cmd.add_argument("--url", default=trigger_url, help="trigger API (env ADXFLOW_TRIGGER_URL)")
    # These ask a server when one is named (--url, or ADXFLOW_TRIGGER_URL), and work offline otherwise.
    server = os.environ.get("ADXFLOW_TRIGGER_URL")
    server_help = "ask this trigger API (default: ADXFLOW_TRIGGER_URL if set, else check here)"
    validate_cmd = flows.add_parser(
        "validate", help="check flow files without saving them; each problem as FILE:LINE:COLUMN: field: ..."
    )
    validate_cmd.add_argument("file", help="a flow file or a folder of them")
    validate_cmd.add_argument("--url", default=server, help=server_help + " with the server's checks")
    validate_cmd.add_argument(
        "--offline", action="store_true", help="check here only: the document and its schedule"
    )
    test_cmd = flows.add_parser(
        "test",
        help="test-run a flow file unsaved: its queries run, nothing is delivered; previews into a folder",
    )
    test_cmd.add_argument("file", type=Path, help="a flow file (YAML or JSON)")
    test_cmd.add_argument("--param", action="append", default=[], metavar="NAME=VALUE")
    test_cmd.add_argument(
        "--send-test-to", metavar="ADDR", help="send the emails to this address only (the operator allows it)"
    )
    test_cmd.add_argument(
        "--out", type=Path, metavar="DIR", help="where the previews go (default ./adxflow-test-<run id>/)"
    )
    test_cmd.add_argument("--url", default=trigger_url, help="trigger API (env ADXFLOW_TRIGGER_URL)")
    test_cmd.add_argument(
        "--history-url",
        default=os.environ.get("ADXFLOW_HISTORY_URL"),
        help="history API (env ADXFLOW_HISTORY_URL; default: where the trigger says the run is)",
    )
    templates_cmd = flows.add_parser("templates", help="the example flows to start a flow from")
    template_cmd = flows.add_parser("template", help="print one template's YAML (> my-flow.yaml)")
    template_cmd.add_argument("name")
    for command in (templates_cmd, template_cmd):
        command.add_argument("--url", default=server, help=server_help.replace("check", "read"))
        command.add_argument("--offline", action="store_true", help="this installation's templates")
    history_cmd = flows.add_parser(
        "history", help="a flow's versions: when each was saved, by whom, what changed"
    )
    history_cmd.add_argument("name")
    history_cmd.add_argument("--url", default=trigger_url, help="trigger API (env ADXFLOW_TRIGGER_URL)")
    diff_cmd = flows.add_parser("diff", help="the unified diff of two versions of a flow")
    diff_cmd.add_argument("name")
    diff_cmd.add_argument("older", type=int, metavar="V1")
    diff_cmd.add_argument("newer", type=int, metavar="V2")
    diff_cmd.add_argument("--url", default=trigger_url, help="trigger API (env ADXFLOW_TRIGGER_URL)")
    restore_cmd = flows.add_parser("restore", help="save an older version of a flow again, as a new version")
    restore_cmd.add_argument("name")
    restore_cmd.add_argument("version", type=int, metavar="V")
    restore_cmd.add_argument(
        "--if-match", type=int, metavar="VERSION", help="only if the flow is still at this version"
    )
    restore_cmd.add_argument("--url", default=trigger_url, help="trigger API (env ADXFLOW_TRIGGER_URL)")

    run_cmd = commands.add_parser("run", help="run a saved flow now")
    run_cmd.add_argument("name")
    run_cmd.add_argument("--param", action="append", default=[], metavar="NAME=VALUE")
    run_cmd.add_argument(
        "--wait", action="store_true", help="show each step as it ends; exit 1 if the run fails"
    )
    run_cmd.add_argument("--idempotency-key", help="repeat-safe: the same key starts the run only once")
    run_cmd.add_argument("--url", default=trigger_url, help="trigger API (env ADXFLOW_TRIGGER_URL)")
    run_cmd.add_argument("--history-url", default=history_url, help="history API (env ADXFLOW_HISTORY_URL)")

    runs_cmd = commands.add_parser("runs", help="the run history")
    runs = runs_cmd.add_subparsers(dest="runs_command", required=True)
    runs_list = runs.add_parser("list", help="recent runs, newest first")
    runs_list.add_argument("--flow")
    runs_list.add_argument("--status", choices=["queued", "running", "succeeded", "failed"])
    runs_list.add_argument("--limit", type=int, default=20)
    runs_list.add_argument("--url", default=history_url, help="history API (env ADXFLOW_HISTORY_URL)")
    runs_show = runs.add_parser("show", help="one run with every step")
    runs_show.add_argument("run_id")
    runs_show.add_argument("--url", default=history_url, help="history API (env ADXFLOW_HISTORY_URL)")

    silences_cmd = commands.add_parser(
        "silences", help="silence a flow's alerts for a while; list and end silences"
    )
    silences = silences_cmd.add_subparsers(dest="silences_command", required=True)
    silence_add = silences.add_parser("add", help="silence a flow's alerts (one step's, one instance's)")
    silence_add.add_argument("flow")
    silence_add.add_argument("--step", help="one step of the flow with an alert (default: all of them)")
    silence_add.add_argument("--key", help="one instance, as the alert keys it: EventId=42 (default: all)")
    ends = silence_add.add_mutually_exclusive_group(required=True)
    ends.add_argument(
        "--until", metavar="TIME", help="when it ends: ISO 8601 with offset (2026-03-01T18:00+01:00)"
    )
    ends.add_argument("--for", dest="lasts", metavar="DURATION", help="how long it lasts: 30m, 2h, 1d")
    silence_add.add_argument("--comment", required=True, help="why (shown wherever the silence is)")
    silence_add.add_argument("--url", default=trigger_url, help="trigger API (env ADXFLOW_TRIGGER_URL)")
    silence_list = silences.add_parser("list", help="the silences in force, newest first")
    silence_list.add_argument("--flow")
    silence_list.add_argument("--all", action="store_true", help="the ended and expired ones too")
    silence_list.add_argument("--url", default=trigger_url, help="trigger API (env ADXFLOW_TRIGGER_URL)")
    silence_end = silences.add_parser("end", help="end a silence now")
    silence_end.add_argument("id")
    silence_end.add_argument("--url", default=trigger_url, help="trigger API (env ADXFLOW_TRIGGER_URL)")

    alerts_cmd = commands.add_parser(
        "alerts", help="a flow's alerts: each instance's state, since, last notified, next repeat, silence"
    )
    alerts_cmd.add_argument("flow")
    alerts_cmd.add_argument("--url", default=trigger_url, help="trigger API (env ADXFLOW_TRIGGER_URL)")

    submit_cmd = commands.add_parser("submit", help="submit an ad-hoc job (JSON or YAML file, '-' for stdin)")
    submit_cmd.add_argument("file")
    submit_cmd.add_argument("--url", default=trigger_url, help="trigger API (env ADXFLOW_TRIGGER_URL)")
    return parser


def _client(args: argparse.Namespace) -> None:
    from services.launcher import client, versions

    server = None if getattr(args, "offline", True) or not args.url else args.url.rstrip("/")
    if args.command == "flows" and args.flows_command == "validate":
        client.validate(args.file, server)
    elif args.command == "flows" and args.flows_command == "test":
        from services.launcher.dry_runs import run_flow_test

        history = args.history_url.rstrip("/") if args.history_url else None
        asyncio.run(
            run_flow_test(
                args.url.rstrip("/"),
                args.file,
                args.param,
                send_test_to=args.send_test_to,
                out=args.out,
                history_url=history,
            )
        )
    elif args.command == "flows" and args.flows_command == "templates":
        client.list_templates(server)
    elif args.command == "flows" and args.flows_command == "template":
        client.show_template(args.name, server)
    elif args.command == "flows" and args.flows_command == "apply":
        asyncio.run(client.apply(args.url.rstrip("/"), args.file, if_match=args.if_match))
    elif args.command == "flows" and args.flows_command == "history":
        asyncio.run(versions.history(args.url.rstrip("/"), args.name))
    elif args.command == "flows" and args.flows_command == "diff":
        asyncio.run(versions.diff(args.url.rstrip("/"), args.name, args.older, args.newer))
    elif args.command == "flows" and args.flows_command == "restore":
        asyncio.run(versions.restore(args.url.rstrip("/"), args.name, args.version, if_match=args.if_match))
    elif args.command == "flows":
        asyncio.run(client.list_flows(args.url.rstrip("/")))
    elif args.command == "run":
        url, history = args.url.rstrip("/"), args.history_url.rstrip("/")
        asyncio.run(
            client.start(url, history, args.name, args.param, wait=args.wait, key=args.idempotency_key)
        )
    elif args.command == "runs" and args.runs_command == "list":
        asyncio.run(client.list_runs(args.url.rstrip("/"), args.flow, args.status, args.limit))
    elif args.command == "runs":
        asyncio.run(client.show_run(args.url.rstrip("/"), args.run_id))
    elif args.command == "silences" and args.silences_command == "add":
        asyncio.run(
            client.add_silence(
                args.url.rstrip("/"),
                args.flow,
                step=args.step,
                key=args.key,
                until=args.until,
                lasts=args.lasts,
                comment=args.comment,
            )
        )
    elif args.command == "silences" and args.silences_command == "list":
        asyncio.run(client.list_silences(args.url.rstrip("/"), args.flow, everything=args.all))
    elif args.command == "silences":
        asyncio.run(client.end_silence(args.url.rstrip("/"), args.id))
    elif args.command == "alerts":
        asyncio.run(client.show_alerts(args.url.rstrip("/"), args.flow))
    elif args.command == "submit":
        asyncio.run(client.submit(args.url.rstrip("/"), args.file))


def main(argv: list[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    if args.command == "serve":
        # Exactly what `python -m services.NAME` does.
        from common.platform.serving import main as serve

        serve(args.service, _running(args.service))
        return
    try:
        if args.command in EMBEDDED_COMMANDS:
            _require_embedded_extra()
        settings = load_settings()
        if args.command == "demo":
            # The demo's own output is the report; keep logs to warnings unless asked.
            level = os.environ.get("ADXFLOW_LOG_LEVEL", "WARNING")
            configure_logging("embedded", level=level, fmt=settings.log_format)
            settings = settings.model_copy(update={"trigger_port": 0, "history_port": 0, "smtp_port": 0})
            print(asyncio.run(demo(settings)))
        elif args.command == "render-gallery":
            from services.launcher.gallery import render_gallery

            level = os.environ.get("ADXFLOW_LOG_LEVEL", "WARNING")
            configure_logging("embedded", level=level, fmt=settings.log_format)
            print(asyncio.run(render_gallery(args.out_dir, settings)))
        elif args.command == "up":
            configure_logging("embedded", level=settings.log_level, fmt=settings.log_format)
            asyncio.run(up(settings))
        elif args.command == "migrate":
            configure_logging("migrate", level=settings.log_level, fmt=settings.log_format)
            if not asyncio.run(migrate(settings, check=args.check)):
                raise SystemExit(1)
        elif args.command == "healthcheck":
            healthcheck(settings, args.service)
        else:
            _client(args)
    except AdxflowError as exc:
        print(f"adxflow: {exc.message}", file=sys.stderr)
        raise SystemExit(2) from None
    except BrokenPipeError:
        # The reader went away (`adxflow run ... | head`): stop quietly, as other command-line tools do.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        raise SystemExit(1) from None
