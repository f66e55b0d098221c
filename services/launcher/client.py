"""The command line's side of the HTTP APIs: flows, runs, jobs, alerts and silences.

Each function prints what a person at a terminal wants to see and raises
``SystemExit`` with a non-zero code when the server refused or a run failed.
The token for the APIs comes from ``ADXFLOW_API_TOKEN``.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import yaml

from common.contracts.errors import AdxflowError
from services.trigger.drafts import DraftProblem, examine
from services.trigger.flow_templates import FlowTemplate, flow_templates
from services.trigger.schedule import Schedule, ScheduleError

#: How long `run --wait` waits for a run to end.
WAIT_SECONDS = 3600.0


def _headers() -> dict[str, str]:
    token = os.environ.get("ADXFLOW_API_TOKEN")
    return {"Authorization": f"Bearer {token}"} if token else {}


def load_document(path: str) -> Any:
    text = sys.stdin.read() if path == "-" else Path(path).read_text(encoding="utf-8")
    return yaml.safe_load(text)


def flow_files(target: str) -> Iterator[Path]:
    path = Path(target)
    if path.is_dir():
        yield from sorted(p for p in path.iterdir() if p.suffix in (".yaml", ".yml", ".json"))
    else:
        yield path


def validate_file(path: Path) -> list[DraftProblem]:
    """Problems with one flow file found here, without a server: its document's own and its schedule's.

    Each names its field and, where the text has it, its line and column; empty when it is valid.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        return [DraftProblem(field="", message=f"cannot read: {exc}")]
    examined = examine(text, is_yaml=path.suffix != ".json")
    flow = examined.flow
    if flow is not None and (flow.trigger.cron is not None or flow.trigger.every is not None):
        trigger = flow.trigger
        try:
            Schedule.build(cron=trigger.cron, every=trigger.every, timezone=trigger.timezone)
        except ScheduleError as exc:
            examined.add(exc.field, exc.problem)
    return examined.problems


def validate_remotely(trigger_url: str, path: Path) -> list[DraftProblem]:
    """Problems with one flow file as the server at *trigger_url* finds them (POST /v1/flows:validate)."""
    try:
        text = path.read_bytes()
    except OSError as exc:
        return [DraftProblem(field="", message=f"cannot read: {exc}")]
    return asyncio.run(_validate_on(trigger_url, path, text))


async def _validate_on(trigger_url: str, path: Path, text: bytes) -> list[DraftProblem]:
    media = "application/json" if path.suffix == ".json" else "application/yaml"
    async with aiohttp.ClientSession(headers=_headers()) as session:
        status, body = await _call(
            session, "POST", f"{trigger_url}/v1/flows:validate", data=text, headers={"Content-Type": media}
        )
    if status != 200:
        raise SystemExit(f"adxflow: {trigger_url}: {_refusal(status, body)}")
    return [DraftProblem.model_validate(problem) for problem in body["problems"]]


def format_problem(path: Path, problem: DraftProblem) -> str:
    """``FILE:LINE:COLUMN: field: message``, as compilers and editors read it."""
    where = f"{path}:{problem.line}:{problem.column}" if problem.line is not None else str(path)
    return f"{where}: {problem.field + ': ' if problem.field else ''}{problem.message}"


def validate(target: str, trigger_url: str | None = None) -> None:
    """Check every flow file of *target*: on the server at *trigger_url*, or here without one."""
    failed = False
    for path in flow_files(target):
        problems = validate_remotely(trigger_url, path) if trigger_url else validate_file(path)
        if problems:
            failed = True
            for problem in problems:
                print(format_problem(path, problem))
        else:
            print(f"{path}: ok")
    if failed:
        raise SystemExit(1)


async def _templates_on(trigger_url: str, name: str | None) -> list[FlowTemplate]:
    path = "/v1/flow-templates" + (f"/{name}" if name else "")
    async with aiohttp.ClientSession(headers=_headers()) as session:
        status, body = await _call(session, "GET", f"{trigger_url}{path}")
    if status != 200:
        raise SystemExit(f"adxflow: {_refusal(status, body)}")
    listed = body["templates"] if name is None else [body]
    return [FlowTemplate.model_validate(template) for template in listed]


def list_templates(trigger_url: str | None = None) -> None:
    """The flow templates (the shipped examples): the server's, or this installation's."""
    templates = asyncio.run(_templates_on(trigger_url, None)) if trigger_url else flow_templates().values()
    for template in templates:
        needs = f"  (needs {'; '.join(template.needs)})" if template.needs else ""
        print(f"{template.name:<30} {template.description}{needs}")


def show_template(name: str, trigger_url: str | None = None) -> None:
    """One template's YAML, as it is shipped: redirect it into a file to start a flow."""
    if trigger_url:
        [template] = asyncio.run(_templates_on(trigger_url, name))
    else:
        found = flow_templates().get(name)
        if found is None:
            raise SystemExit(f"adxflow: no flow template {name!r}; `adxflow flows templates` lists them")
        template = found
    sys.stdout.write(template.yaml)


async def _call(session: aiohttp.ClientSession, method: str, url: str, **kwargs: Any) -> tuple[int, Any]:
    async with session.request(method, url, **kwargs) as response:
        try:
            body = await response.json()
        except (aiohttp.ContentTypeError, json.JSONDecodeError):
            body = {"error": {"message": await response.text()}}
        return response.status, body


def _refusal(status: int, body: Any) -> str:
    error = body.get("error", {}) if isinstance(body, dict) else {}
    fields = error.get("fields") or []
    if fields:
        return "; ".join(f"{f['field']}: {f['message']}" for f in fields)
    return str(error.get("message") or f"HTTP {status}")


async def apply(trigger_url: str, target: str, *, if_match: int | None = None) -> None:
    """PUT every flow file of *target*; with *if_match*, only over that version of the one flow."""
    paths = list(flow_files(target))
    if if_match is not None and len(paths) != 1:
        raise SystemExit("adxflow: --if-match takes one flow file (the version it was edited from)")
    headers = {"If-Match": f'"{if_match}"'} if if_match is not None else {}
    failed = False
    async with aiohttp.ClientSession(headers=_headers()) as session:
        for path in paths:
            text = sys.stdin.read() if str(path) == "-" else path.read_text(encoding="utf-8")
            document = yaml.safe_load(text)
            name = document.get("name") if isinstance(document, dict) else None
            if not name:
                print(f"{path}: the document has no name")
                failed = True
                continue
            # Sent as written: the flow's version keeps a YAML file's text, comments and all.
            sent: dict[str, Any] = (
                {"json": document}
                if path.suffix == ".json"
                else {"data": text.encode(), "headers": {**headers, "Content-Type": "application/yaml"}}
            )
            sent.setdefault("headers", headers)
            status, body = await _call(session, "PUT", f"{trigger_url}/v1/flows/{name}", **sent)
            if status in (200, 201):
                verb = "created" if status == 201 else f"updated (version {body['version']})"
                print(f"{path}: {name} {verb}; {body.get('schedule')}")
            else:
                print(f"{path}: refused: {_refusal(status, body)}")
                failed = True
    if failed:
        raise SystemExit(1)


async def list_flows(trigger_url: str) -> None:
    async with aiohttp.ClientSession(headers=_headers()) as session:
        status, body = await _call(session, "GET", f"{trigger_url}/v1/flows")
    if status != 200:
        raise SystemExit(f"adxflow: {_refusal(status, body)}")
    for flow in body["flows"]:
        state = "enabled" if flow["enabled"] else "disabled"
        following = f"  next {flow['next_fire']}" if flow.get("next_fire") else ""
        print(f"{flow['name']:<28} {state:<9} {flow['schedule']}{following}")


def parse_params(pairs: list[str]) -> dict[str, str]:
    parameters = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            raise SystemExit(f"adxflow: --param takes NAME=VALUE, got {pair!r}")
        parameters[name] = value
    return parameters


def format_step(step: dict[str, Any]) -> str:
    took = step.get("duration_ms")
    line = f"  {step['step_id']:<20} {step['service']:<13} {step['status']:<10}"
    line += f" {took:>9.1f} ms" if took is not None else f" {'-':>9}   "
    if step.get("row_count") is not None:
        line += f"  {step['row_count']} rows"
    if step.get("error"):
        line += f"  {step['error']['code']}: {step['error']['message']}"
    elif step.get("status") == "skipped" and step.get("detail", {}).get("reason"):
        line += f"  ({step['detail']['reason']})"
    return line


def format_run(run: dict[str, Any]) -> str:
    duration = run.get("duration_ms")
    lines = [
        f"run {run['run_id']}  {run['status']}"
        + (f"  {duration:.0f} ms" if duration is not None else "")
        + f"  {run.get('flow') or ''}"
        + (f" — {run['description']}" if run.get("description") else "")
    ]
    lines.extend(format_step(step) for step in run.get("steps", []))
    return "\n".join(lines)


async def wait_for_run(session: aiohttp.ClientSession, url: str, timeout: float) -> dict[str, Any]:
    """The run at *url* (the history API) once it has ended; AdxflowError after *timeout* seconds."""
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


async def start(
    trigger_url: str, history_url: str, name: str, params: list[str], *, wait: bool, key: str | None
) -> None:
    headers = {**_headers(), **({"Idempotency-Key": key} if key else {})}
    async with aiohttp.ClientSession(headers=headers) as session:
        body_in = {"parameters": parse_params(params)}
        status, body = await _call(session, "POST", f"{trigger_url}/v1/flows/{name}/runs", json=body_in)
        if status != 202:
            raise SystemExit(f"adxflow: {_refusal(status, body)}")
        print(f"run {body['run_id']} started{' (repeated request)' if body.get('repeated') else ''}")
        if wait:
            await _follow(session, f"{history_url}/v1/runs/{body['run_id']}")


async def _follow(session: aiohttp.ClientSession, url: str) -> None:
    """Print each step as it ends; exit non-zero when the run fails."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + WAIT_SECONDS
    shown: set[tuple[str, int]] = set()
    while loop.time() < deadline:
        status, run = await _call(session, "GET", url)
        if status == 200:
            for step in run["steps"]:
                key = (step["step_id"], step["attempt"])
                if step["status"] in ("succeeded", "failed", "skipped") and key not in shown:
                    shown.add(key)
                    print(format_step(step), flush=True)
            if run["status"] in ("succeeded", "failed"):
                print(f"run {run['status']} in {run['duration_ms']:.0f} ms")
                if run["status"] == "failed":
                    raise SystemExit(1)
                return
        await asyncio.sleep(0.2)
    raise SystemExit(f"adxflow: the run did not end within {WAIT_SECONDS:g} s")


async def list_runs(history_url: str, flow: str | None, status: str | None, limit: int) -> None:
    query = {
        "limit": str(limit),
        **({"flow": flow} if flow else {}),
        **({"status": status} if status else {}),
    }
    async with aiohttp.ClientSession(headers=_headers()) as session:
        code, body = await _call(session, "GET", f"{history_url}/v1/runs", params=query)
    if code != 200:
        raise SystemExit(f"adxflow: {_refusal(code, body)}")
    for run in body["runs"]:
        submitted = dt.datetime.fromisoformat(run["submitted_at"].replace("Z", "+00:00"))
        when = submitted.astimezone().strftime("%Y-%m-%d %H:%M:%S")
        took = f"{run['duration_ms']:.0f} ms" if run.get("duration_ms") is not None else "-"
        flow_name = run.get("flow") or ""
        print(f"{run['run_id']}  {when}  {run['status']:<9} {took:>9}  {flow_name} ({run['trigger']})")


async def show_run(history_url: str, run_id: str) -> None:
    async with aiohttp.ClientSession(headers=_headers()) as session:
        status, body = await _call(session, "GET", f"{history_url}/v1/runs/{run_id}")
    if status != 200:
        raise SystemExit(f"adxflow: {_refusal(status, body)}")
    print(format_run(body))


async def submit(trigger_url: str, path: str) -> None:
    async with aiohttp.ClientSession(headers=_headers()) as session:
        status, body = await _call(session, "POST", f"{trigger_url}/v1/jobs", json=load_document(path))
    print(json.dumps(body, indent=2))
    if status != 202:
        raise SystemExit(1)


def _local(text: str | None) -> str:
    """An instant the API answered, in this machine's zone; a dash when there is none."""
    if not text:
        return "-"
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00")).astimezone().strftime("%Y-%m-%d %H:%M:%S")


def _covers(silence: dict[str, Any]) -> str:
    """What a silence covers, in a word: ``flow``, ``flow/step``, ``flow/step [key]``."""
    where = silence["flow"] + (f"/{silence['step']}" if silence.get("step") else "")
    return where + (f" [{silence['key']}]" if silence.get("key") else "")


async def add_silence(
    trigger_url: str,
    flow: str,
    *,
    step: str | None,
    key: str | None,
    until: str | None,
    lasts: str | None,
    comment: str,
) -> None:
    asked = {"flow": flow, "step": step, "key": key, "until": until, "for": lasts, "comment": comment}
    body_in = {name: value for name, value in asked.items() if value is not None}
    async with aiohttp.ClientSession(headers=_headers()) as session:
        status, body = await _call(session, "POST", f"{trigger_url}/v1/silences", json=body_in)
    if status != 201:
        raise SystemExit(f"adxflow: {_refusal(status, body)}")
    print(f"silence {body['id']} set over {_covers(body)} until {_local(body['ends_at'])}")


async def list_silences(trigger_url: str, flow: str | None, *, everything: bool) -> None:
    query = {"state": "all" if everything else "active", **({"flow": flow} if flow else {})}
    async with aiohttp.ClientSession(headers=_headers()) as session:
        status, body = await _call(session, "GET", f"{trigger_url}/v1/silences", params=query)
    if status != 200:
        raise SystemExit(f"adxflow: {_refusal(status, body)}")
    for silence in body["silences"]:
        ended = silence["ended_at"] if silence["state"] == "ended" else silence["ends_at"]
        print(
            f"{silence['id']}  {silence['state']:<7}  until {_local(ended)}  {_covers(silence)}"
            f"  by {silence['created_by']}: {silence['comment']}"
        )


async def end_silence(trigger_url: str, silence_id: str) -> None:
    async with aiohttp.ClientSession(headers=_headers()) as session:
        status, body = await _call(session, "DELETE", f"{trigger_url}/v1/silences/{silence_id}")
    if status != 204:
        raise SystemExit(f"adxflow: {_refusal(status, body)}")
    print(f"silence {silence_id} ended")


async def show_alerts(trigger_url: str, flow: str) -> None:
    async with aiohttp.ClientSession(headers=_headers()) as session:
        status, body = await _call(session, "GET", f"{trigger_url}/v1/flows/{flow}/alerts")
    if status != 200:
        raise SystemExit(f"adxflow: {_refusal(status, body)}")
    print(format_alerts(body))


#: The columns of an alert's instances and their widths (the last one as long as it is).
_INSTANCE_COLUMNS = (
    ("instance", 24),
    ("state", 8),
    ("since", 19),
    ("last notified", 19),
    ("next repeat", 19),
)


def _columns(values: list[str]) -> str:
    widths = [width for _, width in _INSTANCE_COLUMNS]
    padded = [f"{value:<{width}}" for value, width in zip(values, widths, strict=False)]
    return "  " + "  ".join([*padded, *values[len(widths) :]])


def format_alerts(body: dict[str, Any]) -> str:
    """Each alert of a flow and its instances: state, since, last notified, next repeat, silenced."""
    if not body["alerts"]:
        return f"flow {body['flow']} has no alerts"
    lines = []
    for alert in body["alerts"]:
        keyed = f"  keyed by {', '.join(alert['key_columns'])}" if alert["key_columns"] else ""
        lines.append(f"{alert['step']}  {alert['state']}{keyed}")
        if not alert["instances"]:
            lines.append("  (every instance ok)")
            continue
        lines.append(_columns([name for name, _ in _INSTANCE_COLUMNS] + ["silenced"]))
        for instance in alert["instances"]:
            silence = instance["silenced_by"]
            silenced = f"until {_local(instance['silenced_until'])} ({silence})" if silence else "-"
            times = [_local(instance[name]) for name in ("since", "notified_at", "next_repeat")]
            lines.append(_columns([instance["key"] or "(the alert)", instance["state"], *times, silenced]))
    return "\n".join(lines)
