"""A rendered report as a MIME message: HTML with an inline chart, a plain-text
alternative, and the chart and the CSV as attachments.

Email clients drop <style> blocks, scripts and remote images, so the HTML uses
inline styles only and the chart travels inside the message, referenced by its
Content-ID. Building the message reads no files and opens no connections.
"""

from __future__ import annotations

import datetime as dt
import email.policy
import email.utils
import re
import urllib.parse
from dataclasses import dataclass
from email.message import EmailMessage

from jinja2.sandbox import SandboxedEnvironment
from markupsafe import Markup

from common.contracts import EmailSpec, Importance

#: (Importance, X-Priority) header values; X-Priority is what older Outlook and Thunderbird read.
_PRIORITY: dict[Importance, tuple[str, str]] = {
    Importance.HIGH: ("High", "1 (Highest)"),
    Importance.NORMAL: ("Normal", "3 (Normal)"),
    Importance.LOW: ("Low", "5 (Lowest)"),
}

_MESSAGE_ID = re.compile(r"<[^<>@\s]+@[^<>@\s]+>")
_UNSAFE_FILENAME = re.compile(r"[\x00-\x1f\x7f/\\]")
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
#: Widest the chart is shown; a larger (high-density) image is scaled down to fit a mail client's pane.
_MAX_CHART_WIDTH = 640

_FONT = "font-family:Segoe UI,Helvetica,Arial,sans-serif;color:#1f2328"

_TEMPLATE = """\
<!DOCTYPE html>
<html>
<head><meta http-equiv="Content-Type" content="text/html; charset=utf-8"></head>
<body style="margin:0;padding:16px;background-color:#ffffff;{{ font }}">
<h1 style="{{ font }};font-size:18px;font-weight:bold;margin:0 0 4px 0">{{ title }}</h1>
<p style="{{ font }};font-size:13px;color:#57606a;margin:0 0 12px 0">{{ rows_line }}</p>
{%- if chart_src %}
<p style="margin:0 0 12px 0"><img src="{{ chart_src }}" alt="chart" width="{{ chart_width }}" \
style="display:block;border:0;max-width:100%;height:auto"></p>
{%- endif %}
{{ table_html }}
<div style="{{ font }};font-size:12px;color:#57606a;margin:16px 0 0 0;border-top:1px solid #d0d7de;\
padding-top:8px">
{%- if run_url %}
<p style="margin:0 0 8px 0"><a href="{{ run_url }}" style="color:#0969da">View this run</a></p>
{%- endif %}
<p style="margin:0 0 4px 0">query</p>
<pre style="margin:0;padding:8px;background-color:#f6f8fa;font-family:Consolas,Menlo,monospace;\
font-size:12px;white-space:pre-wrap;word-break:break-word">{{ query }}</pre>
</div>
</body>
</html>
"""

_environment = SandboxedEnvironment(autoescape=True)
_html_template = _environment.from_string(_TEMPLATE)


@dataclass(frozen=True)
class ReportParts:
    """What the render service produced for one run, ready to be mailed."""

    #: Heading of the report (the job title, or the subject).
    title: str
    #: An escaped, email-safe HTML <table> fragment from the render service; inserted as is.
    table_html: str
    #: Plain-text rendition of the table.
    text: str
    #: The inline chart, or None for a table-only report.
    chart_png: bytes | None
    #: The full result as CSV.
    csv: bytes
    row_count: int
    #: Link to this run in the history service.
    run_url: str | None
    #: The KQL text, shown in the footer.
    query: str


def build_email(
    spec: EmailSpec,
    parts: ReportParts,
    *,
    sender: str,
    message_id: str,
    attachment_stem: str = "result",
) -> EmailMessage:
    """The report as a multipart/mixed message addressed as *spec* says.

    Layout::

        multipart/mixed
          multipart/alternative
            text/plain
            multipart/related        (text/html alone when there is no chart)
              text/html
              image/png              inline, referenced as cid:
          image/png                  {attachment_stem}.png, when there is a chart
          text/csv                   {attachment_stem}.csv
    """
    _single_line(spec.subject, "subject")
    _single_line(sender, "sender")
    _single_line(attachment_stem, "attachment_stem")
    if not _MESSAGE_ID.fullmatch(message_id):
        raise ValueError(f"message_id must look like <local@domain>, got {message_id!r}")
    if not attachment_stem or _UNSAFE_FILENAME.search(attachment_stem):
        raise ValueError(f"attachment_stem must be a non-empty file name, got {attachment_stem!r}")

    message = EmailMessage(policy=email.policy.SMTP)
    message["From"] = sender
    message["To"] = ", ".join(spec.to)
    if spec.cc:
        message["Cc"] = ", ".join(spec.cc)
    message["Subject"] = spec.subject
    message["Date"] = email.utils.format_datetime(dt.datetime.now(dt.UTC))
    message["Message-ID"] = message_id
    importance, priority = _PRIORITY[spec.importance]
    message["Importance"] = importance
    message["X-Priority"] = priority

    # The chart's Content-ID derives from the Message-ID, so it is unique per message and stable.
    chart_cid = f"<chart.{message_id[1:-1]}>"
    chart_width = _chart_width(parts.chart_png) if parts.chart_png is not None else None
    html = _html_template.render(
        font=_FONT,
        title=parts.title,
        rows_line=_rows_line(parts.row_count),
        chart_src=None if chart_width is None else f"cid:{urllib.parse.quote(chart_cid[1:-1], safe='@.')}",
        chart_width=chart_width,
        # Trusted: the render service escapes every value it puts in the table.
        table_html=Markup(parts.table_html),
        run_url=parts.run_url,
        query=parts.query,
    )

    # Quoted-printable keeps the message 7-bit clean whatever the relay supports.
    message.set_content(parts.text, cte="quoted-printable")
    message.add_alternative(html, subtype="html", cte="quoted-printable")
    if parts.chart_png is not None:
        html_part = message.get_body(preferencelist=("html",))
        assert html_part is not None
        html_part.add_related(
            parts.chart_png, maintype="image", subtype="png", cid=chart_cid, disposition="inline"
        )
        message.add_attachment(
            parts.chart_png, maintype="image", subtype="png", filename=f"{attachment_stem}.png"
        )
    message.add_attachment(
        parts.csv,
        maintype="text",
        subtype="csv",
        filename=f"{attachment_stem}.csv",
        params={"charset": "utf-8"},
    )
    # The stdlib stamps every part it creates with MIME-Version; only the top level needs it.
    for part in message.walk():
        if part is not message:
            del part["MIME-Version"]
    return message


def _single_line(value: str, field: str) -> None:
    if "\r" in value or "\n" in value:
        raise ValueError(f"{field} must be a single line (line breaks are refused in email headers)")


def _rows_line(count: int) -> str:
    return "1 row" if count == 1 else f"{count:,} rows"


def _chart_width(png: bytes) -> int:
    """The width to show the chart at, read from the PNG's IHDR chunk."""
    if len(png) < 24 or not png.startswith(_PNG_SIGNATURE) or png[12:16] != b"IHDR":
        raise ValueError("chart_png is not a PNG image")
    return min(int.from_bytes(png[16:20], "big"), _MAX_CHART_WIDTH)
