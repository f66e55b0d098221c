"""Creating and editing flows from the history pages, against a real trigger API: templates, the
check while typing, saves over the version loaded, conflicts, and the refusals."""

from __future__ import annotations

import html
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import aiohttp
import markupsafe
import yaml
from pydantic import SecretStr

from common.contracts.topology import Topology
from common.platform.blobs.folder import FolderBlobStore
from common.platform.broker.memory import InProcessBroker
from common.platform.config import Settings
from common.platform.connections import Connections
from common.platform.http import HttpServer
from common.platform.runtime import Runtime
from services.history.api import create_app
from services.history.dead_letters import DeadLetterStore
from services.history.store import HistoryStore
from services.history.web.editor import BLANK, line_of
from tests.conftest import random_name
from tests.services.history.test_web import HOSTILE, Server, data_dirs, pages_over_trigger, server
from tests.services.trigger.test_flows_api import STORMS_YAML, serving

__all__ = ["data_dirs", "server"]

PAGE = {"X-Adxflow-Request": "1"}
#: The editor's text as the page holds it.
TEXTAREA = re.compile(r"<textarea[^>]*>\n(.*?)</textarea>", re.DOTALL)
#: A draft whose second step names an action that does not exist, on this line.
BROKEN = STORMS_YAML.replace("action: send_email", "action: send_mail")
BROKEN_LINE = BROKEN.splitlines().index("    action: send_mail") + 1


def textarea(page: str) -> str:
    [text] = TEXTAREA.findall(page)
    return html.unescape(text)


def invalid_lines(page: str) -> list[int]:
    marked = re.findall(r'<li data-line="(\d+)" class="invalid" aria-invalid="true">', page)
    return [int(line) for line in marked]


async def test_the_new_flow_page_lists_the_templates_and_fills_the_editor_from_one(
    data_dirs: tuple[Path, Path], namespace: str
) -> None:
    async with pages_over_trigger(data_dirs, namespace) as (trigger, url, browser):
        templates = (await trigger.call("GET", "/v1/flow-templates")).body["templates"]
        async with browser.get(f"{url}/ui/flows/new") as response:
            assert response.status == 200
            assert "script-src 'self'" in response.headers["Content-Security-Policy"]
            chooser = await response.text()
        async with browser.get(f"{url}/ui/flows/new?template=daily-storm-report") as response:
            assert response.status == 200
            filled = await response.text()
        async with browser.get(f"{url}/ui/flows/new?template=nothing-such") as response:
            unknown = (response.status, await response.text())
        async with browser.get(f"{url}/ui/flows") as response:
            flows = await response.text()

    listed = re.findall(r'<li class="template" data-template="([^"]+)">', chooser)
    assert listed == [template["name"] for template in templates]
    needing = next(template for template in templates if template["needs"])
    assert str(markupsafe.escape(needing["needs"][0])) in chooser
    assert f'href="/ui/flows/new?template={listed[0]}"' in chooser
    assert textarea(chooser) == BLANK
    daily = next(template for template in templates if template["name"] == "daily-storm-report")
    assert textarea(filled) == daily["yaml"]
    assert 'aria-current="true">daily-storm-report</a>' in filled
    # A new flow's form creates; it has no version to carry.
    assert 'action="/ui/flows"' in filled
    assert 'name="version"' not in filled
    assert unknown[0] == 404
    assert "template: there is no template &#39;nothing-such&#39;" in unknown[1]
    assert '<a href="/ui/flows/new" data-new-flow>New flow</a>' in flows


async def test_the_validate_route_answers_the_problems_placed_on_their_lines_with_the_header_only(
    data_dirs: tuple[Path, Path], namespace: str
) -> None:
    async with pages_over_trigger(data_dirs, namespace) as (_, url, browser):
        target = f"{url}/ui/flows:validate"
        yaml_type = {"Content-Type": "application/yaml"}
        async with browser.post(target, data=BROKEN, headers=yaml_type) as refused:
            assert refused.status == 403
            assert "X-Adxflow-Request" in (await refused.json())["error"]["message"]
        async with browser.post(target, data=BROKEN, headers={**PAGE, **yaml_type}) as response:
            assert response.status == 200
            broken = await response.json()
        async with browser.post(target, data=STORMS_YAML, headers={**PAGE, **yaml_type}) as response:
            good = await response.json()
        async with browser.post(target, data="name: [unclosed", headers={**PAGE, **yaml_type}) as response:
            syntax = await response.json()

    assert broken["valid"] is False
    [problem] = broken["problems"]
    assert (problem["field"], problem["line"], problem["column"]) == ("steps[1].action", BROKEN_LINE, 13)
    assert problem["message"].startswith("'send_mail' is not an action: a step names its 'action'")
    assert good["valid"] is True
    assert good["flow"]["name"] == "weekly-storms"
    assert len(good["flow"]["next_fires"]) == 5
    assert syntax["valid"] is False
    assert syntax["problems"][0]["message"].startswith("not valid YAML")
    assert syntax["problems"][0]["line"] == 1


async def test_a_new_flow_is_saved_as_written_and_one_of_an_existing_name_is_refused_not_replaced(
    data_dirs: tuple[Path, Path], namespace: str
) -> None:
    written = "# kept comment\n" + STORMS_YAML
    async with pages_over_trigger(data_dirs, namespace) as (trigger, url, browser):
        form = {"definition": written.replace("\n", "\r\n")}
        async with browser.post(f"{url}/ui/flows", data=form, allow_redirects=False) as refused:
            assert refused.status == 403
        async with browser.post(f"{url}/ui/flows", data=form, headers=PAGE, allow_redirects=False) as saved:
            assert (saved.status, saved.headers["Location"]) == (303, "/ui/flows/weekly-storms")
        again = {"definition": written.replace("Weekly storms", "Another")}
        async with browser.post(f"{url}/ui/flows", data=again, headers=PAGE) as exists:
            assert exists.status == 409
            exists_page = await exists.text()
        async with browser.post(f"{url}/ui/flows", data={"definition": BROKEN}, headers=PAGE) as invalid:
            assert invalid.status == 400
            invalid_page = await invalid.text()
        version = await trigger.call("GET", "/v1/flows/weekly-storms/versions/1")
        latest = await trigger.call("GET", "/v1/flows/weekly-storms")

    assert version.body["definition"] == written
    assert latest.body["version"] == 1
    assert "Not saved: a flow named <code>weekly-storms</code> exists already" in exists_page
    assert textarea(exists_page) == written.replace("Weekly storms", "Another")
    # The problem is listed with its field and place, and its line marked in the gutter.
    assert invalid_lines(invalid_page) == [BROKEN_LINE]
    assert f'data-goto-line="{BROKEN_LINE}" data-goto-column="13"' in invalid_page
    assert "<code>steps[1].action</code>" in invalid_page
    assert textarea(invalid_page) == BROKEN


async def test_an_edit_is_saved_over_the_version_loaded_and_a_stale_one_is_refused_keeping_the_text(
    data_dirs: tuple[Path, Path], namespace: str
) -> None:
    async with pages_over_trigger(data_dirs, namespace) as (trigger, url, browser):
        await trigger.call("PUT", "/v1/flows/weekly-storms", STORMS_YAML, content_type="application/yaml")
        async with browser.get(f"{url}/ui/flows/weekly-storms/edit") as response:
            assert response.status == 200
            loaded = await response.text()
        async with browser.get(f"{url}/ui/flows/weekly-storms") as response:
            flow_page = await response.text()
        async with browser.get(f"{url}/ui/flows/no-such-flow/edit") as response:
            missing = response.status
        target = f"{url}/ui/flows/weekly-storms/definition"
        first = STORMS_YAML.replace("Weekly storms", "First editor")
        second = STORMS_YAML.replace("Weekly storms", "Second editor")
        async with browser.post(
            target, data={"definition": first, "version": "1"}, headers=PAGE, allow_redirects=False
        ) as saved:
            assert (saved.status, saved.headers["Location"]) == (303, "/ui/flows/weekly-storms")
        async with browser.post(target, data={"definition": second, "version": "1"}, headers=PAGE) as stale:
            assert stale.status == 412
            conflict = await stale.text()
        renamed = STORMS_YAML.replace("name: weekly-storms", "name: monthly-storms")
        async with browser.post(target, data={"definition": renamed, "version": "2"}, headers=PAGE) as other:
            assert other.status == 400
            mismatch = await other.text()
        async with browser.post(target, data={"definition": first}, headers=PAGE) as unversioned:
            assert unversioned.status == 400
            assert (await unversioned.json())["error"]["message"].startswith("version:")
        async with browser.post(target, data={"definition": first, "version": "2"}) as refused:
            assert refused.status == 403
        current = await trigger.call("GET", "/v1/flows/weekly-storms")
        renamed_flow = await trigger.call("GET", "/v1/flows/monthly-storms")

    assert textarea(loaded) == STORMS_YAML
    assert '<input type="hidden" name="version" value="1">' in loaded
    assert 'action="/ui/flows/weekly-storms/definition"' in loaded
    assert '<a href="/ui/flows/weekly-storms/edit" data-edit-flow>Edit</a>' in flow_page
    assert missing == 404
    assert current.body["version"] == 2
    assert current.body["document"]["steps"][1]["subject"] == "First editor"
    # The second editor's text stays in its editor, with the way to the version that moved on.
    assert textarea(conflict) == second
    assert "after version\n  1, the one this editor loaded" in conflict
    assert 'href="/ui/flows/weekly-storms/edit" target="_blank" rel="noopener"' in conflict
    assert '<input type="hidden" name="version" value="1">' in conflict
    named = "the document names flow &#39;monthly-storms&#39;, this page edits flow &#39;weekly-storms&#39;"
    assert named in mismatch
    assert invalid_lines(mismatch) == [1]
    assert renamed_flow.status == 404


async def test_hostile_flow_text_reaches_the_page_escaped_inside_the_editor_only(
    data_dirs: tuple[Path, Path], namespace: str
) -> None:
    hostile = STORMS_YAML.replace(
        "connection: local", f"description: '</textarea>{HOSTILE}'\nconnection: local"
    ).replace("name: weekly-storms", f"# {HOSTILE}\nname: weekly-storms")
    async with pages_over_trigger(data_dirs, namespace) as (trigger, url, browser):
        saved = await trigger.call("PUT", "/v1/flows/weekly-storms", hostile, content_type="application/yaml")
        assert saved.status == 201, saved.body
        async with browser.get(f"{url}/ui/flows/weekly-storms/edit") as response:
            edit = await response.text()
        broken = hostile.replace("steps:", f"{HOSTILE}: 1\nsteps:")
        form = {"definition": broken, "version": "1"}
        target = f"{url}/ui/flows/weekly-storms/definition"
        async with browser.post(target, data=form, headers=PAGE) as response:
            assert response.status == 400
            refused = await response.text()

    for shown in (edit, refused):
        assert HOSTILE not in shown
        assert shown.count("</textarea>") == 1
        assert "<script>" not in shown.replace('<script src="/ui/static/', "")
    assert textarea(edit) == hostile
    assert yaml.safe_load(textarea(edit))["description"] == f"</textarea>{HOSTILE}"
    assert textarea(refused) == broken


async def test_the_test_run_route_forwards_the_triggers_answer_and_demands_the_header(
    data_dirs: tuple[Path, Path], namespace: str
) -> None:
    async with pages_over_trigger(data_dirs, namespace) as (trigger, url, browser):
        target = f"{url}/ui/flows:test"
        async with browser.post(target, json={"flow": STORMS_YAML}) as refused:
            assert refused.status == 403
        async with browser.post(target, json={"text": STORMS_YAML}, headers=PAGE) as malformed:
            assert malformed.status == 400
            assert (await malformed.json())["error"]["message"].startswith("flow:")
        async with browser.post(target, json={"flow": STORMS_YAML}, headers=PAGE) as forwarded:
            status, body = forwarded.status, await forwarded.json()
        async with trigger.session.post(f"{trigger.url}/v1/flows:test", json={"flow": STORMS_YAML}) as direct:
            direct_status = direct.status

    # Whatever the trigger answers, the page's route answers the same, as JSON.
    assert status == direct_status
    if status == 202:
        assert body["run_id"]
    else:
        assert body["error"]["message"]


async def test_the_editor_pages_sit_behind_the_login_with_a_token(server: Server) -> None:
    async with server(token="s3cret") as (url, _), aiohttp.ClientSession() as browser:
        for path in ("/ui/flows/new", "/ui/flows/storms/edit"):
            async with browser.get(f"{url}{path}", allow_redirects=False) as response:
                assert response.status == 303
                assert response.headers["Location"] == f"/ui/login?next={path}"
        for path in ("/ui/flows", "/ui/flows:validate", "/ui/flows:test", "/ui/flows/storms/definition"):
            async with browser.post(f"{url}{path}", data="name: x", headers=PAGE) as response:
                assert response.status == 401


@asynccontextmanager
async def _history_with_token(trigger_url: str, data_dir: Path, token: str) -> AsyncIterator[str]:
    settings = Settings(data_dir=data_dir, api_token=SecretStr(token))
    store = HistoryStore(settings.resolved_database_url)
    letters = DeadLetterStore(settings.resolved_database_url)
    await store.ensure_schema()
    await letters.ensure_schema()
    runtime = Runtime(
        settings=settings,
        broker=InProcessBroker(Topology(random_name("history-web-"))),
        blobs=FolderBlobStore(data_dir / "blobs"),
        connections=Connections(),
        trigger_url=trigger_url,
    )
    try:
        async with runtime, HttpServer(create_app(runtime, store, letters), "127.0.0.1", 0) as http:
            yield http.url
    finally:
        await letters.close()
        await store.close()


async def test_a_signed_in_browser_edits_through_the_servers_token_and_still_needs_the_header(
    data_dirs: tuple[Path, Path], namespace: str
) -> None:
    history_dir, trigger_dir = data_dirs
    async with (
        serving(trigger_dir, namespace, api_token=SecretStr("s3cret")) as trigger,
        _history_with_token(trigger.url, history_dir, "s3cret") as url,
        # The pages are on 127.0.0.1: a cookie jar takes cookies from an IP address only when told to.
        aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as browser,
    ):
        bearer = {"Authorization": "Bearer s3cret"}
        await trigger.call(
            "PUT", "/v1/flows/weekly-storms", STORMS_YAML, content_type="application/yaml", headers=bearer
        )
        async with browser.post(
            f"{url}/ui/login", data={"token": "s3cret"}, allow_redirects=False
        ) as response:
            assert response.status == 303
        async with browser.get(f"{url}/ui/flows/weekly-storms/edit") as response:
            assert response.status == 200
            assert textarea(await response.text()) == STORMS_YAML
        yaml_type = {"Content-Type": "application/yaml"}
        async with browser.post(f"{url}/ui/flows:validate", data=BROKEN, headers=yaml_type) as refused:
            assert refused.status == 403
        async with browser.post(
            f"{url}/ui/flows:validate", data=BROKEN, headers={**PAGE, **yaml_type}
        ) as checked:
            assert checked.status == 200
            assert (await checked.json())["problems"][0]["line"] == BROKEN_LINE
        changed = {"definition": STORMS_YAML.replace("Weekly storms", "Signed in"), "version": "1"}
        target = f"{url}/ui/flows/weekly-storms/definition"
        async with browser.post(target, data=changed, headers=PAGE, allow_redirects=False) as saved:
            assert (saved.status, saved.headers["Location"]) == (303, "/ui/flows/weekly-storms")
        current = await trigger.call("GET", "/v1/flows/weekly-storms", headers=bearer)
        version = await trigger.call("GET", "/v1/flows/weekly-storms/versions/2", headers=bearer)

    assert current.body["document"]["steps"][1]["subject"] == "Signed in"
    # The save went with the server's token: the version says so.
    assert version.body["saved_by"] == "token"


def test_a_problem_without_a_place_is_placed_at_its_top_level_key() -> None:
    assert line_of(STORMS_YAML, "name") == 1
    assert line_of(STORMS_YAML, "trigger.cron") == 4
    assert line_of(STORMS_YAML, "steps[1].to") == 7
    assert line_of(STORMS_YAML, "") is None
    assert line_of(STORMS_YAML, "nowhere") is None
