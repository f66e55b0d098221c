"""The history's web pages in a real browser: Debian's Chromium driven by Playwright,
against `adxflow up` started as a user starts it.

Screenshots of every page land in tests/artifacts/web-ui/; the harness is tests/e2e/pages.py.
"""

from __future__ import annotations

import re
import uuid
from pathlib import Path

import pytest
from playwright.async_api import expect

from tests.e2e.pages import (
    SCREENSHOTS,
    adxflow_up,
    chromium,
    image_loaded,
    needs_chromium,
    screenshot,
    watch_console,
)

pytestmark = [pytest.mark.timeout(240), needs_chromium]

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
