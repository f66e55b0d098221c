"""The notifier on its own: a real SMTP server, a real webhook receiver, the
blob store and delivery ledger under the test's directory, and runs made by
hand as far as their delivery step, with artifacts as render leaves them."""

from __future__ import annotations

import asyncio
import dataclasses
import email
import email.policy
import io
import os
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from PIL import Image

from common.contracts.actions import RENDERING_STEPS, SCOPE_STEPS, ExportToFile
from common.contracts.flows import Flow, new_run
from common.contracts.messages import (
    BlobRef,
    RunContext,
    RunMessage,
    StepOutput,
    TriggerKind,
    chart_content_id,
    new_id,
)
from common.contracts.results import Column, ResultSet
from common.contracts.topology import Topology
from common.platform.blobs.folder import FolderBlobStore
from common.platform.blobs.interface import artifact_key
from common.platform.broker.memory import InProcessBroker
from common.platform.config import Settings
from common.platform.connections import Connections
from common.platform.runtime import Runtime
from common.platform.webhooks import policy_for
from services.embedded.outbox import Outbox
from services.notifier.ledger import Claimed, Key, Ledger
from services.notifier.service import NotifyStep

HISTORY_URL = "https://history.example:8443"
#: The bytes of an exported file, as an export step of a run made by hand leaves them.
EXPORTED = b"PAR1" + bytes(2000) + b"PAR1"


def png_of(width: int, height: int, *, noise: bool = False) -> bytes:
    """A PNG; with *noise*, random pixels that no compression shrinks."""
    if noise:
        image = Image.frombytes("RGB", (width, height), os.urandom(width * height * 3))
    else:
        image = Image.new("RGB", (width, height), (30, 120, 200))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


@dataclass
class Rendered:
    """What a rendering step left for the notifier: its result, CSV and chart."""

    rows: list[list[Any]]
    columns: list[str]
    csv: bytes = b"n\r\n1\r\n"
    png: bytes | None = None


@dataclass
class Posted:
    headers: dict[str, str]
    body: bytes


@dataclass
class Receiver:
    url: str
    posts: list[Posted] = field(default_factory=list)


@dataclass
class Notifier:
    step: NotifyStep
    runtime: Runtime
    outbox: Outbox
    hooks: Receiver
    #: Artifacts of the last run made, by flow step and name (``chart`` → ``csv`` → ref).
    artifacts: dict[str, dict[str, BlobRef]] = field(default_factory=dict)

    async def run_until(
        self, document: dict[str, Any], step_id: str, rendered: dict[str, Rendered]
    ) -> RunMessage:
        """A run of *document* at its delivery step *step_id*, every earlier step done as *rendered*."""
        flow = Flow.model_validate(document)
        run_id = new_id()
        message = new_run(flow, RunContext(flow=flow.name, trigger=TriggerKind.MANUAL), run_id)
        outputs: dict[str, StepOutput] = {}
        self.artifacts = {}
        for spec in flow.every_step():
            if spec.id == step_id:
                break
            place = flow.places[spec.id]
            if isinstance(spec, SCOPE_STEPS) or place.in_row_scope:
                continue
            if isinstance(spec, ExportToFile):
                outputs[spec.id] = await self._exported(run_id, spec.id)
                continue
            # A step of a parallel branch ran in a child run; its outputs joined the parent's.
            ran_in = run_id if place.scope is None else new_id()
            done = rendered[spec.id]
            result = ResultSet(columns=[Column(name=n, type="string") for n in done.columns], rows=done.rows)
            preview = [dict(zip(done.columns, row, strict=True)) for row in done.rows[:50]]
            outputs[spec.id] = StepOutput(
                row_count=len(done.rows),
                columns=done.columns,
                preview=preview,
                artifacts={"result": await self._put(ran_in, spec.id, "result.json", result.to_json_bytes())},
            )
            if not isinstance(spec, RENDERING_STEPS):
                continue
            render_id = f"{spec.id}.render"
            content_id = chart_content_id(ran_in, spec.id)
            chart = f'<p><img src="cid:{content_id}" alt="chart" width="640"></p>' if done.png else ""
            table = "<table><tr><td>1</td></tr></table>"
            artifacts = {
                "body_html": await self._put(ran_in, render_id, "body.html", (chart + table).encode()),
                "table_html": await self._put(ran_in, render_id, "table.html", table.encode()),
                "csv": await self._put(ran_in, render_id, "result.csv", done.csv),
            }
            if done.png is not None:
                artifacts["chart_png"] = await self._put(ran_in, render_id, "chart.png", done.png)
                artifacts["chart_svg"] = await self._put(ran_in, render_id, "chart.svg", b"<svg/>")
            detail = {"content_id": content_id} if done.png is not None else {}
            outputs[render_id] = StepOutput(row_count=len(done.rows), artifacts=artifacts, detail=detail)
            self.artifacts[spec.id] = artifacts
        return message.model_copy(update={"outputs": outputs, "step_id": step_id})

    async def _exported(self, run_id: str, step_id: str) -> StepOutput:
        """What an export step leaves: its file, as :data:`EXPORTED` bytes, and the file's record."""
        name = f"{step_id}.parquet"
        ref = await self.runtime.blobs.put(
            artifact_key(run_id, step_id, 1, name), EXPORTED, "application/vnd.apache.parquet"
        )
        self.artifacts[step_id] = {"file": ref}
        return StepOutput(
            row_count=2, artifacts={"file": ref}, detail={"file": {"name": name, "format": "parquet"}}
        )

    async def _put(self, run_id: str, step_id: str, name: str, data: bytes) -> BlobRef:
        kind = "application/octet-stream"
        return await self.runtime.blobs.put(artifact_key(run_id, step_id, 1, name), data, kind)

    async def mail_run(self) -> RunMessage:
        """A run of :data:`MAIL_FLOW` at its email step."""
        return await self.run_until(MAIL_FLOW, "mail", {"q": Rendered([["TEXAS", "12"]], ["State", "n"])})

    def step_to(self, port: int, ledger: Ledger | None = None, **settings: Any) -> NotifyStep:
        """A notifier sending to the relay on *port*, on these blobs and this ledger (or *ledger*)."""
        changed = self.runtime.settings.model_copy(update={"smtp_port": port, **settings})
        runtime = dataclasses.replace(self.runtime, settings=changed)
        return NotifyStep(runtime, self.step.session, self.step.policy, ledger or self.step.ledger)

    async def received_email(self) -> EmailMessage:
        path = await self.outbox.wait_for_message(timeout=10)
        message = email.message_from_bytes(path.read_bytes(), policy=email.policy.default)
        assert isinstance(message, EmailMessage)
        return message


NotifierFactory = Callable[..., AbstractAsyncContextManager[Notifier]]

#: A query and an email of its result to one recipient.
MAIL_FLOW: dict[str, Any] = {
    "name": "storm-report",
    "connection": "local",
    "database": "Samples",
    "steps": [
        {"id": "q", "action": "run_query", "query": "StormEvents | take 1"},
        {"id": "mail", "action": "send_email", "to": ["team@example.com"], "subject": "Storms"},
    ],
}


class PausedAfterClaim(Ledger):
    """The delivery ledger, pausing after each claim has committed until the test lets it go on."""

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.claimed = asyncio.Event()
        self.resume = asyncio.Event()

    async def claim(self, key: Key, **kwargs: Any) -> Claimed:
        claimed = await super().claim(key, **kwargs)
        self.claimed.set()
        await self.resume.wait()
        return claimed


@pytest.fixture
def notifier(tmp_path: Path, namespace: str) -> NotifierFactory:
    """``async with notifier(email_max_bytes=...) as n``: the notifier with those settings."""

    @asynccontextmanager
    async def started(**changes: Any) -> AsyncIterator[Notifier]:
        hooks = Receiver(url="")

        async def receive(request: web.Request) -> web.Response:
            hooks.posts.append(Posted(dict(request.headers), await request.read()))
            return web.Response(status=200, text="ok")

        app = web.Application()
        app.router.add_post("/hook", receive)
        runner = web.AppRunner(app)
        await runner.setup()
        try:
            await web.TCPSite(runner, "127.0.0.1", 0).start()
            hooks.url = f"http://127.0.0.1:{runner.addresses[0][1]}/hook"
            async with Outbox(tmp_path / "outbox") as outbox, aiohttp.ClientSession() as session:
                settings = Settings(
                    data_dir=tmp_path,
                    smtp_host="127.0.0.1",
                    smtp_port=outbox.port,
                    smtp_timeout=10,
                    mail_from="adxflow <reports@adxflow.example>",
                    webhook_allowed_hosts=["127.0.0.1"],
                    **changes,
                )
                connections = Connections()
                runtime = Runtime(
                    settings=settings,
                    broker=InProcessBroker(Topology(namespace)),
                    blobs=FolderBlobStore(tmp_path / "blobs"),
                    connections=connections,
                    history_url=HISTORY_URL,
                )
                await runtime.blobs.start()
                ledger = Ledger(settings.resolved_database_url)
                await ledger.ensure_schema()
                try:
                    step = NotifyStep(runtime, session, policy_for(connections, settings), ledger)
                    yield Notifier(step, runtime, outbox, hooks)
                finally:
                    await ledger.close()
        finally:
            await runner.cleanup()

    return started
