"""The flow editor in Debian's Chromium against `adxflow up`: a template, a problem marked on its
line and fixed, a save, and two editors of one flow where the second is refused, its text kept."""

from __future__ import annotations

from pathlib import Path

import pytest
from playwright.async_api import Page, expect

from tests.e2e.pages import adxflow_up, chromium, needs_chromium, screenshot, watch_console

pytestmark = [
    pytest.mark.timeout(240),
    needs_chromium,
]

TEMPLATE = "daily-storm-report"


async def caret_line(page: Page) -> tuple[int, str]:
    """The line the editor's selection starts on, and the text selected."""
    found: list[object] = await page.evaluate(
        "() => { const t = document.querySelector('#definition');"
        " return [t.value.slice(0, t.selectionStart).split('\\n').length,"
        " t.value.slice(t.selectionStart, t.selectionEnd)]; }"
    )
    line, selected = found
    assert isinstance(line, int)
    assert isinstance(selected, str)
    return line, selected


async def fits(page: Page) -> None:
    """Nothing makes the whole page scroll sideways."""
    wide = await page.evaluate(
        "() => document.documentElement.scrollWidth - document.documentElement.clientWidth"
    )
    assert wide <= 0, f"the page scrolls {wide}px sideways"


async def test_a_flow_is_created_from_a_template_and_a_stale_edit_is_refused_in_a_browser(
    tmp_path: Path, sample_database: Path
) -> None:
    async with adxflow_up(tmp_path, sample_database) as live, chromium() as browser:
        async with live.session.get(f"{live.trigger_url}/v1/flow-templates/{TEMPLATE}") as response:
            assert response.status == 200
            template = await response.json()
        flow = template["flow"]
        text: str = template["yaml"]

        page = await browser.new_page(viewport={"width": 1280, "height": 900})
        problems = watch_console(page)
        await page.goto(f"{live.history_url}/ui/flows")
        await page.get_by_role("link", name="New flow").click()
        await page.wait_for_url(f"{live.history_url}/ui/flows/new")
        await screenshot(page, "flow-new")
        await page.locator(f'li[data-template="{TEMPLATE}"] a').first.click()
        await page.wait_for_url(f"{live.history_url}/ui/flows/new?template={TEMPLATE}")
        editor = page.locator("#definition")
        await expect(editor).to_have_value(text)
        form = page.locator("form[data-editor-form]")
        await expect(form).to_have_attribute("data-checked", "valid")
        summary = page.locator("[data-draft-summary]")
        await expect(summary).to_contain_text(flow)
        await expect(summary.locator("time")).to_have_count(5)

        # A step with an action that does not exist: its line is marked and named in the problem.
        broken = text.replace("action: send_email", "action: send_mail")
        line = broken.splitlines().index("    action: send_mail") + 1
        await editor.fill(broken)
        await expect(form).to_have_attribute("data-checked", "invalid")
        mark = page.locator(f'[data-gutter] li[data-line="{line}"]')
        await expect(mark).to_have_attribute("aria-invalid", "true")
        await expect(page.locator("[data-gutter] li[aria-invalid]")).to_have_count(1)
        problem = page.locator("#editor-problems li").first
        await expect(problem).to_contain_text(f"line {line}, column 13")
        await expect(problem).to_contain_text("steps[1].action")
        assert (await mark.get_attribute("aria-describedby")) == await problem.get_attribute("id")
        title = await mark.get_attribute("title")
        assert title is not None
        assert title.startswith(f"line {line}, column 13: steps[1].action 'send_mail' is not an action")
        await problem.get_by_role("button").click()
        at, selected = await caret_line(page)
        assert at == line
        assert selected == "send_mail"
        await expect(editor).to_be_focused()
        await screenshot(page, "flow-editor-problem")

        # Tab indents inside the editor (YAML takes no tab characters); Esc, then Tab, leaves it.
        await page.evaluate("() => document.querySelector('#definition').setSelectionRange(0, 0)")
        await page.keyboard.press("Tab")
        assert (await editor.input_value()).startswith("  " + broken.splitlines()[0])
        await expect(editor).to_be_focused()
        await page.keyboard.press("Escape")
        await page.keyboard.press("Tab")
        await expect(editor).not_to_be_focused()

        # Fixed again, it saves and the flow's page follows.
        await editor.fill(text)
        await expect(form).to_have_attribute("data-checked", "valid")
        await expect(page.locator("[data-gutter] li[aria-invalid]")).to_have_count(0)
        await page.get_by_role("button", name="Save").click()
        await page.wait_for_url(f"{live.history_url}/ui/flows/{flow}")
        assert (await live.flow(flow))["version"] == 1

        # Two editors loaded at version 1: the first saves, the second is refused, its text kept.
        second = await browser.new_page(viewport={"width": 1280, "height": 900})
        second_problems = watch_console(second)
        await page.get_by_role("link", name="Edit").first.click()
        await page.wait_for_url(f"{live.history_url}/ui/flows/{flow}/edit")
        await second.goto(f"{live.history_url}/ui/flows/{flow}/edit")
        await expect(page.locator("#definition")).to_have_value(text)
        mine = text.replace("importance: high", "importance: low")
        theirs = text.replace("top 10 by Events", "top 5 by Events")
        await page.locator("#definition").fill(mine)
        await page.get_by_role("button", name="Save").click()
        await page.wait_for_url(f"{live.history_url}/ui/flows/{flow}")
        await second.locator("#definition").fill(theirs)
        await second.get_by_role("button", name="Save").click()
        conflict = second.locator("[data-conflict]")
        await expect(conflict).to_contain_text("after version 1, the one this editor loaded")
        await expect(
            conflict.get_by_role("link", name="Open the current version in a new tab")
        ).to_have_attribute("href", f"/ui/flows/{flow}/edit")
        await expect(second.locator("#definition")).to_have_value(theirs)
        saved = await live.flow(flow)
        assert saved["version"] == 2
        assert saved["document"]["steps"][1]["importance"] == "low"
        await screenshot(second, "flow-edit-conflict")

        # At a phone's width both pages fit, the editor inside them.
        narrow = await browser.new_page(viewport={"width": 390, "height": 844})
        narrow_problems = watch_console(narrow)
        for path, name in (
            (f"/ui/flows/new?template={TEMPLATE}", "flow-new-390"),
            (f"/ui/flows/{flow}/edit", "flow-edit-390"),
        ):
            await narrow.goto(f"{live.history_url}{path}")
            await expect(narrow.locator("form[data-editor-form]")).to_have_attribute("data-checked", "valid")
            await fits(narrow)
            box = await narrow.locator("[data-editor]").bounding_box()
            assert box is not None
            assert box["x"] >= 0
            assert box["x"] + box["width"] <= 390
            await screenshot(narrow, name)
        await page.goto(f"{live.history_url}/ui/flows/{flow}/edit")
        await screenshot(page, "flow-edit")

        assert problems == [], problems
        # The browser logs the refused save's status as it logs any 4xx answer; nothing else may show.
        refused = f"the server responded with a status of 412 (Precondition Failed) at {live.history_url}"
        assert [entry for entry in second_problems if refused not in entry] == [], second_problems
        assert len(second_problems) == 1, second_problems
        assert narrow_problems == [], narrow_problems
