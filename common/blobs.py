"""The blob store: where result rows, tables, charts and sent emails live.

Messages carry :class:`~common.contracts.BlobRef` claim checks instead of
payloads. Keys are derived from ``(run_id, step_id, attempt)``, so a
redelivered message overwrites its own output instead of leaving a copy.
"""

from __future__ import annotations

import abc
import asyncio
import os
import re
from pathlib import Path

from common.contracts import BlobRef
from common.errors import ArtifactMissing

_KEY = re.compile(r"^[A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+)*$")


def artifact_key(run_id: str, step_id: str, attempt: int, name: str) -> str:
    return f"runs/{run_id}/{step_id}/{attempt}/{name}"


def _check_key(key: str) -> str:
    if not _KEY.match(key) or any(part in {".", ".."} for part in key.split("/")):
        raise ValueError(f"invalid blob key {key!r}")
    return key


class BlobStore(abc.ABC):
    @abc.abstractmethod
    async def put(self, key: str, data: bytes, content_type: str) -> BlobRef: ...

    @abc.abstractmethod
    async def get(self, key: str) -> bytes: ...

    @abc.abstractmethod
    async def exists(self, key: str) -> bool: ...

    @abc.abstractmethod
    async def ping(self) -> bool: ...


class FolderBlobStore(BlobStore):
    """Blobs as files under one folder; writes are atomic (temp file + rename)."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def path(self, key: str) -> Path:
        return self.root / _check_key(key)

    async def put(self, key: str, data: bytes, content_type: str) -> BlobRef:
        path = self.path(key)
        await asyncio.to_thread(self._write, path, data)
        return BlobRef(key=key, content_type=content_type, size=len(data))

    @staticmethod
    def _write(path: Path, data: bytes) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        temporary.write_bytes(data)
        temporary.replace(path)

    async def get(self, key: str) -> bytes:
        path = self.path(key)
        try:
            return await asyncio.to_thread(path.read_bytes)
        except FileNotFoundError:
            raise ArtifactMissing(f"artifact {key!r} is not in the blob store") from None

    async def exists(self, key: str) -> bool:
        return await asyncio.to_thread(self.path(key).is_file)

    async def ping(self) -> bool:
        return await asyncio.to_thread(self.root.is_dir)

    async def ensure(self) -> None:
        await asyncio.to_thread(self.root.mkdir, parents=True, exist_ok=True)
