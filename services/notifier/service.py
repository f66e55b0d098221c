"""The notifier: the delivery steps of a flow, email and webhook.

A delivery step renders its templates against the run (``run``, ``steps``
and, for a per-row step, ``row``), then sends. With ``for_each`` it sends one
delivery per row of an earlier query step, up to a cap, and its ``when`` is
evaluated for each row.

An email is composed by :mod:`services.notifier.composer`, within the
operator's size budget (see :mod:`services.notifier.budget`), and goes only
to the domains the operator allows, checked again here because a flow saved
before the allowlist changed may still name another. A webhook without a body template gets the payload
of its ``format`` (see :mod:`services.notifier.payloads`).

A redelivered message must not deliver twice: every delivery is claimed in
the delivery ledger (keyed by run, step and row, not by attempt) before it is
sent, and recorded there the moment the SMTP server or the webhook receiver
took it; see :mod:`services.notifier.ledger`, and
:mod:`services.notifier.settlement` for how the claim, the send and the record
settle together whatever happens to the message meanwhile.

What is guaranteed, and what is not:

- At most one composition of an email reaches the relay. Its exact bytes are
  kept in the blob store, and the claim marked as sending, before the send;
  whoever sends it later (the next attempt, or a worker that took the claim
  over) sends those bytes again with the same Message-ID. Only an email to an
  address outside ASCII, which the SMTP client encodes again for SMTPUTF8 on
  each send, may differ in its bytes, never in its Message-ID.
- A send the relay accepted is recorded as soon as its reply arrives; if the
  ledger cannot take the record, a receipt beside the kept copy tells whoever
  takes the claim over, and the email is not sent again.
- SMTP has no way to ask a relay whether it already holds a message, so a
  worker dying (or cut off) after the relay took the data and before the record
  leaves the email to be sent again: the relay then holds identical copies
  with one Message-ID, which mailbox stores that drop a Message-ID they hold
  already show once. A webhook post sent again carries the same
  Idempotency-Key.
"""

from __future__ import annotations

import asyncio
import contextlib
import email
import email.policy
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from email.message import EmailMessage
from functools import partial
from typing import Any

import aiohttp
import structlog

from common.contracts.actions import KUSTO_STEPS, PostWebhook, SendEmail
from common.contracts.errors import AdxflowError, DeliveryError
from common.contracts.flows import Flow, flow_of, step_spec
from common.contracts.messages import (
    BlobRef,
    ErrorCode,
    RunMessage,
    StepKind,
    StepOutput,
    StepStatus,
    utcnow,
)
from common.contracts.templates import evaluate_condition, render_text, template_context
from common.platform import metrics
from common.platform.blobs.interface import artifact_url
from common.platform.http import Check
from common.platform.runtime import Runtime
from common.platform.steps import RetryPolicy, StepPending, StepWorker
from common.platform.webhooks import WebhookPolicy, WebhookRefused, policy_for
from services.notifier.budget import Packed
from services.notifier.composer import Composer
from services.notifier.dry_runs import test_email, test_post
from services.notifier.ledger import Hold, Key, Ledger
from services.notifier.links import query_links, run_page
from services.notifier.payloads import payload, summarize
from services.notifier.settlement import Settlement, check
from services.notifier.smtp import SmtpConnections, send_email
from services.notifier.webhook import encode_json, post_json, render_json_body

#: A delivery per row: its index, its ``row``, and for deliveries over an alert the instance told.
Rows = list[tuple[int | None, dict[str, Any] | None, dict[str, Any] | None]]

log = structlog.get_logger(__name__)


#: How far each way of carrying files went, to report the furthest over several emails.
_FURTHEST = {"attached": 0, "inline": 0, "zipped": 1, "linked": 2}


def kept_key(run_id: str, step_id: str, row: int | None, suffix: str, resend: str | None = None) -> str:
    """Where an email is kept before it is sent: one per run, step and row (and resend), whatever the attempt.

    Not under ``sent/``, where releases before this one kept an email after sending it and
    took one found there for proof that it went out: a notifier of such a release, taking over
    a claim during a rolling upgrade, must not count a copy kept before the send as sent.
    """
    return f"runs/{run_id}/{step_id}/kept/{_item(row, resend)}.{suffix}"


def _item(row: int | None, resend: str | None) -> str:
    """A delivery's key in the ledger: a deliberate resend is a delivery of its own."""
    item = "once" if row is None else f"row-{row}"
    return item if resend is None else f"{item}.{resend}"


@dataclass
class _Tally:
    """What a step's deliveries came to, row by row: its output."""

    delivered: int = 0
    skipped: int = 0
    artifacts: dict[str, BlobRef] = field(default_factory=dict)
    packings: list[dict[str, Any]] = field(default_factory=list)
    #: In a test run: what became of its deliveries, and where the ones made went (or would go).
    dry_run: str | None = None
    destinations: set[str] = field(default_factory=set)

    def add(self, index: int | None, recorded: dict[str, Any]) -> None:
        """One delivery made now or earlier, as the ledger recorded it."""
        for kind in ("email", "webhook"):
            if kind in recorded:
                self.artifacts[f"{kind}_{index}" if index is not None else kind] = BlobRef(**recorded[kind])
        if "dry_run" in recorded:
            self.dry_run = recorded["dry_run"]
            self.destinations.update(
                str(recorded[name]) for name in ("destination", "sent_to") if recorded.get(name)
            )
        if "packing" in recorded:
            self.packings.append(recorded["packing"])
        self.delivered += 1

    def output(self, spec: SendEmail | PostWebhook, *, rows: int, total: int) -> StepOutput:
        """The step's output after *rows* of the *total* rows its source had."""
        detail: dict[str, Any] = {"deliveries": self.delivered}
        if spec.for_each:
            detail.update(rows=total, skipped_rows=self.skipped, capped=total > rows)
        if isinstance(spec, SendEmail):
            detail["recipients"] = [*spec.to, *spec.cc, *spec.bcc]
            detail.update(_furthest_packing(self.packings))
        if self.dry_run is not None:
            detail["dry_run"] = self.dry_run
            if self.destinations:
                key = "sent_to" if isinstance(spec, SendEmail) else "destination"
                detail[key] = sorted(self.destinations)
        # Keep the step's output small: the history shows up to ten sent emails.
        shown = dict(list(self.artifacts.items())[:10])
        return StepOutput(artifacts=shown, detail=detail)


class NotifyStep:
    def __init__(
        self,
        runtime: Runtime,
        session: aiohttp.ClientSession,
        policy: WebhookPolicy,
        ledger: Ledger,
        smtp: SmtpConnections | None = None,
    ) -> None:
        self.runtime = runtime
        self.session = session
        self.policy = policy
        self.ledger = ledger
        #: Connections to the relay kept between emails; without, one connection an email.
        self.smtp = smtp
        self.settlement = Settlement(ledger, runtime.settings.delivery_lease_seconds)
        self.composer = Composer(runtime, self._run_url, self._artifact_url)

    async def perform(self, message: RunMessage) -> StepOutput:
        flow = flow_of(message)
        spec = step_spec(message, flow)
        if not isinstance(spec, SendEmail | PostWebhook):
            raise DeliveryError(f"step {spec.id!r} ({spec.action}) delivers nothing")
        if isinstance(spec, SendEmail):
            self._check_recipients(spec)
        bodies = await self._bodies(message, flow)
        rows, total = await self._rows(message, flow, spec)
        tally = _Tally()
        for index, row, instance in rows:
            context = template_context(message, bodies=bodies, row=row)
            if instance is not None and spec.for_each:
                # One delivery per instance the alert tells of: ``alert.instance`` is that one.
                context["alert"] = {**context["steps"][spec.for_each].get("alert", {}), "instance": instance}
            when = spec.when if spec.for_each else None
            if when and not evaluate_condition(when, context, field=f"steps.{spec.id}.when"):
                tally.skipped += 1
                continue
            tally.add(index, await self._deliver_once(message, flow, spec, context, index))
        return tally.output(spec, rows=len(rows), total=total)

    async def _deliver_once(
        self,
        message: RunMessage,
        flow: Flow,
        spec: SendEmail | PostWebhook,
        context: dict[str, Any],
        index: int | None,
    ) -> dict[str, Any]:
        """Deliver one item unless an earlier delivery of this message did; what the ledger keeps of it."""
        if message.context.dry_run:
            return await self._test(message, flow, spec, context, index)
        key = Key(message.run_id, message.step_id, _item(index, message.resend))
        if isinstance(spec, PostWebhook):
            return await self.settlement.once(key, partial(self._post, message, flow, spec, context, index))
        # The email is composed while the ledger is asked: it is sent only if the claim is
        # ours and no earlier holder of the claim kept one.
        packing = asyncio.ensure_future(self.composer.pack(message, flow, spec, context, index))
        return await self.settlement.once(
            key, partial(self._email, message, spec, index, packing), then=partial(_abandon, packing)
        )

    async def _test(
        self,
        message: RunMessage,
        flow: Flow,
        spec: SendEmail | PostWebhook,
        context: dict[str, Any],
        index: int | None,
    ) -> dict[str, Any]:
        """A test run's delivery, composed as for real and kept, outside the ledger."""
        blobs = self.runtime.blobs
        if isinstance(spec, PostWebhook):
            try:
                # Refused as a real post would be; resolved only to be checked, never shown.
                self.policy.resolve(webhook=spec.webhook, url=spec.url, field=f"steps.{spec.id}")
            except WebhookRefused as exc:
                raise DeliveryError(str(exc), code=ErrorCode.WEBHOOK_REJECTED) from None
            body = self._webhook_body(message, flow, spec, context)
            return await test_post(message, spec, body, index, blobs=blobs)
        packed = await self.composer.pack(message, flow, spec, context, index)
        settings = self.runtime.settings
        return await test_email(message, packed, index, blobs=blobs, settings=settings, smtp=self.smtp)

    async def _email(
        self,
        message: RunMessage,
        spec: SendEmail,
        index: int | None,
        packing: asyncio.Future[Packed],
        hold: Hold,
        stop: asyncio.Event,
    ) -> dict[str, Any]:
        """Send one email this worker claimed: the kept copy an earlier holder left, or else *packing*'s.

        The copy is kept, and the ledger told so, before the email goes to the relay; whoever
        holds the claim later sends those very bytes again rather than a new composition.
        """
        blobs = self.runtime.blobs
        kept: dict[str, Any] | None = hold.detail.get("sending")
        if kept is None:
            packed = await packing
            check(stop)
            key = kept_key(message.run_id, message.step_id, index, "eml", message.resend)
            ref = await blobs.put(key, packed.data, "message/rfc822")
            kept = {"email": ref.model_dump(), "packing": packed.detail, "handovers": 0}
            outgoing, data = packed.message, packed.data
        else:
            _abandon(packing)
            if await blobs.exists(self._receipt_key(message, index)):
                # The relay took it; only the ledger did not hear of it.
                hold.accepted = True
                recorded = _recorded(kept)
                await hold.sent(recorded)
                return recorded
            data = await blobs.get(kept["email"]["key"])
            outgoing = email.message_from_bytes(data, _class=EmailMessage, policy=email.policy.SMTP)
            log.info(
                "sending the kept copy of the email, composed before an earlier attempt",
                item=hold.key.item,
                message_id=outgoing["Message-ID"],
                handovers=kept["handovers"],
            )
        check(stop)
        kept = {**kept, "handovers": kept["handovers"] + 1}
        if not await hold.renew({"sending": kept}):
            # Another worker took the claim over while this one could not renew it.
            raise StepPending({"waiting_for": hold.key.item}, delay=self.settlement.lease.total_seconds())
        await send_email(
            outgoing, self.runtime.settings, data=data, extra_recipients=list(spec.bcc), connections=self.smtp
        )
        hold.accepted = True
        recorded = _recorded(kept)
        try:
            await hold.sent(recorded)
        except BaseException:
            # Whatever kept the ledger from hearing of it, the relay has the email: a receipt
            # beside the kept copy says so to whoever takes the claim over.
            with contextlib.suppress(AdxflowError, OSError):
                receipt = json.dumps({"sent_at": utcnow().isoformat()}).encode()
                await blobs.put(self._receipt_key(message, index), receipt, "application/json")
            raise
        metrics.EMAILS_SENT.inc()
        return recorded

    async def _post(
        self,
        message: RunMessage,
        flow: Flow,
        spec: PostWebhook,
        context: dict[str, Any],
        index: int | None,
        hold: Hold,
        stop: asyncio.Event,
    ) -> dict[str, Any]:
        """Post one webhook this worker claimed; a post taken over goes again with the same key."""
        status = await self._webhook(message, flow, spec, context, index)
        hold.accepted = True
        recorded = {"status": status}
        await hold.sent(recorded)
        return recorded

    @staticmethod
    def _receipt_key(message: RunMessage, index: int | None) -> str:
        return kept_key(message.run_id, message.step_id, index, "receipt.json", message.resend)

    def _check_recipients(self, spec: SendEmail) -> None:
        domains = self.runtime.settings.email_allowed_domains
        outside = spec.recipients_outside(domains)
        if outside:
            problems = "; ".join(
                f"steps.{spec.id}.{name}: {address!r} is outside the domains this server sends to "
                f"({', '.join(domains)})"
                for name, address in outside
            )
            raise DeliveryError(problems, code=ErrorCode.RECIPIENT_NOT_ALLOWED, retryable=False)

    def _run_url(self, message: RunMessage) -> str:
        return run_page(self.runtime.history_url, message.run_id)

    def _artifact_url(self, ref: BlobRef) -> str:
        return artifact_url(self.runtime.history_url, ref.key)

    async def _bodies(self, message: RunMessage, flow: Flow) -> dict[str, str]:
        bodies = {}
        # The run's outputs, not only its itinerary's: after a parallel step they hold every branch's.
        for slip_id, output in message.outputs.items():
            step = flow.slips.get(slip_id)
            if step is not None and step.kind is StepKind.RENDER and "body_html" in output.artifacts:
                assert step.flow_step is not None
                data = await self.runtime.blobs.get(output.artifacts["body_html"].key)
                bodies[step.flow_step] = data.decode("utf-8")
        return bodies

    async def _rows(self, message: RunMessage, flow: Flow, spec: SendEmail | PostWebhook) -> tuple[Rows, int]:
        """The deliveries to make (index, ``row``, alert instance), up to the cap, and how many there were."""
        if spec.for_each is None:
            return [(None, None, None)], 1
        cap = min(spec.max_deliveries, self.runtime.settings.max_deliveries)
        source_spec = flow.step(spec.for_each)
        if isinstance(source_spec, KUSTO_STEPS) and source_spec.alert is not None:
            return await self._notices(message, spec.for_each, cap)
        source = message.outputs.get(spec.for_each)
        if source is None or source.status is not StepStatus.SUCCEEDED or "result" not in source.artifacts:
            return [], 0
        result = await self.runtime.blobs.get_result(source.artifacts["result"].key)
        names = [column.name for column in result.columns]
        rows: Rows = [
            (index, dict(zip(names, row, strict=True)), None) for index, row in enumerate(result.rows[:cap])
        ]
        return rows, result.row_count

    async def _notices(self, message: RunMessage, step_id: str, cap: int) -> tuple[Rows, int]:
        """Over an alert: one delivery per instance its evaluation tells of (new, resolved, repeated),
        ``row`` as the query returned it (or, resolved, as it fired)."""
        evaluation = message.outputs.get(f"{step_id}.alert")
        if evaluation is None or "notices" not in evaluation.artifacts:
            return [], 0
        notices = json.loads(await self.runtime.blobs.get(evaluation.artifacts["notices"].key))
        rows: Rows = [
            (index, notice.get("row") or {}, {k: v for k, v in notice.items() if k != "row"})
            for index, notice in enumerate(notices[:cap])
        ]
        return rows, len(notices)

    async def _webhook(
        self,
        message: RunMessage,
        flow: Flow,
        spec: PostWebhook,
        context: dict[str, Any],
        index: int | None,
    ) -> int:
        try:
            target = self.policy.resolve(webhook=spec.webhook, url=spec.url, field=f"steps.{spec.id}")
        except WebhookRefused as exc:
            raise DeliveryError(str(exc), code=ErrorCode.WEBHOOK_REJECTED) from None
        body = self._webhook_body(message, flow, spec, context)
        suffix = "" if index is None else f".{index}"
        status = await post_json(
            self.session, target, body, idempotency_key=f"{message.run_id}.{message.step_id}{suffix}"
        )
        metrics.WEBHOOKS_POSTED.inc()
        return status

    def _webhook_body(
        self, message: RunMessage, flow: Flow, spec: PostWebhook, context: dict[str, Any]
    ) -> bytes:
        """The post's JSON: the step's body template, or else the payload of its format."""
        if spec.body is not None:
            text = render_text(spec.body, context, field=f"steps.{spec.id}.body")
            return render_json_body(text, field=f"steps.{spec.id}.body")
        title = flow.description or flow.name
        if spec.title is not None:
            title = render_text(spec.title, context, field=f"steps.{spec.id}.title").strip() or title
        summary = summarize(
            message,
            flow,
            spec,
            title=title,
            row=context.get("row"),
            run_url=self._run_url(message),
            artifact_url=self._artifact_url,
            query_urls=query_links(message, flow, self.runtime.connections),
            alert=context.get("alert"),
        )
        return encode_json(payload(summary, spec.format), sort_keys=spec.format == "json")


def _recorded(kept: dict[str, Any]) -> dict[str, Any]:
    """What the ledger records of a sent email: its kept copy, its packing, how often it was handed over."""
    return {"email": kept["email"], "packing": kept["packing"], "handovers": kept["handovers"]}


def _abandon(packing: asyncio.Future[Packed]) -> None:
    """Stop composing an email that will not be sent; how that ended is of no interest."""
    packing.cancel()
    packing.add_done_callback(lambda done: done.cancelled() or done.exception())


def _furthest_packing(packings: list[dict[str, Any]]) -> dict[str, Any]:
    """What the step's emails needed to fit: how far each way of carrying files went, the largest size."""
    if not packings:
        return {}
    summary: dict[str, Any] = {
        "size": max(packing["size"] for packing in packings),
        "max_bytes": packings[0]["max_bytes"],
    }
    for name in ("attachments", "inline_images"):
        ways = [packing[name] for packing in packings if name in packing]
        if ways:
            summary[name] = max(ways, key=lambda way: _FURTHEST.get(way, 0))
    return summary


@asynccontextmanager
async def running(runtime: Runtime) -> AsyncIterator[dict[str, Check]]:
    """Consume delivery steps; yields what the worker's readiness depends on."""
    ledger = Ledger(runtime.settings.resolved_database_url)
    await ledger.ensure_schema(runtime.settings.migrate)
    smtp = SmtpConnections(runtime.settings, keep=runtime.settings.prefetch)
    # Closed in reverse order of opening, once the broker's handlers have ended
    # (serving stops consuming and awaits them before this lifespan exits).
    try:
        async with aiohttp.ClientSession() as session:
            policy = policy_for(runtime.connections, runtime.settings)
            step = NotifyStep(runtime, session, policy, ledger, smtp)
            retries = RetryPolicy.of(runtime.settings, max_attempts=runtime.settings.delivery_max_attempts)
            await StepWorker(runtime.broker, StepKind.NOTIFY, step.perform, retries).start(
                runtime.settings.prefetch
            )
            try:
                yield {**runtime.checks(), "database": ledger.ping}
            finally:
                # Deliveries whose messages were taken away finish what they started, and are recorded.
                await step.settlement.settled(runtime.settings.shutdown_grace_seconds)
    finally:
        await smtp.close()
        await ledger.close()
