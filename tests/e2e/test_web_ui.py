"""The history's web pages in a real browser: Debian's Chromium driven by Playwright,
against `adxflow up` started as a user starts it.

Screenshots of every page land in tests/artifacts/web-ui/.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import signal
import socket
import sys
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from playwright.async_api import Browser, Page, async_playwright, expect

from tests.conftest import poll_until

CHROMIUM = Path("/usr/bin/chromium")
SCREENSHOTS = Path(__file__).resolve().parents[1] / "artifacts" / "web-ui"

pytestmark = [
    pytest.mark.timeout(240),
    pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium package (scripts/test.sh)"),
]

GOOD = {
    "name": "storm-report",
    "description": "Storm events by state, mailed every morning",
    "connection": "local",
    "database": "Samples",
    "trigger": {"cron": "0 8 * * *", "timezone": "Europe/Berlin", "missed": "skip"},
    "steps": [
        {
            "id": "by_state",
            "action": "run_query_and_render_chart",
            "query": "StormEvents | summarize Events = count() by State | top 5 by Events",
            "chart": "columnchart",
            "title": "Storm events by state",
        },
        {
            "id": "mail",
            "action": "send_email",
            "to": ["team@example.com"],
            "subject": "Storms by state <b>bold?</b>",
            "body_html": "<p>The five states with the most storm events.</p>{{ steps.by_state.body_html }}",
        },
    ],
}
BROKEN = {
    "name": "broken-report",
    "description": "Reads a table that does not exist",
    "connection": "local",
    "database": "Samples",
    "trigger": {"after": {"flow": "storm-report", "status": ["failed"]}},
    "steps": [
        {
            "id": "missing",
            "action": "run_query_and_render_chart",
            "query": "NoSuchTable | take 1",
            "chart": "html_table",
        },
        {"id": "mail", "action": "send_email", "to": ["team@example.com"], "subject": "Never sent"},
    ],
}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class Live:
    """`adxflow up` running in a subprocess, and a client for its APIs."""

    trigger_url: str
    history_url: str
    session: aiohttp.ClientSession

    async def save_flow(self, flow: dict[str, Any]) -> None:
        async with self.session.put(f"{self.trigger_url}/v1/flows/{flow['name']}", json=flow) as response:
            assert response.status in (200, 201), await response.text()

    async def flow(self, name: str) -> dict[str, Any]:
        async with self.session.get(f"{self.trigger_url}/v1/flows/{name}") as response:
            assert response.status == 200, await response.text()
            body: dict[str, Any] = await response.json()
            return body

    async def start(self, name: str) -> str:
        async with self.session.post(f"{self.trigger_url}/v1/flows/{name}/runs", json={}) as response:
            assert response.status == 202, await response.text()
            run_id: str = (await response.json())["run_id"]
            return run_id

    async def known(self, run_id: str, *, ended: bool = False) -> dict[str, Any]:
        """The run once history has heard of it (and, with *ended*, once it has ended)."""
        run: dict[str, Any] = {}

        async def there() -> bool:
            async with self.session.get(f"{self.history_url}/v1/runs/{run_id}") as response:
                if response.status != 200:
                    return False
                run.update(await response.json())
            return not ended or run["status"] in ("succeeded", "failed")

        await poll_until(there, 60, f"run {run_id} in the history")
        return run

    async def run_to_end(self, name: str) -> dict[str, Any]:
        return await self.known(await self.start(name), ended=True)


@contextlib.asynccontextmanager
async def adxflow_up(tmp_path: Path, sample_database: Path, **env: str) -> AsyncIterator[Live]:
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    shutil.copy(sample_database, data_dir / sample_database.name)
    trigger_port, history_port = free_port(), free_port()
    environment = {
        **{name: value for name, value in os.environ.items() if not name.startswith("ADXFLOW_")},
        "ADXFLOW_DATA_DIR": str(data_dir),
        "ADXFLOW_TRIGGER_PORT": str(trigger_port),
        "ADXFLOW_HISTORY_PORT": str(history_port),
        "ADXFLOW_SMTP_PORT": "0",
        "ADXFLOW_LOG_LEVEL": "WARNING",
        **env,
    }
    log = tmp_path / "adxflow-up.log"
    with log.open("wb") as errors:
        process = await asyncio.create_subprocess_exec(
            str(Path(sys.executable).parent / "adxflow"),
            "up",
            env=environment,
            stdout=asyncio.subprocess.PIPE,
            stderr=errors,
        )
    assert process.stdout is not None
    drain: asyncio.Task[bytes] | None = None
    try:
        printed = []
        async with asyncio.timeout(90):
            while not printed or not printed[-1].startswith("Ctrl-C to stop"):
                line = await process.stdout.readline()
                assert line, f"adxflow up ended early: {printed} {log.read_text()}"
                printed.append(line.decode().strip())
        assert any(f"127.0.0.1:{history_port}" in line for line in printed), printed
        drain = asyncio.create_task(process.stdout.read())
        headers = (
            {"Authorization": f"Bearer {env['ADXFLOW_API_TOKEN']}"} if "ADXFLOW_API_TOKEN" in env else {}
        )
        async with aiohttp.ClientSession(headers=headers) as session:
            yield Live(f"http://127.0.0.1:{trigger_port}", f"http://127.0.0.1:{history_port}", session)
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGINT)
            try:
                await asyncio.wait_for(process.wait(), 30)
            except TimeoutError:
                process.kill()
                await process.wait()
        if drain is not None:
            await drain


@contextlib.asynccontextmanager
async def chromium() -> AsyncIterator[Browser]:
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=str(CHROMIUM))
        try:
            yield browser
        finally:
            await browser.close()


def watch_console(page: Page) -> list[str]:
    """Errors the page reports: a script failing, or the CSP blocking something."""
    problems: list[str] = []
    page.on("pageerror", lambda error: problems.append(f"page error: {error}"))
    page.on(
        "console",
        lambda message: (
            problems.append(f"{message.text} at {message.location.get('url')}")
            if message.type == "error"
            else None
        ),
    )
    return problems


async def screenshot(page: Page, name: str) -> None:
    """The whole page. Chromium leaves sandboxed frames out of full-page shots, so the
    viewport grows to the page's height instead, for one painted frame."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    viewport = page.viewport_size
    assert viewport is not None
    height = await page.evaluate("document.documentElement.scrollHeight")
    await page.set_viewport_size({"width": viewport["width"], "height": max(height, viewport["height"])})
    await page.evaluate("() => new Promise(done => requestAnimationFrame(() => requestAnimationFrame(done)))")
    await page.screenshot(path=str(SCREENSHOTS / f"{name}.png"))
    await page.set_viewport_size(viewport)


async def image_loaded(page: Page, selector: str) -> None:
    await page.wait_for_function(
        "selector => { const img = document.querySelector(selector);"
        " return img !== null && img.complete && img.naturalWidth > 0; }",
        arg=selector,
    )


async def test_runs_run_detail_and_flows_in_a_browser(tmp_path: Path, sample_database: Path) -> None:
    async with adxflow_up(tmp_path, sample_database) as live, chromium() as browser:
        await live.save_flow(GOOD)
        await live.save_flow(BROKEN)
        good = await live.run_to_end("storm-report")
        bad = await live.run_to_end("broken-report")
        assert (good["status"], bad["status"]) == ("succeeded", "failed")

        context = await browser.new_context(
            timezone_id="Europe/Berlin", viewport={"width": 1280, "height": 900}
        )
        page = await context.new_page()
        problems = watch_console(page)

        # The runs list: `/` leads to it; both runs with their statuses, times in the viewer's zone.
        response = await page.goto(f"{live.history_url}/")
        assert response is not None
        assert page.url == f"{live.history_url}/ui/runs"
        policy = response.headers["content-security-policy"]
        assert "script-src 'self'" in policy
        assert "'unsafe-inline'" not in policy
        good_row = page.locator(f'tr[data-run-id="{good["run_id"]}"]')
        bad_row = page.locator(f'tr[data-run-id="{bad["run_id"]}"]')
        await expect(good_row.locator(".status")).to_have_text("✓ succeeded")
        await expect(bad_row.locator(".status")).to_have_text("✗ failed")
        await expect(good_row).to_contain_text("storm-report")
        await expect(bad_row).to_contain_text("KustoSemanticError")
        started = good_row.locator("time")
        await expect(started).to_have_attribute("title", f"{good['started_at']} (shown in Europe/Berlin)")
        assert "UTC" not in await started.inner_text()
        await screenshot(page, "runs")

        # Filters narrow the list.
        await page.select_option("select[name=status]", "failed")
        await page.click("form.filters button[type=submit]")
        await expect(page.locator("tr.run")).to_have_count(1)
        await expect(page.locator("tr.run")).to_have_attribute("data-run-id", bad["run_id"])

        # From the list to the failed run: the failed step marked, open, with its code and advice.
        await bad_row.locator("a.run-link").click()
        await page.wait_for_url(f"{live.history_url}/ui/runs/{bad['run_id']}")
        failed_step = page.locator("details.step.failed")
        await expect(failed_step).to_have_count(1)
        await expect(failed_step).to_have_attribute("open", "")
        await expect(failed_step).to_have_attribute("id", "step-missing")
        await expect(failed_step.locator(".error-code").first).to_have_text("KustoSemanticError")
        await expect(failed_step.locator(".advice")).to_contain_text("check the table and column names")
        await expect(failed_step.locator("pre.query")).to_have_text("NoSuchTable | take 1")
        await expect(page.locator(".failure")).to_contain_text("Failed at step missing")
        await expect(page.locator("tr.failed-step")).to_contain_text("query_worker")
        await expect(page.locator("#step-mail .status")).to_have_text("– skipped")
        await expect(page.get_by_role("button", name="Re-run from failed step")).to_be_visible()
        await screenshot(page, "run-failed")

        # Re-run from the failed step: a second attempt of that step, which fails the same way.
        await page.get_by_role("button", name="Re-run from failed step").click()
        await expect(failed_step.locator("summary")).to_contain_text("2 attempts", timeout=30_000)
        await expect(page.locator("h1 .status")).to_have_text("✗ failed", timeout=30_000)
        await expect(page.locator("tr.failed-step")).to_have_count(1)

        # The succeeded run: the chart loaded, the table, and the email as it was sent.
        await page.goto(f"{live.history_url}/ui/runs/{good['run_id']}")
        await image_loaded(page, "figure.chart img")
        table = page.frame_locator("iframe.table-frame")
        await expect(table.locator("table")).to_contain_text("Events")
        email = page.locator("section.email")
        await expect(email).to_contain_text("Storms by state <b>bold?</b>")
        await expect(email).to_contain_text("team@example.com")
        preview = page.frame_locator("iframe.email-frame")
        await expect(preview.locator("body")).to_contain_text("The five states with the most storm events.")
        await expect(preview.locator("img").first).to_have_attribute(
            "src", re.compile(r"^data:image/png;base64,")
        )
        await expect(page.get_by_role("button", name="Resend email")).to_be_visible()
        await expect(page.locator("svg.bar rect")).to_have_count(len(good["steps"]))
        await screenshot(page, "run-succeeded")

        # Resend the email: the notifier's step gets a second attempt, and the run stays succeeded.
        await page.get_by_role("button", name="Resend email").click()
        await expect(page.locator("#step-mail summary")).to_contain_text("2 attempts", timeout=30_000)
        await expect(page.locator("#step-mail summary .status")).to_have_text("✓ succeeded", timeout=30_000)
        await expect(page.locator("h1 .status")).to_have_text("✓ succeeded")

        # A run still going when its page is opened: the page follows it until it ends.
        started = await live.start("storm-report")
        await live.known(started)
        await page.goto(f"{live.history_url}/ui/runs/{started}")
        await expect(page.locator("h1 .status")).to_have_text("✓ succeeded", timeout=30_000)
        await image_loaded(page, "figure.chart img")

        # The flows: schedules in words, last run, and switching one off through the trigger API.
        await page.goto(f"{live.history_url}/ui/flows")
        report = page.locator('tr[data-flow="storm-report"]')
        broken = page.locator('tr[data-flow="broken-report"]')
        await expect(report).to_contain_text("every day at 08:00 Europe/Berlin")
        await expect(report.locator(".status")).to_have_text("✓ succeeded")
        await expect(broken).to_contain_text("after storm-report (failed)")
        await expect(broken.locator(".status")).to_have_text("✗ failed")
        await expect(report.locator("time")).to_have_count(2)
        await screenshot(page, "flows")
        await report.get_by_role("button", name="Disable").click()
        await expect(report.locator(".state")).to_have_text("disabled")
        await expect(report.get_by_role("button", name="Enable")).to_be_visible()
        assert (await live.flow("storm-report"))["enabled"] is False
        assert problems == [], problems

        # A state-changing request without the page's header is refused.
        refused = await page.evaluate(
            "async () => (await fetch('/ui/flows/storm-report/enabled',"
            " {method: 'POST', body: '{\"enabled\": true}'})).status"
        )
        assert refused == 403
        assert (await live.flow("storm-report"))["enabled"] is False
        await context.close()
    print(f"screenshots in {SCREENSHOTS}")


async def test_a_token_deployment_asks_browsers_to_sign_in(tmp_path: Path, sample_database: Path) -> None:
    token = uuid.uuid4().hex
    async with adxflow_up(tmp_path, sample_database, ADXFLOW_API_TOKEN=token) as live, chromium() as browser:
        await live.save_flow(GOOD)
        good = await live.run_to_end("storm-report")
        context = await browser.new_context()
        page = await context.new_page()
        problems = watch_console(page)

        # Without a session the API answers 401 and the pages lead to the login form.
        api = await page.goto(f"{live.history_url}/v1/runs")
        assert api is not None
        assert api.status == 401
        await page.goto(f"{live.history_url}/ui/runs/{good['run_id']}")
        await page.wait_for_url(re.compile(r"/ui/login\?next=/ui/runs/"))
        await screenshot(page, "login")

        await page.fill("input[name=token]", "not-the-token")
        await page.click("form.login button[type=submit]")
        await expect(page.locator(".notice.error")).to_contain_text("not the API token")
        assert not await context.cookies()

        problems.clear()  # the 401s asked for above
        await page.fill("input[name=token]", token)
        await page.click("form.login button[type=submit]")
        await page.wait_for_url(f"{live.history_url}/ui/runs/{good['run_id']}")
        [cookie] = await context.cookies()
        assert cookie["httpOnly"] is True
        assert cookie["sameSite"] == "Strict"
        assert token not in cookie["value"]
        # The pages' own requests go through with the cookie: the chart, the API, the runs list.
        await image_loaded(page, "figure.chart img")
        await page.goto(f"{live.history_url}/ui/runs")
        await expect(page.locator(f'tr[data-run-id="{good["run_id"]}"] .status')).to_have_text("✓ succeeded")
        status = await page.evaluate("async () => (await fetch('/v1/runs')).status")
        assert status == 200
        assert problems == [], problems
        # A cookie alone does not change state: the page's header is required too.
        forged = await page.evaluate(
            "async id => (await fetch(`/v1/runs/${id}/resend`, {method: 'POST'})).status", good["run_id"]
        )
        assert forged == 403

        await page.get_by_role("button", name="Sign out").click()
        await page.wait_for_url(re.compile(r"/ui/login$"))
        assert not await context.cookies()
        await context.close()


ALERTING = {
    "name": "deadly-check",
    "connection": "local",
    "database": "Samples",
    "steps": [
        {
            "id": "deadly",
            "action": "run_query",
            "query": "StormEvents | top 2 by EventId asc | project EventId, State",
            "alert": {"key_columns": ["EventId"]},
        },
    ],
}


async def test_a_flows_alerts_are_silenced_and_the_silence_ended_in_a_browser(
    tmp_path: Path, sample_database: Path
) -> None:
    async with adxflow_up(tmp_path, sample_database) as live, chromium() as browser:
        await live.save_flow(ALERTING)
        run = await live.run_to_end("deadly-check")
        assert run["status"] == "succeeded", run

        page = await browser.new_page(viewport={"width": 1280, "height": 900})
        problems = watch_console(page)
        await page.goto(f"{live.history_url}/ui/flows")
        await page.locator('tr[data-flow="deadly-check"] th a').first.click()
        await page.wait_for_url(f"{live.history_url}/ui/flows/deadly-check")
        alert = page.locator('section[data-alert-step="deadly"]')
        await expect(alert).to_have_attribute("data-alert-state", "firing")
        instances = alert.locator("tr.instance")
        await expect(instances).to_have_count(2)
        first = instances.first

        # Silence the first instance for four hours, saying why: the page comes back showing it.
        await first.locator("details.silence-form summary").click()
        await first.locator("select[name=for]").select_option("4h")
        await first.locator("input[name=comment]").fill("known <b>storm</b>")
        await first.get_by_role("button", name="Silence").click()
        silence = page.locator("#silences tr.silence")
        await expect(silence).to_have_count(1)
        await expect(silence).to_contain_text("known <b>storm</b>")
        # Since, last notified and silenced until; no repeat_every, so no next repeat.
        await expect(first.locator("td time")).to_have_count(3)
        await expect(first.locator("td").nth(4).locator("time")).to_have_count(1)
        await expect(instances.nth(1).locator("td").nth(4)).to_have_text("—")
        await screenshot(page, "flow-alerts")

        # End it: it moves to the ended ones.
        await silence.get_by_role("button", name="End").click()
        await expect(page.get_by_text("No silence is in force.")).to_be_visible()
        await expect(page.locator("#silences tr.silence")).to_contain_text("ended")
        assert problems == [], problems
