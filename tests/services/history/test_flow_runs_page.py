"""A flow's page: its trigger in words with the next fire times, its numbers, its latest runs and the
run-now form, against a real trigger and a real history sharing one broker."""

from __future__ import annotations

import datetime as dt
import html
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import aiohttp
import markupsafe
import pytest

from common.contracts.messages import (
    SERVICE_OF,
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
from common.platform.runtime import Runtime
from services.history import service as history
from services.history.runs import find_run
from services.history.store import HistoryStore
from services.history.web.flow_runs import _refused
from services.history.web.trigger import TriggerUnavailable
from services.trigger import service as trigger
from tests.services.history.test_web import HOSTILE

PAGE = {"X-Adxflow-Request": "1"}
BERLIN = ZoneInfo("Europe/Berlin")

#: Every parameter type, each with a default but one datetime the caller must give; started on demand
#: in Berlin's time.
TYPED: dict[str, Any] = {
    "name": "storms",
    "connection": "local",
    "database": "Samples",
    "trigger": {"timezone": "Europe/Berlin"},
    "parameters": {
        "state": {"type": "string", "default": "TEXAS", "description": "Which state's storms"},
        "limit": {"type": "int", "default": 10},
        "total": {"type": "long", "default": 5000000000},
        "ratio": {"type": "real", "default": 0.5},
        "deadly": {"type": "bool", "default": True},
        "since": {"type": "datetime", "default": "2026-01-15T07:00:00Z"},
        "window": {"type": "timespan", "default": "1h"},
        "until": {"type": "datetime", "description": "The end of the report"},
    },
    "steps": [
        {"id": "events", "action": "run_query", "query": "StormEvents | where State == state | take limit"}
    ],
}
#: Scheduled: every parameter needs its default.
CRON: dict[str, Any] = {
    **TYPED,
    "trigger": {"cron": "0 8 * * *", "timezone": "Europe/Berlin"},
    "parameters": {name: spec for name, spec in TYPED["parameters"].items() if name != "until"},
}
MANUAL: dict[str, Any] = {
    "name": "by-hand",
    "connection": "local",
    "database": "Samples",
    "steps": [{"id": "events", "action": "run_query", "query": "StormEvents | take 1"}],
}
#: What the form sends by default: the shown values, the checkbox's hidden false then its true.
FORM: list[tuple[str, str]] = [
    ("state", "TEXAS"),
    ("limit", "10"),
    ("total", "5000000000"),
    ("ratio", "0.5"),
    ("deadly", "false"),
    ("deadly", "true"),
    ("since", "2026-01-15T08:00"),
    ("window", "1h"),
    ("until", "2026-01-16T08:00"),
]


@dataclass
class System:
    trigger_url: str
    history_url: str
    store: HistoryStore
    blobs: FolderBlobStore
    browser: aiohttp.ClientSession

    async def put(self, flow: dict[str, Any]) -> None:
        async with self.browser.put(f"{self.trigger_url}/v1/flows/{flow['name']}", json=flow) as response:
            assert response.status in (200, 201), await response.text()

    async def page(self, path: str) -> tuple[int, str]:
        async with self.browser.get(f"{self.history_url}{path}") as response:
            return response.status, await response.text()

    async def run_now(self, flow: str, form: list[tuple[str, str]], headers: dict[str, str] = PAGE) -> Any:
        async with self.browser.post(
            f"{self.history_url}/ui/flows/{flow}/runs", data=form, headers=headers, allow_redirects=False
        ) as response:
            return response.status, response.headers.get("Location"), await response.text()


@asynccontextmanager
async def _system(data_dir: Path, namespace: str, **configured: Any) -> AsyncIterator[System]:
    """The trigger and the history as `adxflow up` runs them, on one broker; nothing runs the steps."""
    settings = Settings(data_dir=data_dir, trigger_port=0, history_port=0, **configured)
    connections = Connections()
    connections.add_local("local", "http://127.0.0.1:31415")
    blobs = FolderBlobStore(data_dir / "blobs")
    runtime = Runtime(
        settings=settings, broker=InProcessBroker(Topology(namespace)), blobs=blobs, connections=connections
    )
    store = HistoryStore(settings.resolved_database_url)
    try:
        async with runtime, history.running(runtime) as history_server:
            runtime.history_url = history_server.url
            async with trigger.running(runtime) as trigger_server, aiohttp.ClientSession() as browser:
                runtime.trigger_url = trigger_server.url
                yield System(trigger_server.url, history_server.url, store, blobs, browser)
    finally:
        await store.close()


@pytest.fixture
async def system(tmp_path: Path, namespace: str) -> AsyncIterator[System]:
    async with _system(tmp_path, namespace) as running:
        yield running


def _section(page: str, section: str) -> str:
    start = page.index(f'<section id="{section}"')
    return page[start : page.index("</section>", start)]


def _field(page: str, name: str) -> str:
    """One parameter's block of the run-now form."""
    start = page.index(f'data-parameter="{name}"')
    return page[start : page.index("</div>", start)]


def _input(block: str, name: str) -> str:
    [tag] = re.findall(rf'<input type="(?!hidden)[^>]*name="{name}"[^>]*>', block)
    return tag


async def test_every_parameter_type_is_a_field_with_its_default_in_the_flows_zone(system: System) -> None:
    hostile = {**TYPED["parameters"]["until"], "description": HOSTILE}
    await system.put({**TYPED, "parameters": {**TYPED["parameters"], "until": hostile}})

    status, page = await system.page("/ui/flows/storms")

    assert status == 200
    assert HOSTILE not in page
    assert f'id="param-until-description">{markupsafe.escape(HOSTILE)}</p>' in page
    form = _section(page, "run")
    assert 'action="/ui/flows/storms/runs"' in form
    assert "data-run-form hidden" in form
    state = _input(_field(form, "state"), "state")
    assert 'type="text"' in state
    assert 'value="TEXAS"' in state
    assert 'aria-describedby="param-state-description"' in state
    assert 'id="param-state-description">Which state&#39;s storms</p>' in _field(form, "state")
    limit = _input(_field(form, "limit"), "limit")
    assert all(part in limit for part in ('type="number"', 'value="10"', 'step="1"', 'min="-2147483648"'))
    assert 'max="2147483647"' in limit
    total = _input(_field(form, "total"), "total")
    assert 'value="5000000000"' in total
    assert 'max="9223372036854775807"' in total
    ratio = _input(_field(form, "ratio"), "ratio")
    assert 'type="number"' in ratio
    assert 'step="any"' in ratio
    assert 'value="0.5"' in ratio
    deadly = _field(form, "deadly")
    # An unchecked box sends nothing: a hidden false comes first, the box's true after it.
    assert '<input type="hidden" name="deadly" value="false">' in deadly
    assert 'type="checkbox" value="true"' in deadly
    assert " checked" in deadly
    since = _input(_field(form, "since"), "since")
    # 07:00 UTC in January is 08:00 in Berlin.
    assert 'type="datetime-local"' in since
    assert 'value="2026-01-15T08:00"' in since
    assert "datetime in Europe/Berlin" in _field(form, "since")
    assert "is the first of the two" in _field(form, "since")
    window = _input(_field(form, "window"), "window")
    assert 'pattern="' in window
    assert 'value="1h"' in window
    until = _input(_field(form, "until"), "until")
    assert " required" in until
    assert 'value=""' in until
    assert all(" required" not in _input(_field(form, name), name) for name in ("state", "limit", "since"))


async def test_a_cron_flow_shows_its_trigger_in_words_its_zone_and_next_fires(system: System) -> None:
    await system.put(CRON)

    page = _section((await system.page("/ui/flows/storms"))[1], "trigger")
    await system.put({**CRON, "enabled": False})
    disabled = _section((await system.page("/ui/flows/storms"))[1], "trigger")

    assert "every day at 08:00 Europe/Berlin" in page
    assert "(time zone Europe/Berlin)" in page
    fires = [dt.datetime.fromisoformat(value) for value in re.findall(r'<time datetime="([^"]+)"', page)]
    assert len(fires) == 5
    assert all(fire.astimezone(BERLIN).hour == 8 for fire in fires)
    assert fires == sorted(fires)
    assert fires[0] > dt.datetime.now(dt.UTC)
    assert "disabled" not in page
    assert "<time" not in disabled
    assert "disabled" in disabled


async def test_a_manual_flow_runs_only_when_started_and_without_parameters_has_only_the_button(
    system: System,
) -> None:
    await system.put(MANUAL)
    await system.put({**MANUAL, "name": "chained", "trigger": {"after": {"flow": "by-hand"}}})

    page = (await system.page("/ui/flows/by-hand"))[1]
    chained = _section((await system.page("/ui/flows/chained"))[1], "trigger")
    status, location, _ = await system.run_now("by-hand", [])

    assert "Runs only when started." in _section(page, "trigger")
    assert "<time" not in _section(page, "trigger")
    form = _section(page, "run")
    assert "data-parameter" not in form
    assert '<button type="submit" name="adxflow:mode" value="run" data-mode="run">Run now</button>' in form
    assert 'Runs after flow <a href="/ui/flows/by-hand">by-hand</a>' in chained
    assert status == 303
    assert location is not None
    assert location.startswith("/ui/runs/")


async def test_a_run_is_started_with_exactly_the_typed_parameters_and_its_page_shown(system: System) -> None:
    await system.put(TYPED)
    typed = [
        ("state", "KANSAS"),
        ("limit", "3"),
        ("total", "-7"),
        ("ratio", "2.25"),
        ("deadly", "false"),
        ("since", "2026-01-15T09:30"),
        ("window", "1.02:03:04"),
        ("until", "2026-07-01T12:00"),
        ("adxflow:request", "same-form"),
    ]

    status, location, _ = await system.run_now("storms", typed)
    assert status == 303
    assert location is not None
    run_id = location.removeprefix("/ui/runs/")
    # The run was recorded before the redirect: its page finds it at once.
    run = await find_run(system.store, run_id)
    assert run is not None
    run_status, run_page = await system.page(location)
    again = await system.run_now("storms", typed)

    assert run.trigger == TriggerKind.MANUAL
    assert run.parameters == {
        "state": "KANSAS",
        "limit": 3,
        "total": -7,
        "ratio": 2.25,
        "deadly": False,
        # 09:30 in Berlin in winter is 08:30 UTC; 12:00 in summer is 10:00 UTC.
        "since": "2026-01-15T08:30:00Z",
        "window": "1.02:03:04",
        "until": "2026-07-01T10:00:00Z",
    }
    assert run_status == 200
    assert f'data-run-id="{run_id}"' in run_page
    # The same form sent twice (its request id) starts one run.
    assert again[:2] == (303, location)


async def test_the_defaults_apply_to_fields_left_empty_and_a_checked_box_is_true(system: System) -> None:
    await system.put(TYPED)
    sent = [(name, "" if name in ("state", "limit", "since") else value) for name, value in FORM]

    status, location, _ = await system.run_now("storms", sent)

    assert status == 303
    assert location is not None
    run = await find_run(system.store, location.removeprefix("/ui/runs/"))
    assert run is not None
    assert (run.parameters["state"], run.parameters["limit"]) == ("TEXAS", 10)
    assert run.parameters["since"] == "2026-01-15T07:00:00Z"
    assert run.parameters["deadly"] is True


async def test_a_wall_time_the_clocks_skip_is_refused_inline_and_one_they_pass_twice_is_the_first(
    system: System,
) -> None:
    await system.put(TYPED)
    # Berlin springs forward on 29 March 2026 (02:00 becomes 03:00) and falls back on 25 October
    # (03:00 becomes 02:00).
    gap = [(name, "2026-03-29T02:30" if name == "until" else value) for name, value in FORM]
    fold = [(name, "2026-10-25T02:30" if name == "until" else value) for name, value in FORM]

    status, _, page = await system.run_now("storms", gap)
    folded, location, _ = await system.run_now("storms", fold)

    assert status == 400
    until = _field(_section(page, "run"), "until")
    assert 'aria-invalid="true"' in _input(until, "until")
    assert "param-until-error" in _input(until, "until")
    [error] = re.findall(r'id="param-until-error">(.*?)</p>', until)
    assert html.unescape(error).startswith("until: 2026-03-29 02:30 does not exist in Europe/Berlin")
    assert 'value="2026-03-29T02:30"' in _input(until, "until")
    assert folded == 303
    assert location is not None
    run = await find_run(system.store, location.removeprefix("/ui/runs/"))
    assert run is not None
    # The first 02:30 is still summer time (UTC+2).
    assert run.parameters["until"] == "2026-10-25T00:30:00Z"


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("limit", "ten", "limit: expected a int, got 'ten'"),
        ("limit", "2147483648", "limit: 2147483648 is out of range for int"),
        ("ratio", "half", "ratio: expected a real, got 'half'"),
        ("deadly", "maybe", "deadly: expected a bool, got 'maybe'"),
        ("window", "an hour", "window: expected a timespan, got 'an hour'"),
        ("until", "tomorrow", "until: expected a date and time such as 2026-03-01T08:00, got 'tomorrow'"),
        ("until", "", "until: required (the flow declares no default)"),
        ("limit", HOSTILE, f"limit: expected a int, got {HOSTILE!r}"),
    ],
)
async def test_a_bad_value_is_refused_inline_naming_its_field_and_keeping_what_was_typed(
    system: System, name: str, value: str, message: str
) -> None:
    await system.put(TYPED)
    sent = [
        (field, value if field == name else "kept" if field == "state" else typed) for field, typed in FORM
    ]

    status, _, page = await system.run_now("storms", sent)

    assert status == 400
    form = _section(page, "run")
    block = _field(form, name)
    [error] = re.findall(rf'id="param-{name}-error">(.*?)</p>', block)
    assert html.unescape(error) == message
    assert 'aria-invalid="true"' in block
    assert f"param-{name}-error" in block.split('aria-describedby="')[1].split('"')[0]
    assert 'value="kept"' in _input(_field(form, "state"), "state")
    assert HOSTILE not in page
    if name != "deadly":
        assert f'value="{markupsafe.escape(value)}"' in _input(block, name)
    # Only the field at fault is marked, and no run was started.
    assert form.count('aria-invalid="true"') == 1
    assert "does not exist" not in form
    assert (await system.page("/ui/flows/storms"))[1].count('class="recent-run"') == 0


async def test_a_run_without_the_custom_header_is_refused_and_starts_nothing(system: System) -> None:
    await system.put(MANUAL)

    status, _, body = await system.run_now("by-hand", [], headers={})
    page = (await system.page("/ui/flows/by-hand"))[1]

    assert status == 403
    assert "X-Adxflow-Request: 1" in body
    assert "No runs yet." in page


async def test_a_trigger_refusal_naming_a_parameter_goes_to_its_field() -> None:
    refusal = TriggerUnavailable(
        "the trigger API refused: parameters.limit: expected a int, got 'x'", status=400
    )
    outage = TriggerUnavailable("the trigger API at http://x did not answer: timeout")

    assert _refused(refusal, {"limit": None}) == ({"limit": "limit: expected a int, got 'x'"}, None)  # type: ignore[dict-item]
    assert _refused(refusal, {}) == ({}, refusal.message)
    assert _refused(outage, {"limit": None}) == ({}, outage.message)  # type: ignore[dict-item]


ITINERARY = [Step(id=kind.value, kind=kind) for kind in (StepKind.TRIGGER, StepKind.QUERY, StepKind.RECORD)]


async def _seed(system: System, run_id: str, minutes_ago: int, seconds: float, *, fail: bool = False) -> None:
    """A run of storms that took *seconds* from its submission to its end."""
    submitted = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=minutes_ago)
    info = RunInfo(
        flow="storms",
        description=None,
        trigger=TriggerKind.SCHEDULE,
        connection="local",
        database="Samples",
        parameters={},
        itinerary=ITINERARY,
        submitted_at=submitted,
    )
    for step in ITINERARY:
        ends = step.kind is StepKind.RECORD or (fail and step.kind is StepKind.QUERY)
        if fail and step.kind is StepKind.RECORD:
            break
        await system.store.apply(
            StatusEvent(
                run_id=run_id,
                step_id=step.id,
                kind=step.kind,
                service=SERVICE_OF[step.kind],
                status=StepStatus.FAILED if fail and step.kind is StepKind.QUERY else StepStatus.SUCCEEDED,
                started_at=submitted,
                finished_at=submitted + dt.timedelta(seconds=seconds if ends else 0),
                run=info if step.kind is StepKind.TRIGGER else None,
            )
        )


def _percentile(ordered: list[float], fraction: float) -> float:
    position = (len(ordered) - 1) * fraction
    low = int(position)
    return ordered[low] + (ordered[min(low + 1, len(ordered) - 1)] - ordered[low]) * (position - low)


async def test_the_numbers_of_the_last_week_and_the_latest_runs_match_the_runs_recorded(
    system: System,
) -> None:
    await system.put(TYPED)
    durations = {"a": 2.0, "b": 4.0, "c": 10.0, "d": 1.0, "e": 30.0}
    for index, (run_id, seconds) in enumerate(durations.items()):
        await _seed(system, run_id, minutes_ago=10 + index, seconds=seconds, fail=run_id == "d")
    await _seed(system, "old", minutes_ago=8 * 24 * 60, seconds=99.0)

    page = (await system.page("/ui/flows/storms"))[1]

    section = _section(page, "recent-runs")
    stats = dict(re.findall(r'data-stat="(\w+)">(.*?)</dd>', section))
    ordered = sorted(durations.values())
    assert stats["runs"] == "5"
    assert stats["failed"] == "1"
    assert stats["success_rate"] == f"{4 / 5 * 100:.1f} %"
    assert stats["p50"] == f"{_percentile(ordered, 0.5):.1f} s"
    assert stats["p95"] == f"{_percentile(ordered, 0.95):.1f} s"
    # The latest ten, newest first, the old one too, each linked to its page.
    rows = re.findall(r'<tr class="recent-run" data-run="(\w+)">(.*?)</tr>', section, re.DOTALL)
    assert [run_id for run_id, _ in rows] == ["a", "b", "c", "d", "e", "old"]
    assert '<a href="/ui/runs/c">' in rows[2][1]
    assert "failed" in rows[3][1]
    assert "10.0 s" in rows[2][1]
    assert "schedule" in rows[0][1]


async def test_the_flows_list_links_each_flow_to_its_run_now_form(system: System) -> None:
    await system.put(MANUAL)

    page = (await system.page("/ui/flows"))[1]

    assert '<a class="muted" href="/ui/flows/by-hand#run">Run now' in page


async def test_running_a_flow_that_is_not_there_answers_404_naming_it(system: System) -> None:
    status, _, body = await system.run_now("nowhere", [])

    assert status == 404
    assert "flow 'nowhere' not found" in body


async def test_a_test_run_from_the_form_is_marked_and_sends_a_test_only_to_an_allowed_address(
    tmp_path: Path, namespace: str
) -> None:
    async with _system(tmp_path, namespace, test_recipients=["*@example.com"]) as system:
        await system.put(TYPED)
        _, flow_page = await system.page("/ui/flows/storms")
        sent = [*FORM, ("adxflow:request", "one-form")]

        tested = await system.run_now("storms", [*sent, ("adxflow:mode", "test")])
        # The same form's run is a run of its own, not the test run again.
        ran = await system.run_now("storms", [*sent, ("adxflow:mode", "run")])
        mailed = await system.run_now(
            "storms", [*FORM, ("adxflow:mode", "test"), ("adxflow:send_test_to", "me@example.com")]
        )
        refused = await system.run_now(
            "storms", [*FORM, ("adxflow:mode", "test"), ("adxflow:send_test_to", "boss@elsewhere.org")]
        )
        runs = {}
        for name, (status, location, _) in (("tested", tested), ("ran", ran), ("mailed", mailed)):
            assert status == 303, name
            assert location is not None
            runs[name] = await find_run(system.store, location.removeprefix("/ui/runs/"))

    assert 'name="adxflow:send_test_to"' in _section(flow_page, "run")
    assert 'value="test"' in _section(flow_page, "run")
    tested_run, ran_run, mailed_run = runs["tested"], runs["ran"], runs["mailed"]
    assert tested_run is not None
    assert ran_run is not None
    assert mailed_run is not None
    assert (tested_run.dry_run, tested_run.test_recipient) == (True, None)
    assert ran_run.dry_run is False
    assert ran_run.run_id != tested_run.run_id
    assert (mailed_run.dry_run, mailed_run.test_recipient) == (True, "me@example.com")
    status, _, page = refused
    assert status == 400
    assert "send_test_to" in html.unescape(page)
    assert "ADXFLOW_TEST_RECIPIENTS" in page


async def test_without_addresses_for_tests_the_form_offers_a_test_run_but_no_test_email(
    system: System,
) -> None:
    await system.put(TYPED)
    _, flow_page = await system.page("/ui/flows/storms")

    form = _section(flow_page, "run")
    assert 'name="adxflow:send_test_to"' not in form
    assert '<button type="submit" name="adxflow:mode" value="test"' in form
