"""A flow written, tried and run in the browser from start to end, as a new user would: Debian's
Chromium driven by Playwright against `adxflow up`.

From a template, a problem shown on its line and fixed; a test run of the unsaved draft showing
its chart and its email, with nothing sent; the save; a second editor refused; an older version
restored; a run with a typed parameter followed to its end, which does send. Each page on the way
is held to `tests.e2e.pages.audit` (axe-core, 1280 and 390 px).
"""

from __future__ import annotations

import email
from email import policy
from pathlib import Path

import pytest
from playwright.async_api import expect

from tests.e2e.pages import (
    adxflow_up,
    audit,
    chromium,
    image_loaded,
    needs_axe,
    needs_chromium,
    watch_console,
)

pytestmark = [pytest.mark.timeout(420), needs_chromium, needs_axe]

TEMPLATE = "daily-storm-report"


async def test_a_flow_is_written_tried_saved_restored_and_run_in_a_browser(
    tmp_path: Path, sample_database: Path
) -> None:
    outbox = tmp_path / "data" / "outbox"
    async with adxflow_up(tmp_path, sample_database) as live, chromium() as browser:
        context = await browser.new_context(viewport={"width": 1280, "height": 900})
        page = await context.new_page()
        problems = watch_console(page)

        # A template, broken on one line: the problem is shown on that line.
        await page.goto(f"{live.history_url}/ui/flows")
        await page.get_by_role("link", name="New flow").click()
        await audit(page, "authoring-new", controls=[page.get_by_role("link", name="Start blank")])
        await page.locator(f'li[data-template="{TEMPLATE}"] a').first.click()
        editor = page.locator("#definition")
        form = page.locator("form[data-editor-form]")
        await expect(form).to_have_attribute("data-checked", "valid")
        text = await editor.input_value()
        broken = text.replace("chart: piechart", "chart: pie_chart")
        line = broken.splitlines().index("    chart: pie_chart") + 1
        await editor.fill(broken)
        await expect(form).to_have_attribute("data-checked", "invalid")
        await expect(page.locator(f'[data-gutter] li[data-line="{line}"]')).to_have_attribute(
            "aria-invalid", "true"
        )
        await expect(page.locator("#editor-problems li").first).to_contain_text(f"line {line}")
        await expect(page.locator("#editor-problems li").first).to_contain_text("steps[0].chart")
        save = page.get_by_role("button", name="Save")
        await audit(page, "authoring-editor-problem", controls=[editor, save])

        # Fixed and tried unsaved: the queries run, the chart and the email are shown, nothing is sent.
        await editor.fill(text)
        await expect(form).to_have_attribute("data-checked", "valid")
        await page.get_by_role("button", name="Test run").click()
        await page.wait_for_url(f"{live.history_url}/ui/runs/*")
        tested = page.url.rsplit("/", 1)[1]
        await expect(page.locator("h1 .status")).to_have_text("✓ succeeded", timeout=60_000)
        await expect(page.locator("p[data-test-run]")).to_contain_text("Test run — nothing was delivered")
        await image_loaded(page, "figure.chart img")
        unsent = page.locator("section.email[data-not-sent]")
        await expect(unsent).to_contain_text("team@example.com")
        preview = page.frame_locator("iframe.email-frame")
        await expect(preview.locator("body")).to_contain_text("USD of property damage")
        await audit(page, "authoring-test-run")
        run = await live.known(tested, ended=True)
        assert run["dry_run"] is True
        assert list(outbox.glob("*.eml")) == []
        async with live.session.get(f"{live.trigger_url}/v1/flows/{TEMPLATE}") as response:
            assert response.status == 404, "a test run saves nothing"

        # Saved from the editor.
        await page.go_back()
        await page.wait_for_url(f"{live.history_url}/ui/flows/new?template={TEMPLATE}")
        await expect(form).to_have_attribute("data-checked", "valid")
        await page.locator("#definition").fill(text)
        await page.get_by_role("button", name="Save").click()
        await page.wait_for_url(f"{live.history_url}/ui/flows/{TEMPLATE}")

        # Two editors of version 1: the first saves version 2, the second is told, its text kept.
        second = await context.new_page()
        second_problems = watch_console(second)
        await page.goto(f"{live.history_url}/ui/flows/{TEMPLATE}/edit")
        await second.goto(f"{live.history_url}/ui/flows/{TEMPLATE}/edit")
        await page.locator("#definition").fill(text.replace("top 10 by Events", "top 3 by Events"))
        await page.get_by_role("button", name="Save").click()
        await page.wait_for_url(f"{live.history_url}/ui/flows/{TEMPLATE}")
        theirs = text.replace("importance: high", "importance: low")
        await second.locator("#definition").fill(theirs)
        await second.get_by_role("button", name="Save").click()
        await expect(second.locator("[data-conflict]")).to_contain_text("version 1")
        await expect(second.locator("#definition")).to_have_value(theirs)
        await audit(second, "authoring-edit-conflict", controls=[second.locator("[data-conflict]")])
        assert (await live.flow(TEMPLATE))["version"] == 2

        # Version 1 restored from the flow's page: version 3, with version 1's definition.
        await page.goto(f"{live.history_url}/ui/flows/{TEMPLATE}")
        await page.locator('tr.version[data-version="1"]').get_by_role("button", name="Restore").click()
        await expect(page.locator('tr.version[data-version="3"]')).to_contain_text("(current)")
        restored = await live.flow(TEMPLATE)
        assert restored["version"] == 3
        assert "top 10 by Events" in restored["document"]["steps"][0]["query"]

        # Run with a typed parameter and followed on its page to its end: this one sends.
        run_now = page.locator("form[data-run-form]").get_by_role("button", name="Run now")
        await audit(page, "authoring-flow-restored", controls=[page.get_by_label("min_damage"), run_now])
        await page.get_by_label("min_damage").fill("250000")
        await page.locator("form[data-run-form]").get_by_role("button", name="Run now").click()
        await page.wait_for_url(f"{live.history_url}/ui/runs/*")
        ran = page.url.rsplit("/", 1)[1]
        await expect(page.locator("h1 .status")).to_have_text("✓ succeeded", timeout=60_000)
        await expect(page.locator("p[data-test-run]")).to_have_count(0)
        run = await live.known(ran, ended=True)
        assert run["parameters"] == {"min_damage": 250000}
        assert run["dry_run"] is False
        [sent] = list(outbox.glob("*.eml"))
        message = email.message_from_bytes(sent.read_bytes(), policy=policy.default)
        assert message["To"] == "team@example.com"
        html_part = message.get_body(("html",))
        assert html_part is not None
        assert "250,000 USD" in html_part.get_content()

        # The flow's numbers count the run, not the test run.
        await page.goto(f"{live.history_url}/ui/flows/{TEMPLATE}")
        await expect(page.locator('[data-stat="runs"]')).to_have_text("1")
        await audit(page, "authoring-flow-run")

        assert problems == [], problems
        # The browser reports the refused save's 412 as it reports any 4xx answer; nothing else may show.
        assert len(second_problems) == 1, second_problems
        assert "status of 412" in second_problems[0], second_problems
