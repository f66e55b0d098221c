"""Proxies a test puts between a client and a real server: a TCP forwarder that cuts the line as a
network outage would (every connection through it is aborted at once, and new ones go through
again), takes the server away for a while (new connections wait for it), or holds what clients
send while the server's answers still reach them, and an HTTP proxy that makes a Kusto endpoint
slow."""

from __future__ import annotations

import asyncio
import contextlib
from types import TracebackType

import aiohttp
from aiohttp import web


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
        #: The ends the proxy opened towards the server.
        self._upstream: set[asyncio.StreamWriter] = set()
        #: Cleared while what clients send is held.
        self._passing = asyncio.Event()
        self._passing.set()
        #: Cleared while the server is away (:meth:`down`); clients connecting meanwhile wait.
        self._serving = asyncio.Event()
        self._serving.set()
        #: The clients that connected while the server was away, waiting for it.
        self._waiting: set[asyncio.StreamWriter] = set()

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
            self._serving.set()
            await server.wait_closed()

    def cut(self) -> None:
        """Abort every connection through the proxy, both ways, without a goodbye."""
        for writer in [*self._open, *self._waiting]:
            writer.transport.abort()
            self.cuts += 1
        self._open.clear()
        self._waiting.clear()
        self._passing.set()

    def down(self) -> None:
        """Take the server away: every connection is cut, and a client connecting from now on waits,
        connected to the proxy and answered by no one, until :meth:`up`."""
        self._serving.clear()
        self.cut()

    def up(self) -> None:
        """Bring the server back: the clients waiting for it, and those after them, reach it."""
        self._serving.set()

    def waiting(self) -> int:
        """How many clients connected while the server was away, and wait for it."""
        return len(self._waiting)

    def hold(self) -> None:
        """From now on keep what clients send (until :meth:`cut` drops it): the server hears nothing
        more from them, and what it sends still reaches them."""
        self._passing.clear()

    def server_ports(self) -> set[int]:
        """The local ports of the open connections to the server: the client ports it sees."""
        return {int(writer.get_extra_info("sockname")[1]) for writer in self._upstream}

    async def _forward(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if not self._serving.is_set():
            self._waiting.add(writer)
            try:
                await self._serving.wait()
            finally:
                self._waiting.discard(writer)
            if writer.transport.is_closing():
                return
        try:
            up_reader, up_writer = await asyncio.open_connection(self.host, self.upstream)
        except OSError:
            writer.transport.abort()
            return
        self._open.update((writer, up_writer))
        self._upstream.add(up_writer)
        try:
            await asyncio.gather(_copy(reader, up_writer, self._passing), _copy(up_reader, writer))
        finally:
            self._upstream.discard(up_writer)
            for end in (writer, up_writer):
                self._open.discard(end)
                end.transport.abort()


async def _copy(
    source: asyncio.StreamReader, target: asyncio.StreamWriter, passing: asyncio.Event | None = None
) -> None:
    with contextlib.suppress(ConnectionError, OSError):
        while data := await source.read(65536):
            if passing is not None:
                await passing.wait()
            if target.transport.is_closing():
                break
            target.write(data)
            await target.drain()
    target.transport.abort()


class SlowKusto:
    """An HTTP proxy in front of a Kusto endpoint that holds every query *delay* seconds before
    passing it on, as a slow cluster would; an async context manager.

    The endpoint itself may answer one query at a time: the delay is spent here, so queries sent
    at the same time wait out their delays at the same time. *spans* keeps, per query, when it
    arrived and when its answer went back (the loop's clock).
    """

    def __init__(self, delay: float, upstream: str = "") -> None:
        self.delay = delay
        #: The endpoint's cluster URL; may be set after the proxy started, before the first query.
        self.upstream = upstream
        self.url = ""
        self.spans: list[tuple[float, float]] = []
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> SlowKusto:
        app = web.Application()
        app.router.add_route("*", "/{path:.*}", self._forward)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0).start()
        self.url = f"http://127.0.0.1:{self._runner.addresses[0][1]}"
        self._session = aiohttp.ClientSession(auto_decompress=False)
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        runner, self._runner = self._runner, None
        session, self._session = self._session, None
        try:
            if runner is not None:
                await runner.cleanup()
        finally:
            if session is not None:
                await session.close()

    async def _forward(self, request: web.Request) -> web.Response:
        assert self._session is not None
        loop = asyncio.get_running_loop()
        arrived = loop.time()
        body = await request.read()
        query = request.method == "POST" and request.path.endswith("/rest/query")
        if query:
            await asyncio.sleep(self.delay)
        headers = {name: value for name, value in request.headers.items() if name.lower() not in _HOP}
        async with self._session.request(
            request.method, f"{self.upstream}{request.path_qs}", data=body, headers=headers
        ) as upstream:
            answer = await upstream.read()
            response = web.Response(
                status=upstream.status,
                body=answer,
                headers={name: value for name, value in upstream.headers.items() if name.lower() not in _HOP},
            )
        if query:
            self.spans.append((arrived, loop.time()))
        return response


#: Headers that belong to one hop of the connection, not to the request or answer passed on.
_HOP = frozenset(
    {"host", "connection", "keep-alive", "transfer-encoding", "content-length", "te", "upgrade", "trailer"}
)
