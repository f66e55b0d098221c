"""A TCP forwarder a test puts between a client and a real server, to cut the line as a
network outage would: every connection through it is aborted at once, and new ones go
through again."""

from __future__ import annotations

import asyncio
import contextlib
from types import TracebackType


class Proxy:
    """Forwards connections on a free loopback port to *host*:*port*; an async context manager."""

    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.upstream = port
        self.port = 0
        #: Connections cut so far.
        self.cuts = 0
        self._server: asyncio.Server | None = None
        self._open: set[asyncio.StreamWriter] = set()

    async def __aenter__(self) -> Proxy:
        self._server = await asyncio.start_server(self._forward, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.close()
            self.cut()
            await server.wait_closed()

    def cut(self) -> None:
        """Abort every connection through the proxy, both ways, without a goodbye."""
        for writer in list(self._open):
            writer.transport.abort()
            self.cuts += 1
        self._open.clear()

    async def _forward(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(self.host, self.upstream)
        except OSError:
            writer.transport.abort()
            return
        self._open.update((writer, up_writer))
        try:
            await asyncio.gather(_copy(reader, up_writer), _copy(up_reader, writer))
        finally:
            for end in (writer, up_writer):
                self._open.discard(end)
                end.transport.abort()


async def _copy(source: asyncio.StreamReader, target: asyncio.StreamWriter) -> None:
    with contextlib.suppress(ConnectionError, OSError):
        while data := await source.read(65536):
            target.write(data)
            await target.drain()
    target.transport.abort()
