"""A sent email as one page: headers escaped, inline images embedded, attachments listed."""

from __future__ import annotations

import base64
from email.message import EmailMessage

from services.history.web.email_preview import email_preview

PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(64))


def sent_email(*, html: str | None) -> EmailMessage:
    message = EmailMessage()
    message["From"] = "adxflow <reports@example.com>"
    message["To"] = "team@example.com"
    message["Subject"] = "<script>alert(1)</script> & storms"
    message["Importance"] = "high"
    message.set_content("The report, as text.")
    if html is not None:
        message.add_alternative(html, subtype="html")
        message.get_payload()[1].add_related(PNG, maintype="image", subtype="png", cid="<chart.1@adxflow>")
    message.add_attachment(b"State,Events\nTEXAS,4701\n", maintype="text", subtype="csv", filename="top.csv")
    return message


def test_inline_images_become_data_uris_and_attachments_are_listed_with_their_size() -> None:
    raw = sent_email(html='<p>Storms</p><img src="cid:chart.1@adxflow" alt="chart">').as_bytes()

    page = email_preview(raw)

    assert f'<img src="data:image/png;base64,{base64.b64encode(PNG).decode()}" alt="chart">' in page
    assert "cid:" not in page
    assert "top.csv (24 bytes)" in page
    assert f"<tr><th>Size</th><td>{len(raw):,} bytes</td></tr>" in page
    assert "<tr><th>Importance</th><td>high</td></tr>" in page
    assert "<tr><th>Cc</th>" not in page  # a header the email lacks is left out


def test_headers_are_escaped_and_the_body_is_the_sent_html() -> None:
    page = email_preview(sent_email(html="<p><b>Storms</b> by state</p>").as_bytes())

    assert "<script>" not in page
    assert "<title>&lt;script&gt;alert(1)&lt;/script&gt; &amp; storms</title>" in page
    assert "<p><b>Storms</b> by state</p>" in page


def test_an_email_without_an_html_part_says_so() -> None:
    page = email_preview(sent_email(html=None).as_bytes())

    assert "<p>(no HTML part)</p>" in page
    assert "top.csv" in page
