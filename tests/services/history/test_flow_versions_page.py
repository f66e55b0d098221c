"""A flow's page: its definition, its versions, a diff of two, and restore, against a real trigger API."""

from __future__ import annotations

import html
import re
from pathlib import Path

import markupsafe
import sqlalchemy as sa
import yaml
from sqlalchemy.ext.asyncio import create_async_engine

from common.platform.config import Settings
from services.trigger.store import flow_versions
from tests.services.history.test_web import HOSTILE, data_dirs, pages_over_trigger
from tests.services.trigger.test_flows_api import STORMS_YAML

__all__ = ["data_dirs"]

#: A definition whose comment and description came from someone hostile.
WRITTEN = f"# {HOSTILE}\n" + STORMS_YAML.replace(
    "connection: local", f"description: '{HOSTILE}'\nconnection: local"
)
PAGE = {"X-Adxflow-Request": "1"}


async def test_a_flows_page_shows_its_definition_versions_and_a_diff_escaped(
    data_dirs: tuple[Path, Path], namespace: str
) -> None:
    async with pages_over_trigger(data_dirs, namespace) as (trigger, url, browser):
        await trigger.call("PUT", "/v1/flows/weekly-storms", WRITTEN, content_type="application/yaml")
        await trigger.call(
            "PUT", "/v1/flows/weekly-storms", {**yaml.safe_load(WRITTEN), "description": "plain"}
        )
        async with browser.get(f"{url}/ui/flows/weekly-storms") as response:
            assert response.status == 200
            assert "script-src 'self'" in response.headers["Content-Security-Policy"]
            page = await response.text()
        async with browser.get(f"{url}/ui/flows/weekly-storms?from=2&to=2") as response:
            same = await response.text()
        async with browser.get(f"{url}/ui/flows/weekly-storms?from=1&to=9") as response:
            unknown = (response.status, await response.text())
        async with browser.get(f"{url}/ui/flows/weekly-storms?from=first") as response:
            malformed = (response.status, (await response.json())["error"]["message"])

    assert HOSTILE not in page
    assert "<script>" not in page.replace('<script src="/ui/static/app.js" defer></script>', "")
    definition = page[page.index('id="definition"') : page.index('id="versions"')]
    assert "(version 2)" in definition
    [shown] = re.findall(r'<pre class="definition"[^>]*>(.*?)</pre>', definition, re.DOTALL)
    assert yaml.safe_load(html.unescape(shown))["description"] == "plain"
    versions = page[page.index('id="versions"') : page.index('id="alerts"')]
    rows = re.findall(r'<tr class="version" data-version="(\d+)">(.*?)</tr>', versions, re.DOTALL)
    assert [number for number, _ in rows] == ["2", "1"]
    assert "(current)" in rows[0][1]
    assert "description changed" in rows[0][1]
    assert "created" in rows[1][1]
    # A restore form for the older version only, saying which version the page showed.
    assert versions.count("data-post-form data-restore hidden>") == 1
    assert 'action="/ui/flows/weekly-storms/versions/1/restore"' in rows[1][1]
    assert '<input type="hidden" name="current" value="2">' in rows[1][1]
    # The diff form is a GET, so a diff is a link; by default the newest change.
    assert '<form method="get" action="/ui/flows/weekly-storms#diff"' in versions
    assert '<option value="1" selected>1</option>' in versions.split('name="to"')[0]
    diff = versions[versions.index('<pre class="diff"') :]
    removed = re.findall(r'<span class="diff-removed">(.*?)</span>', diff)
    added = re.findall(r'<span class="diff-added">(.*?)</span>', diff)
    # The second save came as JSON: its definition is the document dumped, the comment gone.
    assert removed[0] == str(markupsafe.escape(f"-# {HOSTILE}"))
    assert str(markupsafe.escape(f"-description: '{HOSTILE}'")) in removed
    assert "+description: plain" in added
    assert "The two definitions are the same." in same
    assert unknown[0] == 200
    assert "flow weekly-storms has no version 9" in unknown[1]
    assert malformed == (400, "from: 'first' is not a version number")


async def test_an_older_version_is_restored_from_the_page_with_the_custom_header_over_the_version_shown(
    data_dirs: tuple[Path, Path], namespace: str
) -> None:
    async with pages_over_trigger(data_dirs, namespace) as (trigger, url, browser):
        await trigger.call("PUT", "/v1/flows/weekly-storms", WRITTEN, content_type="application/yaml")
        await trigger.call(
            "PUT", "/v1/flows/weekly-storms", {**yaml.safe_load(WRITTEN), "description": "plain"}
        )
        target = f"{url}/ui/flows/weekly-storms/versions/1/restore"

        async with browser.post(target, data={"current": "2"}, allow_redirects=False) as refused:
            assert refused.status == 403
        async with browser.post(target, data={"current": "2"}, headers=PAGE, allow_redirects=False) as done:
            assert (done.status, done.headers["Location"]) == (303, "/ui/flows/weekly-storms#versions")
        async with browser.post(target, data={"current": "2"}, headers=PAGE) as stale:
            assert stale.status == 412
            assert "reload the page" in (await stale.json())["error"]["message"]
        async with browser.post(target, data={}, headers=PAGE) as missing:
            assert missing.status == 400
        restored = await trigger.call("GET", "/v1/flows/weekly-storms/versions/3")

    assert (restored.body["restored_from"], restored.body["definition"]) == (1, WRITTEN)


async def test_the_on_off_switch_saves_a_version_and_a_flow_without_versions_still_shows_its_alerts(
    data_dirs: tuple[Path, Path], namespace: str
) -> None:
    _, trigger_dir = data_dirs
    async with pages_over_trigger(data_dirs, namespace) as (trigger, url, browser):
        await trigger.call("PUT", "/v1/flows/weekly-storms", WRITTEN, content_type="application/yaml")
        switch = f"{url}/ui/flows/weekly-storms/enabled"
        async with browser.post(switch, json={"enabled": False, "version": 1}, headers=PAGE) as off:
            assert off.status == 200
        listed = await trigger.call("GET", "/v1/flows/weekly-storms/versions")
        # A flow saved by a replica of the release before versions has none.
        engine = create_async_engine(Settings(data_dir=trigger_dir).resolved_database_url)
        try:
            async with engine.begin() as conn:
                await conn.execute(sa.delete(flow_versions))
        finally:
            await engine.dispose()
        async with browser.get(f"{url}/ui/flows/weekly-storms") as response:
            status, page = response.status, await response.text()

    assert [(entry["version"], entry["summary"], entry["saved_by"]) for entry in listed.body["versions"]] == [
        (2, "disabled", "local"),
        (1, "created", "local"),
    ]
    assert status == 200
    notice = "The flow's versions could not be read: the trigger API refused: flow 'weekly-storms' not found"
    assert notice in html.unescape(page)
    assert 'id="alerts"' in page
    assert 'id="versions"' not in page
