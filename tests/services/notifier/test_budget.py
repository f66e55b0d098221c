"""Emails kept within the operator's size budget: attached, zipped, linked, refused."""

from __future__ import annotations

import email
import email.policy
import io
import os
import re
import zipfile
from email.message import EmailMessage
from functools import partial
from html import unescape
from typing import Any

import pytest
from yarl import URL

from common.contracts.errors import DeliveryError
from common.contracts.messages import BlobRef, ErrorCode, utcnow
from services.notifier.budget import Chart, File, Packer
from services.notifier.email import Email, build_email, describe_size, sender_address
from tests.services.notifier.conftest import HISTORY_URL, NotifierFactory, Rendered, png_of

BUDGET = 200_000
COLUMNS = ["State", "Events"]
ROWS = [["TEXAS", "12"], ["KANSAS", "9"]]
SMALL_CSV = b"State,Events\r\n" + b"".join(f"STATE{i},{i}\r\n".encode() for i in range(1000))
#: About 1 MB that deflate shrinks to a few KB.
REPETITIVE_CSV = b"State,Events\r\n" + b"TEXAS,Thunderstorm Wind,3\r\n" * 40_000
#: Random bytes: base64 makes them 400 KB, and zip cannot make them smaller.
RANDOM_CSV = os.urandom(300_000)
PNG = png_of(320, 200)


def report(**mail: Any) -> dict[str, Any]:
    """A chart step and an email that shows it inline and attaches its CSV and PNG."""
    return {
        "name": "storm-report",
        "description": "Storms by state",
        "connection": "local",
        "database": "Samples",
        "steps": [
            {"id": "chart", "action": "run_query_and_render_chart", "query": "StormEvents | take 10"},
            {
                "id": "mail",
                "action": "send_email",
                "to": ["team@example.com"],
                "subject": "Storms",
                "attachments": ["chart"],
                **mail,
            },
        ],
    }


def html_of(message: EmailMessage) -> str:
    part = message.get_body(preferencelist=("html",))
    assert part is not None
    return str(part.get_content())


def text_of(message: EmailMessage) -> str:
    part = message.get_body(preferencelist=("plain",))
    assert part is not None
    return str(part.get_content())


def attachments_of(message: EmailMessage) -> dict[str, tuple[str, bytes]]:
    found = {}
    for part in message.iter_attachments():
        data = part.get_payload(decode=True)
        assert isinstance(data, bytes)
        found[str(part.get_filename())] = (part.get_content_type(), data)
    return found


def parsed(data: bytes) -> EmailMessage:
    message = email.message_from_bytes(data, policy=email.policy.default)
    assert isinstance(message, EmailMessage)
    return message


def hrefs(html: str) -> list[URL]:
    return [URL(unescape(href)) for href in re.findall(r'href="([^"]+)"', html)]


async def test_an_email_within_its_budget_carries_its_attachments_as_they_are(
    notifier: NotifierFactory,
) -> None:
    async with notifier(email_max_bytes=BUDGET) as n:
        run = await n.run_until(report(), "mail", {"chart": Rendered(ROWS, COLUMNS, SMALL_CSV, PNG)})
        output = await n.step.perform(run)
        received = await n.received_email()

    assert attachments_of(received) == {"chart.csv": ("text/csv", SMALL_CSV), "chart.png": ("image/png", PNG)}
    inline = [part for part in received.walk() if part.get_content_disposition() == "inline"]
    assert [part.get_content() for part in inline] == [PNG]
    assert output.detail["attachments"] == "attached"
    assert output.detail["inline_images"] == "inline"
    assert output.detail["size"] == output.artifacts["email"].size <= BUDGET
    assert output.detail["max_bytes"] == BUDGET


async def test_an_email_over_its_budget_sends_its_attachments_zipped(notifier: NotifierFactory) -> None:
    async with notifier(email_max_bytes=BUDGET) as n:
        run = await n.run_until(report(), "mail", {"chart": Rendered(ROWS, COLUMNS, REPETITIVE_CSV, PNG)})
        output = await n.step.perform(run)
        received = await n.received_email()

    archive_name = f"storm-report-{run.run_id}.zip"
    [(name, (content_type, data))] = attachments_of(received).items()
    assert (name, content_type) == (archive_name, "application/zip")
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        assert {entry.filename: entry.compress_type for entry in archive.infolist()} == {
            "chart.csv": zipfile.ZIP_DEFLATED,
            "chart.png": zipfile.ZIP_DEFLATED,
        }
        assert archive.read("chart.csv") == REPETITIVE_CSV
        assert archive.read("chart.png") == PNG
    assert output.detail["attachments"] == "zipped"
    assert output.detail["size"] <= BUDGET
    assert "too large" not in text_of(received)


async def test_zip_attachments_zips_them_whatever_their_size(notifier: NotifierFactory) -> None:
    async with notifier(email_max_bytes=BUDGET) as n:
        run = await n.run_until(
            report(zip_attachments=True), "mail", {"chart": Rendered(ROWS, COLUMNS, SMALL_CSV, PNG)}
        )
        output = await n.step.perform(run)
        received = await n.received_email()

    [(name, (_, data))] = attachments_of(received).items()
    assert name == f"storm-report-{run.run_id}.zip"
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        assert archive.read("chart.csv") == SMALL_CSV
    assert output.detail["attachments"] == "zipped"


async def test_attachments_zip_cannot_fit_become_links_named_in_the_html_and_the_text(
    notifier: NotifierFactory,
) -> None:
    async with notifier(email_max_bytes=BUDGET) as n:
        run = await n.run_until(report(), "mail", {"chart": Rendered(ROWS, COLUMNS, RANDOM_CSV, PNG)})
        output = await n.step.perform(run)
        received = await n.received_email()
        csv_key = n.artifacts["chart"]["csv"].key
        png_key = n.artifacts["chart"]["chart_png"].key

    assert attachments_of(received) == {}
    html, text = html_of(received), text_of(received)
    linked = {url.path: url for url in hrefs(html) if url.path.startswith("/v1/artifacts/")}
    assert set(linked) == {f"/v1/artifacts/{csv_key}", f"/v1/artifacts/{png_key}"}
    assert all(str(url.origin()) == HISTORY_URL for url in linked.values())
    assert "too large for this email (at most 195.3 KB)" in html
    assert re.search(r">chart\.csv</a> \(293\.0 KB\)", html)
    assert "too large for this email (at most 195.3 KB)" in text
    assert f"- chart.csv (293.0 KB): {HISTORY_URL}/v1/artifacts/{csv_key}" in text.splitlines()
    png_line = f"- chart.png ({describe_size(len(PNG))}): {HISTORY_URL}/v1/artifacts/{png_key}"
    assert png_line in text.splitlines()
    # The chart is small enough to stay inline.
    assert [p.get_content_type() for p in received.walk() if p.get_content_disposition() == "inline"] == [
        "image/png"
    ]
    assert output.detail["attachments"] == "linked"
    assert output.detail["inline_images"] == "inline"
    assert output.detail["size"] <= BUDGET


async def test_an_inline_chart_too_large_for_the_budget_becomes_a_link(notifier: NotifierFactory) -> None:
    huge_png = png_of(400, 200, noise=True)
    assert len(huge_png) > BUDGET

    async with notifier(email_max_bytes=BUDGET) as n:
        run = await n.run_until(
            report(attachments=[]), "mail", {"chart": Rendered(ROWS, COLUMNS, SMALL_CSV, huge_png)}
        )
        output = await n.step.perform(run)
        received = await n.received_email()
        png_key = n.artifacts["chart"]["chart_png"].key

    html = html_of(received)
    assert "cid:" not in html
    assert "<img" not in html
    assert [p for p in received.walk() if p.get_content_maintype() == "image"] == []
    assert f"/v1/artifacts/{png_key}" in [url.path for url in hrefs(html)]
    assert f"{HISTORY_URL}/v1/artifacts/{png_key}" in text_of(received)
    assert output.detail["inline_images"] == "linked"
    assert "attachments" not in output.detail
    assert output.detail["size"] <= BUDGET


async def test_an_email_too_large_even_with_everything_linked_fails_permanently(
    notifier: NotifierFactory,
) -> None:
    body = "{% for i in range(40000) %}<p>storm {{ i }}</p>{% endfor %}"

    async with notifier(email_max_bytes=BUDGET) as n:
        run = await n.run_until(
            report(body_html=body), "mail", {"chart": Rendered(ROWS, COLUMNS, SMALL_CSV, PNG)}
        )
        with pytest.raises(DeliveryError) as caught:
            await n.step.perform(run)
        sent = n.outbox.messages()

    error = caught.value
    assert error.code is ErrorCode.EMAIL_TOO_LARGE
    assert error.retryable is False
    assert "even with its attachments as links" in error.message
    assert "200,000 bytes" in error.message
    measured = re.search(r"\(([\d,]+) bytes\) even", error.message)
    assert measured is not None
    assert int(measured.group(1).replace(",", "")) > BUDGET
    assert sent == []


# -- the packer on its own: what it reads ------------------------------------------------


def packer(max_bytes: int, reads: list[str], blobs: dict[str, bytes]) -> Packer:
    async def load(ref: BlobRef) -> bytes:
        reads.append(ref.key)
        return blobs[ref.key]

    return Packer(
        max_bytes=max_bytes,
        load=load,
        compose=partial(build_email, sender=sender_address("r@example.com"), message_id="<p.1@adxflow>"),
        artifact_url=lambda ref: f"{HISTORY_URL}/v1/artifacts/{ref.key}",
        archive_name="report.zip",
        archived_at=utcnow(),
    )


def plain_mail(body: str = "<p>storms</p>") -> Email:
    return Email(to=["team@example.com"], subject="Storms", body_html=body, text="storms\n")


async def test_a_file_known_to_be_too_large_is_linked_without_being_read() -> None:
    reads: list[str] = []
    # More than deflate could ever shrink to the budget: the size alone decides.
    ref = BlobRef(key="runs/r/q.render/1/result.csv", content_type="text/csv", size=300 * 2**20)

    packed = await packer(BUDGET, reads, {}).pack(plain_mail(), [File("q.csv", "text", "csv", ref)], [])

    assert reads == []
    assert packed.detail["attachments"] == "linked"
    url = f"{HISTORY_URL}/v1/artifacts/runs/r/q.render/1/result.csv"
    assert f'<a href="{url}" style="color:#0969da">q.csv</a> (300.0 MB)' in html_of(parsed(packed.data))


async def test_each_file_is_read_once_however_many_arrangements_are_tried() -> None:
    reads: list[str] = []
    data = os.urandom(148_000)
    png = png_of(320, 200)
    blobs = {"runs/r/q/1/result.csv": data, "runs/r/q/1/chart.png": png}
    csv_ref = BlobRef(key="runs/r/q/1/result.csv", content_type="text/csv", size=len(data))
    png_ref = BlobRef(key="runs/r/q/1/chart.png", content_type="image/png", size=len(png))
    body = "<p><img alt='q' src='cid:chart.q.r@adxflow'></p>"

    packed = await packer(BUDGET, reads, blobs).pack(
        plain_mail(body),
        [File("q.csv", "text", "csv", csv_ref)],
        [Chart("chart.q.r@adxflow", "q.png", png_ref)],
    )

    assert sorted(reads) == sorted(blobs)
    assert packed.detail == {
        "attachments": "linked",
        "inline_images": "inline",
        "size": len(packed.data),
        "max_bytes": BUDGET,
    }


async def test_a_linked_chart_leaves_no_reference_to_its_content_id() -> None:
    png = png_of(400, 200, noise=True)
    ref = BlobRef(key="runs/r/q/1/chart.png", content_type="image/png", size=len(png))
    body = (
        "<p><IMG ALT='q' SRC='cid:chart.q.r@adxflow' width=640></p>"
        '<table background="cid:chart.q.r@adxflow"><tr><td>1</td></tr></table>'
    )

    packed = await packer(BUDGET, [], {ref.key: png}).pack(
        plain_mail(body), [], [Chart("chart.q.r@adxflow", "q.png", ref)]
    )

    html = html_of(parsed(packed.data))
    assert "cid:" not in html
    assert "<IMG" not in html
    url = f"{HISTORY_URL}/v1/artifacts/{ref.key}"
    assert f'<a href="{url}" style="color:#0969da">q.png</a>' in html
    assert f'<table background="{url}">' in html
    assert packed.detail["inline_images"] == "linked"
