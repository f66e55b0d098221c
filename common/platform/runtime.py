"""The parts every service is handed: settings, broker, blob store, connections.

Built once per process and passed explicitly. In embedded mode all five
services share one runtime (and so one in-process broker); deployed, each
process builds its own against RabbitMQ.
"""

from __future__ import annotations

from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from types import TracebackType
from typing import Self

from common.contracts.topology import Topology
from common.platform.blobs.folder import FolderBlobStore
from common.platform.blobs.interface import BlobStore
from common.platform.broker.interface import Broker
from common.platform.broker.memory import InProcessBroker
from common.platform.config import Settings
from common.platform.connections import Connections
from common.platform.http import Check
from common.platform.supervision import Loops


def make_broker(settings: Settings, *, connection_name: str) -> Broker:
    topology = Topology(settings.namespace)
    if settings.amqp_url is None:
        return InProcessBroker(topology)
    from common.platform.broker.rabbitmq import RabbitBroker

    return RabbitBroker(
        settings.amqp_url.get_secret_value(),
        topology,
        connection_name=connection_name,
        reconnect_wait=settings.broker_reconnect_seconds,
    )


def make_blob_store(settings: Settings) -> BlobStore:
    if settings.blob_backend == "azure":
        from common.platform.blobs.azure import AzureBlobStore

        return AzureBlobStore.from_settings(settings)
    return FolderBlobStore(settings.resolved_blob_dir)


def load_connections(settings: Settings) -> Connections:
    if settings.connections_file is None:
        return Connections()
    return Connections.from_file(settings.connections_file)


@dataclass
class Runtime:
    settings: Settings
    broker: Broker
    blobs: BlobStore
    connections: Connections
    #: Where the history API can be reached, for links in emails and Location headers.
    history_url: str = ""
    #: Where the trigger API can be reached (the history's flows page reads and toggles flows there).
    trigger_url: str = ""
    #: The supervised loops of the services in this process, for their readiness.
    loops: Loops = field(default_factory=Loops)
    _stack: AsyncExitStack = field(default_factory=AsyncExitStack)

    @classmethod
    def build(cls, settings: Settings, *, name: str, connections: Connections | None = None) -> Runtime:
        return cls(
            settings=settings,
            broker=make_broker(settings, connection_name=f"adxflow-{name}-{settings.namespace}"),
            blobs=make_blob_store(settings),
            connections=connections if connections is not None else load_connections(settings),
            history_url=settings.history_url(),
            trigger_url=settings.trigger_url(),
        )

    def checks(self) -> dict[str, Check]:
        """What every service needs to be ready: the broker, its consumers attached, the blob store.

        A process that runs supervised loops also needs them ticking (``loops``).
        """
        checks: dict[str, Check] = {
            "broker": self.broker.ping,
            "consumers": self.broker.consuming,
            "blob_store": self.blobs.ping,
        }
        if self.loops:
            checks["loops"] = self.loops.check
        return checks

    async def __aenter__(self) -> Self:
        try:
            await self._stack.enter_async_context(self.blobs)
            await self._stack.enter_async_context(self.broker)
        except BaseException:
            await self._stack.aclose()
            raise
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self._stack.aclose()
