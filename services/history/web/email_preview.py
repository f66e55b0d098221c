"""A sent email as one HTML page: its headers, then its HTML body with its inline images embedded.

The run page shows it in a sandboxed frame; the chart gallery writes it beside the ``.eml``.
"""

from __future__ import annotations

import base64
import email
import email.policy
import re
from email.message import EmailMessage

from jinja2 import PackageLoader
from jinja2.sandbox import SandboxedEnvironment
from markupsafe import Markup

_templates = SandboxedEnvironment(loader=PackageLoader("services.history.web", "templates"), autoescape=True)


def email_preview(raw: bytes) -> str:
    """The page of the sent email *raw*: headers, size, attachments listed, inline images as data URIs."""
    message = email.message_from_bytes(raw, policy=email.policy.default)
    assert isinstance(message, EmailMessage)
    body = message.get_body(preferencelist=("html",))
    html = body.get_content() if body is not None else "<p>(no HTML part)</p>"
    images = {}
    attachments = []
    for part in message.walk():
        content_id = part["Content-ID"]
        if content_id and part.get_content_maintype() == "image":
            payload = part.get_payload(decode=True)
            assert isinstance(payload, bytes)
            data = base64.b64encode(payload).decode("ascii")
            images[content_id.strip("<>")] = f"data:{part.get_content_type()};base64,{data}"
        elif part.get_filename():
            attachments.append({"name": part.get_filename(), "size": len(part.get_payload(decode=True))})
    html = re.sub(
        r'src="cid:([^"]+)"', lambda match: f'src="{images.get(match.group(1), "")}"', html
    )  # the sent HTML escaped its attributes; the data URIs are base64
    headers = {name: str(message[name]) for name in ("From", "To", "Cc", "Subject", "Date", "Importance")}
    return _templates.get_template("email_preview.html").render(
        headers={name: value for name, value in headers.items() if value != "None"},
        attachments=attachments,
        body=Markup(html),
        size=len(raw),
    )
