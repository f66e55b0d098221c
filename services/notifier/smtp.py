"""Hands a composed message to the SMTP relay named in the settings.

Every failure becomes a :class:`~common.errors.DeliveryError` that names the
relay and quotes its reply, and says whether trying again later can help. The
password is sent to the relay and nowhere else: no message or log line here
contains it.
"""

from __future__ import annotations

from collections.abc import Sequence
from email.message import EmailMessage
from email.utils import getaddresses

import aiosmtplib
import structlog

from common.config import Settings
from common.contracts import ErrorCode
from common.errors import DeliveryError

log = structlog.get_logger(__name__)

#: The only reply a relay gives when it accepts the message data (RFC 5321).
_ACCEPTED = 250


async def send_email(
    message: EmailMessage, settings: Settings, *, extra_recipients: Sequence[str] = ()
) -> str:
    """Send *message* to its To and Cc addresses and *extra_recipients*; return the relay's final reply.

    *extra_recipients* go on the envelope only, never into the headers (blind copies).
    """
    headers = [*message.get_all("To", []), *message.get_all("Cc", [])]
    addresses = [address for _, address in getaddresses(headers) if address]
    # An address in both To and Cc is one recipient, not two deliveries.
    recipients = list(dict.fromkeys([*addresses, *extra_recipients]))
    password = settings.smtp_password.get_secret_value() if settings.smtp_password else None
    relay = f"{settings.smtp_host}:{settings.smtp_port}"
    try:
        refused, reply = await aiosmtplib.send(
            message,
            recipients=recipients,
            hostname=settings.smtp_host,
            port=settings.smtp_port,
            username=settings.smtp_username or None,
            password=password if settings.smtp_username else None,
            start_tls=settings.smtp_starttls,
            timeout=settings.smtp_timeout,
        )
    except aiosmtplib.SMTPRecipientsRefused as exc:
        replies = "; ".join(f"{r.recipient}: {r.code} {r.message}" for r in exc.recipients)
        raise _redacted(
            f"the SMTP server {relay} refused every recipient: {replies}",
            ErrorCode.SMTP_REJECTED,
            retryable=all(_is_transient(r.code) for r in exc.recipients),
            password=password,
        ) from None
    except aiosmtplib.SMTPConnectResponseError as exc:
        raise _redacted(
            f"the SMTP server {relay} refused the connection: {exc.code} {exc.message}",
            ErrorCode.SMTP_UNAVAILABLE,
            retryable=_is_transient(exc.code),
            password=password,
        ) from None
    except aiosmtplib.SMTPAuthenticationError as exc:
        raise _redacted(
            f"the SMTP server {relay} refused the login of {settings.smtp_username!r}: {exc.code} "
            f"{exc.message}; check ADXFLOW_SMTP_USERNAME and ADXFLOW_SMTP_PASSWORD",
            ErrorCode.SMTP_REJECTED,
            retryable=_is_transient(exc.code),
            password=password,
        ) from None
    except aiosmtplib.SMTPResponseException as exc:
        raise _redacted(
            f"the SMTP server {relay} refused the message: {exc.code} {exc.message}",
            ErrorCode.SMTP_REJECTED,
            retryable=_is_transient(exc.code),
            password=password,
        ) from None
    except (
        aiosmtplib.SMTPConnectError,
        aiosmtplib.SMTPServerDisconnected,
        aiosmtplib.SMTPTimeoutError,
        OSError,
    ) as exc:
        raise _redacted(
            f"cannot reach the SMTP server {relay}: {exc}",
            ErrorCode.SMTP_UNAVAILABLE,
            retryable=True,
            password=password,
        ) from None
    except aiosmtplib.SMTPException as exc:
        # The session could not be set up as configured: no AUTH or STARTTLS offered, no SMTPUTF8.
        raise _redacted(
            f"the SMTP server {relay} cannot take this message as configured: {exc.message.rstrip('.')}; "
            "check ADXFLOW_SMTP_STARTTLS and ADXFLOW_SMTP_USERNAME",
            ErrorCode.SMTP_REJECTED,
            retryable=False,
            password=password,
        ) from None
    if refused:
        # The relay took the message for the others; sending again would duplicate it for them.
        log.warning(
            "smtp recipients refused",
            relay=relay,
            refused={address: f"{response.code} {response.message}" for address, response in refused.items()},
        )
    return f"{_ACCEPTED} {reply}"


def _is_transient(code: int) -> bool:
    """4xx replies are temporary failures (RFC 5321 4.2.1); 5xx are permanent."""
    return 400 <= code < 500


def _redacted(message: str, code: ErrorCode, *, retryable: bool, password: str | None) -> DeliveryError:
    # A relay has no reason to echo the password back, but its reply is quoted verbatim.
    if password:
        message = message.replace(password, "**********")
    return DeliveryError(message, code=code, retryable=retryable)
