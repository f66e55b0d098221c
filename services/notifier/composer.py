"""An email step's email as its flow asks, packed within the operator's size budget.

The subject and body come from the step's templates (or, without a body, from
every rendered step in order), the charts from the rendered steps the body
shows by Content-ID, the files from the steps it attaches, and links to the
files the run exported. Composing reads the run's files from the blob store
and sends nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from email.headerregistry import Address
from functools import partial
from html.parser import HTMLParser
from typing import Any

import structlog
from markupsafe import Markup, escape

from common.contracts.actions import RENDERING_STEPS, SendEmail
from common.contracts.errors import ConfigurationError
from common.contracts.flows import Flow
from common.contracts.messages import RunMessage, chart_content_id
from common.contracts.templates import TemplateError, render_html, render_text
from common.platform.runtime import Runtime
from services.notifier.budget import ArtifactUrl, Chart, File, Packed, Packer
from services.notifier.email import Email, build_email, sender_address
from services.notifier.links import exported_files, query_links

log = structlog.get_logger(__name__)


class _Text(HTMLParser):
    """The text of an HTML body, for the text/plain alternative."""

    def __init__(self) -> None:
        super().__init__()
        self.parts: list[str] = []

    def handle_data(self, data: str) -> None:
        self.parts.append(data)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in ("br", "p", "tr", "h1", "h2", "h3", "div", "table"):
            self.parts.append("\n")
        elif tag in ("td", "th"):
            self.parts.append("\t")


def html_to_text(html: str) -> str:
    parser = _Text()
    parser.feed(html)
    lines = (line.strip() for line in "".join(parser.parts).splitlines())
    return "\n".join(line for line in lines if line) + "\n"


@dataclass(frozen=True)
class Composer:
    """Composes a notifier's emails; *run_url* and *artifact_url* link into the run history."""

    runtime: Runtime
    run_url: Callable[[RunMessage], str]
    artifact_url: ArtifactUrl

    async def pack(
        self, message: RunMessage, flow: Flow, spec: SendEmail, context: dict[str, Any], index: int | None
    ) -> Packed:
        """Compose one email and fit it within the budget; nothing is sent yet."""
        subject = _subject(spec, context)
        body = _body(message, flow, spec, context)
        mail = Email(
            to=list(spec.to),
            cc=list(spec.cc),
            subject=subject,
            body_html=body,
            text=html_to_text(body),
            importance=spec.importance,
            run_url=self.run_url(message) if self.runtime.history_url else None,
            query_links=list(query_links(message, flow, self.runtime.connections).items()),
            exports=exported_files(message, flow, self.artifact_url),
        )
        charts, files = _charts_and_files(message, flow, spec, body)
        packer = self._packer(message, flow, spec, index)
        packed = await packer.pack(mail, files, charts, zip_attachments=spec.zip_attachments)
        if packed.detail.get("attachments") not in (None, "attached"):
            log.info("email packed to fit its budget", **packed.detail)
        return packed

    def _packer(self, message: RunMessage, flow: Flow, spec: SendEmail, index: int | None) -> Packer:
        blobs = self.runtime.blobs
        suffix = "" if index is None else f".{index}"
        if message.resend is not None:
            suffix += f".{message.resend}"
        return Packer(
            max_bytes=self.runtime.settings.email_max_bytes,
            load=lambda ref: blobs.get(ref.key),
            compose=partial(
                build_email,
                sender=self._sender(spec),
                message_id=f"<{message.run_id}.{message.step_id}{suffix}@adxflow>",
            ),
            artifact_url=self.artifact_url,
            archive_name=f"{flow.name}-{message.run_id}.zip",
            archived_at=message.submitted_at,
        )

    def _sender(self, spec: SendEmail) -> Address:
        try:
            return sender_address(self.runtime.settings.mail_from, spec.from_name)
        except ValueError as exc:
            raise ConfigurationError(f"ADXFLOW_MAIL_FROM: {exc}") from None


def _subject(spec: SendEmail, context: dict[str, Any]) -> str:
    subject = render_text(spec.subject, context, field=f"steps.{spec.id}.subject").strip()
    if "\r" in subject or "\n" in subject:
        raise TemplateError(f"steps.{spec.id}.subject: renders to more than one line")
    return subject


def _body(message: RunMessage, flow: Flow, spec: SendEmail, context: dict[str, Any]) -> str:
    if spec.body_html is not None:
        return render_html(spec.body_html, context, field=f"steps.{spec.id}.body_html")
    bodies = {name: str(view["body_html"]) for name, view in context["steps"].items()}
    return _default_body(message, flow, bodies)


def _default_body(message: RunMessage, flow: Flow, bodies: dict[str, str]) -> str:
    """Every rendered step's body in order, each under its title and row count."""
    sections = []
    for spec in flow.every_step():
        if isinstance(spec, RENDERING_STEPS) and spec.id in bodies:
            output = message.outputs[spec.id]
            rows = output.row_count or 0
            sections.append(
                Markup(
                    '<h2 style="font-size:16px;margin:16px 0 4px 0">{}</h2>'
                    '<p style="font-size:13px;color:#57606a;margin:0 0 8px 0">{}</p>{}'
                ).format(
                    spec.title or flow.description or spec.id,
                    "1 row" if rows == 1 else f"{rows:,} rows",
                    Markup(bodies[spec.id]),
                )
            )
    return str(Markup("\n").join(sections)) or str(escape(flow.description or flow.name))


def _charts_and_files(
    message: RunMessage, flow: Flow, spec: SendEmail, body: str
) -> tuple[list[Chart], list[File]]:
    """The charts *body* shows by Content-ID, and the CSVs and PNGs of the steps *spec* attaches."""
    charts, files = [], []
    for step in flow.every_step():
        if not isinstance(step, RENDERING_STEPS):
            continue
        render = message.outputs.get(f"{step.id}.render")
        if render is None:
            continue
        png = render.artifacts.get("chart_png")
        # Rendered by an earlier release, the output has no content_id: it was this run's.
        content_id = render.detail.get("content_id") or chart_content_id(message.run_id, step.id)
        if png is not None and f"cid:{content_id}" in body:
            charts.append(Chart(content_id, f"{step.id}.png", png))
        csv = render.artifacts.get("csv")
        if step.id in spec.attachments and csv is not None:
            files.append(File(f"{step.id}.csv", "text", "csv", csv))
            if png is not None:
                files.append(File(f"{step.id}.png", "image", "png", png))
    return charts, files
