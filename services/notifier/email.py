"""A flow's email as a MIME message: HTML with inline charts, a plain-text
alternative, and attachments.

Email clients drop <style> blocks, scripts and remote images, so the HTML uses
inline styles only and charts travel inside the message, referenced by their
Content-ID. Files too large to travel in the message are listed as links in
a note, in the HTML and in the text, and so are the files the run exported.
Building the message reads no files and opens no connections.
"""

from __future__ import annotations

import datetime as dt
import email.policy
import email.utils
import re
from dataclasses import dataclass, field
from email.headerregistry import Address
from email.message import EmailMessage

from jinja2.sandbox import SandboxedEnvironment
from markupsafe import Markup

from common.contracts.messages import Importance

#: (Importance, X-Priority) header values; X-Priority is what older Outlook and Thunderbird read.
_PRIORITY: dict[Importance, tuple[str, str]] = {
    Importance.HIGH: ("High", "1 (Highest)"),
    Importance.NORMAL: ("Normal", "3 (Normal)"),
    Importance.LOW: ("Low", "5 (Lowest)"),
}

_MESSAGE_ID = re.compile(r"<[^<>@\s]+@[^<>@\s]+>")
_UNSAFE_FILENAME = re.compile(r"[\x00-\x1f\x7f/\\]")
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

_FONT = "font-family:Segoe UI,Helvetica,Arial,sans-serif;color:#1f2328"

_TEMPLATE = """\
<!DOCTYPE html>
<html>
<head><meta http-equiv="Content-Type" content="text/html; charset=utf-8"></head>
<body style="margin:0;padding:16px;background-color:#ffffff;{{ font }}">
{{ body }}
{%- for note, listed in lists %}
<div style="{{ font }};font-size:13px;margin:16px 0 0 0;padding:8px 12px;border:1px solid #d0d7de;\
background-color:#f6f8fa">
<p style="margin:0 0 4px 0">{{ note }}</p>
<ul style="margin:0;padding-left:20px">
{%- for link in listed %}
<li><a href="{{ link.url }}" style="color:#0969da">{{ link.name }}</a> ({{ link.size | size }})</li>
{%- endfor %}
</ul>
</div>
{%- endfor %}
{%- if run_url or query_links %}
<div style="{{ font }};font-size:12px;color:#57606a;margin:16px 0 0 0;border-top:1px solid #d0d7de;\
padding-top:8px">
{%- if run_url %}
<p style="margin:0"><a href="{{ run_url }}" style="color:#0969da">View this run</a></p>
{%- endif %}
{%- for step, url in query_links %}
<p style="margin:4px 0 0 0"><a href="{{ url }}" style="color:#0969da">\
Open {{ step }} in Azure Data Explorer</a></p>
{%- endfor %}
</div>
{%- endif %}
</body>
</html>
"""

#: What the note above the links says unless the sender says otherwise.
LINK_NOTE = "These files are too large for this email; download them from the run history:"
#: What the note above the files the run exported says.
EXPORT_NOTE = "Files this run exported, to download from the run history:"


def describe_size(size: int) -> str:
    """*size* bytes for a reader: ``812 bytes``, ``3.4 KB``, ``12.1 MB``."""
    if size < 1024:
        return f"{size} bytes"
    amount = size / 1024
    for unit in ("KB", "MB"):
        if amount < 1024:
            return f"{amount:.1f} {unit}"
        amount /= 1024
    return f"{amount:.1f} GB"


_environment = SandboxedEnvironment(autoescape=True)
_environment.filters["size"] = describe_size
_html_template = _environment.from_string(_TEMPLATE)


@dataclass(frozen=True)
class Attachment:
    filename: str
    maintype: str
    subtype: str
    data: bytes


@dataclass(frozen=True)
class InlineImage:
    """A PNG the HTML body shows with ``<img src="cid:{content_id}">``."""

    content_id: str
    png: bytes


@dataclass(frozen=True)
class Link:
    """A file the email points to instead of carrying it."""

    name: str
    size: int
    url: str


@dataclass(frozen=True)
class Email:
    to: list[str]
    subject: str
    #: The body as HTML made by the flow's (autoescaping) template; inserted as is.
    body_html: str
    #: The plain-text alternative.
    text: str
    cc: list[str] = field(default_factory=list)
    importance: Importance = Importance.NORMAL
    inline: list[InlineImage] = field(default_factory=list)
    attachments: list[Attachment] = field(default_factory=list)
    #: Files listed under *link_note*, in the HTML and in the text.
    links: list[Link] = field(default_factory=list)
    link_note: str = LINK_NOTE
    #: Files the run exported (``export_to_file``), listed under :data:`EXPORT_NOTE`: always links.
    exports: list[Link] = field(default_factory=list)
    #: Link to the run's page in the history service, shown in the footer.
    run_url: str | None = None
    #: Each query step's query in the Azure Data Explorer web UI, (step id, URL), in the footer.
    query_links: list[tuple[str, str]] = field(default_factory=list)


def sender_address(mail_from: str, name: str | None = None) -> Address:
    """The operator's address from *mail_from* (``adxflow <reports@example.com>``), shown as *name*.

    Without *name*, the display name of *mail_from* stays. A ValueError says what is wrong with
    either.
    """
    _single_line(mail_from, "sender")
    addresses = email.policy.default.header_factory("From", mail_from).addresses
    if len(addresses) != 1 or not addresses[0].username or not addresses[0].domain:
        raise ValueError(f"sender {mail_from!r} is not one address such as 'adxflow <reports@example.com>'")
    operator = addresses[0]
    shown = operator.display_name if name is None else name
    return Address(display_name=shown, username=operator.username, domain=operator.domain)


def build_email(mail: Email, *, sender: Address, message_id: str) -> EmailMessage:
    """*mail* as a MIME message (multipart/alternative at the top when it has no attachments).

    Layout::

        multipart/mixed
          multipart/alternative
            text/plain
            multipart/related        (text/html alone when nothing is inline)
              text/html
              image/png ...          inline, referenced as cid:
          attachments ...
    """
    _check_parts(mail, message_id)
    message = _headers(mail, sender=sender, message_id=message_id)
    _add_bodies(message, mail)
    for attachment in mail.attachments:
        params = {"charset": "utf-8"} if attachment.maintype == "text" else {}
        message.add_attachment(
            attachment.data,
            maintype=attachment.maintype,
            subtype=attachment.subtype,
            filename=attachment.filename,
            params=params,
        )
    # The stdlib stamps every part it creates with MIME-Version; only the top level needs it.
    for part in message.walk():
        if part is not message:
            del part["MIME-Version"]
    return message


def _check_parts(mail: Email, message_id: str) -> None:
    """A ValueError for a header, file name or inline image that must not go into a message."""
    _single_line(mail.subject, "subject")
    if not _MESSAGE_ID.fullmatch(message_id):
        raise ValueError(f"message_id must look like <local@domain>, got {message_id!r}")
    for attachment in mail.attachments:
        if not attachment.filename or _UNSAFE_FILENAME.search(attachment.filename):
            raise ValueError(f"attachment file name {attachment.filename!r} is not a plain file name")
    for image in mail.inline:
        if not image.png.startswith(_PNG_SIGNATURE):
            raise ValueError(f"inline image {image.content_id!r} is not a PNG")
        if not _MESSAGE_ID.fullmatch(f"<{image.content_id}>"):
            raise ValueError(f"inline image content id {image.content_id!r} must look like local@domain")


def _headers(mail: Email, *, sender: Address, message_id: str) -> EmailMessage:
    message = EmailMessage(policy=email.policy.SMTP)
    message["From"] = sender
    message["To"] = ", ".join(mail.to)
    if mail.cc:
        message["Cc"] = ", ".join(mail.cc)
    message["Subject"] = mail.subject
    message["Date"] = email.utils.format_datetime(dt.datetime.now(dt.UTC))
    message["Message-ID"] = message_id
    importance, priority = _PRIORITY[mail.importance]
    message["Importance"] = importance
    message["X-Priority"] = priority
    return message


def _add_bodies(message: EmailMessage, mail: Email) -> None:
    """The text and HTML alternatives, the HTML's inline images related to it."""
    html = _html_template.render(
        font=_FONT,
        body=Markup(mail.body_html),
        lists=_link_lists(mail),
        run_url=mail.run_url,
        query_links=mail.query_links,
    )
    # Quoted-printable keeps the message 7-bit clean whatever the relay supports.
    message.set_content(_text_with_links(mail), cte="quoted-printable")
    message.add_alternative(html, subtype="html", cte="quoted-printable")
    if mail.inline:
        html_part = message.get_body(preferencelist=("html",))
        assert html_part is not None
        for image in mail.inline:
            html_part.add_related(
                image.png, maintype="image", subtype="png", cid=f"<{image.content_id}>", disposition="inline"
            )


def _link_lists(mail: Email) -> list[tuple[str, list[Link]]]:
    """The lists of links under the body, each under its note: files too large to travel, then the
    files the run exported."""
    lists = [(mail.link_note, mail.links), (EXPORT_NOTE, mail.exports)]
    return [(note, links) for note, links in lists if links]


def _text_with_links(mail: Email) -> str:
    parts = [mail.text.rstrip("\n")]
    for note, links in _link_lists(mail):
        parts += ["", note, *(f"- {link.name} ({describe_size(link.size)}): {link.url}" for link in links)]
    if mail.run_url or mail.query_links:
        parts.append("")
    if mail.run_url:
        parts.append(f"View this run: {mail.run_url}")
    parts += [f"Open {step} in Azure Data Explorer: {url}" for step, url in mail.query_links]
    if len(parts) == 1:
        return mail.text
    return "\n".join([*parts, ""])


def _single_line(value: str, field: str) -> None:
    if "\r" in value or "\n" in value:
        raise ValueError(f"{field} must be a single line (line breaks are refused in email headers)")
