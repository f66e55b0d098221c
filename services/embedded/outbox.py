"""An SMTP server that keeps what it receives: each message becomes a ``.eml`` file.

It stands in for a mail relay on a developer machine and in tests. It runs on
the caller's event loop and binds to loopback only, since it accepts mail from
anyone who can connect. Files hold the message bytes exactly as received and
are named so that they sort by arrival; each is written to a temporary name and
renamed, so a reader never sees half a message.
"""

from __future__ import annotations

import asyncio
import time
import uuid
import weakref
from collections.abc import Callable
from pathlib import Path
from types import TracebackType

from aiosmtpd.smtp import SMTP, Envelope, Session

from common.platform.config import is_loopback

#: Given the envelope recipients, a ``(code, text)`` reply that refuses the message, or None to accept it.
RejectHook = Callable[[list[str]], tuple[int, str] | None]


class Outbox:
    """Receives mail on ``host:port`` and writes it to *directory*; an async context manager."""

    def __init__(
        self,
        directory: Path,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        reject: RejectHook | None = None,
    ) -> None:
        if not is_loopback(host):
            raise ValueError(f"the outbox accepts mail from anyone; bind it to loopback, not {host!r}")
        self.directory = directory
        # "localhost" may resolve to two addresses, which with port 0 would get two different ports.
        self.host = "127.0.0.1" if host == "localhost" else host
        self.port = port
        self._arrivals: asyncio.Queue[Path] = asyncio.Queue()
        self._receiver = _Receiver(directory, reject, self._arrivals)
        self._server: asyncio.Server | None = None
        self._sessions: weakref.WeakSet[SMTP] = weakref.WeakSet()

    async def __aenter__(self) -> Outbox:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()

    async def start(self) -> None:
        if self._server is not None:
            raise RuntimeError("the outbox is already started")
        await asyncio.to_thread(self.directory.mkdir, parents=True, exist_ok=True)
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(self._session, self.host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        server.close()
        # Python 3.12+ waits for open connections in wait_closed(); drop any a client left open.
        for session in list(self._sessions):
            if session.transport is not None:
                session.transport.close()
        await server.wait_closed()

    # The timeout is required on purpose: a caller waiting for mail must never wait forever.
    async def wait_for_message(self, timeout: float) -> Path:
        """The next message written and not yet handed out by this method; TimeoutError after *timeout*."""
        async with asyncio.timeout(timeout):
            return await self._arrivals.get()

    def messages(self) -> list[Path]:
        """Every message in the folder, oldest first."""
        return sorted(self.directory.glob("*.eml"))

    def _session(self) -> SMTP:
        session = SMTP(
            self._receiver,
            hostname="localhost",
            ident="adxflow outbox",
            loop=asyncio.get_running_loop(),
            # Keep the bytes as received: envelope.content stays bytes, nothing is decoded.
            decode_data=False,
            enable_SMTPUTF8=True,
            # No TLS here, so AUTH is neither offered nor required.
            auth_required=False,
            auth_require_tls=True,
        )
        self._sessions.add(session)
        return session


class _Receiver:
    """The aiosmtpd handler: refuses what the hook refuses, writes everything else."""

    def __init__(self, directory: Path, reject: RejectHook | None, arrivals: asyncio.Queue[Path]) -> None:
        self.directory = directory
        self.reject = reject
        self.arrivals = arrivals
        self._last_stamp = 0

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        if self.reject is not None:
            verdict = self.reject(list(envelope.rcpt_tos))
            if verdict is not None:
                code, text = verdict
                return f"{code} {text}"
        assert envelope.original_content is not None
        path = self.directory / f"{self._stamp()}-{uuid.uuid4().hex[:8]}.eml"
        await asyncio.to_thread(write_atomically, path, envelope.original_content)
        self.arrivals.put_nowait(path)
        return f"250 OK queued as {path.stem}"

    def _stamp(self) -> int:
        # Strictly increasing, so names sort by arrival even if the clock steps back.
        self._last_stamp = max(time.time_ns(), self._last_stamp + 1)
        return self._last_stamp


def write_atomically(path: Path, data: bytes) -> None:
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_bytes(data)
    temporary.replace(path)
