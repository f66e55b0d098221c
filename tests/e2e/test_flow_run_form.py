"""A flow's run-now form in a real browser (Debian's Chromium, Playwright) against `adxflow up`: the
datetime taken in the flow's zone, not the browser's, an invalid value shown at its field, and the
started run followed on its page until it ends."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from playwright.async_api import expect

from tests.e2e.pages import adxflow_up, chromium, needs_chromium, screenshot, watch_console

pytestmark = [
    pytest.mark.timeout(240),
    needs_chromium,
]

#: Started by hand, in Berlin's time: a report window's start the caller gives, and a row limit.
REPORT = {
    "name": "storms-since",
    "description": "Storm events since a moment the caller picks",
    "connection": "local",
    "database": "Samples",
    "trigger": {"timezone": "Europe/Berlin"},
    "parameters": {
        "since": {"type": "datetime", "description": "The start of the report, in Berlin's time"},
        "limit": {"type": "int", "default": 5, "description": "How many events at most"},
    },
    "steps": [{"id": "events", "action": "run_query", "query": "StormEvents | take 5"}],
}


#: Every morning at 08:00 in Berlin, with every parameter's default.
DAILY = {
    **REPORT,
    "name": "storms-daily",
    "trigger": {"cron": "0 8 * * *", "timezone": "Europe/Berlin"},
    "parameters": {
        "since": {"type": "datetime", "default": "2026-07-01T06:00:00Z"},
        "deadly": {"type": "bool", "default": False, "description": "Only events that killed someone"},
        "window": {"type": "timespan", "default": "1d"},
    },
}


async def test_a_run_is_started_from_the_flows_form_in_its_zone_and_followed_to_its_end(
    tmp_path: Path, sample_database: Path
) -> None:
    async with adxflow_up(tmp_path, sample_database) as live, chromium() as browser:
        await live.save_flow(REPORT)
        # The viewer is in New York; the flow runs in Berlin's time.
        context = await browser.new_context(
            timezone_id="America/New_York", viewport={"width": 1280, "height": 900}
        )
        page = await context.new_page()
        problems = watch_console(page)

        # From the flows list to the flow's form.
        await page.goto(f"{live.history_url}/ui/flows")
        await page.locator('tr[data-flow="storms-since"]').get_by_role("link", name="Run now").click()
        await page.wait_for_url(f"{live.history_url}/ui/flows/storms-since#run")
        form = page.locator("form[data-run-form]")
        await expect(form).to_be_visible()
        since = page.get_by_label("since")
        limit = page.get_by_label("limit")
        await expect(since).to_have_attribute("type", "datetime-local")
        await expect(limit).to_have_value("5")
        await expect(page.locator("#param-since-help")).to_contain_text("In Europe/Berlin.")
        await expect(page.locator("#trigger")).to_contain_text("Runs only when started.")

        # 02:30 on 29 March does not exist in Berlin (the clocks skip from 02:00 to 03:00).
        await since.fill("2026-03-29T02:30")
        await limit.fill("7")
        await form.get_by_role("button", name="Run now").click()
        error = page.locator("#param-since-error")
        await expect(error).to_contain_text("since: 2026-03-29 02:30 does not exist in Europe/Berlin")
        await expect(since).to_have_attribute("aria-invalid", "true")
        await expect(since).to_be_focused()
        await expect(since).to_have_value("2026-03-29T02:30")
        await expect(limit).to_have_value("7")
        assert page.url == f"{live.history_url}/ui/flows/storms-since#run"
        await screenshot(page, "flow-run-form-error")

        # 09:30 on 15 January in Berlin is 08:30 UTC (in New York it would be 14:30 UTC).
        await since.fill("2026-01-15T09:30")
        await form.get_by_role("button", name="Run now").click()
        await page.wait_for_url(f"{live.history_url}/ui/runs/*")
        run_id = page.url.rsplit("/", 1)[1]
        # A mark the page keeps until it is loaded again: the run is followed without a reload.
        await page.evaluate("window.stillThisPage = true")
        await expect(page.locator("h1 .status")).to_have_text("✓ succeeded", timeout=30_000)
        assert await page.evaluate("window.stillThisPage === true")
        run = await live.known(run_id, ended=True)
        assert run["parameters"] == {"since": "2026-01-15T08:30:00Z", "limit": 7}
        assert run["trigger"] == "manual"

        # The flow's page: the run in its latest runs and numbers; the form usable on a phone.
        await page.goto(f"{live.history_url}/ui/flows/storms-since")
        await expect(page.locator(f'tr.recent-run[data-run="{run_id}"] .status')).to_have_text("✓ succeeded")
        await expect(page.locator('[data-stat="success_rate"]')).to_have_text("100.0 %")
        await screenshot(page, "flow-run-form")
        await page.set_viewport_size({"width": 390, "height": 844})
        await expect(form).to_be_visible()
        box = await since.bounding_box()
        assert box is not None
        assert box["x"] >= 0
        assert box["x"] + box["width"] <= 390
        assert await page.evaluate("document.documentElement.scrollWidth") <= 390
        # The latest runs fit without scrolling sideways (their trigger column left out).
        runs = page.locator("table.recent-runs")
        assert await runs.evaluate("table => table.scrollWidth <= table.parentElement.clientWidth")
        await screenshot(page, "flow-run-form-390")
        # Nothing failed but the one refused form, which the browser reports as a 400.
        refused = "Failed to load resource: the server responded with a status of 400 (Bad Request)"

        # A scheduled flow: its trigger in words, the next fires in the viewer's zone, defaults in Berlin's.
        await live.save_flow(DAILY)
        await page.set_viewport_size({"width": 1280, "height": 900})
        await page.goto(f"{live.history_url}/ui/flows/storms-daily")
        await expect(page.locator("#trigger")).to_contain_text("every day at 08:00 Europe/Berlin")
        fires = page.locator("ol.next-fires time")
        await expect(fires).to_have_count(5)
        await expect(fires.first).to_have_attribute("title", re.compile(r"\(shown in America/New_York\)$"))
        await expect(page.get_by_label("since")).to_have_value("2026-07-01T08:00")
        await expect(page.get_by_label("deadly")).not_to_be_checked()
        await screenshot(page, "flow-trigger")
        # The browser checks a timespan with the contracts' own pattern.
        window = page.get_by_label("window")
        mismatched = {}
        for typed in ("an hour", "90m", "1.02:03:04", "1h 30m"):
            await window.fill(typed)
            mismatched[typed] = await window.evaluate("input => input.validity.patternMismatch")
        assert mismatched == {"an hour": True, "90m": False, "1.02:03:04": False, "1h 30m": True}
        assert problems == [f"{refused} at {live.history_url}/ui/flows/storms-since/runs"], problems
