"""The history's web pages in a real browser, for the tests that drive them: `adxflow up`
started as a user starts it, Debian's Chromium through Playwright, full-page screenshots,
and `audit`, which holds a page to the accessibility and phone-width checks.

    async with adxflow_up(tmp_path, sample_database) as live, chromium() as browser:
        page = await browser.new_page()
        await page.goto(f"{live.history_url}/ui/flows")
        await audit(page, "flows", controls=[page.get_by_role("button", name="Disable")])

`audit` leaves `<name>-1280.png` and `<name>-390.png` in tests/artifacts/web-ui/.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import sys
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from playwright.async_api import Browser, Locator, Page, async_playwright

from tests.conftest import poll_until

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = Path("/usr/bin/chromium")
#: axe-core from npm, installed by scripts/test.sh.
AXE = ROOT / ".tools" / "node_modules" / "axe-core" / "axe.min.js"
#: Where CI keeps the screenshots (tests/artifacts/ is ignored by git).
SCREENSHOTS = ROOT / "tests" / "artifacts" / "web-ui"

needs_chromium = pytest.mark.skipif(
    not CHROMIUM.exists(), reason="needs Debian's chromium package (scripts/test.sh)"
)
needs_axe = pytest.mark.skipif(
    not AXE.exists(), reason=f"needs axe-core from npm in {AXE.parent} (scripts/test.sh)"
)

#: The widths every page is checked and photographed at: a laptop, and a phone.
WIDTHS = {1280: 900, 390: 844}
#: The axe impacts that fail a page; moderate and minor ones are left to judgement.
FAILING_IMPACTS = ("serious", "critical")


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


_TWO_FRAMES = "() => new Promise(done => requestAnimationFrame(() => requestAnimationFrame(done)))"


async def painted(page: Page) -> None:
    """Until the page has painted what it laid out last (after a resize, say)."""
    async with asyncio.timeout(10):
        await page.evaluate(_TWO_FRAMES)


async def screenshot(page: Page, name: str) -> None:
    """The whole page. Chromium leaves sandboxed frames out of full-page shots, so the
    viewport grows to the page's height instead, for one painted frame."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    viewport = page.viewport_size
    assert viewport is not None
    height = await page.evaluate("document.documentElement.scrollHeight")
    await page.set_viewport_size({"width": viewport["width"], "height": max(height, viewport["height"])})
    await painted(page)
    await page.screenshot(path=str(SCREENSHOTS / f"{name}.png"))
    await page.set_viewport_size(viewport)


async def image_loaded(page: Page, selector: str) -> None:
    await page.wait_for_function(
        "selector => { const img = document.querySelector(selector);"
        " return img !== null && img.complete && img.naturalWidth > 0; }",
        arg=selector,
    )


# axe-core runs in the page's own world. Playwright evaluates through the DevTools protocol,
# which the pages' CSP (no inline script, no eval) does not govern, so a page is audited as
# served, under its real policy; nothing is added to it but the `axe` global. A document
# whose CSP says `sandbox` (the email preview) runs no script at all, not even these: audit
# it in a context made with `bypass_csp=True`. Frames are left out: the pages' frames are
# sandboxed without scripts, axe cannot enter them and would wait for an answer; what they
# show (the email preview) is audited as a page of its own.
_AXE_RUN = """async () => {
  const result = await axe.run(document, {iframes: false, resultTypes: ["violations"]});
  return result.violations.map(v => ({
    id: v.id, impact: v.impact, help: v.help, url: v.helpUrl,
    nodes: v.nodes.map(n => ({target: n.target.join(" "), html: n.html.slice(0, 200),
                              summary: n.failureSummary || ""})),
  }));
}"""

# What makes the document wider than the viewport: the outermost elements that stick out
# past its right edge without a container of their own that scrolls or clips them.
_OVERFLOW = """() => {
  const width = window.innerWidth;
  const scrollWidth = document.documentElement.scrollWidth;
  if (scrollWidth <= width) return null;
  const culprits = [];
  for (const element of document.body.querySelectorAll("*")) {
    if (element.getBoundingClientRect().right <= width + 0.5) continue;
    if (culprits.some(outer => outer.contains(element))) continue;
    // Held by a box that scrolls or clips, unless positioned out of it (an absolute box
    // escapes the overflow of every ancestor short of its containing block).
    const escapes = ["absolute", "fixed"].includes(getComputedStyle(element).position);
    let held = false;
    for (let up = element.parentElement; up && up !== document.body && !escapes; up = up.parentElement) {
      if (getComputedStyle(up).overflowX !== "visible") { held = true; break; }
    }
    if (!held) culprits.push(element);
  }
  const describe = element => element.tagName.toLowerCase()
    + (element.id ? "#" + element.id : "")
    + [...element.classList].map(name => "." + name).join("")
    + ` (right edge ${Math.round(element.getBoundingClientRect().right)} px)`;
  return {scrollWidth, width, culprits: culprits.slice(0, 8).map(describe)};
}"""

# Whether the focused element shows it: an outline (or a box shadow standing in for one).
_FOCUS_SHOWN = """() => {
  const element = document.activeElement;
  if (!element || element === document.body) return null;
  const style = getComputedStyle(element);
  const outlined = style.outlineStyle !== "none" && parseFloat(style.outlineWidth) >= 1;
  const shadowed = style.boxShadow !== "none";
  const text = (element.textContent || "").trim().slice(0, 40);
  return {element: `<${element.tagName.toLowerCase()}> "${text}"`, shown: outlined || shadowed};
}"""


# Back to the top of the page, the next Tab starting from the beginning: a blur alone would
# leave the browser's starting point of sequential focus where the focus was.
_FROM_THE_TOP = """() => {
  const start = document.createElement("span");
  start.tabIndex = -1;
  document.body.prepend(start);
  start.focus();
  start.remove();
  window.scrollTo(0, 0);
  for (const box of document.querySelectorAll("*")) if (box.scrollLeft) box.scrollLeft = 0;
}"""


async def _axe(page: Page) -> list[dict[str, Any]]:
    try:
        async with asyncio.timeout(10):
            present = await page.evaluate("typeof axe !== 'undefined'")
    except TimeoutError:
        raise AssertionError(
            f"no script runs in {page.url} (a CSP sandbox?): audit it in a context with bypass_csp=True"
        ) from None
    if not present:
        await page.evaluate(AXE.read_text())
    async with asyncio.timeout(60):
        violations: list[dict[str, Any]] = await page.evaluate(_AXE_RUN)
    return [violation for violation in violations if violation["impact"] in FAILING_IMPACTS]


def _described(violation: dict[str, Any], width: int) -> str:
    lines = [
        f"{violation['impact']} {violation['id']} at {width} px: {violation['help']} ({violation['url']})"
    ]
    for node in violation["nodes"]:
        lines.append(f"    {node['target']}: {node['html']}")
        if node["summary"]:
            lines.append("      " + node["summary"].replace("\n", "\n      "))
    return "\n".join(lines)


async def _control_problem(control: Locator, width: int) -> str | None:
    """Why *control* is not usable at this width, or None: hidden, or off the viewport's sides."""
    if not await control.is_visible():
        return f"{control} is not visible at {width} px"
    await control.scroll_into_view_if_needed()
    left, right = await control.evaluate(
        "e => { const r = e.getBoundingClientRect(); return [r.left, r.right]; }"
    )
    if left < 0 or right > width + 0.5:
        return f"{control} at {width} px spans {left:.0f}–{right:.0f} px, outside the viewport"
    return None


async def _focus_problems(page: Page, presses: int) -> list[str]:
    """Tab through the page's first *presses* stops: each one must show that it has focus."""
    problems = []
    await page.evaluate(_FROM_THE_TOP)
    for _ in range(presses):
        await page.keyboard.press("Tab")
        focused = await page.evaluate(_FOCUS_SHOWN)
        if focused is None:
            break
        if not focused["shown"]:
            problems.append(f"keyboard focus on {focused['element']} shows no outline")
    await page.evaluate(_FROM_THE_TOP)
    return problems


async def check(
    page: Page,
    name: str,
    *,
    controls: Sequence[Locator] = (),
    navigation: bool = True,
    tab_stops: int = 6,
) -> list[str]:
    """What keeps the page in *page* from being accessible and usable, at each of `WIDTHS`:
    axe-core's serious and critical violations, the document growing wider than the
    viewport, the main navigation (unless *navigation* is false: a page shown in a frame) or
    one of *controls* (the page's primary buttons and
    fields) hidden or off screen, and keyboard focus that does not show on its first
    *tab_stops* stops. Screenshots `<name>-<width>.png` first, as the page came; the viewport is
    put back at the end."""
    viewport = page.viewport_size
    problems: list[str] = []
    shown = [page.get_by_role("navigation", name="Pages", exact=True)] if navigation else []
    for width, height in WIDTHS.items():
        await page.set_viewport_size({"width": width, "height": height})
        await painted(page)
        await screenshot(page, f"{name}-{width}")
        problems += [_described(violation, width) for violation in await _axe(page)]
        overflow = await page.evaluate(_OVERFLOW)
        if overflow is not None:
            problems.append(
                f"the document is {overflow['scrollWidth']} px wide at {width} px: "
                + ", ".join(overflow["culprits"] or ["(no single element)"])
            )
        for control in (*shown, *controls):
            problem = await _control_problem(control, width)
            if problem is not None:
                problems.append(problem)
        problems += await _focus_problems(page, tab_stops)
    if viewport is not None:
        await page.set_viewport_size(viewport)
    return [f"{name} ({page.url}): {problem}" for problem in problems]


async def audit(
    page: Page,
    name: str,
    *,
    controls: Sequence[Locator] = (),
    navigation: bool = True,
    tab_stops: int = 6,
) -> None:
    """Fail unless the page passes `check`, naming every problem."""
    problems = await check(page, name, controls=controls, navigation=navigation, tab_stops=tab_stops)
    assert not problems, "\n".join(problems)
