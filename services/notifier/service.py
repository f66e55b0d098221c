"""The notifier: composes the report email from the render step's artifacts and sends it.

A redelivered message must not send a second email: once the server has
taken the email, a copy is kept in the blob store under a key of the run and
step (not of the delivery or attempt), and a later delivery that finds it
there forwards the run without sending again. The Message-ID is stable for the
same reason. A crash between the server's 250 and that write can still send
twice; the delivery ledger closes that gap.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import structlog

from common.contracts import BlobRef, RunMessage, StepKind, StepOutput
from common.runtime import Runtime
from common.steps import StepWorker
from services.notifier.email import ReportParts, build_email
from services.notifier.smtp import send_email

log = structlog.get_logger(__name__)


def sent_key(run_id: str, step_id: str) -> str:
    """Where the email a step sent is kept: one per run and step, whatever the attempt."""
    return f"runs/{run_id}/{step_id}/sent/email.eml"


class NotifyStep:
    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime

    async def _text(self, ref: BlobRef) -> str:
        return (await self.runtime.blobs.get(ref.key)).decode("utf-8")

    def _run_url(self, run_id: str) -> str | None:
        return f"{self.runtime.history_url}/v1/runs/{run_id}" if self.runtime.history_url else None

    async def perform(self, message: RunMessage) -> StepOutput:
        blobs = self.runtime.blobs
        key = sent_key(message.run_id, message.step_id)
        message_id = f"<{message.run_id}.{message.step_id}@adxflow>"
        if await blobs.exists(key):
            log.info("email already sent on an earlier delivery", message_id=message_id)
            data = await blobs.get(key)
            ref = BlobRef(key=key, content_type="message/rfc822", size=len(data))
            return StepOutput(artifacts={"email": ref}, detail={"message_id": message_id, "resent": False})

        render = message.output_of(StepKind.RENDER)
        artifacts = render.artifacts
        chart = artifacts.get("chart_png")
        job = message.job
        parts = ReportParts(
            title=job.title or job.email.subject,
            table_html=await self._text(artifacts["table_html"]),
            text=await self._text(artifacts["text"]),
            chart_png=await blobs.get(chart.key) if chart else None,
            csv=await blobs.get(artifacts["csv"].key),
            row_count=render.row_count or 0,
            run_url=self._run_url(message.run_id),
            query=job.query,
        )
        email = build_email(job.email, parts, sender=self.runtime.settings.mail_from, message_id=message_id)
        reply = await send_email(email, self.runtime.settings)
        ref = await blobs.put(key, email.as_bytes(), "message/rfc822")
        recipients = [*job.email.to, *job.email.cc]
        return StepOutput(
            artifacts={"email": ref},
            detail={"message_id": message_id, "recipients": recipients, "smtp_reply": reply},
        )


@asynccontextmanager
async def running(runtime: Runtime) -> AsyncIterator[None]:
    step = NotifyStep(runtime)
    await StepWorker(runtime.broker, StepKind.NOTIFY, step.perform).start(runtime.settings.prefetch)
    yield
