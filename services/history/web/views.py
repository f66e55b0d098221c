"""Runs and steps as the pages show them: statuses with icons, durations in words, a timeline."""

from __future__ import annotations

import datetime as dt
import email
import email.policy
import json
from dataclasses import dataclass, field
from typing import Any

from services.history.bodies import IterationPage, RunDetail, RunSummary, StepAttempt, StepError
from services.history.web.advice import advice_for


@dataclass(frozen=True)
class Badge:
    status: str
    icon: str
    label: str


_BADGES = {
    "succeeded": Badge("succeeded", "✓", "succeeded"),
    "failed": Badge("failed", "✗", "failed"),
    "running": Badge("running", "●", "running"),
    "queued": Badge("queued", "○", "queued"),
    "pending": Badge("pending", "○", "pending"),
    "skipped": Badge("skipped", "–", "skipped"),
    # An alert's states.
    "ok": Badge("succeeded", "✓", "ok"),
    "firing": Badge("failed", "!", "firing"),
    "error": Badge("failed", "✗", "error"),
    "no_data": Badge("pending", "?", "no data"),
}

UNFINISHED = frozenset({"queued", "running", "pending"})

#: What a flow page's silence form offers: the duration the trigger API takes, and its words.
SILENCE_DURATIONS = (("1h", "1 hour"), ("4h", "4 hours"), ("1d", "1 day"), ("7d", "1 week"))

#: Artifact names that are drawn charts, in the order a page prefers them.
CHART_ARTIFACTS = ("chart_png", "chart_svg")
#: Keys of a step's detail the step's own section shows already.
_SHOWN_DETAIL = frozenset(
    {"text", "parameters", "truncation", "reason", "alert", "dry_run", "sample", "sent_to", "destination"}
)
#: The largest webhook payload of a test run a page shows inline (the artifact has it whole).
PAYLOAD_SHOWN_BYTES = 64 * 1024


def badge(status: str | None) -> Badge:
    return _BADGES.get(status or "", Badge(status or "unknown", "?", status or "unknown"))


def duration_words(ms: float | None) -> str:
    """``350 ms``, ``2.4 s``, ``3 min 5 s``, ``1 h 2 min``; an em dash when unknown."""
    if ms is None:
        return "—"
    if ms < 1000:
        return f"{ms:.0f} ms"
    seconds = ms / 1000
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {secs} s" if secs else f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} min" if minutes else f"{hours} h"


def parse_instant(value: str | None) -> dt.datetime | None:
    if not value:
        return None
    return dt.datetime.fromisoformat(value.replace("Z", "+00:00"))


def utc_text(value: str | None) -> str:
    """What a ``<time>`` element says before the browser rewrites it in the viewer's zone."""
    instant = parse_instant(value)
    return instant.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC") if instant else "—"


@dataclass
class Attempt:
    """One attempt of a step: a row of the timeline."""

    view: StepAttempt
    offset: float = 0.0
    width: float = 0.0

    @property
    def badge(self) -> Badge:
        return badge(self.view.status)


@dataclass
class Lane:
    """One child run of a scope step: an iteration's row in its list, a branch's lane in the timeline."""

    run: RunSummary
    offset: float = 0.0
    width: float = 0.0

    @property
    def badge(self) -> Badge:
        return badge(self.run.status)

    @property
    def label(self) -> str:
        scope = self.run.scope
        if scope is None:
            return self.run.run_id[:8]
        return scope.branch or f"#{scope.index}"


@dataclass
class Iterations:
    """A page of a scope step's child runs, as its section lists them."""

    page: IterationPage
    lanes: list[Lane]
    #: The status the list is filtered on, and the links to the other views of it.
    status: str | None = None
    next_href: str | None = None
    all_href: str | None = None
    failed_href: str | None = None


@dataclass
class StepView:
    step_id: str
    kind: str
    service: str
    flow_step: str | None
    attempts: list[Attempt] = field(default_factory=list)
    failed: bool = False
    query_text: str | None = None
    query_source: str | None = None
    parameters: dict[str, Any] = field(default_factory=dict)
    emails: list[dict[str, Any]] = field(default_factory=list)
    #: A test run's webhook payloads, not posted: each one's name, link and pretty JSON.
    payloads: list[dict[str, Any]] = field(default_factory=list)
    #: A for_each's or parallel's child runs.
    iterations: Iterations | None = None

    @property
    def scope(self) -> str | None:
        """``for_each``, ``parallel`` or ``if`` for a scope step; None for any other."""
        value = self.latest.detail.get("scope") if self.kind == "scope" else None
        return value if isinstance(value, str) else None

    @property
    def held_back(self) -> str | None:
        """In a test run: what the step did not do (not sent, not written, not run), in words."""
        value = self.latest.detail.get("dry_run")
        return value if isinstance(value, str) else None

    @property
    def sample(self) -> dict[str, Any] | None:
        """A test run's write that was not made: its columns and first rows."""
        value = self.latest.detail.get("sample")
        return value if isinstance(value, dict) and value.get("columns") is not None else None

    @property
    def latest(self) -> StepAttempt:
        return self.attempts[-1].view

    @property
    def badge(self) -> Badge:
        return badge(self.latest.status)

    @property
    def unfinished(self) -> bool:
        return self.latest.status in UNFINISHED

    @property
    def error(self) -> StepError | None:
        return self.latest.error

    @property
    def advice(self) -> str | None:
        return advice_for(self.error.code) if self.error else None

    @property
    def chart(self) -> dict[str, Any] | None:
        artifacts = self.latest.artifacts
        for name in CHART_ARTIFACTS:
            if name in artifacts:
                return {"href": artifacts[name].href, "kind": name}
        return None

    @property
    def table_href(self) -> str | None:
        link = self.latest.artifacts.get("table_html")
        return link.href if link else None

    @property
    def downloads(self) -> list[tuple[str, str]]:
        return [(name, link.href) for name, link in self.latest.artifacts.items()]

    @property
    def other_detail(self) -> list[tuple[str, str]]:
        shown = []
        for name, value in self.latest.detail.items():
            if name in _SHOWN_DETAIL or value in (None, "", [], {}):
                continue
            text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
            shown.append((name, text))
        return shown


def step_views(run: RunDetail, now: dt.datetime) -> list[StepView]:
    """The run's steps in itinerary order, each with its attempts placed on one time axis."""
    grouped: dict[str, StepView] = {}
    for view in run.steps:
        step = grouped.get(view.step_id)
        if step is None:
            step = grouped[view.step_id] = StepView(view.step_id, view.kind, view.service, view.flow_step)
        step.attempts.append(Attempt(view))
    for step in grouped.values():
        step.failed = step.step_id == run.failed_step or step.latest.status == "failed"
        detail = step.latest.detail
        # A copy with its own query sent its text as a query step does; an ingestion, its SQL.
        if step.kind in ("query", "copy", "ingest") and detail.get("text"):
            step.query_text = detail["text"]
            step.query_source = (
                f"SQL on {detail.get('database')}, as run" if step.kind == "ingest" else "as run"
            )
            step.parameters = dict(detail.get("parameters") or {})
    return list(grouped.values())


def place(steps: list[StepView], run: RunDetail, now: dt.datetime) -> None:
    """Put every attempt, and every child run listed under a step, on the run's one time axis."""
    spans: list[tuple[Attempt | Lane, dt.datetime | None, dt.datetime | None]] = []
    for step in steps:
        for attempt in step.attempts:
            spans.append((attempt, *_span(attempt.view.started_at, attempt.view.finished_at, now)))
        for lane in step.iterations.lanes if step.iterations else []:
            spans.append((lane, *_span(lane.run.started_at, lane.run.finished_at, now)))
    starts = [start for _, start, _ in spans if start is not None]
    ends = [end for _, _, end in spans if end is not None]
    origin = parse_instant(run.started_at) or (min(starts) if starts else None)
    if origin is None or not ends:
        return
    origin = min([origin, *starts])
    total = max((max(ends) - origin).total_seconds(), 0.001)
    for placed, start, end in spans:
        if start is None or end is None:
            continue
        placed.offset = round((start - origin).total_seconds() / total * 100, 3)
        placed.width = round(max((end - start).total_seconds() / total * 100, 0.4), 3)


def _span(
    started: str | None, finished: str | None, now: dt.datetime
) -> tuple[dt.datetime | None, dt.datetime | None]:
    start = parse_instant(started)
    return start, parse_instant(finished) or (now if start else None)


def pretty_payload(raw: bytes) -> str:
    """A webhook payload as a page shows it: indented JSON, or its text when it is not JSON."""
    if len(raw) > PAYLOAD_SHOWN_BYTES:
        return raw[:PAYLOAD_SHOWN_BYTES].decode("utf-8", "replace") + "\n… (cut; the artifact has it all)"
    try:
        return json.dumps(json.loads(raw), indent=2, ensure_ascii=False)
    except ValueError:
        return raw.decode("utf-8", "replace")


def email_summary(raw: bytes) -> dict[str, str]:
    """The headers a reader checks first in a sent email."""
    message = email.message_from_bytes(raw, policy=email.policy.default)
    wanted = ("Subject", "From", "To", "Cc", "Date")
    return {name: str(message[name]) for name in wanted if message[name] is not None}
