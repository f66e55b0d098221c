"""Webhook payloads without a body template (generic JSON, Slack, Teams), posted to a real receiver."""

from __future__ import annotations

import datetime as dt
import json
import re
from typing import Any

from yarl import URL

from common.contracts.messages import ErrorCode, ErrorInfo, StepOutput, StepStatus
from services.notifier.payloads import RunSummary, StepSummary, slack_escape, slack_payload
from tests.services.notifier.conftest import HISTORY_URL, Notifier, NotifierFactory, Rendered, png_of

DESCRIPTION = "Storms <b>&</b> damage <!channel>"
HOSTILE_STATE = "<!here> & <http://evil.example|click>"
RENDERED = {
    "by_state": Rendered([["TEXAS", "12"], ["KANSAS", "9"]], ["State", "Events"], png=png_of(320, 200)),
    "deadly": Rendered([[HOSTILE_STATE, "5"], ["OHIO", "3"]], ["State", "Deaths"]),
}


def hook_flow(url: str, **hook: Any) -> dict[str, Any]:
    return {
        "name": "storm-watch",
        "description": DESCRIPTION,
        "connection": "local",
        "database": "Samples",
        "steps": [
            {
                "id": "by_state",
                "action": "run_query_and_render_chart",
                "query": "StormEvents | summarize Events = count() by State",
                "chart": "piechart",
            },
            {"id": "deadly", "action": "run_query", "query": "StormEvents | where DeathsDirect > 2"},
            {"id": "hook", "action": "post_webhook", "url": url, **hook},
        ],
    }


async def posted(n: Notifier, **hook: Any) -> tuple[str, list[tuple[dict[str, str], Any]]]:
    """Run the hook step of :func:`hook_flow`; the run id and what the receiver got."""
    run = await n.run_until(hook_flow(n.hooks.url, **hook), "hook", RENDERED)
    await n.step.perform(run)
    return run.run_id, [(post.headers, json.loads(post.body)) for post in n.hooks.posts]


def artifact_path(n: Notifier, name: str) -> str:
    return f"/v1/artifacts/{n.artifacts['by_state'][name].key}"


def texts(value: Any) -> list[str]:
    """Every "text" string in a Block Kit structure."""
    if isinstance(value, dict):
        found = [value["text"]] if isinstance(value.get("text"), str) else []
        return found + [text for item in value.values() for text in texts(item)]
    if isinstance(value, list):
        return [text for item in value for text in texts(item)]
    return []


# -- generic JSON --------------------------------------------------------------------------


async def test_the_json_payload_names_the_run_its_steps_and_links_to_their_artifacts(
    notifier: NotifierFactory,
) -> None:
    async with notifier() as n:
        run_id, [(headers, body)] = await posted(n)
        paths = {name: artifact_path(n, name) for name in ("chart_png", "chart_svg", "table_html", "csv")}

    assert headers["Content-Type"] == "application/json"
    assert headers["Idempotency-Key"] == f"{run_id}.hook"
    run = body["run"]
    assert (run["id"], run["flow"], run["status"], run["trigger"]) == (
        run_id,
        "storm-watch",
        "succeeded",
        "manual",
    )
    assert run["description"] == DESCRIPTION
    assert run["url"] == f"{HISTORY_URL}/ui/runs/{run_id}"
    assert body["step"] == {"id": "hook", "title": DESCRIPTION, "row": None}
    assert set(body["steps"]) == {"by_state", "deadly"}
    by_state = body["steps"]["by_state"]
    assert (by_state["status"], by_state["row_count"], by_state["columns"]) == (
        "succeeded",
        2,
        ["State", "Events"],
    )
    links = {name: URL(link["url"]) for name, link in by_state["artifacts"].items()}
    assert {name: url.path for name, url in links.items()} == paths
    assert all(str(url.origin()) == HISTORY_URL for url in links.values())
    assert body["steps"]["deadly"]["row_count"] == 2
    assert body["steps"]["deadly"]["artifacts"] == {}


async def test_the_json_payload_says_when_an_earlier_step_failed(notifier: NotifierFactory) -> None:
    async with notifier() as n:
        run = await n.run_until(hook_flow(n.hooks.url), "hook", RENDERED)
        failure = ErrorInfo(code=ErrorCode.KUSTO_SEMANTIC_ERROR, message="no column Deaths")
        outputs = {**run.outputs, "deadly": StepOutput(status=StepStatus.FAILED, error=failure)}
        await n.step.perform(run.model_copy(update={"outputs": outputs}))
        [post] = n.hooks.posts

    body = json.loads(post.body)
    assert body["run"]["status"] == "failed"
    deadly = body["steps"]["deadly"]
    assert (deadly["status"], deadly["error"], deadly["row_count"]) == ("failed", "no column Deaths", None)


# -- Slack ---------------------------------------------------------------------------------


async def test_the_slack_payload_is_blocks_with_counts_and_links(notifier: NotifierFactory) -> None:
    async with notifier() as n:
        run_id, [(_, body)] = await posted(n, format="slack")
        png_path = artifact_path(n, "chart_png")
        csv_path = artifact_path(n, "csv")

    assert isinstance(body["text"], str)
    assert body["text"]
    blocks = body["blocks"]
    assert isinstance(blocks, list)
    assert all(isinstance(block, dict) and isinstance(block.get("type"), str) for block in blocks)
    assert blocks[0] == {"type": "header", "text": {"type": "plain_text", "text": "storm-watch: succeeded"}}
    fields = [field["text"] for block in blocks for field in block.get("fields", [])]
    assert fields == ["*by_state*\n2 rows", "*deadly*\n2 rows"]
    [actions] = [block for block in blocks if block["type"] == "actions"]
    buttons = {button["text"]["text"]: URL(button["url"]) for button in actions["elements"]}
    assert all(button["type"] == "button" for button in actions["elements"])
    assert str(buttons["Open the run"]) == f"{HISTORY_URL}/ui/runs/{run_id}"
    assert buttons["Chart: by_state"].path == png_path
    linked = re.findall(r"<([^|<>]+)\|([^<>]+)>", "\n".join(texts(blocks)))
    assert (f"{HISTORY_URL}{csv_path}", "CSV") in linked
    assert (f"{HISTORY_URL}/ui/runs/{run_id}", f"run {run_id}") in linked


async def test_the_slack_payload_escapes_the_description_for_mrkdwn(notifier: NotifierFactory) -> None:
    async with notifier() as n:
        _, [(_, body)] = await posted(n, format="slack")

    shown = "\n".join(texts(body))
    assert "Storms &lt;b&gt;&amp;&lt;/b&gt; damage &lt;!channel&gt;" in shown
    assert "<!channel>" not in shown
    assert "<b>" not in shown


async def test_a_cell_value_in_a_templated_title_is_escaped_for_slack(notifier: NotifierFactory) -> None:
    async with notifier() as n:
        run_id, received = await posted(
            n, format="slack", for_each="deadly", title="Deaths in {{ row.State }}"
        )

    assert [headers["Idempotency-Key"] for headers, _ in received] == [f"{run_id}.hook.0", f"{run_id}.hook.1"]
    first = received[0][1]
    escaped = "&lt;!here&gt; &amp; &lt;http://evil.example|click&gt;"
    assert f"*Deaths in {escaped}*" in first["blocks"][1]["text"]["text"]
    assert first["text"].startswith(f"Deaths in {escaped}")
    row_fields = [field["text"] for field in first["blocks"][3]["fields"]]
    assert row_fields == [f"*State*\n{escaped}", "*Deaths*\n5"]
    shown = "\n".join(texts(first))
    assert "<!here>" not in shown
    assert "<http://evil.example|click>" not in shown
    assert "*Deaths in OHIO*" in received[1][1]["blocks"][1]["text"]["text"]


def test_slack_text_is_clipped_without_breaking_an_entity() -> None:
    started = dt.datetime(2024, 5, 1, tzinfo=dt.UTC)
    summary = RunSummary(
        id="r1",
        flow="storm-watch",
        description=None,
        status="succeeded",
        trigger="manual",
        scheduled_for=started,
        started_at=started,
        parameters={},
        url=f"{HISTORY_URL}/v1/runs/r1",
        title="&" * 5000,
        step="hook",
        row={"State": "<" * 3000},
        steps=[StepSummary("q", "run_query", "succeeded", 3, ["n"], None, {})],
    )

    body = slack_payload(summary)

    section = body["blocks"][1]["text"]["text"]
    assert len(section) <= 3000
    assert re.fullmatch(r"\*(&amp;)+…", section)
    [cell] = body["blocks"][3]["fields"]
    assert len(cell["text"]) <= 2000
    assert re.fullmatch(r"\*State\*\n(&lt;)+…", cell["text"])
    assert len(body["text"]) <= 3000


def test_slack_escape_leaves_other_text_alone() -> None:
    assert slack_escape("a & b < c > d *e* _f_") == "a &amp; b &lt; c &gt; d *e* _f_"


# -- Microsoft Teams -----------------------------------------------------------------------


async def test_the_teams_payload_is_an_adaptive_card_with_facts_the_chart_and_the_run(
    notifier: NotifierFactory,
) -> None:
    async with notifier() as n:
        run_id, [(headers, body)] = await posted(n, format="teams")
        png_path = artifact_path(n, "chart_png")

    assert headers["Content-Type"] == "application/json"
    assert body["type"] == "message"
    [attachment] = body["attachments"]
    assert attachment["contentType"] == "application/vnd.microsoft.card.adaptive"
    assert attachment["contentUrl"] is None
    card = attachment["content"]
    assert card["$schema"] == "http://adaptivecards.io/schemas/adaptive-card.json"
    assert (card["type"], card["version"]) == ("AdaptiveCard", "1.4")
    assert isinstance(card["body"], list)
    assert all(isinstance(element.get("type"), str) for element in card["body"])
    assert card["body"][0]["type"] == "TextBlock"
    assert card["body"][0]["text"] == DESCRIPTION
    facts = [
        {fact["title"]: fact["value"] for fact in element["facts"]}
        for element in card["body"]
        if element["type"] == "FactSet"
    ]
    assert {"Flow": "storm-watch", "Status": "succeeded", "Trigger": "manual"} in facts
    assert {"by_state": "2 rows", "deadly": "2 rows"} in facts
    [image] = [element for element in card["body"] if element["type"] == "Image"]
    assert URL(image["url"]).path == png_path
    assert image["altText"] == "by_state chart"
    assert card["actions"][0] == {
        "type": "Action.OpenUrl",
        "title": "Open the run",
        "url": f"{HISTORY_URL}/ui/runs/{run_id}",
    }
    assert all(action["type"] == "Action.OpenUrl" for action in card["actions"])


async def test_a_teams_card_without_a_chart_has_no_image(notifier: NotifierFactory) -> None:
    async with notifier() as n:
        flow = hook_flow(n.hooks.url, format="teams", for_each="deadly")
        flow["steps"] = flow["steps"][1:]
        run = await n.run_until(flow, "hook", RENDERED)
        await n.step.perform(run)
        cards = [json.loads(post.body)["attachments"][0]["content"] for post in n.hooks.posts]

    assert len(cards) == 2
    assert all(element["type"] != "Image" for card in cards for element in card["body"])
    row_facts = [
        {fact["title"]: fact["value"] for fact in element["facts"]}
        for element in cards[1]["body"]
        if element["type"] == "FactSet"
    ]
    assert {"State": "OHIO", "Deaths": "3"} in row_facts
