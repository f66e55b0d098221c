from __future__ import annotations

import asyncio
import email
import email.policy
import socket
from collections.abc import AsyncIterator
from email.message import EmailMessage
from pathlib import Path

import pytest
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, Session
from pydantic import SecretStr

from common.contracts.errors import DeliveryError
from common.contracts.messages import ErrorCode
from common.platform.config import Settings
from services.embedded.outbox import Outbox
from services.notifier.email import Attachment, Email, build_email, sender_address
from services.notifier.smtp import SmtpConnections, send_email
from tests.conftest import Waiter

PASSWORD = "correct-horse-battery-staple-7731"
CSV = b"n\r\n1\r\n2\r\n"


def settings_for(port: int, **changes: object) -> Settings:
    fields: dict[str, object] = {"smtp_host": "127.0.0.1", "smtp_port": port, "smtp_timeout": 5, **changes}
    return Settings(**fields)  # type: ignore[arg-type]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


def report_email(message_id: str = "<run7.notify.1@adxflow>") -> EmailMessage:
    mail = Email(
        to=["ana@example.com"],
        cc=["bo@example.com"],
        subject="Weekly counts",
        body_html="<table><tr><td>1</td></tr></table>",
        text="n\n1\n",
        attachments=[Attachment("result.csv", "text", "csv", CSV)],
    )
    return build_email(mail, sender=sender_address("adxflow <adxflow@localhost>"), message_id=message_id)


async def refusal_from(server: asyncio.Server, **settings: object) -> DeliveryError:
    """What sending the report to *server* fails with; the server is closed after."""
    try:
        with pytest.raises(DeliveryError) as caught:
            await send_email(report_email(), settings_for(server.sockets[0].getsockname()[1], **settings))
    finally:
        server.close()
        await server.wait_closed()
    return caught.value


@pytest.fixture
async def outbox(tmp_path: Path) -> AsyncIterator[Outbox]:
    async with Outbox(tmp_path / "outbox") as running:
        yield running


async def test_delivers_the_message_to_its_recipients(outbox: Outbox) -> None:
    reply = await send_email(report_email(), settings_for(outbox.port))

    path = await outbox.wait_for_message(timeout=5)
    received = email.message_from_bytes(path.read_bytes(), policy=email.policy.default)
    assert isinstance(received, EmailMessage)
    assert reply.startswith("250 ")
    assert path.stem in reply
    assert received["Message-ID"] == "<run7.notify.1@adxflow>"
    assert [a.addr_spec for a in received["To"].addresses] == ["ana@example.com"]
    assert [a.addr_spec for a in received["Cc"].addresses] == ["bo@example.com"]
    attachments = list(received.iter_attachments())
    assert [part.get_filename() for part in attachments] == ["result.csv"]
    assert attachments[0].get_payload(decode=True) == CSV


async def test_extra_recipients_are_on_the_envelope_only(tmp_path: Path) -> None:
    envelopes: list[list[str]] = []

    def record(recipients: list[str]) -> None:
        envelopes.append(recipients)

    async with Outbox(tmp_path / "outbox", reject=record) as outbox:
        await send_email(report_email(), settings_for(outbox.port), extra_recipients=["hidden@example.com"])

        path = await outbox.wait_for_message(timeout=5)

    assert envelopes == [["ana@example.com", "bo@example.com", "hidden@example.com"]]
    assert b"hidden@example.com" not in path.read_bytes()


async def test_permanent_rejection_is_not_retryable(tmp_path: Path) -> None:
    async with Outbox(
        tmp_path / "outbox", reject=lambda recipients: (550, "5.7.1 Relaying denied")
    ) as outbox:
        with pytest.raises(DeliveryError) as caught:
            await send_email(report_email(), settings_for(outbox.port))

        assert outbox.messages() == []

    assert caught.value.code is ErrorCode.SMTP_REJECTED
    assert caught.value.retryable is False
    assert "550" in caught.value.message
    assert "5.7.1 Relaying denied" in caught.value.message


async def test_temporary_rejection_is_retryable(tmp_path: Path) -> None:
    async with Outbox(
        tmp_path / "outbox", reject=lambda recipients: (451, "4.3.0 Try again later")
    ) as outbox:
        with pytest.raises(DeliveryError) as caught:
            await send_email(report_email(), settings_for(outbox.port))

    assert caught.value.code is ErrorCode.SMTP_REJECTED
    assert caught.value.retryable is True
    assert "451 4.3.0 Try again later" in caught.value.message


async def test_closed_port_is_unavailable_and_retryable() -> None:
    port = free_port()

    with pytest.raises(DeliveryError) as caught:
        await send_email(report_email(), settings_for(port))

    assert caught.value.code is ErrorCode.SMTP_UNAVAILABLE
    assert caught.value.retryable is True
    assert f"127.0.0.1:{port}" in caught.value.message


async def test_password_stays_out_of_the_error_when_the_server_has_no_auth(outbox: Outbox) -> None:
    settings = settings_for(outbox.port, smtp_username="reports", smtp_password=SecretStr(PASSWORD))

    with pytest.raises(DeliveryError) as caught:
        await send_email(report_email(), settings)

    assert caught.value.code is ErrorCode.SMTP_REJECTED
    assert caught.value.retryable is False
    assert "AUTH" in caught.value.message
    assert PASSWORD not in str(caught.value)
    assert PASSWORD not in repr(caught.value.info())
    assert outbox.messages() == []


async def test_password_stays_out_of_the_error_when_the_port_is_closed() -> None:
    settings = settings_for(free_port(), smtp_username="reports", smtp_password=SecretStr(PASSWORD))

    with pytest.raises(DeliveryError) as caught:
        await send_email(report_email(), settings)

    assert caught.value.code is ErrorCode.SMTP_UNAVAILABLE
    assert PASSWORD not in str(caught.value)
    assert PASSWORD not in repr(caught.value.info())


class RefuseEveryRecipient:
    def __init__(self, reply: str) -> None:
        self.reply = reply

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        return self.reply


@pytest.mark.parametrize(
    ("reply", "retryable"), [("550 5.1.1 No such user", False), ("450 4.2.1 Mailbox busy", True)]
)
async def test_refused_recipients(reply: str, retryable: bool) -> None:
    loop = asyncio.get_running_loop()
    handler = RefuseEveryRecipient(reply)
    server = await loop.create_server(
        lambda: SMTP(handler, hostname="localhost", loop=loop, auth_require_tls=True), "127.0.0.1", 0
    )

    refusal = await refusal_from(server)

    assert refusal.code is ErrorCode.SMTP_REJECTED
    assert refusal.retryable is retryable
    assert f"ana@example.com: {reply}" in refusal.message
    assert f"bo@example.com: {reply}" in refusal.message


async def test_server_that_never_answers_is_unavailable() -> None:
    connected = asyncio.Event()
    held: list[asyncio.StreamWriter] = []

    async def accept_and_stay_silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)
        connected.set()

    server = await asyncio.start_server(accept_and_stay_silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        with pytest.raises(DeliveryError) as caught:
            await send_email(report_email(), settings_for(port, smtp_timeout=0.2))
    finally:
        for writer in held:
            writer.close()
        server.close()
        await server.wait_closed()

    assert connected.is_set()
    assert caught.value.code is ErrorCode.SMTP_UNAVAILABLE
    assert caught.value.retryable is True
    assert f"127.0.0.1:{port}" in caught.value.message


@pytest.mark.parametrize(
    ("greeting", "retryable"), [("554 5.3.2 No service", False), ("421 4.3.2 Busy", True)]
)
async def test_a_refused_greeting_is_unavailable(greeting: str, retryable: bool) -> None:
    async def refuse(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(f"{greeting}\r\n".encode())
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(refuse, "127.0.0.1", 0)

    refusal = await refusal_from(server)

    assert refusal.code is ErrorCode.SMTP_UNAVAILABLE
    assert refusal.retryable is retryable
    assert f"refused the connection: {greeting}" in refusal.message


def refuse_every_login(*args: object) -> AuthResult:
    return AuthResult(success=False, handled=False)


async def test_a_refused_login_names_the_user_and_the_settings_but_not_the_password() -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: SMTP(
            Capture(),
            hostname="localhost",
            loop=loop,
            authenticator=refuse_every_login,
            auth_require_tls=False,
        ),
        "127.0.0.1",
        0,
    )

    refusal = await refusal_from(server, smtp_username="reports", smtp_password=SecretStr(PASSWORD))

    assert refusal.code is ErrorCode.SMTP_REJECTED
    assert refusal.retryable is False
    assert "refused the login of 'reports': 535" in refusal.message
    assert "ADXFLOW_SMTP_USERNAME and ADXFLOW_SMTP_PASSWORD" in refusal.message
    assert PASSWORD not in str(refusal)
    assert PASSWORD not in repr(refusal.info())


class Capture:
    """Keeps each envelope the relay took: sender, options, recipients and the data as received."""

    def __init__(self) -> None:
        self.envelopes: list[Envelope] = []
        self.arrived = asyncio.Event()

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        self.envelopes.append(envelope)
        self.arrived.set()
        return "250 2.0.0 kept"


async def relay_capturing(*, eight_bit: bool = True) -> tuple[asyncio.Server, Capture]:
    """A relay keeping what it receives; aiosmtpd offers 8BITMIME only when it leaves data undecoded."""
    loop = asyncio.get_running_loop()
    capture = Capture()
    server = await loop.create_server(
        lambda: SMTP(capture, hostname="localhost", loop=loop, decode_data=not eight_bit), "127.0.0.1", 0
    )
    return server, capture


def unfolded(data: bytes) -> bytes:
    return data.replace(b"\r\n", b"\n")


async def test_the_serialized_copy_is_the_very_message_the_relay_receives() -> None:
    message = report_email()
    data = message.as_bytes()
    server, capture = await relay_capturing()
    try:
        await send_email(message, settings_for(server.sockets[0].getsockname()[1]), data=data)
    finally:
        server.close()
        await server.wait_closed()

    [envelope] = capture.envelopes
    assert envelope.mail_from == "adxflow@localhost"
    assert envelope.rcpt_tos == ["ana@example.com", "bo@example.com"]
    assert isinstance(envelope.original_content, bytes)
    assert unfolded(envelope.original_content) == unfolded(data)


async def test_an_eight_bit_copy_is_serialized_again_for_a_relay_without_8bitmime() -> None:
    message = report_email()
    message.replace_header("Subject", "Zählungen der Woche")
    data = "Subject: Zählungen\n\nnicht 7-bit: ü\n".encode()
    server, capture = await relay_capturing(eight_bit=False)
    try:
        await send_email(message, settings_for(server.sockets[0].getsockname()[1]), data=data)
    finally:
        server.close()
        await server.wait_closed()

    [envelope] = capture.envelopes
    assert envelope.original_content is not None
    assert envelope.original_content.isascii()
    received = email.message_from_bytes(envelope.original_content, policy=email.policy.default)
    assert received["Subject"] == "Zählungen der Woche"


class Relay:
    """A relay that counts its connections and NOOPs, and can hang up on every client."""

    def __init__(self) -> None:
        self.sessions: list[SMTP] = []
        self.noops = 0
        self.delivered = 0
        self.server: asyncio.Server | None = None

    async def handle_NOOP(self, server: SMTP, session: Session, envelope: Envelope, arg: str) -> str:
        self.noops += 1
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        self.delivered += 1
        return "250 2.0.0 kept"

    async def __aenter__(self) -> Relay:
        loop = asyncio.get_running_loop()

        def connected() -> SMTP:
            protocol = SMTP(self, hostname="localhost", loop=loop)
            self.sessions.append(protocol)
            return protocol

        self.server = await loop.create_server(connected, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.hang_up()
        self.server.close()
        await self.server.wait_closed()

    @property
    def port(self) -> int:
        assert self.server is not None
        port: int = self.server.sockets[0].getsockname()[1]
        return port

    def hang_up(self) -> None:
        for protocol in self.sessions:
            if protocol.transport is not None:
                protocol.transport.close()


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_emails_in_a_row_share_one_kept_connection() -> None:
    async with Relay() as relay:
        connections = SmtpConnections(settings_for(relay.port), keep=2)
        try:
            for number in range(3):
                await send_email(
                    report_email(f"<m{number}@adxflow>"), settings_for(relay.port), connections=connections
                )
        finally:
            await connections.close()

    assert relay.delivered == 3
    assert connections.opened == 1
    assert len(relay.sessions) == 1
    assert relay.noops == 0


async def test_a_connection_idle_a_while_is_checked_and_one_idle_too_long_replaced() -> None:
    clock = Clock()
    async with Relay() as relay:
        settings = settings_for(relay.port)
        connections = SmtpConnections(settings, keep=1, idle_seconds=30, clock=clock)
        try:
            await send_email(report_email(), settings, connections=connections)
            clock.now += 5
            await send_email(report_email(), settings, connections=connections)
            assert (connections.opened, relay.noops) == (1, 1)
            clock.now += 31
            await send_email(report_email(), settings, connections=connections)
        finally:
            await connections.close()

    assert relay.delivered == 3
    assert connections.opened == 2


async def test_a_kept_connection_the_relay_closed_is_replaced_before_the_email(wait_until: Waiter) -> None:
    async with Relay() as relay:
        settings = settings_for(relay.port)
        connections = SmtpConnections(settings, keep=1)
        try:
            await send_email(report_email(), settings, connections=connections)
            assert connections.kept == 1
            relay.hang_up()

            # The client learns of the hang-up when the loop reads the end of its stream.
            async def noticed() -> bool:
                return connections.kept == 0

            await wait_until(noticed, 5, "the client to notice the relay hung up")
            await send_email(report_email(), settings, connections=connections)
        finally:
            await connections.close()

    assert relay.delivered == 2
    assert connections.opened == 2


async def test_a_connection_an_email_failed_on_is_not_kept() -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: SMTP(RefuseEveryRecipient("450 4.2.1 Mailbox busy"), hostname="localhost", loop=loop),
        "127.0.0.1",
        0,
    )
    settings = settings_for(server.sockets[0].getsockname()[1])
    connections = SmtpConnections(settings, keep=2)
    try:
        for _ in range(2):
            with pytest.raises(DeliveryError):
                await send_email(report_email(), settings, connections=connections)
    finally:
        await connections.close()
        server.close()
        await server.wait_closed()

    assert connections.opened == 2


async def test_an_email_whose_connection_is_not_kept_returns_before_the_relay_answers_quit() -> None:
    answer_quit = asyncio.Event()
    quitting = asyncio.Event()

    class SlowToQuit(Relay):
        async def handle_QUIT(self, server: SMTP, session: Session, envelope: Envelope) -> str:
            quitting.set()
            await answer_quit.wait()
            return "221 Bye"

    async with SlowToQuit() as relay:
        settings = settings_for(relay.port)
        connections = SmtpConnections(settings, keep=1)
        try:
            # Two at once: two connections, of which one is kept and the other says goodbye.
            sends = (
                send_email(report_email(f"<m{n}@adxflow>"), settings, connections=connections) for n in (1, 2)
            )
            await asyncio.wait_for(asyncio.gather(*sends), 5)
            # Both sends returned, the email's record free to follow, while QUIT waits for its answer.
            await asyncio.wait_for(quitting.wait(), 5)
            assert not answer_quit.is_set()
            answer_quit.set()
        finally:
            answer_quit.set()
            await connections.close()

    assert (relay.delivered, connections.opened) == (2, 2)
