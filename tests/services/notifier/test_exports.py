"""The files a run exported, in its deliveries: an email lists each as a link (never an
attachment), in its HTML and its text; a webhook's payload links to it."""

from __future__ import annotations

import json
from typing import Any

from common.contracts.messages import StepOutput, StepStatus
from tests.services.notifier.conftest import EXPORTED, HISTORY_URL, NotifierFactory, Rendered


def export_flow(delivery: dict[str, Any]) -> dict[str, Any]:
    return {
        "name": "storm-export",
        "connection": "local",
        "database": "Samples",
        "steps": [
            {"id": "q", "action": "run_query", "query": "StormEvents | summarize count() by State"},
            {"id": "export", "action": "export_to_file", "source": "q", "format": "parquet"},
            delivery,
        ],
    }


MAIL = {
    "id": "mail",
    "action": "send_email",
    "to": ["team@example.com"],
    "subject": "Storms",
    "body_html": "<p>{{ steps.export.file.name }} holds {{ steps.export.row_count }} rows</p>",
}
QUERIED = {"q": Rendered([["TEXAS", "12"], ["KANSAS", "9"]], ["State", "count_"])}


async def test_an_email_lists_the_exported_file_as_a_link_in_html_and_text(notifier: NotifierFactory) -> None:
    async with notifier() as n:
        run = await n.run_until(export_flow(MAIL), "mail", QUERIED)
        await n.step.perform(run)
        received = await n.received_email()
        url = f"{HISTORY_URL}/v1/artifacts/{n.artifacts['export']['file'].key}"

    html = received.get_body(preferencelist=("html",))
    text = received.get_body(preferencelist=("plain",))
    assert html is not None
    assert text is not None
    body = str(html.get_content())
    assert "<p>export.parquet holds 2 rows</p>" in body
    assert "Files this run exported" in body
    assert f'<a href="{url}" style="color:#0969da">export.parquet</a> (2.0 KB)' in body
    assert f"- export.parquet (2.0 KB): {url}" in str(text.get_content())
    assert list(received.iter_attachments()) == []
    assert len(EXPORTED) == 2008


async def test_an_export_that_failed_is_not_listed(notifier: NotifierFactory) -> None:
    async with notifier() as n:
        run = await n.run_until(export_flow({**MAIL, "body_html": "<p>report</p>"}), "mail", QUERIED)
        failed = StepOutput(status=StepStatus.FAILED)
        await n.step.perform(run.model_copy(update={"outputs": {**run.outputs, "export": failed}}))
        received = await n.received_email()

    html = received.get_body(preferencelist=("html",))
    assert html is not None
    body = str(html.get_content())
    assert "<p>report</p>" in body
    assert "Files this run exported" not in body
    assert "/export/" not in body


async def test_a_webhook_payload_links_to_the_exported_file(notifier: NotifierFactory) -> None:
    async with notifier() as n:
        for format in ("json", "slack", "teams"):
            hook = {"id": "hook", "action": "post_webhook", "url": n.hooks.url, "format": format}
            run = await n.run_until(export_flow(hook), "hook", QUERIED)
            await n.step.perform(run)
        ref = n.artifacts["export"]["file"]
        posts = [json.loads(post.body) for post in n.hooks.posts]

    json_body, slack, teams = posts
    url_of = f"{HISTORY_URL}/v1/artifacts/"
    exported = json_body["steps"]["export"]
    assert (exported["action"], exported["status"], exported["row_count"]) == (
        "export_to_file",
        "succeeded",
        2,
    )
    [(name, link)] = exported["artifacts"].items()
    assert name == "file"
    assert link["url"].startswith(url_of)
    assert link["url"].endswith("/export/1/export.parquet")
    assert (link["content_type"], link["size"]) == ("application/vnd.apache.parquet", 2008)
    assert any("|file>" in block.get("text", {}).get("text", "") for block in slack["blocks"])
    actions = teams["attachments"][0]["content"]["actions"]
    assert {"type": "Action.OpenUrl", "title": "File: export", "url": f"{url_of}{ref.key}"} in actions
