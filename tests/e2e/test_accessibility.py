"""Every page of the run history, populated, held to `tests.e2e.pages.check`: no serious or
critical axe-core violation, usable at 1280 px and at 390 px (a phone), keyboard focus shown.

Screenshots `<page>-1280.png` and `<page>-390.png` land in tests/artifacts/web-ui/.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from playwright.async_api import Page, expect

from tests.e2e.pages import (
    Live,
    adxflow_up,
    check,
    chromium,
    image_loaded,
    needs_axe,
    needs_chromium,
    watch_console,
)
from tests.e2e.test_web_ui import ALERTING, BROKEN, GOOD

pytestmark = [pytest.mark.timeout(420), needs_chromium, needs_axe]

SCOPED = {
    "name": "storm-rows",
    "description": "A count per state of the first storms, and two queries side by side",
    "connection": "local",
    "database": "Samples",
    "steps": [
        {
            "id": "rows",
            "action": "run_query",
            "query": "StormEvents | top 2 by EventId asc | project EventId, State",
        },
        {
            "id": "each",
            "for_each": "rows",
            "steps": [
                {
                    "id": "count",
                    "action": "run_query",
                    "parameters": {"state": {"type": "string", "value": "{{ row.State }}"}},
                    "query": "StormEvents | where State == state | count",
                }
            ],
        },
        {
            "id": "both",
            "parallel": [
                {"id": "sum", "steps": [{"id": "all", "action": "run_query", "query": "StormEvents|count"}]},
                {"id": "few", "steps": [{"id": "top", "action": "run_query", "query": "StormEvents|take 3"}]},
            ],
        },
    ],
}


@dataclass
class HeldHook:
    """A webhook receiver that answers only once released: a run posting to it stays running."""

    url: str = ""
    reached: asyncio.Event = field(default_factory=asyncio.Event)
    release: asyncio.Event = field(default_factory=asyncio.Event)


@contextlib.asynccontextmanager
async def held_hook() -> AsyncIterator[HeldHook]:
    hook = HeldHook()

    async def receive(request: web.Request) -> web.Response:
        await request.read()
        hook.reached.set()
        await hook.release.wait()
        return web.json_response({"ok": True})

    app = web.Application()
    app.router.add_post("/hold", receive)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    hook.url = f"http://127.0.0.1:{runner.addresses[0][1]}/hold"
    try:
        yield hook
    finally:
        hook.release.set()
        await runner.cleanup()


async def silence(live: Live, **asked: str) -> str:
    async with live.session.post(f"{live.trigger_url}/v1/silences", json=asked) as response:
        assert response.status == 201, await response.text()
        silence_id: str = (await response.json())["id"]
        return silence_id


async def visit(page: Page, url: str, status: int = 200) -> None:
    response = await page.goto(url)
    assert response is not None
    assert response.status == status, f"{url}: {response.status}"


async def test_every_page_is_accessible_and_usable_on_a_laptop_and_a_phone(
    tmp_path: Path, sample_database: Path
) -> None:
    token = uuid.uuid4().hex
    async with (
        held_hook() as hook,
        adxflow_up(
            tmp_path,
            sample_database,
            ADXFLOW_API_TOKEN=token,
            ADXFLOW_WEBHOOK_ALLOWED_HOSTS=json.dumps(["127.0.0.1"]),
        ) as live,
        chromium() as browser,
    ):
        # A populated history: a run that succeeded with a chart and an email, one that failed,
        # one with iterations and branches, one with alerts, one still running; a flow with
        # two versions, alerts with a silence in force and an ended one.
        await live.save_flow({**GOOD, "description": "Storm events by state"})
        for flow in (GOOD, BROKEN, ALERTING, SCOPED):
            await live.save_flow(flow)
        held: dict[str, Any] = {
            "name": "held-hook",
            "connection": "local",
            "database": "Samples",
            "steps": [{"id": "ping", "action": "post_webhook", "url": hook.url, "body": '{"ok": true}'}],
        }
        await live.save_flow(held)
        good = await live.run_to_end("storm-report")
        bad = await live.run_to_end("broken-report")
        scoped = await live.run_to_end("storm-rows")
        alerting = await live.run_to_end("deadly-check")
        assert [run["status"] for run in (good, bad, scoped, alerting)] == ["succeeded", "failed"] + [
            "succeeded"
        ] * 2
        await silence(live, flow="deadly-check", step="deadly", comment="known storm", **{"for": "4h"})
        ended = await silence(live, flow="deadly-check", comment="maintenance", **{"for": "1h"})
        async with live.session.delete(f"{live.trigger_url}/v1/silences/{ended}") as response:
            assert response.status in (200, 204), await response.text()
        running = await live.start("held-hook")
        async with asyncio.timeout(60):
            await hook.reached.wait()

        context = await browser.new_context(timezone_id="Europe/Berlin")
        page = await context.new_page()
        console = watch_console(page)
        found: list[str] = []
        base = live.history_url

        # Signing in: the form, then the form refusing a wrong token.
        await page.goto(f"{base}/ui/runs")
        await page.wait_for_url(re.compile(r"/ui/login\?next=/ui/runs$"))
        sign_in = page.get_by_role("button", name="Sign in")
        token_field = page.get_by_label("API token")
        found += await check(page, "login", controls=[token_field, sign_in])
        await token_field.fill("not-the-token")
        await sign_in.click()
        await expect(page.locator(".notice.error")).to_be_visible()
        found += await check(page, "login-refused", controls=[token_field, sign_in])
        await token_field.fill(token)
        await sign_in.click()
        await page.wait_for_url(f"{base}/ui/runs")
        console.clear()  # the 401s before signing in

        # The runs list, a run still running among them.
        await expect(page.locator(f'tr[data-run-id="{running}"] .status')).to_have_text("● running")
        filter_button = page.locator("form.filters").get_by_role("button", name="Filter")
        sign_out = page.get_by_role("button", name="Sign out")
        found += await check(page, "runs", controls=[filter_button, sign_out])
        await visit(page, f"{base}/ui/runs/{running}")
        await expect(page.locator("h1 .status")).to_have_text("● running")
        found += await check(page, "run-running", controls=[sign_out])

        await visit(page, f"{base}/ui/runs/{bad['run_id']}")
        rerun = page.get_by_role("button", name="Re-run from failed step")
        found += await check(page, "run-failed", controls=[rerun])

        await visit(page, f"{base}/ui/runs/{good['run_id']}")
        await image_loaded(page, "figure.chart img")
        preview = await page.locator("iframe.email-frame").get_attribute("src")
        assert preview is not None
        resend = page.get_by_role("button", name="Resend email")
        found += await check(page, "run-succeeded", controls=[resend])
        # The email preview's CSP sandboxes it without scripts: axe needs a context that
        # sets the policy aside (the run page's test holds the policy itself).
        unguarded = await browser.new_context(bypass_csp=True, storage_state=await context.storage_state())
        email = await unguarded.new_page()
        await visit(email, f"{base}{preview}")
        found += await check(email, "email-preview", navigation=False)
        await unguarded.close()

        await visit(page, f"{base}/ui/runs/{scoped['run_id']}")
        await expect(page.locator('table[data-iterations="each"] tbody tr')).to_have_count(2)
        iteration = await page.locator('table[data-iterations="each"] th a').first.get_attribute("href")
        found += await check(page, "run-scopes")
        await visit(page, f"{base}{iteration}")
        found += await check(page, "run-iteration")
        await visit(page, f"{base}/ui/runs/{alerting['run_id']}")
        found += await check(page, "run-alert")

        await visit(page, f"{base}/ui/flows")
        disable = page.locator('tr[data-flow="storm-report"]').get_by_role("button", name="Disable")
        found += await check(page, "flows", controls=[disable])

        await visit(page, f"{base}/ui/flows/storm-report")
        await expect(page.locator("pre.diff .diff-added")).not_to_have_count(0)
        restore = page.get_by_role("button", name="Restore version 1")
        compare = page.get_by_role("button", name="Compare")
        found += await check(page, "flow-versions", controls=[restore, compare])

        await visit(page, f"{base}/ui/flows/deadly-check")
        await expect(page.locator("#silences tr.silence")).to_have_count(2)
        end = page.locator("#silences").get_by_role("button", name="End")
        silence_one = page.locator("tr.instance").first.locator("details.silence-form summary")
        found += await check(page, "flow-alerts", controls=[end, silence_one])

        await visit(page, f"{base}/ui/runs/no-such-run", status=404)
        found += await check(page, "not-found")
        console[:] = [line for line in console if "status of 404" not in line]

        assert not found, "\n\n".join(found)
        assert console == [], console
        await context.close()


BAD_PAGE = """<!DOCTYPE html><html lang="en"><head><title>Bad</title><style>
  .faint { color: #bbb; background: #fff; }
  .wide { width: 900px; }
  a:focus, a:focus-visible { outline: none; }
</style></head><body>
<nav aria-label="Pages"><a href="#runs">Runs</a></nav>
<main><h1>Bad</h1><p class="faint">Hard to read</p><input type="text"><div class="wide">Too wide</div>
<button id="gone" hidden>Gone</button></main></body></html>"""


async def test_the_audit_names_each_problem_of_a_page() -> None:
    async with chromium() as browser:
        page = await browser.new_page()
        await page.set_content(BAD_PAGE)
        problems = "\n".join(await check(page, "audit-self-test", controls=[page.locator("#gone")]))
    # axe-core: the faint text and the field without a label, at both widths.
    assert problems.count("serious color-contrast") == 2, problems
    assert problems.count("critical label") == 2, problems
    # Only the phone is narrower than the wide box with the body's margin.
    assert "the document is 908 px wide at 390 px: div.wide" in problems, problems
    assert "at 1280 px: div.wide" not in problems
    assert problems.count("#gone") == 2, problems  # hidden at both widths
    # The link that hides its focus outline.
    assert 'keyboard focus on <a> "Runs" shows no outline' in problems, problems
