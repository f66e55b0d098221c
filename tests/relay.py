"""An SMTP relay on aiosmtpd for tests that step in at the moment a message arrives.

It keeps the bytes of every message as received, in order, and lets a test act
between the end of the data and the relay's answer (wait there, or hang up
without answering, as a relay whose reply is lost), or just after the answer
went out.
"""

from __future__ import annotations

import asyncio
import email
import email.policy
from collections.abc import Awaitable, Callable
from types import TracebackType

from aiosmtpd.smtp import SMTP, Envelope, Session


class Relay:
    """Listens on loopback (*port*, or any free one); an async context manager."""

    def __init__(self, port: int = 0) -> None:
        self.port = port
        #: Every message's data as received, in order of arrival.
        self.copies: list[bytes] = []
        #: Awaited once a message's data has arrived, before the relay answers.
        self.before_reply: Callable[[], Awaitable[None]] | None = None
        #: Called once the answer to a message was written to the connection.
        self.after_reply: Callable[[], None] | None = None
        #: Messages still to answer by hanging up instead (the sender never hears the 250).
        self.hang_ups = 0
        self._server: asyncio.Server | None = None
        self._sessions: list[SMTP] = []

    async def __aenter__(self) -> Relay:
        loop = asyncio.get_running_loop()

        def connected() -> SMTP:
            session = SMTP(self, hostname="localhost", loop=loop, decode_data=False)
            self._sessions.append(session)
            return session

        self._server = await loop.create_server(connected, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        server.close()
        for session in self._sessions:
            if session.transport is not None:
                session.transport.close()
        await server.wait_closed()

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        assert envelope.original_content is not None
        self.copies.append(envelope.original_content)
        if self.before_reply is not None:
            await self.before_reply()
        if self.hang_ups > 0:
            self.hang_ups -= 1
            assert server.transport is not None
            server.transport.abort()
            return "421 4.4.2 gone"
        if self.after_reply is not None:
            # aiosmtpd writes the answer as soon as this returns, before the loop runs callbacks.
            asyncio.get_running_loop().call_soon(self.after_reply)
        return "250 2.0.0 queued"

    def message_ids(self) -> list[str]:
        """The Message-ID of every copy, in order."""
        return [
            str(email.message_from_bytes(copy, policy=email.policy.default)["Message-ID"])
            for copy in self.copies
        ]
