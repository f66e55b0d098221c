"""The notifier: composes the report email from the render step's artifacts and sends it.

A redelivered message must not send a second email: the sent message is kept
in the blob store under the step's key before the step succeeds, and a
delivery that finds it there forwards the run without sending again.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import structlog

from common.blobs import artifact_key
from common.contracts import BlobRef, RunMessage, StepKind, StepOutput
from common.runtime import Runtime
from common.steps import StepWorker
from services.notifier.email import ReportParts, build_email
from services.notifier.smtp import send_email

log = structlog.get_logger(__name__)


class NotifyStep:
    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime

    async def _text(self, ref: BlobRef) -> str:
        return (await self.runtime.blobs.get(ref.key)).decode("utf-8")

    async def perform(self, message: RunMessage) -> StepOutput:
        blobs = self.runtime.blobs
        key = artifact_key(message.run_id, message.step_id, message.attempt, "email.eml")
        message_id = f"<{message.run_id}.{message.step_id}.{message.attempt}@adxflow>"
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
            run_url=f"{self.runtime.history_url}/v1/runs/{message.run_id}" if self.runtime.history_url else None,
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
