"""The deliveries of a test run (``RunContext.dry_run``): composed exactly as for real, kept, not sent.

An email is composed by the same composer as any other (attachments, inline
charts, the size budget) and kept as the step's ``.eml`` artifact, which the run
page previews; a webhook post's payload is built as for real and kept as a JSON
artifact. Neither goes out, and the delivery ledger never hears of them: a test
run claims nothing, so a real run is never held back by one.

"Send a test" (``RunContext.test_recipient``, an address the operator allows
for tests) sends each email for real, to that address alone: To replaced, Cc
and Bcc dropped, the subject marked ``[test]``.
"""

from __future__ import annotations

import email.policy
from email.message import EmailMessage
from typing import Any
from urllib.parse import urlsplit

from common.contracts.actions import PostWebhook
from common.contracts.dry_runs import NOT_SENT, SENT_TO_TEST
from common.contracts.messages import RunMessage
from common.platform.blobs.interface import BlobStore, artifact_key
from common.platform.config import Settings
from services.notifier.budget import Packed
from services.notifier.smtp import SmtpConnections, send_email

#: The mark on the subject of an email a test sent.
TEST_SUBJECT = "[test] "


def _key(message: RunMessage, index: int | None, suffix: str) -> str:
    item = "once" if index is None else f"row-{index}"
    return artifact_key(message.run_id, message.step_id, message.attempt, f"test-{item}.{suffix}")


def for_test(outgoing: EmailMessage, address: str) -> EmailMessage:
    """*outgoing* readdressed to *address* alone, its subject marked as a test."""
    for header in ("To", "Cc", "Bcc"):
        del outgoing[header]
    outgoing["To"] = address
    subject = str(outgoing.get("Subject", ""))
    del outgoing["Subject"]
    outgoing["Subject"] = subject if subject.startswith(TEST_SUBJECT) else TEST_SUBJECT + subject
    return outgoing


async def test_email(
    message: RunMessage,
    packed: Packed,
    index: int | None,
    *,
    blobs: BlobStore,
    settings: Settings,
    smtp: SmtpConnections | None,
) -> dict[str, Any]:
    """A test run's email: kept (and, with a test address, sent there alone); what the step records."""
    address = message.context.test_recipient
    if address is None:
        ref = await blobs.put(_key(message, index, "eml"), packed.data, "message/rfc822")
        return {"email": ref.model_dump(), "packing": packed.detail, "dry_run": NOT_SENT}
    outgoing = for_test(packed.message, address)
    data = outgoing.as_bytes(policy=email.policy.SMTP)
    ref = await blobs.put(_key(message, index, "eml"), data, "message/rfc822")
    await send_email(outgoing, settings, data=data, connections=smtp)
    return {"email": ref.model_dump(), "packing": packed.detail, "dry_run": SENT_TO_TEST, "sent_to": address}


async def test_post(
    message: RunMessage, spec: PostWebhook, body: bytes, index: int | None, *, blobs: BlobStore
) -> dict[str, Any]:
    """A test run's webhook post: its payload kept, not posted; where it would have gone, by name or host.

    Never the URL: a configured webhook's may hold a secret, and the flow's own is shown by its host."""
    ref = await blobs.put(_key(message, index, "webhook.json"), body, "application/json")
    destination = spec.webhook if spec.webhook is not None else urlsplit(spec.url or "").hostname
    return {"webhook": ref.model_dump(), "destination": destination, "dry_run": NOT_SENT}
