"""Deliveries end to end: emails kept within a small size budget, and Slack and
Teams messages whose links the history service serves."""

from __future__ import annotations

import email
import email.policy
import io
import json
import re
import zipfile
from email.message import EmailMessage
from html import unescape
from pathlib import Path
from typing import Any

import pytest
from yarl import URL

from tests.e2e.conftest import System

BUDGET = 200_000
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(autouse=True)
def small_email_budget(monkeypatch: pytest.MonkeyPatch) -> None:
    """The system reads settings from the environment too: emails of at most 200,000 bytes,
    whose tables are short enough that the files decide how an email fits."""
    monkeypatch.setenv("ADXFLOW_EMAIL_MAX_BYTES", str(BUDGET))
    monkeypatch.setenv("ADXFLOW_TABLE_MAX_ROWS", "10")


def base(name: str, steps: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    return {"name": name, "connection": "local", "database": "Samples", "steps": steps, **extra}


def parse(path: Path) -> EmailMessage:
    message = email.message_from_bytes(path.read_bytes(), policy=email.policy.default)
    assert isinstance(message, EmailMessage)
    return message


def step(run: dict[str, Any], step_id: str) -> dict[str, Any]:
    return next(s for s in run["steps"] if s["step_id"] == step_id)


async def download(system: System, url: str) -> tuple[str, bytes]:
    async with system.session.get(url) as response:
        assert response.status == 200, url
        return response.content_type, await response.read()


def mail(**extra: Any) -> dict[str, Any]:
    return {"id": "mail", "action": "send_email", "to": ["team@example.com"], "subject": "Report", **extra}


async def test_a_result_too_large_to_attach_arrives_as_a_link_the_history_serves(system: System) -> None:
    # Hex digests: about 860 KB of CSV that deflate only halves.
    hashes = {
        "id": "hashes",
        "action": "run_query_and_render_chart",
        "query": "range i from 1 to 12000 step 1 | extend h = hash_sha256(tostring(i))",
    }
    await system.save_flow(base("big-hashes", [hashes, mail(attachments=["hashes"])]))
    run = await system.finished((await system.start_flow("big-hashes"))["run_id"])

    assert run["status"] == "succeeded", run
    detail = step(run, "mail")["detail"]
    assert detail["attachments"] == "linked"
    assert detail["size"] <= BUDGET
    [path] = system.smtp.messages()
    assert path.stat().st_size <= BUDGET
    message = parse(path)
    assert list(message.iter_attachments()) == []
    html = message.get_body(("html",))
    text = message.get_body(("plain",))
    assert html is not None
    assert text is not None
    csv_key = step(run, "hashes.render")["artifacts"]["csv"]["href"].removeprefix("/v1/artifacts/")
    links = [URL(unescape(href)) for href in re.findall(r'href="([^"]+)"', html.get_content())]
    [csv_url] = [url for url in links if url.path == f"/v1/artifacts/{csv_key}"]
    assert str(csv_url.origin()) == system.history_url
    assert "hashes.csv" in html.get_content()
    assert f"{csv_url}" in text.get_content()
    content_type, csv = await download(system, str(csv_url))
    assert content_type == "text/csv"
    lines = csv.decode().splitlines()
    assert len(lines) == 12_001
    assert lines[1].endswith(",6b86b273ff34fce19d6b804eff5a3f5747ada4eaa22f1d49c01e52ddb7875b4b")


async def test_a_result_over_the_budget_that_compresses_well_arrives_zipped(system: System) -> None:
    storms = {
        "id": "storms",
        "action": "run_query_and_render_chart",
        "query": "StormEvents | take 20000 | project State, EventType, Source",
    }
    await system.save_flow(base("storm-list", [storms, mail(attachments=["storms"])]))
    run = await system.finished((await system.start_flow("storm-list"))["run_id"])

    assert run["status"] == "succeeded", run
    assert step(run, "mail")["detail"]["attachments"] == "zipped"
    [path] = system.smtp.messages()
    [attachment] = list(parse(path).iter_attachments())
    assert attachment.get_filename() == f"storm-list-{run['run_id']}.zip"
    data = attachment.get_payload(decode=True)
    assert isinstance(data, bytes)
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        assert archive.namelist() == ["storms.csv"]
        lines = archive.read("storms.csv").decode().splitlines()
    assert lines[0] == "State,EventType,Source"
    assert len(lines) == 20_001


async def test_slack_and_teams_messages_link_to_artifacts_the_history_serves(system: System) -> None:
    chart = {
        "id": "by_state",
        "action": "run_query_and_render_chart",
        "query": "StormEvents | summarize Events = count() by State | top 5 by Events",
        "chart": "piechart",
    }
    hooks = [
        {"id": "slack", "action": "post_webhook", "url": system.hooks.url, "format": "slack"},
        {"id": "teams", "action": "post_webhook", "url": system.hooks.url, "format": "teams"},
    ]
    flow = base("storm-chat", [chart, *hooks], description="Top states <b> & counties")
    await system.save_flow(flow)
    run = await system.finished((await system.start_flow("storm-chat"))["run_id"])

    assert run["status"] == "succeeded", run
    posts = {headers["Idempotency-Key"]: json.loads(body) for headers, body in system.hooks.received}
    slack = posts[f"{run['run_id']}.slack"]
    teams = posts[f"{run['run_id']}.teams"]

    assert all(isinstance(block["type"], str) for block in slack["blocks"])
    assert "*Top states &lt;b&gt; &amp; counties*" in slack["blocks"][1]["text"]["text"]
    [actions] = [block for block in slack["blocks"] if block["type"] == "actions"]
    buttons = {button["text"]["text"]: button["url"] for button in actions["elements"]}
    assert buttons["Open the run"] == f"{system.history_url}/ui/runs/{run['run_id']}"
    content_type, png = await download(system, buttons["Chart: by_state"])
    assert (content_type, png[:8]) == ("image/png", PNG_SIGNATURE)

    [attachment] = teams["attachments"]
    card = attachment["content"]
    assert attachment["contentType"] == "application/vnd.microsoft.card.adaptive"
    assert (card["type"], card["version"]) == ("AdaptiveCard", "1.4")
    facts = [fact for element in card["body"] if element["type"] == "FactSet" for fact in element["facts"]]
    assert {"title": "by_state", "value": "5 rows"} in facts
    [image] = [element for element in card["body"] if element["type"] == "Image"]
    content_type, png = await download(system, image["url"])
    assert (content_type, png[:8]) == ("image/png", PNG_SIGNATURE)
    assert card["actions"][0]["url"] == f"{system.history_url}/ui/runs/{run['run_id']}"


@pytest.mark.parametrize("system", ["in_process"], indirect=True)
async def test_a_webhook_name_not_configured_posts_to_embedded_modes_webhook_outbox(system: System) -> None:
    assert system.hook_outbox is not None
    await system.save_flow(
        {
            "name": "to-the-team",
            "connection": "local",
            "database": "Samples",
            "steps": [
                {"id": "count", "action": "run_query", "query": "StormEvents | count"},
                {
                    "id": "tell",
                    "action": "post_webhook",
                    "webhook": "team-channel",
                    "format": "slack",
                    "title": "{{ steps.count.first_row.Count }} storm events",
                },
            ],
        }
    )
    started = await system.start_flow("to-the-team")
    run = await system.finished(started["run_id"])
    assert run["status"] == "succeeded", run
    [kept] = system.hook_outbox.messages()
    assert kept.name.endswith("-team-channel.json")
    post = json.loads(kept.read_text())
    assert post["name"] == "team-channel"
    assert post["headers"]["Idempotency-Key"]
    assert post["body"]["text"].endswith("storm events: succeeded")
    assert system.hooks.received == []
