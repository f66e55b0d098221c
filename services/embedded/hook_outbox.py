"""A webhook receiver that keeps what it receives: each post becomes a ``.json`` file.

Embedded mode's stand-in for the webhook targets a flow names (a Slack or Teams channel,
say) when the operator configured none by that name, as the SMTP outbox stands in for a
mail relay: nothing leaves the machine. It binds to loopback only. A post to
``/<name>`` is written as ``<stamp>-<name>.json`` holding the target's name, the headers
a receiver acts on (``Content-Type``, ``Idempotency-Key``) and the body, parsed when it is
JSON; files sort by arrival and are written to a temporary name and renamed, so a reader
never sees half of one.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from pathlib import Path
from types import TracebackType
from typing import Any

from aiohttp import web

from services.embedded.outbox import write_atomically

_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,128}$")
#: The largest post kept, as a receiver would refuse a bigger one.
MAX_BODY = 8 * 1024 * 1024


class HookOutbox:
    """Receives posts on ``127.0.0.1`` and writes them to *directory*; an async context manager."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.url = ""
        self._runner: web.AppRunner | None = None
        self._last_stamp = 0

    async def __aenter__(self) -> HookOutbox:
        await asyncio.to_thread(self.directory.mkdir, parents=True, exist_ok=True)
        app = web.Application(client_max_size=MAX_BODY)
        app.router.add_post("/{name}", self._receive)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{self._runner.addresses[0][1]}"
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    def messages(self) -> list[Path]:
        """Every post in the folder, oldest first."""
        return sorted(self.directory.glob("*.json"))

    async def _receive(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        if not _NAME.match(name):
            return web.json_response({"error": f"{name!r} is not a webhook name"}, status=404)
        raw = await request.read()
        body: Any
        try:
            body = json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            body = raw.decode("utf-8", errors="replace")
        kept = {
            "name": name,
            "headers": {
                header: request.headers[header]
                for header in ("Content-Type", "Idempotency-Key")
                if header in request.headers
            },
            "body": body,
        }
        path = self.directory / f"{self._stamp()}-{name}.json"
        data = json.dumps(kept, ensure_ascii=False, indent=2).encode("utf-8")
        await asyncio.to_thread(write_atomically, path, data)
        return web.json_response({"ok": True, "kept_as": path.name})

    def _stamp(self) -> int:
        # Strictly increasing, so names sort by arrival even if the clock steps back.
        self._last_stamp = max(time.time_ns(), self._last_stamp + 1)
        return self._last_stamp
