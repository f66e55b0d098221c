from __future__ import annotations

import dataclasses
import email
import email.policy
import email.utils
import io
import re
from email.headerregistry import Address
from email.message import EmailMessage

import pytest
from PIL import Image

from common.contracts.messages import Importance
from services.notifier.email import (
    LINK_NOTE,
    Attachment,
    Email,
    InlineImage,
    Link,
    build_email,
    describe_size,
    sender_address,
)

MESSAGE_ID = "<run42.notify.1@adxflow>"
SENDER = Address("adxflow", "adxflow", "reports.example")
RUN_URL = "https://adxflow.example/v1/runs/run42?tab=steps&x=1"
CSV = "region,count\r\nwest,3\r\nnorð,4\r\n".encode()
ERRORS_CID = "errors.run42@adxflow"
LATENCY_CID = "latency.run42@adxflow"
BODY = (
    "<h1>Daily errors</h1>"
    f'<img src="cid:{ERRORS_CID}" alt="errors">'
    '<table style="border:0"><tr><th>region</th></tr><tr><td>west &amp; east</td></tr></table>'
    f'<img src="cid:{LATENCY_CID}" alt="latency">'
)
TEXT = "Daily errors\n\nregion\n------\nwest & east\nnorð\n"


def png_of(colour: tuple[int, int, int]) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (320, 200), colour).save(buffer, format="PNG")
    return buffer.getvalue()


ERRORS_PNG = png_of((30, 120, 200))
LATENCY_PNG = png_of((200, 60, 30))
ATTACHED_PNG = png_of((20, 160, 80))


def mail(**changes: object) -> Email:
    """A report with two inline charts, a CSV and a PNG attached, and a run link."""
    report = Email(
        to=["ana@example.com", "bo@example.com"],
        cc=["cy@example.com"],
        subject="Daily errors",
        body_html=BODY,
        text=TEXT,
        inline=[InlineImage(ERRORS_CID, ERRORS_PNG), InlineImage(LATENCY_CID, LATENCY_PNG)],
        attachments=[
            Attachment("errors.csv", "text", "csv", CSV),
            Attachment("errors.png", "image", "png", ATTACHED_PNG),
        ],
        run_url=RUN_URL,
    )
    return dataclasses.replace(report, **changes)  # type: ignore[arg-type]


def built(report: Email) -> EmailMessage:
    """*report* built, then sent through bytes and parsed back as a client would see it."""
    message = build_email(report, sender=SENDER, message_id=MESSAGE_ID)
    result = email.message_from_bytes(message.as_bytes(), policy=email.policy.default)
    assert isinstance(result, EmailMessage)
    return result


def html_of(message: EmailMessage) -> str:
    body = message.get_body(preferencelist=("html",))
    assert body is not None
    return str(body.get_content())


def layout(message: EmailMessage) -> list[str]:
    return [part.get_content_type() for part in message.walk()]


def test_inline_images_make_a_related_part_before_the_attachments() -> None:
    message = built(mail())

    assert layout(message) == [
        "multipart/mixed",
        "multipart/alternative",
        "text/plain",
        "multipart/related",
        "text/html",
        "image/png",
        "image/png",
        "text/csv",
        "image/png",
    ]


def test_without_inline_images_the_html_stands_alone() -> None:
    message = built(mail(body_html="<p>no charts today</p>", inline=[]))

    assert layout(message) == [
        "multipart/mixed",
        "multipart/alternative",
        "text/plain",
        "text/html",
        "text/csv",
        "image/png",
    ]
    assert "cid:" not in html_of(message)
    assert not [part for part in message.walk() if part.get_content_disposition() == "inline"]


def test_headers() -> None:
    message = built(mail())

    assert message["From"] == "adxflow <adxflow@reports.example>"
    assert [address.addr_spec for address in message["To"].addresses] == ["ana@example.com", "bo@example.com"]
    assert [address.addr_spec for address in message["Cc"].addresses] == ["cy@example.com"]
    assert message["Subject"] == "Daily errors"
    assert message["Message-ID"] == MESSAGE_ID
    assert message["MIME-Version"] == "1.0"
    assert email.utils.parsedate_to_datetime(message["Date"]).tzinfo is not None
    assert "Bcc" not in message


def test_only_the_top_level_carries_mime_version() -> None:
    message = built(mail())

    assert [part.get_content_type() for part in message.walk() if "MIME-Version" in part] == [
        "multipart/mixed"
    ]


def test_no_cc_header_without_cc() -> None:
    message = built(mail(to=["ana@example.com"], cc=[]))

    assert "Cc" not in message


def test_message_is_seven_bit_clean() -> None:
    message = build_email(mail(subject="Erreurs du jour — norð"), sender=SENDER, message_id=MESSAGE_ID)

    message.as_bytes().decode("ascii")
    assert built(mail(subject="Erreurs du jour — norð"))["Subject"] == "Erreurs du jour — norð"


@pytest.mark.parametrize(
    ("importance", "header", "priority"),
    [
        (Importance.HIGH, "High", "1 (Highest)"),
        (Importance.NORMAL, "Normal", "3 (Normal)"),
        (Importance.LOW, "Low", "5 (Lowest)"),
    ],
)
def test_importance_headers(importance: Importance, header: str, priority: str) -> None:
    message = built(mail(importance=importance))

    assert message["Importance"] == header
    assert message["X-Priority"] == priority


def test_importance_defaults_to_normal() -> None:
    report = Email(to=["ana@example.com"], subject="s", body_html="<p>x</p>", text="x")

    message = build_email(report, sender=SENDER, message_id=MESSAGE_ID)

    assert message["Importance"] == "Normal"
    assert message["X-Priority"] == "3 (Normal)"


def test_every_cid_reference_matches_an_inline_part() -> None:
    message = built(mail())

    sources = re.findall(r'<img src="cid:([^"]+)"', html_of(message))
    inline = {
        part["Content-ID"]: part for part in message.walk() if part.get_content_disposition() == "inline"
    }
    assert sources == [ERRORS_CID, LATENCY_CID]
    assert set(inline) == {f"<{ERRORS_CID}>", f"<{LATENCY_CID}>"}
    assert all(part.get_content_type() == "image/png" for part in inline.values())
    assert inline[f"<{ERRORS_CID}>"].get_content() == ERRORS_PNG
    assert inline[f"<{LATENCY_CID}>"].get_content() == LATENCY_PNG


def test_inline_images_live_beside_the_html_only() -> None:
    message = built(mail())

    related = next(part for part in message.walk() if part.get_content_type() == "multipart/related")
    children = [part.get_content_type() for part in related.iter_parts()]
    assert children == ["text/html", "image/png", "image/png"]
    assert [part.get_filename() for part in message.iter_attachments()] == ["errors.csv", "errors.png"]


def test_attachments_keep_their_names_bytes_and_types() -> None:
    message = built(mail())

    attachments = {part.get_filename(): part for part in message.iter_attachments()}
    assert list(attachments) == ["errors.csv", "errors.png"]
    assert all(part.get_content_disposition() == "attachment" for part in attachments.values())
    csv = attachments["errors.csv"]
    assert csv.get_content_type() == "text/csv"
    assert csv.get_content_charset() == "utf-8"
    assert csv.get_payload(decode=True) == CSV
    png = attachments["errors.png"]
    assert png.get_content_type() == "image/png"
    assert png.get_content() == ATTACHED_PNG


def test_plain_text_alternative() -> None:
    message = built(mail())

    plain = message.get_body(preferencelist=("plain",))
    assert plain is not None
    assert plain.get_content_charset() == "utf-8"
    # The footer's links follow the body, as in the HTML.
    assert plain.get_content().splitlines() == [*TEXT.splitlines(), "", f"View this run: {RUN_URL}"]


def test_html_part_is_utf8() -> None:
    message = built(mail(body_html="<p>norð</p>", inline=[]))

    html = message.get_body(preferencelist=("html",))
    assert html is not None
    assert html.get_content_charset() == "utf-8"
    assert "<p>norð</p>" in html_of(message)


def test_body_is_inserted_as_is() -> None:
    html = html_of(built(mail()))

    assert BODY in html
    assert "west &amp; east" in html
    assert "&amp;amp;" not in html
    assert "<style" not in html
    assert "<script" not in html


def test_run_link_is_escaped() -> None:
    html = html_of(built(mail()))

    assert '<a href="https://adxflow.example/v1/runs/run42?tab=steps&amp;x=1"' in html
    assert "View this run" in html


def test_run_url_cannot_break_out_of_the_attribute() -> None:
    html = html_of(built(mail(run_url='https://adxflow.example/"><script>alert(1)</script>')))

    assert "<script>" not in html
    assert 'href="https://adxflow.example/&#34;&gt;&lt;script&gt;alert(1)&lt;/script&gt;"' in html


def test_no_run_link_without_run_url() -> None:
    html = html_of(built(mail(run_url=None)))

    assert "View this run" not in html
    assert "<a " not in html


@pytest.mark.parametrize("subject", ["hi\r\nBcc: eve@example.com", "hi\nBcc: eve@example.com", "hi\rthere"])
def test_subject_with_line_break_is_refused(subject: str) -> None:
    with pytest.raises(ValueError, match="subject"):
        build_email(mail(subject=subject), sender=SENDER, message_id=MESSAGE_ID)


@pytest.mark.parametrize("sender", ["a@example.com\nBcc: eve@example.com", "a@example.com\r\nX: y"])
def test_sender_with_line_break_is_refused(sender: str) -> None:
    with pytest.raises(ValueError, match="sender"):
        sender_address(sender)


@pytest.mark.parametrize("mail_from", ["", "not an address", "a@example.com, b@example.com", "@example.com"])
def test_a_sender_that_is_not_one_address_is_refused(mail_from: str) -> None:
    with pytest.raises(ValueError, match="sender"):
        sender_address(mail_from)


def test_the_sender_keeps_the_operators_address_and_name_without_a_display_name() -> None:
    sender = sender_address("Reports Robot <robot@reports.example>")

    assert (sender.display_name, sender.addr_spec) == ("Reports Robot", "robot@reports.example")


def test_a_display_name_replaces_the_operators_but_not_the_address() -> None:
    sender = sender_address("adxflow <robot@reports.example>", "Storm desk")

    message = email.message_from_bytes(
        build_email(mail(), sender=sender, message_id=MESSAGE_ID).as_bytes(), policy=email.policy.default
    )

    [shown] = message["From"].addresses
    assert (shown.display_name, shown.addr_spec) == ("Storm desk", "robot@reports.example")


def test_a_display_name_with_commas_and_accents_is_encoded_as_one_name() -> None:
    sender = sender_address("robot@reports.example", "Ops, Zürich — nuit")

    raw = build_email(mail(), sender=sender, message_id=MESSAGE_ID).as_bytes()
    message = email.message_from_bytes(raw, policy=email.policy.default)

    raw.decode("ascii")
    [shown] = message["From"].addresses
    assert (shown.display_name, shown.addr_spec) == ("Ops, Zürich — nuit", "robot@reports.example")


def test_a_display_name_cannot_add_a_header() -> None:
    with pytest.raises(ValueError, match="CR or LF"):
        sender_address("robot@reports.example", "Ops\r\nBcc: eve@example.com")


# ---------------------------------------------------------------------------
# Files as links
# ---------------------------------------------------------------------------

LINKS = [
    Link("errors.csv", 24 * 1024 * 1024, "https://adxflow.example/v1/artifacts/runs/r/q/1/result.csv"),
    Link("a<b>.png", 1536, "https://adxflow.example/v1/artifacts/runs/r/q/1/chart.png?x=1&y=2"),
]


def test_links_are_listed_in_the_html_escaped() -> None:
    html = html_of(built(mail(attachments=[], links=LINKS)))

    assert LINK_NOTE in html
    assert (
        '<a href="https://adxflow.example/v1/artifacts/runs/r/q/1/result.csv" style="color:#0969da">'
        "errors.csv</a> (24.0 MB)" in html
    )
    assert 'href="https://adxflow.example/v1/artifacts/runs/r/q/1/chart.png?x=1&amp;y=2"' in html
    assert "a&lt;b&gt;.png</a> (1.5 KB)" in html
    assert html.index(LINK_NOTE) < html.index("View this run")


def test_links_are_listed_in_the_text() -> None:
    message = built(mail(attachments=[], links=LINKS, link_note="Too large here:"))

    plain = message.get_body(preferencelist=("plain",))
    assert plain is not None
    lines = plain.get_content().splitlines()
    assert lines[: len(TEXT.splitlines())] == TEXT.splitlines()
    assert lines[-5:] == [
        "Too large here:",
        "- errors.csv (24.0 MB): https://adxflow.example/v1/artifacts/runs/r/q/1/result.csv",
        "- a<b>.png (1.5 KB): https://adxflow.example/v1/artifacts/runs/r/q/1/chart.png?x=1&y=2",
        "",
        f"View this run: {RUN_URL}",
    ]


def test_each_query_is_linked_in_the_web_ui_in_the_html_and_the_text() -> None:
    link = "https://help.kusto.windows.net/Samples?query=H4sI%2Babc%3D%3D"
    message = built(mail(query_links=[("by_state", link)]))

    html = html_of(message)
    assert f'<a href="{link}" style="color:#0969da">Open by_state in Azure Data Explorer</a>' in html
    plain = message.get_body(preferencelist=("plain",))
    assert plain is not None
    assert plain.get_content().splitlines()[-1] == f"Open by_state in Azure Data Explorer: {link}"
    assert "Azure Data Explorer" not in html_of(built(mail()))


def test_no_note_without_links() -> None:
    message = built(mail())

    assert LINK_NOTE not in html_of(message)
    plain = message.get_body(preferencelist=("plain",))
    assert plain is not None
    assert LINK_NOTE not in plain.get_content()


@pytest.mark.parametrize(
    ("size", "shown"),
    [(0, "0 bytes"), (1023, "1023 bytes"), (1024, "1.0 KB"), (200_000, "195.3 KB"), (10 * 2**20, "10.0 MB")],
)
def test_sizes_read_as_a_person_would_say_them(size: int, shown: str) -> None:
    assert describe_size(size) == shown


@pytest.mark.parametrize(
    "message_id", ["run42@adxflow", "<run42>", "<run 42@adxflow>", "<run42@adxflow>\n", "<a@b@c>", ""]
)
def test_malformed_message_id_is_refused(message_id: str) -> None:
    with pytest.raises(ValueError, match="message_id"):
        build_email(mail(), sender=SENDER, message_id=message_id)


def test_inline_image_that_is_not_a_png_is_refused() -> None:
    inline = [InlineImage(ERRORS_CID, ERRORS_PNG), InlineImage(LATENCY_CID, b"GIF89a not a png at all")]

    with pytest.raises(ValueError, match="not a PNG"):
        build_email(mail(inline=inline), sender=SENDER, message_id=MESSAGE_ID)


@pytest.mark.parametrize(
    "content_id", ["chart", f"<{ERRORS_CID}>", "chart 1@adxflow", "chart@adxflow\r\nX: y", "a@b@c", ""]
)
def test_malformed_inline_content_id_is_refused(content_id: str) -> None:
    with pytest.raises(ValueError, match="content id"):
        build_email(mail(inline=[InlineImage(content_id, ERRORS_PNG)]), sender=SENDER, message_id=MESSAGE_ID)


@pytest.mark.parametrize(
    "filename", ["../errors.csv", "reports/errors.csv", "..\\errors.csv", "errors\r\n.csv", "err\x00.csv", ""]
)
def test_unsafe_attachment_filename_is_refused(filename: str) -> None:
    attachments = [Attachment(filename, "text", "csv", CSV)]

    with pytest.raises(ValueError, match="file name"):
        build_email(mail(attachments=attachments), sender=SENDER, message_id=MESSAGE_ID)
