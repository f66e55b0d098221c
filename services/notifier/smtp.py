"""Hands a composed message to the SMTP relay named in the settings.

Every failure becomes a :class:`~common.contracts.errors.DeliveryError` that names the
relay and quotes its reply, and says whether trying again later can help. The
password is sent to the relay and nowhere else: no message or log line here
contains it.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from email.message import EmailMessage
from email.utils import getaddresses

import aiosmtplib
import structlog

from common.contracts.errors import DeliveryError
from common.contracts.messages import ErrorCode
from common.platform import tracing
from common.platform.config import Settings

log = structlog.get_logger(__name__)

#: The only reply a relay gives when it accepts the message data (RFC 5321).
_ACCEPTED = 250
#: Failures to reach the relay at all, or to keep talking to it: another attempt may get through.
_UNREACHABLE = (
    aiosmtplib.SMTPConnectError,
    aiosmtplib.SMTPServerDisconnected,
    aiosmtplib.SMTPTimeoutError,
    OSError,
)
#: A connection idle this long is asked whether it still stands (NOOP) before it is used again.
_CHECK_AFTER_SECONDS = 1.0


class SmtpConnections:
    """Connections to the relay, kept open between emails and used again.

    A new connection costs a TCP handshake, the greeting, EHLO and, as configured,
    STARTTLS and AUTH; a kept one costs nothing (or one NOOP after a pause). Up to
    *keep* idle connections are kept, each for up to *idle_seconds*; one the relay
    closed meanwhile is noticed before it is used, never in the middle of an email.
    A connection an email failed on is closed, not kept. ``keep=0`` opens a
    connection for each email.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        keep: int = 4,
        idle_seconds: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        self.keep = keep
        self.idle_seconds = idle_seconds
        self.clock = clock
        #: Idle connections, the most recently used last, each with when it went idle.
        self._idle: list[tuple[aiosmtplib.SMTP, float]] = []
        #: Connections opened so far.
        self.opened = 0
        self._closed = False
        self._quitting: set[asyncio.Task[None]] = set()

    @property
    def kept(self) -> int:
        """Idle connections kept that the relay has not closed, as far as is known."""
        return sum(1 for client, _ in self._idle if client.is_connected)

    @asynccontextmanager
    async def connection(self) -> AsyncIterator[aiosmtplib.SMTP]:
        client = await self._take()
        try:
            yield client
        except BaseException:
            client.close()
            raise
        if not self._closed and len(self._idle) < self.keep and client.is_connected:
            self._idle.append((client, self.clock()))
        elif self.keep and not self._closed:
            # Goodbye in the background: the email's record must not wait for the relay's answer
            # to QUIT, since a worker dying in between would send the email again.
            quitting = asyncio.create_task(_quit(client))
            self._quitting.add(quitting)
            quitting.add_done_callback(self._quitting.discard)
        else:
            await _quit(client)

    async def _take(self) -> aiosmtplib.SMTP:
        while self._idle:
            client, since = self._idle.pop()
            idle = self.clock() - since
            if idle < self.idle_seconds and client.is_connected:
                if idle < _CHECK_AFTER_SECONDS:
                    return client
                with contextlib.suppress(aiosmtplib.SMTPException, OSError):
                    await client.noop()
                    return client
            client.close()
        settings = self.settings
        password = settings.smtp_password.get_secret_value() if settings.smtp_password else None
        client = aiosmtplib.SMTP(
            hostname=settings.smtp_host,
            port=settings.smtp_port,
            username=settings.smtp_username or None,
            password=password if settings.smtp_username else None,
            start_tls=settings.smtp_starttls,
            timeout=settings.smtp_timeout,
        )
        await client.connect()
        self.opened += 1
        return client

    async def close(self) -> None:
        """Say goodbye on every idle connection; one still in use is closed once its email is sent."""
        self._closed = True
        idle, self._idle = self._idle, []
        for client, _ in idle:
            await _quit(client)
        if self._quitting:
            await asyncio.wait(set(self._quitting))


async def _quit(client: aiosmtplib.SMTP) -> None:
    try:
        await client.quit()
    except (aiosmtplib.SMTPException, OSError):
        client.close()


async def send_email(
    message: EmailMessage,
    settings: Settings,
    *,
    data: bytes | None = None,
    extra_recipients: Sequence[str] = (),
    connections: SmtpConnections | None = None,
) -> str:
    """Send *message* to its To and Cc addresses and *extra_recipients*; return the relay's final reply.

    *data* is *message* serialized already (the copy kept as the sent email): those very
    bytes are sent when the relay can take them as they are, which spares serializing the
    message again. *extra_recipients* go on the envelope only, never into the headers
    (blind copies). *connections* keeps connections for the next email; without it the
    email has a connection of its own.
    """
    headers = [*message.get_all("To", []), *message.get_all("Cc", [])]
    addresses = [address for _, address in getaddresses(headers) if address]
    # An address in both To and Cc is one recipient, not two deliveries.
    recipients = list(dict.fromkeys([*addresses, *extra_recipients]))
    relay = f"{settings.smtp_host}:{settings.smtp_port}"
    # Counts only: the addresses stay out of the trace.
    attributes = {
        "server.address": settings.smtp_host,
        "server.port": settings.smtp_port,
        "adxflow.smtp.recipients": len(recipients),
        "adxflow.smtp.size": len(data) if data is not None else 0,
    }
    with tracing.client_span("smtp send", attributes) as span:
        try:
            async with (connections or SmtpConnections(settings, keep=0)).connection() as client:
                refused, reply = await _hand_over(client, message, data, recipients)
        except (aiosmtplib.SMTPException, OSError) as exc:
            text, code, retryable = _explained(exc, relay, settings.smtp_username)
            password = settings.smtp_password.get_secret_value() if settings.smtp_password else None
            raise _redacted(text, code, retryable=retryable, password=password) from None
        span.set_attribute("adxflow.smtp.refused", len(refused))
    if refused:
        # The relay took the message for the others; sending again would duplicate it for them.
        log.warning(
            "smtp recipients refused",
            relay=relay,
            refused={address: f"{response.code} {response.message}" for address, response in refused.items()},
        )
    return f"{_ACCEPTED} {reply}"


def _explained(
    exc: aiosmtplib.SMTPException | OSError, relay: str, username: str | None
) -> tuple[str, ErrorCode, bool]:
    """What went wrong with the relay, for a user: the message, its code, whether a retry can help."""
    if isinstance(exc, aiosmtplib.SMTPRecipientsRefused):
        replies = "; ".join(f"{r.recipient}: {r.code} {r.message}" for r in exc.recipients)
        return (
            f"the SMTP server {relay} refused every recipient: {replies}",
            ErrorCode.SMTP_REJECTED,
            all(_is_transient(r.code) for r in exc.recipients),
        )
    if isinstance(exc, aiosmtplib.SMTPConnectResponseError):
        return (
            f"the SMTP server {relay} refused the connection: {exc.code} {exc.message}",
            ErrorCode.SMTP_UNAVAILABLE,
            _is_transient(exc.code),
        )
    if isinstance(exc, aiosmtplib.SMTPAuthenticationError):
        return (
            f"the SMTP server {relay} refused the login of {username!r}: {exc.code} "
            f"{exc.message}; check ADXFLOW_SMTP_USERNAME and ADXFLOW_SMTP_PASSWORD",
            ErrorCode.SMTP_REJECTED,
            _is_transient(exc.code),
        )
    if isinstance(exc, aiosmtplib.SMTPResponseException):
        return (
            f"the SMTP server {relay} refused the message: {exc.code} {exc.message}",
            ErrorCode.SMTP_REJECTED,
            _is_transient(exc.code),
        )
    if isinstance(exc, _UNREACHABLE):
        return f"cannot reach the SMTP server {relay}: {exc}", ErrorCode.SMTP_UNAVAILABLE, True
    # The session could not be set up as configured: no AUTH or STARTTLS offered, no SMTPUTF8.
    return (
        f"the SMTP server {relay} cannot take this message as configured: {exc.message.rstrip('.')}; "
        "check ADXFLOW_SMTP_STARTTLS and ADXFLOW_SMTP_USERNAME",
        ErrorCode.SMTP_REJECTED,
        False,
    )


async def _hand_over(
    client: aiosmtplib.SMTP, message: EmailMessage, data: bytes | None, recipients: list[str]
) -> tuple[dict[str, aiosmtplib.SMTPResponse], str]:
    """Send *data* as it is, or *message* serialized the way this relay needs it.

    The bytes go as they are when the envelope is ASCII (no SMTPUTF8 needed) and the
    relay takes 8-bit data or the bytes are 7-bit anyway; otherwise the client serializes
    the message again with what the relay offers.
    """
    sender = _sender(message)
    eight_bit = client.supports_extension("8bitmime")
    envelope_ascii = sender.isascii() and all(address.isascii() for address in recipients)
    if data is None or not envelope_ascii or not (eight_bit or data.isascii()):
        return await client.send_message(message, recipients=recipients)
    options = ["BODY=8BITMIME"] if eight_bit else []
    return await client.sendmail(sender, recipients, data, mail_options=options)


def _sender(message: EmailMessage) -> str:
    """The envelope sender: the Sender header's address, or else the From header's."""
    for header in ("Sender", "From"):
        found = [address for _, address in getaddresses(message.get_all(header, [])) if address]
        if found:
            return found[0]
    raise ValueError("the email has no From address")


def _is_transient(code: int) -> bool:
    """4xx replies are temporary failures (RFC 5321 4.2.1); 5xx are permanent."""
    return 400 <= code < 500


def _redacted(message: str, code: ErrorCode, *, retryable: bool, password: str | None) -> DeliveryError:
    # A relay has no reason to echo the password back, but its reply is quoted verbatim.
    if password:
        message = message.replace(password, "**********")
    return DeliveryError(message, code=code, retryable=retryable)
