"""The blob store: where result rows, tables, charts and sent emails live.

Messages carry :class:`~common.contracts.BlobRef` claim checks instead of
payloads. Keys are derived from ``(run_id, step_id, attempt)``, so a
redelivered message overwrites its own output instead of leaving a copy.

Small blobs move whole (:meth:`BlobStore.put`, :meth:`BlobStore.get`); large
ones stream through a :class:`BlobWriter` and a :class:`BlobReader`, so
neither side holds the whole blob in memory.

:class:`FolderBlobStore` keeps blobs in a local folder (one machine);
:class:`~common.azure_blobs.AzureBlobStore` in Azure Blob Storage, for
services on several machines. ``ADXFLOW_BLOB_BACKEND`` chooses between them.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import datetime as dt
import os
import re
import secrets
import threading
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import BinaryIO, Self

from common.contracts import BlobRef
from common.errors import ArtifactMissing

_KEY = re.compile(r"^[A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+)*$")
#: What one read hands back, and what a writer gathers before it goes to the file: large
#: enough that a hop to a worker thread costs little next to the I/O it carries.
CHUNK_SIZE = 1024 * 1024
_WRITE_SIZE = 256 * 1024


def artifact_key(run_id: str, step_id: str, attempt: int, name: str) -> str:
    return f"runs/{run_id}/{step_id}/{attempt}/{name}"


def check_key(key: str) -> str:
    if not _KEY.match(key) or any(part in {".", ".."} for part in key.split("/")):
        raise ValueError(f"invalid blob key {key!r}")
    return key


def artifact_missing(key: str) -> ArtifactMissing:
    return ArtifactMissing(f"artifact {key!r} is not in the blob store")


class BlobWriter(abc.ABC):
    """One blob written chunk by chunk: ``async with store.writer(key, content_type) as blob``.

    The blob appears whole when the block exits cleanly, and :attr:`ref` then names
    it. If the block raises or is cancelled, nothing is left behind, a blob stored
    earlier under the key stays as it was, and the exception propagates. A backend
    that uploads in parts (Azure block blobs: stage blocks, commit the list) maps
    :meth:`write` to staging and the clean exit to the commit. Writes are issued one
    at a time, in order.
    """

    def __init__(self, key: str, content_type: str) -> None:
        self.key = key
        self.content_type = content_type
        #: Bytes written so far.
        self.size = 0
        self._ref: BlobRef | None = None
        self._closed = False

    @property
    def ref(self) -> BlobRef:
        if self._ref is None:
            raise RuntimeError(f"blob {self.key!r} is stored only once its writer exits cleanly")
        return self._ref

    async def write(self, data: bytes) -> None:
        if self._closed:
            raise RuntimeError(f"the writer of blob {self.key!r} is closed")
        if data:
            await self._write(data)
            self.size += len(data)

    async def __aenter__(self) -> Self:
        try:
            await self._open()
        except BaseException:
            await self._discard()
            raise
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self._closed = True
        if exc_type is not None:
            await self._discard()
            return
        try:
            await self._commit()
        except BaseException:
            await self._discard()
            raise
        self._ref = BlobRef(key=self.key, content_type=self.content_type, size=self.size)

    @abc.abstractmethod
    async def _open(self) -> None:
        """Get ready to take data."""

    @abc.abstractmethod
    async def _write(self, data: bytes) -> None:
        """Take the next bytes of the blob."""

    @abc.abstractmethod
    async def _commit(self) -> None:
        """Make everything written visible under the key, at once."""

    @abc.abstractmethod
    async def _discard(self) -> None:
        """Drop everything written; safe to call more than once, and before or after :meth:`_open`."""


class BlobReader(abc.ABC):
    """One blob read in chunks: ``async with store.open(key) as blob: async for chunk in blob``.

    Entering raises :class:`~common.errors.ArtifactMissing` if there is no blob
    under the key.
    """

    def __init__(self, key: str, chunk_size: int) -> None:
        if chunk_size <= 0:
            raise ValueError(f"chunk_size must be positive, not {chunk_size}")
        self.key = key
        self.chunk_size = chunk_size

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> bytes:
        chunk = await self.read_chunk()
        if not chunk:
            raise StopAsyncIteration
        return chunk

    async def __aenter__(self) -> Self:
        await self._open()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        await self.close()

    @abc.abstractmethod
    async def _open(self) -> None: ...

    @abc.abstractmethod
    async def read_chunk(self) -> bytes:
        """The next at most ``chunk_size`` bytes; empty at the end of the blob."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Let go of the blob; idempotent."""


class BlobStore(abc.ABC):
    """Where blobs live; an async context manager that gets ready on entry and lets go on exit."""

    @abc.abstractmethod
    async def start(self) -> None:
        """Get ready to store blobs (create the folder or container); idempotent."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Let go of connections; idempotent."""

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        await self.close()

    @abc.abstractmethod
    async def put(self, key: str, data: bytes, content_type: str) -> BlobRef: ...

    @abc.abstractmethod
    async def get(self, key: str) -> bytes: ...

    @abc.abstractmethod
    def writer(self, key: str, content_type: str) -> BlobWriter:
        """A writer that streams a blob in; use it as an async context manager."""

    @abc.abstractmethod
    def open(self, key: str, *, chunk_size: int = CHUNK_SIZE) -> BlobReader:
        """A reader that streams a blob out; use it as an async context manager."""

    @abc.abstractmethod
    async def exists(self, key: str) -> bool: ...

    async def missing(self, keys: Sequence[str]) -> list[str]:
        """Those of *keys* with no blob, in the order given; the lookups run at once."""
        found = await asyncio.gather(*(self.exists(key) for key in keys))
        return [key for key, there in zip(keys, found, strict=True) if not there]

    @abc.abstractmethod
    async def delete_prefix(self, prefix: str) -> int:
        """Delete every blob under the folder *prefix* (``runs/<run_id>``); returns how many.

        Deleting what is already gone is no error, so two callers may race.
        """

    @abc.abstractmethod
    async def expire(self, older_than: dt.datetime) -> int:
        """Delete every blob last written before *older_than* (timezone-aware); returns how many.

        A blob rewritten meanwhile is kept; deleting what is already gone is no error.
        """

    @abc.abstractmethod
    async def ping(self) -> bool: ...


def check_cutoff(older_than: dt.datetime) -> dt.datetime:
    if older_than.tzinfo is None or older_than.utcoffset() is None:
        raise ValueError(f"expire needs a timezone-aware time, not {older_than.isoformat()}")
    return older_than


class FolderBlobStore(BlobStore):
    """Blobs as files under one folder; writes are atomic (temp file + rename)."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def path(self, key: str) -> Path:
        return self.root / check_key(key)

    async def put(self, key: str, data: bytes, content_type: str) -> BlobRef:
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

    async def get(self, key: str) -> bytes:
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
