"""``adxflow flows test FILE``: a test run of a flow file, its previews written into a folder.

The file goes to the trigger API's ``POST /v1/flows:test`` (checked as a save
would check it, not saved); the run is followed on the history API (the
``Location`` the trigger answers with, or ``--history-url``) until it ends, and
what it would have delivered is downloaded: each email as ``.eml`` and its HTML
body as ``.html``, each webhook payload as ``.json``, each database write's
first rows as ``.csv``. Each file's path is printed, then how the run ended.
"""

from __future__ import annotations

import asyncio
import csv
import email
import email.policy
import io
from collections.abc import Iterator
from html import escape
from pathlib import Path
from typing import Any

import aiohttp

from services.launcher.client import (
    WAIT_SECONDS,
    _call,
    _headers,
    _refusal,
    format_problem,
    parse_params,
    wait_for_run,
)
from services.trigger.drafts import DraftProblem


async def run_flow_test(
    trigger_url: str,
    path: Path,
    params: list[str],
    *,
    send_test_to: str | None = None,
    out: Path | None = None,
    history_url: str | None = None,
    timeout: float = WAIT_SECONDS,
) -> Path:
    """Run *path* as a test and write its previews into *out*; the folder (SystemExit(1) if it failed)."""
    try:
        text = await asyncio.to_thread(path.read_text, encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise SystemExit(f"adxflow: {path}: cannot read: {exc}") from None
    # JSON is YAML too: the text goes as it is, so the problems' lines are the file's.
    request = {"flow": text, "parameters": parse_params(params), "send_test_to": send_test_to}
    async with aiohttp.ClientSession(headers=_headers()) as session:
        status, body = await _call(session, "POST", f"{trigger_url}/v1/flows:test", json=request)
        if status == 400 and isinstance(body, dict) and "problems" in body:
            for problem in body["problems"]:
                print(format_problem(path, DraftProblem.model_validate(problem)))
            raise SystemExit(1)
        if status != 202:
            raise SystemExit(f"adxflow: {_refusal(status, body)}")
        run_id = body["run_id"]
        run_url = f"{history_url}/v1/runs/{run_id}" if history_url else body["location"]
        print(f"test run {run_id} started", flush=True)
        run = await wait_for_run(session, run_url, timeout)
        folder = out or Path(f"adxflow-test-{run_id}")
        folder.mkdir(parents=True, exist_ok=True)
        origin = run_url.split("/v1/runs/")[0]
        for written in await _previews(session, origin, run, folder):
            print(written, flush=True)
    print(f"run {run['status']}: previews in {folder}")
    if run["status"] == "failed":
        raise SystemExit(1)
    return folder


async def _previews(
    session: aiohttp.ClientSession, origin: str, run: dict[str, Any], folder: Path
) -> list[Path]:
    """Every preview of the run's steps, written into *folder*; their paths."""
    written = []
    for step in _latest_attempts(run):
        name = step["step_id"]
        for artifact, link in step.get("artifacts", {}).items():
            if artifact.startswith(("email", "webhook")):
                data = await _download(session, origin + link["href"])
                if artifact.startswith("email"):
                    written.append(_write(folder / f"{name}.{artifact}.eml", data))
                    written.append(_write(folder / f"{name}.{artifact}.html", _html_of(data)))
                else:
                    written.append(_write(folder / f"{name}.{artifact}.json", data))
        sample = (step.get("detail") or {}).get("sample")
        if isinstance(sample, dict):
            written.append(_write(folder / f"{name}.sample.csv", _csv_of(sample)))
        held = (step.get("detail") or {}).get("dry_run")
        if held:
            print(f"{name}: {held}")
    return written


def _latest_attempts(run: dict[str, Any]) -> Iterator[dict[str, Any]]:
    latest: dict[str, dict[str, Any]] = {}
    for step in run["steps"]:
        if step["step_id"] not in latest or step["attempt"] > latest[step["step_id"]]["attempt"]:
            latest[step["step_id"]] = step
    yield from latest.values()


async def _download(session: aiohttp.ClientSession, url: str) -> bytes:
    async with session.get(url) as response:
        if response.status != 200:
            raise SystemExit(f"adxflow: {url}: HTTP {response.status}")
        return await response.read()


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _html_of(raw: bytes) -> bytes:
    """An email's HTML body (its text body in <pre> when it has none)."""
    message = email.message_from_bytes(raw, policy=email.policy.default)
    body = message.get_body(("html", "plain"))
    if body is None:
        return b""
    content = str(body.get_content())
    if body.get_content_type() == "text/html":
        return content.encode("utf-8")
    return f"<pre>{escape(content)}</pre>".encode()


def _csv_of(sample: dict[str, Any]) -> bytes:
    """A write's first rows as CSV, its columns' names as the header."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow([str(column).rpartition(":")[0] or column for column in sample.get("columns", [])])
    writer.writerows(sample.get("rows", []))
    return buffer.getvalue().encode("utf-8")
