"""The blob store in a local folder: one machine, writes atomic (temp file + rename)."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import os
import secrets
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import BinaryIO

from common.contracts.messages import BlobRef
from common.platform.blobs.interface import (
    CHUNK_SIZE,
    BlobReader,
    BlobStore,
    BlobWriter,
    artifact_missing,
    check_cutoff,
    check_key,
)

#: What a writer gathers before it goes to the file.
_WRITE_SIZE = 256 * 1024


class FolderBlobStore(BlobStore):
    """Blobs as files under one folder; writes are atomic (temp file + rename)."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def path(self, key: str) -> Path:
        return self.root / check_key(key)

    async def _put(self, key: str, data: bytes, content_type: str) -> BlobRef:
        path = self.path(key)
        await asyncio.to_thread(self._write, path, data)
        return BlobRef(key=key, content_type=content_type, size=len(data))

    @staticmethod
    def _write(path: Path, data: bytes) -> None:
        temporary = _temporary_path(path)
        try:
            with _create(temporary) as file:
                file.write(data)
            temporary.replace(path)
        except BaseException:
            temporary.unlink(missing_ok=True)
            raise

    async def _get(self, key: str) -> bytes:
        path = self.path(key)
        try:
            return await asyncio.to_thread(path.read_bytes)
        except FileNotFoundError:
            raise artifact_missing(key) from None

    def writer(self, key: str, content_type: str) -> BlobWriter:
        return _FolderBlobWriter(self.path(key), key, content_type)

    def open(self, key: str, *, chunk_size: int = CHUNK_SIZE) -> BlobReader:
        return _FolderBlobReader(self.path(key), key, chunk_size)

    async def exists(self, key: str) -> bool:
        return await asyncio.to_thread(self.path(key).is_file)

    async def missing(self, keys: Sequence[str]) -> list[str]:
        paths = [self.path(key) for key in keys]
        # One trip to a worker thread for them all: a lookup costs less than the trip.
        found = await asyncio.to_thread(lambda: [path.is_file() for path in paths])
        return [key for key, there in zip(keys, found, strict=True) if not there]

    async def delete_prefix(self, prefix: str) -> int:
        return await asyncio.to_thread(self._delete_tree, self.path(prefix))

    @staticmethod
    def _delete_tree(folder: Path) -> int:
        count = 0
        # Bottom-up, so every folder is empty by the time it is removed; os.walk passes over
        # what another deleter removed meanwhile instead of failing on it.
        for parent, folders, files in os.walk(folder, topdown=False):
            for name in files:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(os.path.join(parent, name))
                    count += 1
            for name in folders:
                with contextlib.suppress(OSError):
                    os.rmdir(os.path.join(parent, name))
        with contextlib.suppress(OSError):
            folder.rmdir()
        return count

    async def expire(self, older_than: dt.datetime) -> int:
        return await asyncio.to_thread(self._expire, check_cutoff(older_than).timestamp())

    def _expire(self, cutoff: float) -> int:
        count = 0
        emptied: set[str] = set()
        # Temp files of writers that died count as blobs here: they are as old as their last write.
        for parent, _, files in os.walk(self.root):
            for name in files:
                path = os.path.join(parent, name)
                with contextlib.suppress(FileNotFoundError):
                    if os.stat(path).st_mtime < cutoff:
                        os.unlink(path)
                        count += 1
                        emptied.add(parent)
        # Only the folders this sweep emptied, deepest first; a folder a writer filled meanwhile stays.
        for name in sorted(emptied, key=len, reverse=True):
            folder = Path(name)
            while folder != self.root and self.root in folder.parents:
                try:
                    folder.rmdir()
                except OSError:
                    break
                folder = folder.parent
        return count

    async def ping(self) -> bool:
        return await asyncio.to_thread(self.root.is_dir)

    async def start(self) -> None:
        await asyncio.to_thread(self.root.mkdir, parents=True, exist_ok=True)

    async def close(self) -> None:
        pass

    def __repr__(self) -> str:
        return f"FolderBlobStore({str(self.root)!r})"


def _temporary_path(path: Path) -> Path:
    """A hidden sibling of *path*, unique, so that two writers of one key never share a file."""
    return path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")


def _create(path: Path) -> BinaryIO:
    """A new file at *path*, its folder made first, and made again if an expiry removed it meanwhile."""
    tries = 3
    while True:
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            return path.open("xb")
        except FileNotFoundError:
            tries -= 1
            if not tries:
                raise


class _FolderBlobWriter(BlobWriter):
    """Writes a temp file next to the blob and renames it into place on commit.

    File work runs in worker threads. A thread keeps running when the task awaiting
    it is cancelled, so every step holds ``_lock`` and checks ``_discarded``: a
    create that runs after the discard creates nothing, and a discard waits for a
    write in flight before it removes the file.
    """

    def __init__(self, path: Path, key: str, content_type: str) -> None:
        super().__init__(key, content_type)
        self._path = path
        self._temporary = _temporary_path(path)
        self._file: BinaryIO | None = None
        self._pending = bytearray()
        self._lock = threading.Lock()
        self._discarded = False

    async def _open(self) -> None:
        await asyncio.to_thread(self._create)

    async def _write(self, data: bytes) -> None:
        if not self._pending and len(data) >= _WRITE_SIZE:
            await asyncio.to_thread(self._append, data)
            return
        self._pending += data
        if len(self._pending) >= _WRITE_SIZE:
            await self._flush()

    async def _flush(self) -> None:
        pending, self._pending = self._pending, bytearray()
        if pending:
            await asyncio.to_thread(self._append, pending)

    async def _commit(self) -> None:
        await self._flush()
        await asyncio.to_thread(self._rename)

    async def _discard(self) -> None:
        self._pending = bytearray()
        await asyncio.to_thread(self._remove)

    def _create(self) -> None:
        with self._lock:
            if self._discarded:
                return
            self._file = _create(self._temporary)

    def _append(self, data: bytes | bytearray) -> None:
        with self._lock:
            if self._file is None or self._discarded:
                raise RuntimeError(f"the writer of blob {self.key!r} is not open")
            self._file.write(data)

    def _rename(self) -> None:
        with self._lock:
            if self._file is None or self._discarded:
                raise RuntimeError(f"the writer of blob {self.key!r} is not open")
            self._file.close()
            self._temporary.replace(self._path)
            self._file = None

    def _remove(self) -> None:
        with self._lock:
            self._discarded = True
            if self._file is not None:
                self._file.close()
                self._file = None
                self._temporary.unlink(missing_ok=True)


class _FolderBlobReader(BlobReader):
    def __init__(self, path: Path, key: str, chunk_size: int) -> None:
        super().__init__(key, chunk_size)
        self._path = path
        self._file: BinaryIO | None = None

    async def _open(self) -> None:
        try:
            self._file = await asyncio.to_thread(self._path.open, "rb")
        except FileNotFoundError:
            raise artifact_missing(self.key) from None

    async def read_chunk(self) -> bytes:
        if self._file is None:
            raise RuntimeError(f"blob {self.key!r} is not open for reading")
        return await asyncio.to_thread(self._file.read, self.chunk_size)

    async def close(self) -> None:
        file, self._file = self._file, None
        if file is not None:
            await asyncio.to_thread(file.close)
