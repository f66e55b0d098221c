from __future__ import annotations

import email
import email.policy
import email.utils
import io
import re
from email.message import EmailMessage

import pytest
from PIL import Image

from common.contracts import EmailSpec, Importance
from services.notifier.email import ReportParts, build_email

MESSAGE_ID = "<run42.notify.1@adxflow>"
SENDER = "adxflow <adxflow@reports.example>"
CSV = "region,count\r\nwest,3\r\nnorð,4\r\n".encode()
TABLE = '<table style="border:0"><tr><th>region</th></tr><tr><td>west &amp; east</td></tr></table>'


@pytest.fixture
def png() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (320, 200), (30, 120, 200)).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture
def spec() -> EmailSpec:
    return EmailSpec(to=["ana@example.com", "bo@example.com"], cc=["cy@example.com"], subject="Daily errors")


def report(chart_png: bytes | None, **changes: object) -> ReportParts:
    fields: dict[str, object] = {
        "title": "Daily errors",
        "table_html": TABLE,
        "text": "region\n------\nwest\n",
        "chart_png": chart_png,
        "csv": CSV,
        "row_count": 2,
        "run_url": "https://adxflow.example/v1/runs/run42?tab=steps&x=1",
        "query": "Errors | where Level == 'Error' and Text has '<b>' | take 10",
    }
    fields.update(changes)
    return ReportParts(**fields)  # type: ignore[arg-type]


def parsed(message: EmailMessage) -> EmailMessage:
    result = email.message_from_bytes(message.as_bytes(), policy=email.policy.default)
    assert isinstance(result, EmailMessage)
    return result


def html_of(message: EmailMessage) -> str:
    body = message.get_body(preferencelist=("html",))
    assert body is not None
    return str(body.get_content())


def layout(message: EmailMessage) -> list[str]:
    return [part.get_content_type() for part in message.walk()]


def test_report_with_chart_has_the_documented_layout(spec: EmailSpec, png: bytes) -> None:
    message = parsed(build_email(spec, report(png), sender=SENDER, message_id=MESSAGE_ID))

    assert layout(message) == [
        "multipart/mixed",
        "multipart/alternative",
        "text/plain",
        "multipart/related",
        "text/html",
        "image/png",
        "image/png",
        "text/csv",
    ]


def test_headers(spec: EmailSpec, png: bytes) -> None:
    message = parsed(build_email(spec, report(png), sender=SENDER, message_id=MESSAGE_ID))

    assert message["From"] == SENDER
    assert [address.addr_spec for address in message["To"].addresses] == ["ana@example.com", "bo@example.com"]
    assert [address.addr_spec for address in message["Cc"].addresses] == ["cy@example.com"]
    assert message["Subject"] == "Daily errors"
    assert message["Message-ID"] == MESSAGE_ID
    assert message["MIME-Version"] == "1.0"
    assert email.utils.parsedate_to_datetime(message["Date"]).tzinfo is not None
    assert "Bcc" not in message


def test_no_cc_header_without_cc(png: bytes) -> None:
    spec = EmailSpec(to=["ana@example.com"], subject="s")

    message = parsed(build_email(spec, report(png), sender=SENDER, message_id=MESSAGE_ID))

    assert "Cc" not in message


@pytest.mark.parametrize(
    ("importance", "header", "priority"),
    [
        (Importance.HIGH, "High", "1 (Highest)"),
        (Importance.NORMAL, "Normal", "3 (Normal)"),
        (Importance.LOW, "Low", "5 (Lowest)"),
    ],
)
def test_importance_headers(importance: Importance, header: str, priority: str, png: bytes) -> None:
    spec = EmailSpec(to=["ana@example.com"], subject="s", importance=importance)

    message = parsed(build_email(spec, report(png), sender=SENDER, message_id=MESSAGE_ID))

    assert message["Importance"] == header
    assert message["X-Priority"] == priority


def test_html_references_the_inline_chart_by_content_id(spec: EmailSpec, png: bytes) -> None:
    message = parsed(build_email(spec, report(png), sender=SENDER, message_id=MESSAGE_ID))

    sources = re.findall(r'<img src="cid:([^"]+)"', html_of(message))
    inline = [part for part in message.walk() if part.get_content_disposition() == "inline"]
    assert len(sources) == 1
    assert len(inline) == 1
    assert inline[0].get_content_type() == "image/png"
    assert inline[0]["Content-ID"] == f"<{sources[0]}>"
    assert inline[0].get_content() == png


def test_chart_and_csv_are_attached(spec: EmailSpec, png: bytes) -> None:
    message = parsed(
        build_email(spec, report(png), sender=SENDER, message_id=MESSAGE_ID, attachment_stem="errors")
    )

    attachments = {part.get_filename(): part for part in message.iter_attachments()}
    assert set(attachments) == {"errors.csv", "errors.png"}
    assert attachments["errors.png"].get_content_type() == "image/png"
    assert attachments["errors.png"].get_content() == png
    csv = attachments["errors.csv"]
    assert csv.get_content_type() == "text/csv"
    assert csv.get_content_charset() == "utf-8"
    assert csv.get_payload(decode=True) == CSV


def test_plain_text_alternative(spec: EmailSpec, png: bytes) -> None:
    message = parsed(build_email(spec, report(png), sender=SENDER, message_id=MESSAGE_ID))

    plain = message.get_body(preferencelist=("plain",))
    assert plain is not None
    assert plain.get_content().splitlines() == ["region", "------", "west"]


def test_html_body(spec: EmailSpec, png: bytes) -> None:
    html = html_of(parsed(build_email(spec, report(png), sender=SENDER, message_id=MESSAGE_ID)))

    assert TABLE in html
    assert "2 rows" in html
    assert '<a href="https://adxflow.example/v1/runs/run42?tab=steps&amp;x=1"' in html
    assert "View this run" in html
    assert "Text has &#39;&lt;b&gt;&#39; | take 10</pre>" in html
    assert "<style" not in html
    assert "<script" not in html


def test_title_is_escaped(spec: EmailSpec, png: bytes) -> None:
    parts = report(png, title="Errors <script>alert(1)</script>")

    html = html_of(parsed(build_email(spec, parts, sender=SENDER, message_id=MESSAGE_ID)))

    assert "<script>" not in html
    assert "Errors &lt;script&gt;alert(1)&lt;/script&gt;" in html


def test_no_run_link_without_run_url(spec: EmailSpec, png: bytes) -> None:
    html = html_of(parsed(build_email(spec, report(png, run_url=None), sender=SENDER, message_id=MESSAGE_ID)))

    assert "View this run" not in html
    assert "<a " not in html


def test_table_only_report_has_no_image(spec: EmailSpec) -> None:
    message = parsed(build_email(spec, report(None), sender=SENDER, message_id=MESSAGE_ID))

    assert layout(message) == [
        "multipart/mixed",
        "multipart/alternative",
        "text/plain",
        "text/html",
        "text/csv",
    ]
    assert "<img" not in html_of(message)
    assert "cid:" not in html_of(message)
    assert [part.get_filename() for part in message.iter_attachments()] == ["result.csv"]


def test_subject_with_line_break_is_refused(png: bytes) -> None:
    # The contract refuses this too; model_construct skips its validation to test the second line of defence.
    spec = EmailSpec.model_construct(
        to=["ana@example.com"], cc=[], subject="hi\r\nBcc: eve@example.com", importance=Importance.NORMAL
    )

    with pytest.raises(ValueError, match="subject"):
        build_email(spec, report(png), sender=SENDER, message_id=MESSAGE_ID)


def test_sender_with_line_break_is_refused(spec: EmailSpec, png: bytes) -> None:
    with pytest.raises(ValueError, match="sender"):
        build_email(spec, report(png), sender="a@example.com\nBcc: eve@example.com", message_id=MESSAGE_ID)


@pytest.mark.parametrize("message_id", ["run42@adxflow", "<run42>", "<run 42@adxflow>", "<run42@adxflow>\n"])
def test_malformed_message_id_is_refused(spec: EmailSpec, png: bytes, message_id: str) -> None:
    with pytest.raises(ValueError, match="message_id"):
        build_email(spec, report(png), sender=SENDER, message_id=message_id)


def test_chart_that_is_not_a_png_is_refused(spec: EmailSpec) -> None:
    with pytest.raises(ValueError, match="PNG"):
        build_email(spec, report(b"GIF89a not a png at all"), sender=SENDER, message_id=MESSAGE_ID)
