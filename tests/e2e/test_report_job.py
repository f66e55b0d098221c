"""One report job end to end: HTTP → trigger → query-worker → render → notifier → SMTP.

Everything is real: the local Kusto endpoint answers azure-kusto-data over
HTTP, the email crosses SMTP to an aiosmtpd server, history is in SQL, and the
broker is the in-process one or the machine's RabbitMQ (same test, both).
"""

from __future__ import annotations

import email
import email.policy
import io
from email.message import EmailMessage
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import duckdb
from PIL import Image

from tests.e2e.conftest import System

PIE_JOB: dict[str, Any] = {
    "connection": "local",
    "database": "Samples",
    "query": "StormEvents | where DamageProperty >= min_damage | summarize Events = count() by State",
    "parameters": {"min_damage": 1000},
    "chart": "piechart",
    "title": "Damaging storm events by state",
    "email": {
        "to": ["team@example.com"],
        "cc": ["lead@example.com"],
        "subject": "Storms",
        "importance": "high",
    },
}


class TableReader(HTMLParser):
    """The cells of every <tr> in an HTML document."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[list[str]] = []
        self._cell: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "tr":
            self.rows.append([])
        elif tag in ("td", "th"):
            self._cell = []

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th") and self._cell is not None:
            self.rows[-1].append("".join(self._cell).strip())
            self._cell = None

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)


def parse(path: Path) -> EmailMessage:
    message = email.message_from_bytes(path.read_bytes(), policy=email.policy.default)
    assert isinstance(message, EmailMessage)
    return message


async def wait_for_terminal(system: System, run_id: str, wait_until: Any) -> dict[str, Any]:
    return await system.finished(run_id)


async def test_a_pie_chart_report_arrives_with_correct_counts(
    system: System, sample_database: Path, wait_until: Any
) -> None:
    accepted = await system.submit(PIE_JOB)
    path = await system.smtp.wait_for_message(timeout=60)
    message = parse(path)

    assert message["Subject"] == "Storms"
    assert message["Importance"].lower() == "high"
    assert "lead@example.com" in message["Cc"]
    html_part = message.get_body(("html",))
    assert html_part is not None
    reader = TableReader()
    reader.feed(html_part.get_content())
    header, *rows = [row for row in reader.rows if row]
    assert header == ["State", "Events"]
    in_email = {state: int(events.replace(",", "")) for state, events in rows}

    with duckdb.connect(str(sample_database), read_only=True) as con:
        expected = dict(
            con.execute(
                "SELECT State, count(*) FROM StormEvents WHERE DamageProperty >= 1000 GROUP BY State"
            ).fetchall()
        )
    assert in_email == expected

    images = [
        part for part in message.walk() if part.get_content_type() == "image/png" and part["Content-ID"]
    ]
    assert images, "no inline PNG"
    cid = images[0]["Content-ID"].strip("<>")
    assert f"cid:{cid}" in html_part.get_content()
    with Image.open(io.BytesIO(images[0].get_content())) as chart:
        assert chart.size == (800, 450)
    attachments = {part.get_filename(): part for part in message.iter_attachments()}
    assert any(name and name.endswith(".csv") for name in attachments)

    run = await wait_for_terminal(system, accepted["run_id"], wait_until)
    assert run["status"] == "succeeded"
    assert [step["service"] for step in run["steps"]] == [
        "trigger",
        "query_worker",
        "render",
        "notifier",
        "history",
    ]
    assert all(step["status"] == "succeeded" and step["duration_ms"] is not None for step in run["steps"])
    assert run["steps"][1]["row_count"] == len(expected)
    assert run["duration_ms"] > 0


async def test_a_syntax_error_fails_the_query_step_and_sends_nothing(system: System, wait_until: Any) -> None:
    accepted = await system.submit({**PIE_JOB, "query": "StormEvents | summarize by"})
    run = await wait_for_terminal(system, accepted["run_id"], wait_until)

    assert run["status"] == "failed"
    assert run["failed_step"] == "query"
    query = run["steps"][1]
    assert query["status"] == "failed"
    assert query["error"]["code"] == "KustoSyntaxError"
    assert query["error"]["message"]
    assert [step["status"] for step in run["steps"][2:]] == ["skipped", "skipped", "skipped"]
    assert system.smtp.messages() == []


async def test_an_unknown_table_is_a_semantic_error(system: System, wait_until: Any) -> None:
    accepted = await system.submit({**PIE_JOB, "query": "NoSuchTable | count", "parameters": {}})
    run = await wait_for_terminal(system, accepted["run_id"], wait_until)

    assert run["status"] == "failed"
    assert run["error"]["code"] == "KustoSemanticError"
    assert "NoSuchTable" in run["error"]["message"]
    # The history shows what was sent beside why it failed.
    failed = next(step for step in run["steps"] if step["step_id"] == run["failed_step"])
    assert failed["query"]["text"] == "NoSuchTable | count"
    assert failed["detail"]["client_request_id"].startswith(f"adxflow;{accepted['run_id']};")


async def test_an_smtp_refusal_fails_the_notify_step_with_the_server_reply(
    system: System, wait_until: Any
) -> None:
    system.rejections["blocked@example.com"] = (550, "5.7.1 Relaying denied")
    job = {**PIE_JOB, "email": {"to": ["blocked@example.com"], "subject": "Refused"}}
    accepted = await system.submit(job)
    run = await wait_for_terminal(system, accepted["run_id"], wait_until)

    assert run["status"] == "failed"
    assert run["failed_step"] == "notify"
    notify = run["steps"][3]
    assert notify["error"]["code"] == "SmtpRejected"
    assert "550" in notify["error"]["message"]
    assert "Relaying denied" in notify["error"]["message"]
    assert run["steps"][4]["status"] == "skipped"
