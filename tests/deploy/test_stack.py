"""The compose stack built and run for real: docker-compose.yml with the offline
stand-ins (deploy/offline), driven from the host over the published ports.

The examples are applied with the `adxflow` command; a report flow mails its
chart, a failing flow is recorded with its error; the query-worker killed in a
batch and RabbitMQ restarted in another lose no run and send no email twice;
render scaled to three replicas drains a batch faster than one (the ratio is
printed, not asserted). Needs docker and docker-compose (scripts/test.sh
installs them and starts dockerd); the tests run in order on one stack.
"""

from __future__ import annotations

import datetime as dt
import http.cookiejar
import os
import shutil
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from tests.deploy.stack import BUILD_SCRIPT, ROOT, Stack, run, wait_for

pytestmark = [pytest.mark.docker, pytest.mark.timeout(900)]

REPORT_FLOW = """
name: stack-report
connection: local
database: Samples
steps:
  - id: by_state
    action: run_query_and_render_chart
    query: StormEvents | summarize Events = count() by State | top 5 by Events
    chart: columnchart
    title: Events by state
  - id: mail
    action: send_email
    to: [team@example.com]
    subject: "stack {{ run.id }}"
    attachments: [by_state]
"""

FAILING_FLOW = """
name: stack-broken
connection: local
database: Samples
steps:
  - id: missing
    action: run_query
    query: NoSuchTable | take 1
"""

RENDER_FLOW = """
name: stack-chart
connection: local
database: Samples
steps:
  - id: chart
    action: run_query_and_render_chart
    query: >-
      range i from 1 to 2000 step 1
      | extend t = datetime(2024-01-01) + i * 1m, a = i % 97, b = i % 89, c = i % 83, d = i % 79,
          e = i % 73, f = i % 71, g = i % 67, h = i % 61
      | project t, a, b, c, d, e, f, g, h
    chart: linechart
    width: 1600
    height: 900
"""

BATCH = 40
SCALE_BATCH = 24
SCALE_WARM_UP = 6


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    for tool in ("docker", "docker-compose"):
        if shutil.which(tool) is None:
            pytest.fail(f"{tool} is not installed: ./scripts/test.sh installs it")
    started = time.monotonic()
    build = subprocess.run([str(BUILD_SCRIPT)], capture_output=True, text=True, check=False, timeout=900)
    assert build.returncode == 0, build.stderr[-4000:]
    print(f"\nimages built in {time.monotonic() - started:.0f} s", file=sys.stderr)
    stack = Stack(tmp_path_factory.mktemp("stack"))
    try:
        started = time.monotonic()
        stack.compose("up", "-d", "--no-build")
        stack.wait_healthy()
        print(f"stack healthy in {time.monotonic() - started:.0f} s", file=sys.stderr)
        yield stack
    finally:
        stack.compose("down", "--volumes", "--remove-orphans", "-t", "10")


@pytest.fixture(scope="module")
def urls(stack: Stack) -> dict[str, str]:
    return {
        "trigger": stack.url("trigger", 8080),
        "history": stack.url("history", 8081),
        "mail": stack.url("mailpit", 8025),
    }


def emails(stack: Stack, urls: dict[str, str]) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = stack.call("GET", f"{urls['mail']}/email")
    return found


def subjects(stack: Stack, urls: dict[str, str]) -> Counter[str]:
    return Counter(str(email["subject"]) for email in emails(stack, urls))


def apply(stack: Stack, urls: dict[str, str], document: str) -> None:
    stack.call("POST", f"{urls['trigger']}/v1/flows", document, content_type="application/yaml")


def test_the_examples_apply_from_the_host_and_a_report_and_a_failing_flow_are_recorded(
    stack: Stack, urls: dict[str, str]
) -> None:
    env = {
        **os.environ,
        "ADXFLOW_TRIGGER_URL": urls["trigger"],
        "ADXFLOW_HISTORY_URL": urls["history"],
        "ADXFLOW_API_TOKEN": stack.token,
    }
    adxflow = str(Path(sys.executable).with_name("adxflow"))
    applied = subprocess.run(
        [adxflow, "flows", "apply", "-f", "examples/"], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert applied.returncode == 0, applied.stderr
    names = {flow["name"] for flow in stack.call("GET", f"{urls['trigger']}/v1/flows")["flows"]}
    assert {"daily-storm-report", "storm-dashboard", "incident-notifications"} <= names

    apply(stack, urls, REPORT_FLOW)
    apply(stack, urls, FAILING_FLOW)
    report = stack.run_flow(urls["trigger"], "stack-report")
    broken = stack.run_flow(urls["trigger"], "stack-broken")
    ended = {run["run_id"]: run for run in stack.wait_runs(urls["history"], [report, broken], 120)}

    assert ended[report]["status"] == "succeeded", ended[report]
    steps = {step["step_id"]: step for step in ended[report]["steps"]}
    assert steps["by_state"]["row_count"] == 5
    assert steps["mail"]["status"] == "succeeded"
    assert ended[broken]["status"] == "failed"
    assert ended[broken]["failed_step"] == "missing"
    assert ended[broken]["error"]["code"], ended[broken]["error"]

    mail = wait_for(
        "the report's email in the catcher",
        lambda: next((e for e in emails(stack, urls) if e["subject"] == f"stack {report}"), None),
        30,
    )
    assert [to["address"] for to in mail["to"]] == ["team@example.com"]
    assert "<table" in mail["html"]
    assert {attachment["contentType"] for attachment in mail["attachments"]} >= {"text/csv", "image/png"}

    # The run's page, signed in with the token as a browser does.
    jar = http.cookiejar.CookieJar()
    browser = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar))
    form = urllib.parse.urlencode({"token": stack.token, "next": f"/ui/runs/{broken}"}).encode()
    with browser.open(f"{urls['history']}/ui/login", data=form, timeout=30) as page:
        assert page.status == 200
        html = page.read().decode()
    assert broken in html
    assert "NoSuchTable" in html or "missing" in html


def start_batch(stack: Stack, urls: dict[str, str], count: int) -> list[str]:
    """*count* runs asked for at once, so that the batch is queued before its first runs end, however
    slowly the host sends its requests."""
    with ThreadPoolExecutor(max_workers=8) as pool:
        return list(pool.map(lambda _: stack.run_flow(urls["trigger"], "stack-report"), range(count)))


def under_way(stack: Stack, urls: dict[str, str], run_ids: list[str]) -> None:
    """Once the batch's first run has ended: the fault then falls in the middle of the batch."""
    wait_for(
        "the batch's first run ended",
        lambda: (
            True
            if (found := stack.run_status(urls["history"], run_ids[0])) and found["status"] == "succeeded"
            else None
        ),
        120,
        0.1,
    )


def assert_each_recorded_and_mailed_once(
    stack: Stack, urls: dict[str, str], run_ids: list[str], *, after: dt.datetime
) -> None:
    ended = stack.wait_runs(urls["history"], run_ids, 240)
    assert sorted(run["status"] for run in ended) == ["succeeded"] * len(run_ids)
    # The fault fell in the batch: some of its runs ended after it (host and containers share a clock).
    late = [run for run in ended if dt.datetime.fromisoformat(run["finished_at"]) > after]
    assert late, "every run of the batch had ended before the fault: nothing was tested"
    print(f"\n{len(late)} of {len(run_ids)} runs ended after the fault", file=sys.stderr)
    wanted = {f"stack {run_id}" for run_id in run_ids}
    wait_for("every email of the batch", lambda: True if wanted <= set(subjects(stack, urls)) else None, 60)
    counted = subjects(stack, urls)
    assert {subject: counted[subject] for subject in wanted} == dict.fromkeys(wanted, 1)


def test_a_query_worker_killed_mid_batch_loses_no_run_and_sends_no_email_twice(
    stack: Stack, urls: dict[str, str]
) -> None:
    run_ids = start_batch(stack, urls, BATCH)
    under_way(stack, urls, run_ids)
    (worker,) = stack.containers("query-worker")
    killed_at = dt.datetime.now(dt.UTC)
    run(["docker", "kill", worker])
    # A container docker kill stopped is left stopped by its restart policy; compose starts it again.
    stack.compose("start", "query-worker")
    stack.wait_healthy()
    assert_each_recorded_and_mailed_once(stack, urls, run_ids, after=killed_at)


def test_rabbitmq_restarted_during_a_batch_loses_no_run_and_sends_no_email_twice(
    stack: Stack, urls: dict[str, str]
) -> None:
    run_ids = start_batch(stack, urls, BATCH)
    under_way(stack, urls, run_ids)
    restarted_at = dt.datetime.now(dt.UTC)
    stack.compose("restart", "-t", "10", "rabbitmq")
    stack.wait_healthy()
    assert_each_recorded_and_mailed_once(stack, urls, run_ids, after=restarted_at)


def drain(stack: Stack, urls: dict[str, str], count: int = SCALE_BATCH) -> float:
    """Seconds from the first request of *count* chart runs until the last is recorded."""
    started = time.monotonic()
    run_ids = [stack.run_flow(urls["trigger"], "stack-chart") for _ in range(count)]
    ended = stack.wait_runs(urls["history"], run_ids, 300)
    assert sorted(run["status"] for run in ended) == ["succeeded"] * count
    return time.monotonic() - started


def test_render_scaled_to_three_replicas_drains_a_batch(stack: Stack, urls: dict[str, str]) -> None:
    apply(stack, urls, RENDER_FLOW)
    drain(stack, urls, SCALE_WARM_UP)
    one = drain(stack, urls)
    # render alone: `up` would start the one-shot kusto-seed again, which holds the endpoint's lock.
    stack.compose("up", "-d", "--no-build", "--no-recreate", "--no-deps", "--scale", "render=3", "render")
    stack.wait_healthy()
    assert len(stack.containers("render")) == 3
    drain(stack, urls, SCALE_WARM_UP)  # the new replicas' first charts load fonts and modules
    three = drain(stack, urls)
    print(
        f"\nrender: {SCALE_BATCH} charts in {one:.1f} s with 1 replica, {three:.1f} s with 3: "
        f"{one / three:.2f}x",
        file=sys.stderr,
    )


def test_no_secret_reaches_a_container_log(stack: Stack) -> None:
    # After every flow and fault above: the passwords, the token and the account key
    # stay in the environment of the containers that use them, never in what they print.
    logs = stack.compose("logs", "--no-color")
    assert "stack-report" in logs or "step succeeded" in logs  # the logs are there to search
    for name in ("RABBITMQ_PASSWORD", "POSTGRES_PASSWORD", "ADXFLOW_API_TOKEN", "AZURITE_ACCOUNT_KEY"):
        assert stack.env[name] not in logs, f"{name} is in a container's log"
