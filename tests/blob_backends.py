"""The blob stores the behaviour tests run against, with what a test needs to look behind them.

The folder store works in a fresh temp folder; the Azure store in a fresh
container on Azurite, deleted afterwards, with small blocks so that a few
hundred kilobytes already stage several.
"""

from __future__ import annotations

import abc
import datetime as dt
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from pydantic import SecretStr

from common.platform.blobs.azure import AzureBlobStore
from common.platform.blobs.folder import FolderBlobStore
from common.platform.blobs.interface import BlobStore

#: Small enough that the tests' writes of 300-600 kB stage blocks before they commit.
TEST_BLOCK_SIZE = 256 * 1024


class Backend(abc.ABC):
    store: BlobStore

    @abc.abstractmethod
    async def stored(self) -> list[str]:
        """Everything the store holds, sorted: blobs, and what a writer left behind where readers look."""

    @abc.abstractmethod
    async def writing(self, key: str) -> bool:
        """Whether a writer of *key* has data in the store that is not visible yet."""

    @abc.abstractmethod
    async def modified(self, key: str) -> dt.datetime:
        """When the store says *key* was last written."""


class FolderBackend(Backend):
    def __init__(self, root: Path) -> None:
        self.root = root
        self.store = FolderBlobStore(root)

    async def stored(self) -> list[str]:
        return sorted(str(path.relative_to(self.root)) for path in self.root.rglob("*") if path.is_file())

    async def writing(self, key: str) -> bool:
        path = self.root / key
        return any(path.parent.glob(f".{path.name}.*.tmp"))

    async def modified(self, key: str) -> dt.datetime:
        return dt.datetime.fromtimestamp((self.root / key).stat().st_mtime, dt.UTC)


class AzureBackend(Backend):
    def __init__(self, connection_string: str, container: str) -> None:
        self.azure = AzureBlobStore(
            container, connection_string=SecretStr(connection_string), block_size=TEST_BLOCK_SIZE
        )
        self.store = self.azure

    async def stored(self) -> list[str]:
        # Staged blocks are not blobs: Azure lists, serves and bills only committed ones.
        return sorted([item.name async for item in self.azure.client.list_blobs()])

    async def writing(self, key: str) -> bool:
        _, uncommitted = await self.azure.client.get_blob_client(key).get_block_list("uncommitted")
        return bool(uncommitted)

    async def modified(self, key: str) -> dt.datetime:
        properties = await self.azure.client.get_blob_client(key).get_blob_properties()
        modified: dt.datetime = properties.last_modified
        return modified


@asynccontextmanager
async def blob_backend(kind: str, root: Path, connection_string: str | None) -> AsyncIterator[Backend]:
    """A started store of *kind* (``folder`` or ``azure``), emptied and closed afterwards."""
    if kind == "folder":
        folder = FolderBackend(root)
        async with folder.store:
            yield folder
        return
    assert connection_string is not None
    azure = AzureBackend(connection_string, f"t{uuid.uuid4().hex[:16]}")
    async with azure.store:
        try:
            yield azure
        finally:
            await azure.azure.client.delete_container()
