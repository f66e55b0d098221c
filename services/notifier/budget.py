"""Keeping an email within the operator's size budget (``email_max_bytes``).

An email is first built as its flow asks. While its size (the bytes of the
whole MIME message, as the relay receives them) is over the budget, it is
built again with less in it:

1. the attachments zipped into one .zip (deflate);
2. the attachments as links to the run's artifacts in the history service,
   listed in a note in the HTML and in the text;
3. the inline charts as links too.

An email still over the budget fails the step with ``EmailTooLarge``. The
sizes the blob store recorded rule out an arrangement that cannot fit before
any file is read, and each file is read at most once.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import io
import math
import re
import zipfile
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, replace
from email.message import EmailMessage
from typing import Any, Literal

from markupsafe import Markup, escape

from common.contracts.errors import DeliveryError
from common.contracts.messages import BlobRef, ErrorCode
from services.notifier.email import Attachment, Email, InlineImage, Link, describe_size

#: Deflate shrinks data by this factor at the very most, so a zip is never smaller than its input over it.
_DEFLATE_MAX_RATIO = 1032

Load = Callable[[BlobRef], Awaitable[bytes]]
Compose = Callable[[Email], EmailMessage]
ArtifactUrl = Callable[[BlobRef], str]
Carried = Literal["attached", "zipped", "linked"]


@dataclass(frozen=True)
class File:
    """A run artifact the email attaches, or links to when it is too large."""

    filename: str
    maintype: str
    subtype: str
    ref: BlobRef


@dataclass(frozen=True)
class Chart:
    """A PNG the body shows as ``cid:{content_id}``, or links to when it is too large."""

    content_id: str
    filename: str
    ref: BlobRef


@dataclass(frozen=True)
class Packed:
    message: EmailMessage
    #: The message as sent; its length is the size measured against the budget.
    data: bytes
    #: What was done to fit, for the step's output.
    detail: dict[str, Any]


@dataclass(frozen=True)
class _Arrangement:
    attachments: Carried
    charts_linked: bool


class Packer:
    """Builds one email within *max_bytes*.

    *load* reads an artifact from the blob store, *compose* turns an :class:`Email` into a
    MIME message, *artifact_url* is where the history service serves an artifact. Zipped
    attachments travel as *archive_name*, their entries dated *archived_at*.
    """

    def __init__(
        self,
        *,
        max_bytes: int,
        load: Load,
        compose: Compose,
        artifact_url: ArtifactUrl,
        archive_name: str,
        archived_at: dt.datetime,
    ) -> None:
        self.max_bytes = max_bytes
        self.load = load
        self.compose = compose
        self.artifact_url = artifact_url
        self.archive_name = archive_name
        self.archived_at = archived_at
        self._loaded: dict[str, bytes] = {}

    async def pack(
        self, mail: Email, files: Sequence[File], charts: Sequence[Chart], *, zip_attachments: bool = False
    ) -> Packed:
        """*mail* with *files* attached and *charts* inline, in the first arrangement that fits.

        Raises DeliveryError (``EmailTooLarge``, permanent) when none does.
        """
        arrangements = _arrangements(files, charts, zip_attachments=zip_attachments)
        size = 0
        for arrangement in arrangements:
            final = arrangement is arrangements[-1]
            # The last arrangement is always built, so a refusal names a size actually measured.
            if not final and _least_size(mail, files, charts, arrangement) > self.max_bytes:
                continue
            message, data = await self._build(mail, files, charts, arrangement)
            size = len(data)
            if size <= self.max_bytes:
                detail: dict[str, Any] = {"size": size, "max_bytes": self.max_bytes}
                if files:
                    detail["attachments"] = arrangement.attachments
                if charts:
                    detail["inline_images"] = "linked" if arrangement.charts_linked else "inline"
                return Packed(message, data, detail)
        raise DeliveryError(_too_large(size, self.max_bytes, files, charts), code=ErrorCode.EMAIL_TOO_LARGE)

    async def _build(
        self, mail: Email, files: Sequence[File], charts: Sequence[Chart], arrangement: _Arrangement
    ) -> tuple[EmailMessage, bytes]:
        attachments: list[Attachment] = []
        links: list[Link] = []
        if arrangement.attachments == "attached":
            for file in files:
                data = await self._data(file.ref)
                attachments.append(Attachment(file.filename, file.maintype, file.subtype, data))
        elif arrangement.attachments == "zipped" and files:
            contents = [(file.filename, await self._data(file.ref)) for file in files]
            archive = await asyncio.to_thread(_zip, contents, self.archived_at)
            attachments.append(Attachment(self.archive_name, "application", "zip", archive))
        elif arrangement.attachments == "linked":
            links.extend(Link(file.filename, file.ref.size, self.artifact_url(file.ref)) for file in files)
        body = mail.body_html
        inline: list[InlineImage] = []
        for chart in charts:
            if not arrangement.charts_linked:
                inline.append(InlineImage(chart.content_id, await self._data(chart.ref)))
                continue
            link = Link(chart.filename, chart.ref.size, self.artifact_url(chart.ref))
            body = _linked_image(body, chart.content_id, link)
            if link.url not in {known.url for known in links}:
                links.append(link)
        note = (
            f"These files are too large for this email (at most {describe_size(self.max_bytes)}); "
            "download them from the run history:"
        )
        arranged = replace(
            mail,
            body_html=body,
            inline=inline,
            attachments=attachments,
            links=[*mail.links, *links],
            link_note=note if links else mail.link_note,
        )
        return await asyncio.to_thread(self._serialized, arranged)

    def _serialized(self, mail: Email) -> tuple[EmailMessage, bytes]:
        # Serializing fixes the MIME boundaries, so sending the message again yields these bytes.
        message = self.compose(mail)
        return message, message.as_bytes()

    async def _data(self, ref: BlobRef) -> bytes:
        if ref.key not in self._loaded:
            self._loaded[ref.key] = await self.load(ref)
        return self._loaded[ref.key]


def _arrangements(
    files: Sequence[File], charts: Sequence[Chart], *, zip_attachments: bool
) -> list[_Arrangement]:
    """What to try, in order: from everything in the email to everything linked."""
    if not files:
        found = [_Arrangement("attached", charts_linked=False)]
    else:
        found = [] if zip_attachments else [_Arrangement("attached", charts_linked=False)]
        found += [_Arrangement("zipped", charts_linked=False), _Arrangement("linked", charts_linked=False)]
    if charts:
        found.append(_Arrangement("linked" if files else "attached", charts_linked=True))
    return found


def _base64_size(size: int) -> int:
    return 4 * math.ceil(size / 3)


def _least_size(
    mail: Email, files: Sequence[File], charts: Sequence[Chart], arrangement: _Arrangement
) -> int:
    """A size the email cannot be under in *arrangement*, from sizes known without reading a file."""
    # Quoted-printable spends at least one byte on each character of the HTML and the text.
    least = len(mail.body_html) + len(mail.text)
    if not arrangement.charts_linked:
        least += sum(_base64_size(chart.ref.size) for chart in charts)
    if arrangement.attachments == "attached":
        least += sum(_base64_size(file.ref.size) for file in files)
    elif arrangement.attachments == "zipped":
        least += _base64_size(math.ceil(sum(file.ref.size for file in files) / _DEFLATE_MAX_RATIO))
    return least


def _zip(contents: Sequence[tuple[str, bytes]], archived_at: dt.datetime) -> bytes:
    buffer = io.BytesIO()
    date_time = archived_at.astimezone(dt.UTC).timetuple()[:6]
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, data in contents:
            entry = zipfile.ZipInfo(name, date_time=date_time)
            entry.external_attr = 0o644 << 16
            archive.writestr(entry, data, compress_type=zipfile.ZIP_DEFLATED)
    return buffer.getvalue()


def _linked_image(body: str, content_id: str, link: Link) -> str:
    """*body* with the image ``cid:{content_id}`` replaced by a link to *link*."""
    anchor = str(
        Markup('<a href="{}" style="color:#0969da">{}</a> ({})').format(
            link.url, link.name, describe_size(link.size)
        )
    )
    tag = re.compile(
        r"<img\b[^>]*?\bsrc\s*=\s*([\"'])cid:" + re.escape(content_id) + r"\1[^>]*>", re.IGNORECASE
    )
    body = tag.sub(lambda _: anchor, body)
    # A reference the pattern missed (unquoted, or not in an <img>) points to the file instead.
    return body.replace(f"cid:{content_id}", str(escape(link.url)))


def _too_large(size: int, max_bytes: int, files: Sequence[File], charts: Sequence[Chart]) -> str:
    linked = [what for what, present in (("attachments", files), ("charts", charts)) if present]
    even = f" even with its {' and '.join(linked)} as links" if linked else ""
    return (
        f"the email is {describe_size(size)} ({size:,} bytes){even}, over the "
        f"{describe_size(max_bytes)} ({max_bytes:,} bytes) this server sends (ADXFLOW_EMAIL_MAX_BYTES); "
        "make its body smaller, for example with fewer table_rows"
    )
