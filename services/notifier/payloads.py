"""What a webhook receives when its step has no body template.

One summary of the run so far (its steps, their row counts, links to their
charts, tables, CSVs and exported files in the history service) becomes the payload its
receiver reads: generic JSON, a Slack incoming-webhook message (Block Kit) or
a Microsoft Teams message with an Adaptive Card.

Slack reads ``&``, ``<`` and ``>`` in text as markup (``<url|label>`` is a
link, ``<!channel>`` pings everyone), so every value from a flow or a query
result is escaped before it goes into Slack text. Slack's and Teams' own
length limits are kept by clipping long values.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from common.contracts.actions import RENDERING_STEPS, ExportToFile, StepSpec
from common.contracts.flows import Flow
from common.contracts.messages import BlobRef, RunMessage, StepStatus

Format = Literal["json", "slack", "teams"]

#: The artifacts a payload links to, by their names in a step's output.
_LINKED = {
    "chart_png": "chart PNG",
    "chart_svg": "chart SVG",
    "table_html": "table",
    "csv": "CSV",
    # An export step's file (export_to_file).
    "file": "file",
}
#: Slack: header text, section text, field text, button label, fields per section, buttons.
_SLACK_HEADER = 150
_SLACK_TEXT = 3000
_SLACK_FIELD = 2000
_SLACK_BUTTON = 75
_SLACK_FIELDS = 10
_SLACK_BUTTONS = 5
#: Teams: facts per set, characters per value, charts shown as images, actions.
_TEAMS_FACTS = 20
_TEAMS_VALUE = 500
_TEAMS_IMAGES = 3
_TEAMS_ACTIONS = 5
_ADAPTIVE_CARD = "application/vnd.microsoft.card.adaptive"
_CARD_SCHEMA = "http://adaptivecards.io/schemas/adaptive-card.json"


@dataclass(frozen=True)
class ArtifactLink:
    url: str
    content_type: str
    size: int


@dataclass(frozen=True)
class StepSummary:
    id: str
    action: str
    status: str
    row_count: int | None
    columns: list[str]
    error: str | None
    #: By artifact name (``chart_png``, ``chart_svg``, ``table_html``, ``csv``; an export's ``file``).
    artifacts: dict[str, ArtifactLink]
    #: The step's query in the Azure Data Explorer web UI, for a cluster that has one.
    query_url: str | None = None


@dataclass(frozen=True)
class RunSummary:
    id: str
    flow: str
    description: str | None
    #: How the steps before this one went: ``failed`` if one failed, else ``succeeded``.
    status: str
    trigger: str
    scheduled_for: dt.datetime
    started_at: dt.datetime
    parameters: dict[str, Any]
    url: str
    #: The message's heading: the step's title template rendered, or the flow's description or name.
    title: str
    #: The delivery step, and the row it is about when it delivers per row.
    step: str
    row: dict[str, Any] | None
    steps: list[StepSummary]
    #: What the alert before the delivery told: its state, counts and summary, and for a delivery
    #: per instance the instance (key, notice, state, previous, since).
    alert: dict[str, Any] | None = None

    @property
    def alert_line(self) -> str | None:
        """The alert in a line: ``firing (was ok): 2 new, 0 still firing, 0 resolved``."""
        if self.alert is None:
            return None
        instance = self.alert.get("instance")
        told = f"{instance['notice']} {instance['key']}".strip() + " · " if instance else ""
        return (
            f"{told}{self.alert.get('state')} (was {self.alert.get('previous')}): {self.alert.get('summary')}"
        )


def summarize(
    message: RunMessage,
    flow: Flow,
    spec: StepSpec,
    *,
    title: str,
    row: Mapping[str, Any] | None,
    run_url: str,
    artifact_url: Callable[[BlobRef], str],
    query_urls: Mapping[str, str] | None = None,
    alert: Mapping[str, Any] | None = None,
) -> RunSummary:
    """The run as far as *spec*, the delivery step about to post (nested steps too, as far as
    this run holds their outcomes)."""
    steps: list[StepSummary] = []
    for step in flow.every_step():
        if step.id == spec.id:
            break
        first = message.outputs.get(step.id)
        render = message.outputs.get(f"{step.id}.render") if isinstance(step, RENDERING_STEPS) else None
        if first is None:
            continue
        status = first.status
        if render is not None and render.status is StepStatus.FAILED:
            status = StepStatus.FAILED
        error = (render.error if render is not None and render.error else None) or first.error
        # A rendered step links what it drew; an export its file.
        linked = render.artifacts if render is not None else {}
        if isinstance(step, ExportToFile) and first.status is StepStatus.SUCCEEDED:
            linked = first.artifacts
        artifacts = {
            name: ArtifactLink(artifact_url(ref), ref.content_type, ref.size)
            for name, ref in linked.items()
            if name in _LINKED
        }
        steps.append(
            StepSummary(
                id=step.id,
                action=step.action,
                status=status.value,
                row_count=first.row_count,
                columns=list(first.columns),
                error=error.message if error else None,
                artifacts=artifacts,
                query_url=(query_urls or {}).get(step.id),
            )
        )
    failed = any(output.status is StepStatus.FAILED for output in message.outputs.values())
    context = message.context
    return RunSummary(
        id=message.run_id,
        flow=context.flow,
        description=flow.description,
        status="failed" if failed else "succeeded",
        trigger=context.trigger.value,
        scheduled_for=context.scheduled_for or message.submitted_at,
        started_at=message.submitted_at,
        parameters=dict(context.parameters),
        url=run_url,
        title=title,
        step=spec.id,
        row=dict(row) if row is not None else None,
        steps=steps,
        alert=_alert_of(alert),
    )


#: What a payload carries of an alert (its lists of instances stay in the run's history).
_ALERT_KEYS = (
    "state",
    "previous",
    "since",
    "changed",
    "notices",
    "counts",
    "next_repeat",
    "summary",
    "instance",
)


def _alert_of(alert: Mapping[str, Any] | None) -> dict[str, Any] | None:
    if not alert:
        return None
    return {key: alert[key] for key in _ALERT_KEYS if key in alert}


def payload(summary: RunSummary, format: Format) -> dict[str, Any]:
    if format == "slack":
        return slack_payload(summary)
    if format == "teams":
        return teams_payload(summary)
    return json_payload(summary)


# -- generic JSON ----------------------------------------------------------------------


def json_payload(summary: RunSummary) -> dict[str, Any]:
    """``{"run": {...}, "step": {...}, "steps": {<id>: {...}}}``, with absolute artifact URLs."""
    return {
        "run": {
            "id": summary.id,
            "flow": summary.flow,
            "description": summary.description,
            "status": summary.status,
            "trigger": summary.trigger,
            "scheduled_for": summary.scheduled_for.isoformat(),
            "started_at": summary.started_at.isoformat(),
            "parameters": summary.parameters,
            "url": summary.url,
        },
        "step": {"id": summary.step, "title": summary.title, "row": summary.row},
        "steps": {
            step.id: {
                "action": step.action,
                "status": step.status,
                "row_count": step.row_count,
                "columns": step.columns,
                "error": step.error,
                "query_url": step.query_url,
                "artifacts": {
                    name: {"url": link.url, "content_type": link.content_type, "size": link.size}
                    for name, link in step.artifacts.items()
                },
            }
            for step in summary.steps
        },
        **({"alert": summary.alert} if summary.alert is not None else {}),
    }


# -- Slack -------------------------------------------------------------------------------


def slack_escape(text: str) -> str:
    """*text* as Slack mrkdwn shows it literally: ``&``, ``<`` and ``>`` as entities."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def slack_payload(summary: RunSummary) -> dict[str, Any]:
    """A Block Kit message: header, summary, row counts, the row, artifact links, buttons."""
    lines = [f"*{slack_escape(summary.title)}*"]
    if summary.description and summary.description != summary.title:
        lines.append(slack_escape(summary.description))
    lines.append(
        f"Status: *{summary.status}* · trigger: {slack_escape(summary.trigger)} · "
        f"<{slack_escape(summary.url)}|run {slack_escape(summary.id)}>"
    )
    if summary.alert_line:
        lines.append(f"Alert: {slack_escape(summary.alert_line)}")
    blocks: list[dict[str, Any]] = [
        {
            "type": "header",
            "text": {"type": "plain_text", "text": _clip(f"{summary.flow}: {summary.status}", _SLACK_HEADER)},
        },
        {"type": "section", "text": _mrkdwn("\n".join(lines), _SLACK_TEXT)},
    ]
    counts = [_mrkdwn(f"*{step.id}*\n{slack_escape(_rows(step))}", _SLACK_FIELD) for step in summary.steps]
    if counts:
        blocks.append({"type": "section", "fields": counts[:_SLACK_FIELDS]})
    if summary.row:
        cells = [
            _mrkdwn(f"*{slack_escape(str(name))}*\n{slack_escape(_cell(value)) or '–'}", _SLACK_FIELD)
            for name, value in summary.row.items()
        ]
        blocks.append({"type": "section", "fields": cells[:_SLACK_FIELDS]})
    links = [
        f"*{step.id}*: "
        + " · ".join(
            f"<{slack_escape(link.url)}|{label}>"
            for name, label in _LINKED.items()
            if (link := step.artifacts.get(name)) is not None
        )
        for step in summary.steps
        if step.artifacts
    ]
    if links:
        blocks.append({"type": "section", "text": _mrkdwn(_whole_lines(links, _SLACK_TEXT), _SLACK_TEXT)})
    buttons: list[dict[str, Any]] = [
        {"type": "button", "text": _plain("Open the run"), "url": summary.url, "style": "primary"}
    ]
    for step in summary.steps:
        chart = step.artifacts.get("chart_png")
        if chart is not None:
            buttons.append({"type": "button", "text": _plain(f"Chart: {step.id}"), "url": chart.url})
    for step in summary.steps:
        if step.query_url is not None:
            buttons.append({"type": "button", "text": _plain(f"Query: {step.id}"), "url": step.query_url})
    blocks.append({"type": "actions", "elements": buttons[:_SLACK_BUTTONS]})
    fallback = f"{summary.title}: {summary.status}"
    return {"text": _clip_escaped(slack_escape(fallback), _SLACK_TEXT), "blocks": blocks}


def _mrkdwn(escaped: str, limit: int) -> dict[str, str]:
    return {"type": "mrkdwn", "text": _clip_escaped(escaped, limit)}


def _plain(text: str) -> dict[str, Any]:
    return {"type": "plain_text", "text": _clip(text, _SLACK_BUTTON), "emoji": False}


def _whole_lines(lines: list[str], limit: int) -> str:
    """As many of *lines* as fit in *limit* characters, so no link is cut in half."""
    kept: list[str] = []
    for line in lines:
        if len("\n".join([*kept, line])) > limit:
            break
        kept.append(line)
    return "\n".join(kept or lines[:1])


def _clip_escaped(escaped: str, limit: int) -> str:
    """Escaped text cut to *limit* characters without cutting an entity in half."""
    if len(escaped) <= limit:
        return escaped
    return re.sub(r"&[a-z]*$", "", escaped[: limit - 1]) + "…"


# -- Microsoft Teams ---------------------------------------------------------------------


def teams_payload(summary: RunSummary) -> dict[str, Any]:
    """A Teams message carrying one Adaptive Card (version 1.4)."""
    body: list[dict[str, Any]] = [
        {"type": "TextBlock", "text": summary.title, "weight": "Bolder", "size": "Large", "wrap": True}
    ]
    if summary.description and summary.description != summary.title:
        body.append({"type": "TextBlock", "text": summary.description, "isSubtle": True, "wrap": True})
    facts = [("Flow", summary.flow), ("Status", summary.status), ("Trigger", summary.trigger)]
    body.append(_facts([*facts, *([("Alert", summary.alert_line)] if summary.alert_line else [])]))
    if summary.steps:
        body.append({"type": "TextBlock", "text": "Steps", "weight": "Bolder", "wrap": True})
        body.append(_facts([(step.id, _rows(step)) for step in summary.steps]))
    if summary.row:
        body.append({"type": "TextBlock", "text": "Row", "weight": "Bolder", "wrap": True})
        body.append(_facts([(str(name), _cell(value)) for name, value in summary.row.items()]))
    charts = [(step, step.artifacts["chart_png"]) for step in summary.steps if "chart_png" in step.artifacts]
    for step, chart in charts[:_TEAMS_IMAGES]:
        body.append({"type": "Image", "url": chart.url, "altText": f"{step.id} chart", "size": "Stretch"})
    actions: list[dict[str, Any]] = [{"type": "Action.OpenUrl", "title": "Open the run", "url": summary.url}]
    for step in summary.steps:
        if step.query_url is not None and len(actions) < _TEAMS_ACTIONS:
            actions.append({"type": "Action.OpenUrl", "title": f"Query: {step.id}", "url": step.query_url})
    for step in summary.steps:
        csv = step.artifacts.get("csv")
        if csv is not None and len(actions) < _TEAMS_ACTIONS:
            actions.append({"type": "Action.OpenUrl", "title": f"CSV: {step.id}", "url": csv.url})
    for step in summary.steps:
        file = step.artifacts.get("file")
        if file is not None and len(actions) < _TEAMS_ACTIONS:
            actions.append({"type": "Action.OpenUrl", "title": f"File: {step.id}", "url": file.url})
    card = {
        "$schema": _CARD_SCHEMA,
        "type": "AdaptiveCard",
        "version": "1.4",
        "body": body,
        "actions": actions,
    }
    return {
        "type": "message",
        "attachments": [{"contentType": _ADAPTIVE_CARD, "contentUrl": None, "content": card}],
    }


def _facts(pairs: list[tuple[str, str]]) -> dict[str, Any]:
    facts = [
        {"title": _clip(title, _TEAMS_VALUE), "value": _clip(value, _TEAMS_VALUE) or "–"}
        for title, value in pairs[:_TEAMS_FACTS]
    ]
    return {"type": "FactSet", "facts": facts}


# -- shared ------------------------------------------------------------------------------


def _rows(step: StepSummary) -> str:
    if step.status == StepStatus.FAILED.value:
        return f"failed: {step.error}" if step.error else "failed"
    if step.row_count is None:
        return step.status
    return "1 row" if step.row_count == 1 else f"{step.row_count:,} rows"


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, dt.datetime):
        return value.isoformat()
    return str(value)


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"
