"""The history pages over real HTTP without a browser: escaping, headers, login and CSRF."""

from __future__ import annotations

import asyncio
import datetime as dt
import html
import re
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path

import aiohttp
import markupsafe
import pytest
from pydantic import SecretStr

from common.contracts.dry_runs import NOT_RUN_COMMAND
from common.contracts.messages import (
    SERVICE_OF,
    ErrorCode,
    ErrorInfo,
    RunInfo,
    StatusEvent,
    Step,
    StepKind,
    StepStatus,
    TriggerKind,
)
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
from services.history.web.advice import ADVICE, advice_for
from services.history.web.pages import TRIGGER_SESSION
from services.history.web.session import COOKIE, SESSION_SECONDS, Sessions, safe_next
from services.history.web.views import duration_words
from services.trigger import service as trigger
from services.trigger.alert_store import AlertStore
from services.trigger.alert_store import instances as alert_instances
from services.trigger.bodies import EXAMPLE_FLOW
from tests.conftest import random_name
from tests.services.trigger.test_alerts_api import DEADLY, instant
from tests.services.trigger.test_alerts_api import seed as seed_alerts
from tests.services.trigger.test_flows_api import Api, serving

# The kinds of a run without scope or alert steps, in itinerary order.
#: A run's steps from its start to its record, as a flow of a query, its chart and an email has them.
KINDS = [StepKind.TRIGGER, StepKind.QUERY, StepKind.RENDER, StepKind.NOTIFY, StepKind.RECORD]

HOSTILE = '<script>alert("x")</script>'
T0 = dt.datetime(2026, 3, 1, 6, 0, tzinfo=dt.UTC)

Server = Callable[..., AbstractAsyncContextManager[tuple[str, HistoryStore]]]


@pytest.fixture
def server(tmp_path: Path) -> Server:
    @asynccontextmanager
    async def start(token: str | None = None) -> AsyncIterator[tuple[str, HistoryStore]]:
        settings = Settings(data_dir=tmp_path, api_token=SecretStr(token) if token else None)
        runtime = Runtime(
            settings=settings,
            broker=InProcessBroker(Topology("history-web")),
            blobs=FolderBlobStore(tmp_path / "blobs"),
            connections=Connections(),
            trigger_url="http://127.0.0.1:9",
        )
        store = HistoryStore(f"sqlite+aiosqlite:///{tmp_path / 'h.db'}")
        letters = DeadLetterStore(f"sqlite+aiosqlite:///{tmp_path / 'h.db'}")
        await store.ensure_schema()
        await letters.ensure_schema()
        try:
            async with runtime, HttpServer(create_app(runtime, store, letters), "127.0.0.1", 0) as http:
                yield http.url, store
        finally:
            await letters.close()
            await store.close()

    return start


async def seed_failed_run(store: HistoryStore, run_id: str, at: dt.datetime = T0) -> None:
    itinerary = [Step(id=kind.value, kind=kind) for kind in KINDS]
    info = RunInfo(
        flow="storms",
        description=HOSTILE,
        trigger=TriggerKind.MANUAL,
        connection="local",
        database="Samples",
        parameters={"state": HOSTILE},
        itinerary=itinerary,
        submitted_at=at,
    )
    for kind in (StepKind.TRIGGER, StepKind.QUERY):
        failed = kind is StepKind.QUERY
        await store.apply(
            StatusEvent(
                run_id=run_id,
                step_id=kind.value,
                kind=kind,
                service=SERVICE_OF[kind],
                status=StepStatus.FAILED if failed else StepStatus.SUCCEEDED,
                started_at=at,
                finished_at=at + dt.timedelta(seconds=1),
                error=ErrorInfo(code=ErrorCode.RESULT_TOO_LARGE, message=HOSTILE) if failed else None,
                run=info if kind is StepKind.TRIGGER else None,
            )
        )


def test_every_error_code_has_advice() -> None:
    assert set(ADVICE) == set(ErrorCode)


def test_a_code_of_a_newer_release_or_none_has_no_advice_and_breaks_nothing() -> None:
    assert advice_for("KustoQuotaExceeded") is None
    assert advice_for("") is None
    assert advice_for(ErrorCode.STALLED.value) == ADVICE[ErrorCode.STALLED]


def test_a_session_expires_and_cannot_be_forged() -> None:
    sessions = Sessions(SecretStr("s3cret"))
    value = sessions.issue(now=1000)
    assert "s3cret" not in value
    assert sessions.valid(value, now=1000 + SESSION_SECONDS - 1)
    assert not sessions.valid(value, now=1000 + SESSION_SECONDS + 1)
    expires, _, signature = value.partition(".")
    assert not sessions.valid(f"{int(expires) + 3600}.{signature}", now=1000)
    assert not Sessions(SecretStr("other")).valid(value, now=1000)
    assert not Sessions(None).valid(value, now=1000)


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        ("/ui/runs/abc?x=1", "/ui/runs/abc?x=1"),
        ("https://evil.example/ui/", "/ui/runs"),
        ("//evil.example/ui/", "/ui/runs"),
        ("/v1/runs", "/ui/runs"),
        (None, "/ui/runs"),
    ],
)
def test_login_returns_only_to_a_page_of_this_service(target: str | None, expected: str) -> None:
    assert safe_next(target) == expected


def test_durations_read_as_words() -> None:
    assert [duration_words(ms) for ms in (None, 350, 2400, 185_000, 3_720_000)] == [
        "—",
        "350 ms",
        "2.4 s",
        "3 min 5 s",
        "1 h 2 min",
    ]


async def test_pages_escape_every_value_and_carry_a_policy(server: Server) -> None:
    async with server() as (url, store), aiohttp.ClientSession() as session:
        await seed_failed_run(store, "r1")
        for path in ("/ui/runs", "/ui/runs/r1"):
            async with session.get(url + path) as response:
                html = await response.text()
                assert response.status == 200, html
                assert "script-src 'self'" in response.headers["Content-Security-Policy"]
                assert HOSTILE not in html
                assert "&lt;script&gt;" in html
        assert "ResultTooLarge" in html
        assert ADVICE[ErrorCode.RESULT_TOO_LARGE] in html
        async with session.get(url + "/", allow_redirects=False) as response:
            assert (response.status, response.headers["Location"]) == (303, "/ui/runs")
        async with session.get(url + "/ui/runs/nope") as response:
            assert response.status == 404
        # The trigger API is not there: the flows page says so instead of failing.
        async with session.get(url + "/ui/flows") as response:
            assert response.status == 502
            assert "could not be listed" in await response.text()


async def test_a_change_from_a_page_needs_the_custom_header_even_on_loopback(server: Server) -> None:
    async with server() as (url, _), aiohttp.ClientSession() as session:
        async with session.post(f"{url}/ui/flows/storms/enabled", json={"enabled": False}) as response:
            assert response.status == 403
        async with session.get(url + "/ui/login", allow_redirects=False) as response:
            assert response.status == 303


async def test_with_a_token_the_pages_ask_to_sign_in_and_the_cookie_admits(server: Server) -> None:
    async with server(token="s3cret") as (url, store), aiohttp.ClientSession() as session:
        await seed_failed_run(store, "r1")
        async with session.get(url + "/ui/runs/r1", allow_redirects=False) as response:
            assert response.status == 303
            assert response.headers["Location"] == "/ui/login?next=/ui/runs/r1"
        async with session.get(url + "/v1/runs") as response:
            assert response.status == 401
        async with session.get(url + "/ui/static/app.js") as response:
            assert response.status == 200
        login = {"token": "wrong", "next": "/ui/runs/r1"}
        async with session.post(url + "/ui/login", data=login, allow_redirects=False) as response:
            assert response.status == 401
            assert COOKIE not in response.cookies
        login["token"] = "s3cret"
        async with session.post(url + "/ui/login", data=login, allow_redirects=False) as response:
            assert (response.status, response.headers["Location"]) == (303, "/ui/runs/r1")
            cookie = response.cookies[COOKIE]
            assert cookie["httponly"]
            assert cookie["samesite"] == "Strict"
        jar = {COOKIE: cookie.value}
        async with aiohttp.ClientSession(cookies=jar) as browser:
            async with browser.get(url + "/v1/runs") as response:
                assert response.status == 200
            async with browser.get(url + "/ui/runs/r1") as response:
                assert response.status == 200
            async with browser.post(f"{url}/v1/runs/r1/rerun") as response:
                assert response.status == 403
        async with (
            aiohttp.ClientSession(cookies={COOKIE: "1.forged"}) as forger,
            forger.get(url + "/v1/runs") as response,
        ):
            assert response.status == 401


async def test_the_runs_list_pages_with_the_api_cursor(server: Server) -> None:
    async with server() as (url, store), aiohttp.ClientSession() as session:
        for minute in range(27):
            await seed_failed_run(store, f"r{minute:02d}", T0 + dt.timedelta(minutes=minute))
        async with session.get(url + "/ui/runs?status=failed") as response:
            first = await response.text()
        assert first.count('<tr class="run"') == 25
        assert 'data-run-id="r26"' in first
        older = re.search(r'href="(/ui/runs\?[^"]+)" rel="next"', first)
        assert older is not None
        async with session.get(url + html.unescape(older.group(1))) as response:
            second = await response.text()
        assert second.count('<tr class="run"') == 2
        assert 'data-run-id="r00"' in second
        assert 'rel="next"' not in second
        assert "Newest runs" in second
        async with session.get(url + "/ui/runs?cursor=garbage") as response:
            assert response.status == 400
            assert "cursor" in await response.text()


async def test_a_bad_filter_on_the_runs_page_says_what_the_api_says(server: Server) -> None:
    async with server() as (url, _), aiohttp.ClientSession() as session:
        for query, parameter in [("status=lost", "status"), ("trigger=psychic", "trigger")]:
            async with session.get(f"{url}/v1/runs?{query}") as response:
                message = (await response.json())["error"]["message"]
            async with session.get(f"{url}/ui/runs?{query}") as response:
                assert response.status == 400
                assert html.escape(message) in await response.text()
            assert message.startswith(f"{parameter}: must be one of ")


class CountingProxy:
    """A TCP forwarder in front of a server: how many connections it was asked for, and how many ended."""

    def __init__(self, port: int) -> None:
        self._port = port
        self.accepted = 0
        self.ended = 0
        self.all_ended = asyncio.Event()
        self.url = ""

    async def __aenter__(self) -> CountingProxy:
        self._server = await asyncio.start_server(self._forward, "127.0.0.1", 0)
        self.url = f"http://127.0.0.1:{self._server.sockets[0].getsockname()[1]}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._server.close()
        await self._server.wait_closed()

    async def _forward(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        self.all_ended.clear()
        upstream_reader, upstream_writer = await asyncio.open_connection("127.0.0.1", self._port)
        await asyncio.gather(_pipe(reader, upstream_writer), _pipe(upstream_reader, writer))
        self.ended += 1
        if self.ended == self.accepted:
            self.all_ended.set()


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while chunk := await reader.read(65536):
            writer.write(chunk)
            await writer.drain()
    except ConnectionError:
        pass
    finally:
        writer.close()


@asynccontextmanager
async def _trigger_with_a_flow(data_dir: Path) -> AsyncIterator[int]:
    connections = Connections()
    connections.add_local("local", "http://127.0.0.1:31415")
    runtime = Runtime(
        settings=Settings(data_dir=data_dir, trigger_port=0),
        broker=InProcessBroker(Topology(random_name("history-web-trigger-"))),
        blobs=FolderBlobStore(data_dir / "blobs"),
        connections=connections,
    )
    async with runtime, trigger.running(runtime) as served, aiohttp.ClientSession() as session:
        async with session.put(
            f"{served.url}/v1/flows/storms", json={**EXAMPLE_FLOW, "name": "storms"}
        ) as saved:
            assert saved.status == 201, await saved.text()
        yield served.port


@pytest.fixture
def data_dirs(tmp_path: Path) -> tuple[Path, Path]:
    """The history's and the trigger's."""
    for name in ("history", "trigger"):
        (tmp_path / name).mkdir()
    return tmp_path / "history", tmp_path / "trigger"


async def test_page_loads_share_one_session_to_the_trigger_closed_with_the_app(
    data_dirs: tuple[Path, Path],
) -> None:
    history_dir, trigger_dir = data_dirs
    settings = Settings(data_dir=history_dir)
    store = HistoryStore(settings.resolved_database_url)
    letters = DeadLetterStore(settings.resolved_database_url)
    await store.ensure_schema()
    await letters.ensure_schema()
    try:
        async with _trigger_with_a_flow(trigger_dir) as port, CountingProxy(port) as proxy:
            runtime = Runtime(
                settings=settings,
                broker=InProcessBroker(Topology(random_name("history-web-"))),
                blobs=FolderBlobStore(history_dir / "blobs"),
                connections=Connections(),
                trigger_url=proxy.url,
            )
            app = create_app(runtime, store, letters)
            async with runtime, HttpServer(app, "127.0.0.1", 0) as http, aiohttp.ClientSession() as browser:
                for _ in range(2):
                    async with browser.get(f"{http.url}/ui/flows") as response:
                        assert response.status == 200
                        assert 'data-flow="storms"' in await response.text()
                assert proxy.accepted == 1
                session = app[TRIGGER_SESSION]
                assert not session.closed
            assert session.closed
            await asyncio.wait_for(proxy.all_ended.wait(), 5)
            assert (proxy.accepted, proxy.ended) == (1, 1)
    finally:
        await letters.close()
        await store.close()


async def test_the_toggle_switches_the_version_the_page_showed_and_refuses_a_changed_flow(
    data_dirs: tuple[Path, Path],
) -> None:
    history_dir, trigger_dir = data_dirs
    settings = Settings(data_dir=history_dir)
    store = HistoryStore(settings.resolved_database_url)
    letters = DeadLetterStore(settings.resolved_database_url)
    await store.ensure_schema()
    await letters.ensure_schema()
    page = {"X-Adxflow-Request": "1"}
    try:
        async with _trigger_with_a_flow(trigger_dir) as port:
            trigger_url = f"http://127.0.0.1:{port}"
            runtime = Runtime(
                settings=settings,
                broker=InProcessBroker(Topology(random_name("history-web-"))),
                blobs=FolderBlobStore(history_dir / "blobs"),
                connections=Connections(),
                trigger_url=trigger_url,
            )
            app = create_app(runtime, store, letters)
            async with runtime, HttpServer(app, "127.0.0.1", 0) as http, aiohttp.ClientSession() as browser:
                async with browser.get(f"{http.url}/ui/flows") as response:
                    assert 'data-version="1"' in await response.text()
                toggle = f"{http.url}/ui/flows/storms/enabled"
                async with browser.post(toggle, json={"enabled": False, "version": 1}, headers=page) as off:
                    assert off.status == 200, await off.text()
                    assert (await off.json())["enabled"] is False

                # A second page still showing version 1 does not switch the flow saved since.
                async with browser.post(toggle, json={"enabled": True, "version": 1}, headers=page) as stale:
                    assert stale.status == 412
                    error = (await stale.json())["error"]
                    assert error["code"] == "PreconditionFailed"
                    assert "version 2" in error["message"]
                    assert "reload the page" in error["message"]
                async with browser.get(f"{trigger_url}/v1/flows/storms") as flow:
                    saved = await flow.json()
                    assert (saved["version"], saved["enabled"]) == (2, False)

                async with browser.post(toggle, json={"enabled": True, "versions": 2}, headers=page) as typo:
                    assert typo.status == 400
                    assert (await typo.json())["error"]["message"].startswith("versions: ")
                async with browser.post(toggle, json={"enabled": True, "version": 2}, headers=page) as on:
                    assert on.status == 200
                    assert (await on.json())["enabled"] is True
    finally:
        await letters.close()
        await store.close()


# -- a flow's alerts and silences ----------------------------------------------


@asynccontextmanager
async def _trigger_with_alerts(data_dir: Path) -> AsyncIterator[str]:
    """The trigger with the alerting flow ``deadly``, its alerts evaluated twice, and an instance whose
    key and row came from hostile data."""
    connections = Connections()
    connections.add_local("local", "http://127.0.0.1:31415")
    runtime = Runtime(
        settings=Settings(data_dir=data_dir, trigger_port=0),
        broker=InProcessBroker(Topology(random_name("history-web-trigger-"))),
        blobs=FolderBlobStore(data_dir / "blobs"),
        connections=connections,
    )
    async with runtime, trigger.running(runtime) as served, aiohttp.ClientSession() as session:
        async with session.put(f"{served.url}/v1/flows/deadly", json=DEADLY) as saved:
            assert saved.status == 201, await saved.text()
        await seed_alerts(data_dir)
        alerts = AlertStore(runtime.settings.resolved_database_url)
        try:
            async with alerts.engine.begin() as conn:
                await conn.execute(
                    alert_instances.insert().values(
                        flow="deadly",
                        step_id="events",
                        key=f"EventId={HOSTILE}",
                        state="pending",
                        since=T0,
                        pending_count=1,
                        row={"State": HOSTILE},
                    )
                )
        finally:
            await alerts.close()
        yield served.url


@asynccontextmanager
async def _history_before(trigger_url: str, data_dir: Path) -> AsyncIterator[str]:
    settings = Settings(data_dir=data_dir)
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


@asynccontextmanager
async def pages_over_trigger(
    data_dirs: tuple[Path, Path], namespace: str
) -> AsyncIterator[tuple[Api, str, aiohttp.ClientSession]]:
    """A trigger API, the history pages over it (their address) and a browser's session for them."""
    history_dir, trigger_dir = data_dirs
    async with (
        serving(trigger_dir, namespace) as trigger,
        _history_before(trigger.url, history_dir) as url,
        aiohttp.ClientSession() as browser,
    ):
        yield trigger, url, browser


async def test_a_flows_page_shows_its_alerts_instances_and_silences_escaped(
    data_dirs: tuple[Path, Path],
) -> None:
    history_dir, trigger_dir = data_dirs
    async with (
        _trigger_with_alerts(trigger_dir) as trigger_url,
        _history_before(trigger_url, history_dir) as url,
        aiohttp.ClientSession() as browser,
    ):
        silence = {"flow": "deadly", "step": "events", "key": "EventId=1", "for": "1h", "comment": HOSTILE}
        async with browser.post(f"{trigger_url}/v1/silences", json=silence) as response:
            one = await response.json()
        ended = {**silence, "key": None, "comment": "over already"}
        async with browser.post(f"{trigger_url}/v1/silences", json=ended) as response:
            over = await response.json()
        async with browser.delete(f"{trigger_url}/v1/silences/{over['id']}") as response:
            assert response.status == 204

        async with browser.get(f"{url}/ui/flows") as response:
            assert 'href="/ui/flows/deadly"' in await response.text()
        async with browser.get(f"{url}/ui/flows/deadly") as response:
            assert response.status == 200
            assert "script-src 'self'" in response.headers["Content-Security-Policy"]
            page = await response.text()

    assert HOSTILE not in page
    assert "<script>" not in page.replace('<script src="/ui/static/app.js" defer></script>', "")
    assert str(markupsafe.escape(f"EventId={HOSTILE}")) in page
    assert str(markupsafe.escape(HOSTILE)) in page
    events = page[page.index('data-alert-step="events"') : page.index('data-alert-step="count"')]
    assert 'data-alert-state="firing"' in events
    rows = re.findall(r'<tr class="instance" data-instance="([^"]*)" data-instance-state="(\w+)"', events)
    assert [(html.unescape(key), state) for key, state in rows] == [
        ("EventId=1", "firing"),
        ("EventId=3", "firing"),
        (f"EventId={HOSTILE}", "pending"),
    ]
    assert events.count("status-pending") == 1
    # The alert, and each of its instances, has a silence form; the page's script reveals them.
    assert events.count('action="/ui/flows/deadly/silences" data-post-form') == 4
    assert events.count('<details class="silence-form" data-silence hidden>') == 4
    assert '<input type="hidden" name="key" value="EventId=3">' in events
    assert '<option value="7d">1 week</option>' in events
    first = events[events.index('data-instance="EventId=1"') :].split("</tr>")[0]
    assert first.count("<time ") == 4  # since, notified, next repeat, silenced until
    assert "Latest transitions (4)" in events
    count = page[page.index('data-alert-step="count"') : page.index('id="silences"')]
    assert "Every instance is ok." in count
    assert 'name="key"' not in count
    silences = page[page.index('id="silences"') :]
    assert f'data-post="/ui/flows/deadly/silences/{one["id"]}/end" hidden>End</button>' in silences
    assert "Ended and expired" in silences
    assert f'data-silence-id="{over["id"]}"' in silences.split("Ended and expired")[1]
    assert "over already" in silences


async def test_a_silence_is_set_and_ended_from_a_flows_page_with_the_custom_header(
    data_dirs: tuple[Path, Path],
) -> None:
    history_dir, trigger_dir = data_dirs
    page = {"X-Adxflow-Request": "1"}
    form = {"step": "events", "key": "EventId=3", "for": "4h", "comment": "on it"}
    async with (
        _trigger_with_alerts(trigger_dir) as trigger_url,
        _history_before(trigger_url, history_dir) as url,
        aiohttp.ClientSession() as browser,
    ):
        target = f"{url}/ui/flows/deadly/silences"
        async with browser.post(target, data=form, allow_redirects=False) as refused:
            assert refused.status == 403
        async with browser.post(target, data=form, headers=page, allow_redirects=False) as response:
            assert (response.status, response.headers["Location"]) == (303, "/ui/flows/deadly#silences")
        async with browser.post(target, data={**form, "comment": " "}, headers=page) as blank:
            assert blank.status == 400
            assert "comment: say why" in (await blank.json())["error"]["message"]
        async with browser.get(f"{trigger_url}/v1/silences?flow=deadly") as response:
            [silence] = (await response.json())["silences"]
        assert (silence["step"], silence["key"], silence["comment"]) == ("events", "EventId=3", "on it")
        assert instant(silence["ends_at"]) - instant(silence["starts_at"]) == dt.timedelta(hours=4)

        end = f"{url}/ui/flows/deadly/silences/{silence['id']}/end"
        async with browser.post(end, allow_redirects=False) as refused:
            assert refused.status == 403
        elsewhere = f"{url}/ui/flows/other/silences/{silence['id']}/end"
        async with browser.post(elsewhere, headers=page, allow_redirects=False) as foreign:
            assert foreign.status == 404
        async with browser.post(end, headers=page, allow_redirects=False) as response:
            assert (response.status, response.headers["Location"]) == (303, "/ui/flows/deadly#silences")
        async with browser.post(end, headers=page) as again:
            assert again.status == 409
            assert "is over" in (await again.json())["error"]["message"]
        async with browser.get(f"{url}/ui/flows/nope") as missing:
            assert missing.status == 404


async def test_a_flows_page_says_when_the_trigger_is_away(server: Server) -> None:
    async with server() as (url, _), aiohttp.ClientSession() as session:
        async with session.get(f"{url}/ui/flows/deadly") as response:
            assert response.status == 502
            assert "alerts could not be read" in await response.text()
        async with session.post(
            f"{url}/ui/flows/deadly/silences", data={"for": "1h"}, headers={"X-Adxflow-Request": "1"}
        ) as response:
            assert response.status == 502


async def test_a_copys_own_query_shows_on_the_run_page_as_a_query_steps_does(server: Server) -> None:
    text = "StormEvents | where State == state | summarize Events = count() by State"
    kinds = (StepKind.TRIGGER, StepKind.COPY, StepKind.RECORD)
    itinerary = [Step(id=kind.value, kind=kind) for kind in kinds]
    info = RunInfo(
        flow="copies",
        trigger=TriggerKind.MANUAL,
        connection="local",
        database="Samples",
        parameters={"state": HOSTILE},
        itinerary=itinerary,
        submitted_at=T0,
    )
    async with server() as (url, store), aiohttp.ClientSession() as session:
        for kind, detail in (
            (StepKind.TRIGGER, {}),
            (StepKind.COPY, {"text": text, "parameters": {"state": HOSTILE}, "rows": 3, "table": "daily"}),
        ):
            await store.apply(
                StatusEvent(
                    run_id="c1",
                    step_id=kind.value,
                    kind=kind,
                    service=SERVICE_OF[kind],
                    status=StepStatus.SUCCEEDED,
                    started_at=T0,
                    finished_at=T0 + dt.timedelta(seconds=1),
                    detail=detail,
                    run=info if kind is StepKind.TRIGGER else None,
                )
            )
        async with session.get(url + "/ui/runs/c1") as response:
            page = await response.text()
            assert response.status == 200, page

    assert f'<pre class="query"><code>{html.escape(text, quote=False)}</code></pre>' in page
    assert '<caption>Query parameters</caption>\n      <tr><th scope="row">state</th>' in page
    assert HOSTILE not in page


async def test_a_test_run_sent_to_its_test_address_says_so_and_its_command_not_run(server: Server) -> None:
    itinerary = [
        Step(id=kind.value, kind=kind) for kind in (StepKind.TRIGGER, StepKind.QUERY, StepKind.RECORD)
    ]
    info = RunInfo(
        flow="storms",
        trigger=TriggerKind.MANUAL,
        connection="local",
        database="Samples",
        parameters={},
        itinerary=itinerary,
        submitted_at=T0,
        dry_run=True,
        test_recipient="qa@example.com",
    )
    command = f".set-or-append Notes <| print Note = '{HOSTILE}'"
    async with server() as (url, store), aiohttp.ClientSession() as session:
        for kind, detail in (
            (StepKind.TRIGGER, {}),
            (StepKind.QUERY, {"dry_run": NOT_RUN_COMMAND, "text": command}),
        ):
            await store.apply(
                StatusEvent(
                    run_id="t1",
                    step_id=kind.value,
                    kind=kind,
                    service=SERVICE_OF[kind],
                    status=StepStatus.SUCCEEDED,
                    started_at=T0,
                    finished_at=T0 + dt.timedelta(seconds=1),
                    detail=detail,
                    run=info if kind is StepKind.TRIGGER else None,
                )
            )
        async with session.get(f"{url}/ui/runs/t1") as response:
            page = await response.text()
            assert response.status == 200
        async with session.get(f"{url}/v1/runs?dry_run=true") as response:
            listed = await response.json()

    assert "Test run — sent only to <strong>qa@example.com</strong>" in page
    assert f"<strong>Test run:</strong> {NOT_RUN_COMMAND}" in page
    assert HOSTILE not in page
    assert "&lt;script&gt;" in page
    assert [(run["run_id"], run["dry_run"], run["test_recipient"]) for run in listed["runs"]] == [
        ("t1", True, "qa@example.com")
    ]
