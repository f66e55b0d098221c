"""Validating a flow draft over real HTTP, and the flow templates.

``POST /v1/flows:validate`` answers every problem a save would refuse, each at
the line and column of the YAML (or JSON) it names; the templates are the
example flows the package ships.
"""

from __future__ import annotations

import datetime as dt
import io
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import aiohttp
import pytest
import yaml
from pydantic import SecretStr

from common.contracts.topology import Topology
from common.platform.blobs.folder import FolderBlobStore
from common.platform.broker.memory import InProcessBroker
from common.platform.config import Settings
from common.platform.connections import Connections
from common.platform.runtime import Runtime
from services.trigger import service as trigger
from services.trigger.flow_templates import flow_templates
from tests.services.trigger.test_flows_api import HISTORY_URL, STORMS, STORMS_YAML, Api, serving

YAML = "application/yaml"
ROOT = Path(__file__).resolve().parents[3]
EXAMPLES = ROOT / "examples"


@pytest.fixture
async def api(tmp_path: Path, namespace: str) -> AsyncIterator[Api]:
    async with serving(tmp_path, namespace) as running:
        yield running


async def validate(api: Api, text: str, content_type: str = YAML) -> dict[str, Any]:
    answer = await api.call("POST", "/v1/flows:validate", text, content_type=content_type)
    assert answer.status == 200, answer.body
    body: dict[str, Any] = answer.body
    return body


def by_field(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {problem["field"]: problem for problem in report["problems"]}


def position(text: str, fragment: str, *, occurrence: int = 1) -> tuple[int, int]:
    """The 1-based line and column where *fragment* starts (its *occurrence*-th time) in *text*."""
    at = -1
    for _ in range(occurrence):
        at = text.index(fragment, at + 1)
    line = text.count("\n", 0, at) + 1
    return line, at - (text.rfind("\n", 0, at) + 1) + 1


WRONG_TYPE = """\
name: weekly-storms
connection: local
database: Samples
steps:
  - id: by_state
    action: run_query_and_render_chart
    query: StormEvents | summarize Events = count() by State
  - id: top
    action: run_query
    query: StormEvents | top 10 by DamageProperty
    max_rows: plenty
"""


async def test_a_valid_draft_is_valid_with_its_trigger_in_words_and_nothing_is_saved(api: Api) -> None:
    report = await validate(api, STORMS_YAML)

    assert report["valid"] is True
    assert report["problems"] == []
    flow = report["flow"]
    assert (flow["name"], flow["trigger"]) == ("weekly-storms", "cron")
    assert flow["schedule"] == "cron '30 7 * * 1' in Europe/Berlin (at 07:30 on Monday)"
    fires = [dt.datetime.fromisoformat(fire) for fire in flow["next_fires"]]
    assert len(fires) == 5
    assert fires == sorted(fires)
    berlin = [fire.astimezone(ZoneInfo("Europe/Berlin")) for fire in fires]
    assert {(fire.weekday(), fire.hour, fire.minute) for fire in berlin} == {(0, 7, 30)}
    assert len({fire.date() for fire in berlin}) == 5
    assert fires[0] > dt.datetime.now(dt.UTC)
    assert (await api.call("GET", "/v1/flows/weekly-storms")).status == 404


async def test_a_wrong_type_is_placed_at_its_value(api: Api) -> None:
    report = await validate(api, WRONG_TYPE)

    assert report["valid"] is False
    problem = by_field(report)["steps[1].max_rows"]
    line, column = position(WRONG_TYPE, "plenty")
    assert (problem["line"], problem["column"]) == (line, column)
    assert (problem["end_line"], problem["end_column"]) == (line, column + len("plenty"))
    assert "integer" in problem["message"]
    assert "flow" not in report


async def test_an_unknown_key_is_placed_at_the_key_and_a_missing_field_at_its_mapping(api: Api) -> None:
    text = STORMS_YAML.replace("    subject:", "    colour: red\n    subject:").replace(
        "    query: StormEvents | summarize Events = count() by State\n", ""
    )

    problems = by_field(await validate(api, text))

    assert set(problems) == {"steps[1].colour", "steps[0].query"}
    assert (problems["steps[1].colour"]["line"], problems["steps[1].colour"]["column"]) == position(
        text, "colour"
    )
    # The step that lacks its query starts at its first key.
    assert (problems["steps[0].query"]["line"], problems["steps[0].query"]["column"]) == position(
        text, "id: by_state"
    )
    assert problems["steps[0].query"]["message"] == "Field required"


async def test_a_duplicate_step_id_is_placed_at_the_second_id(api: Api) -> None:
    text = STORMS_YAML.replace("id: mail", "id: by_state")

    problems = by_field(await validate(api, text))

    assert list(problems) == ["steps[1].id"]
    assert "used by an earlier step" in problems["steps[1].id"]["message"]
    line, column = position(text, "by_state", occurrence=2)
    assert (problems["steps[1].id"]["line"], problems["steps[1].id"]["column"]) == (line, column)


async def test_the_servers_checks_are_placed_too(api: Api) -> None:
    """A webhook host off the allowlist, a connection not configured, a schedule too frequent."""
    text = """\
name: hooked
connection: elsewhere
database: Samples
trigger:
  every: 1m
steps:
  - id: rows
    action: run_query
    query: StormEvents | take 5
  - id: hook
    action: post_webhook
    url: https://evil.example.net/collect
"""
    report = await validate(api, text)

    problems = by_field(report)
    assert report["valid"] is False
    assert set(problems) == {"connection", "steps[1].url", "trigger.every"}
    assert "evil.example.net" in problems["steps[1].url"]["message"]
    assert (problems["steps[1].url"]["line"], problems["steps[1].url"]["column"]) == position(
        text, "https://evil"
    )
    assert (problems["connection"]["line"], problems["connection"]["column"]) == position(text, "elsewhere")
    assert (problems["trigger.every"]["line"], problems["trigger.every"]["column"]) == position(text, "1m")
    # The document itself is valid: the flow is described, its schedule as written.
    assert report["flow"]["name"] == "hooked"
    assert report["flow"]["schedule"] == "every minute"


async def test_a_save_refuses_exactly_what_validation_reports(api: Api) -> None:
    text = STORMS_YAML.replace("team@example.com", "https://evil.example.net/x").replace(
        "action: send_email", "action: post_webhook\n    url: https://evil.example.net/x"
    )
    reported = by_field(await validate(api, text))

    saved = await api.call("PUT", "/v1/flows/weekly-storms", text, content_type=YAML)

    assert saved.status == 400
    refused = {entry["field"] for entry in saved.error["fields"]}
    assert refused == {field or "body" for field in reported}


@pytest.mark.parametrize(
    ("text", "fragment", "words"),
    [
        pytest.param("name: x\nsteps: [\n  {id: a\n", None, "not valid YAML", id="unclosed-flow"),
        pytest.param("name: x\n  bad: indent\n", None, "not valid YAML", id="bad-indent"),
        pytest.param("name: &n x\ndescription: *n\n", "*n", "alias *n is not accepted", id="alias"),
    ],
)
async def test_a_yaml_syntax_error_is_a_problem_at_its_mark(
    api: Api, text: str, fragment: str | None, words: str
) -> None:
    report = await validate(api, text)

    assert report["valid"] is False
    [problem] = report["problems"]
    assert problem["field"] == ""
    assert words in problem["message"]
    try:
        yaml.safe_load(text)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        assert mark is not None
        assert (problem["line"], problem["column"]) == (mark.line + 1, mark.column + 1)
    else:
        assert fragment is not None
        assert (problem["line"], problem["column"]) == position(text, fragment)


async def test_a_document_that_is_not_a_mapping_is_a_problem_not_a_refusal(api: Api) -> None:
    report = await validate(api, "- just\n- a list\n")

    [problem] = report["problems"]
    assert (problem["field"], problem["line"], problem["column"]) == ("", 1, 1)
    assert "mapping" in problem["message"]


async def test_json_is_placed_in_the_json_text(api: Api) -> None:
    flow = json.loads(json.dumps(STORMS))
    flow["steps"][0]["max_rows"] = "lots"
    text = json.dumps(flow, indent=2)

    problems = by_field(await validate(api, text, "application/json"))

    assert list(problems) == ["steps[0].max_rows"]
    assert (problems["steps[0].max_rows"]["line"], problems["steps[0].max_rows"]["column"]) == position(
        text, '"lots"'
    )


async def test_malformed_json_is_placed_where_the_parser_stopped(api: Api) -> None:
    text = '{\n  "name": "x",\n  "steps": [,]\n}'

    [problem] = (await validate(api, text, "application/json"))["problems"]

    assert "not valid JSON" in problem["message"]
    assert (problem["line"], problem["column"]) == position(text, ",]")


async def test_an_oversized_body_or_another_content_type_is_still_refused(api: Api) -> None:
    big = io.BytesIO(b"description: " + b"x" * (1024**2 + 10))
    sent = await api.session.post(f"{api.url}/v1/flows:validate", data=big, headers={"Content-Type": YAML})
    assert sent.status == 413
    other = await api.call("POST", "/v1/flows:validate", "name: x", content_type="text/plain")
    assert other.status == 415


async def test_validation_asks_for_the_token_like_every_route(tmp_path: Path, namespace: str) -> None:
    async with serving(tmp_path, namespace, api_token=SecretStr("sesame")) as api:
        refused = await api.call("POST", "/v1/flows:validate", STORMS_YAML, content_type=YAML)
        allowed = await api.call(
            "POST",
            "/v1/flows:validate",
            STORMS_YAML,
            content_type=YAML,
            headers={"Authorization": "Bearer sesame"},
        )

    assert refused.status == 401
    assert (allowed.status, allowed.body["valid"]) == (200, True)


# -- templates -----------------------------------------------------------------


@asynccontextmanager
async def deployed(tmp_path: Path, namespace: str) -> AsyncIterator[Api]:
    """The trigger API with docker compose's connections file (deploy/connections.yaml): its
    cluster, the Slack webhook, the mute windows and the database ``reports`` the examples name."""
    broker = InProcessBroker(Topology(namespace))
    runtime = Runtime(
        settings=Settings(data_dir=tmp_path, trigger_port=0),
        broker=broker,
        blobs=FolderBlobStore(tmp_path / "blobs"),
        connections=Connections.from_file(ROOT / "deploy" / "connections.yaml"),
        history_url=HISTORY_URL,
    )
    async with runtime, trigger.running(runtime) as server, aiohttp.ClientSession() as session:
        yield Api(server.url, broker, session)


async def test_the_templates_are_the_shipped_examples_and_each_validates_where_configured(
    tmp_path: Path, namespace: str
) -> None:
    async with deployed(tmp_path, namespace) as api:
        listed = await api.call("GET", "/v1/flow-templates")
        assert listed.status == 200
        templates = {template["name"]: template for template in listed.body["templates"]}
        reports = {name: await validate(api, template["yaml"]) for name, template in templates.items()}

    assert set(templates) == {path.stem for path in EXAMPLES.glob("*.yaml")}
    for name, template in templates.items():
        assert template["yaml"] == (EXAMPLES / f"{name}.yaml").read_text()
        assert (reports[name]["problems"], reports[name]["valid"]) == ([], True), name
        assert reports[name]["flow"]["name"] == template["flow"]


async def test_a_template_is_refused_here_only_for_the_configuration_it_says_it_needs(api: Api) -> None:
    """On a server without the webhook or the database, the templates that name them do not validate."""
    listed = (await api.call("GET", "/v1/flow-templates")).body["templates"]
    needing = {template["name"] for template in listed if template["needs"]}

    assert needing == {"conditional-queries", "daily-summary-to-postgres", "nightly-import-from-postgres"}
    for name in needing:
        text = next(template["yaml"] for template in listed if template["name"] == name)
        fields = set(by_field(await validate(api, text)))
        assert fields, name
        assert all(field.startswith("steps[") for field in fields), (name, fields)


async def test_a_template_that_needs_configuration_says_so(api: Api) -> None:
    slack = await api.call("GET", "/v1/flow-templates/conditional-queries")
    summary = await api.call("GET", "/v1/flow-templates/daily-summary-to-postgres")
    plain = await api.call("GET", "/v1/flow-templates/daily-storm-report")
    missing = await api.call("GET", "/v1/flow-templates/no-such-example")

    assert slack.status == 200
    assert any("webhook 'incidents-slack'" in need for need in slack.body["needs"])
    assert "incidents-slack" in slack.body["about"]
    assert any("database 'reports'" in need for need in summary.body["needs"])
    assert plain.body["needs"] == []
    assert plain.body["about"].startswith("Every morning at 08:00 Berlin time")
    assert plain.body["yaml"] == flow_templates()["daily-storm-report"].yaml
    assert (missing.status, missing.error["code"]) == (404, "NotFound")


async def test_an_unknown_time_zone_is_placed_and_a_cron_too_frequent_leaves_the_fire_times(api: Api) -> None:
    zone = STORMS_YAML.replace("Europe/Berlin", "Mars/Olympus")
    frequent = STORMS_YAML.replace('"30 7 * * 1"', '"*/2 * * * *"')

    zoned, hurried = await validate(api, zone), await validate(api, frequent)

    problem = by_field(zoned)["trigger.timezone"]
    assert (problem["line"], problem["column"]) == position(zone, "Mars/Olympus")
    assert "flow" not in zoned
    # Refused here (the minimum is 5 minutes), still a schedule that fires.
    assert list(by_field(hurried)) == ["trigger.cron"]
    assert (
        by_field(hurried)["trigger.cron"]["line"],
        by_field(hurried)["trigger.cron"]["column"],
    ) == position(frequent, '"*/2')
    assert len(hurried["flow"]["next_fires"]) == 5
