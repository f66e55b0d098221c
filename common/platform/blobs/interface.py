"""The blob store: where result rows, tables, charts and sent emails live.

Messages carry :class:`~common.contracts.messages.BlobRef` claim checks instead of
payloads. Keys are derived from ``(run_id, step_id, attempt)``, so a
redelivered message overwrites its own output instead of leaving a copy.

Small blobs move whole (:meth:`BlobStore.put`, :meth:`BlobStore.get`); large
ones stream through a :class:`BlobWriter` and a :class:`BlobReader`, so
neither side holds the whole blob in memory.

:class:`~common.platform.blobs.folder.FolderBlobStore` keeps blobs in a local
folder (one machine); :class:`~common.platform.blobs.azure.AzureBlobStore` in
Azure Blob Storage, for services on several machines. ``ADXFLOW_BLOB_BACKEND`` chooses between them.

Every put, get, streamed write and streamed read is a span under the step
that does it (:mod:`common.platform.tracing`), named by the blob's key.
"""

from __future__ import annotations

import abc
import asyncio
import datetime as dt
import re
from collections.abc import AsyncGenerator, Sequence
from types import TracebackType
from typing import Any, Self

from opentelemetry.trace import Span, SpanKind

from common.contracts.errors import ArtifactMissing
from common.contracts.messages import BlobRef
from common.contracts.results import Column, ResultSet, RowStream
from common.platform import tracing

_KEY = re.compile(r"^[A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+)*$")
#: What one read hands back: large enough that a hop to a worker thread costs little
#: next to the I/O it carries.
CHUNK_SIZE = 1024 * 1024


def artifact_key(run_id: str, step_id: str, attempt: int, name: str) -> str:
    return f"runs/{run_id}/{step_id}/{attempt}/{name}"


def artifact_url(history_url: str, key: str) -> str:
    """Where the history service serves the artifact at *key* (``runs/...``)."""
    return f"{history_url.rstrip('/')}/v1/artifacts/{key}"


def check_key(key: str) -> str:
    if not _KEY.match(key) or any(part in {".", ".."} for part in key.split("/")):
        raise ValueError(f"invalid blob key {key!r}")
    return key


def artifact_missing(key: str) -> ArtifactMissing:
    return ArtifactMissing(f"artifact {key!r} is not in the blob store")


def _attributes(key: str, *, size: int | None = None) -> dict[str, str | int]:
    found: dict[str, str | int] = {"adxflow.blob.key": key}
    if size is not None:
        found["adxflow.blob.size"] = size
    return found


def _span(name: str, key: str) -> Span:
    """A span for a streamed write or read: it lasts from entering the block to leaving it."""
    return tracing.tracer().start_span(name, kind=SpanKind.CLIENT, attributes=_attributes(key))


def _end(span: Span | None, exc: BaseException | None, *, size: int | None = None) -> None:
    if span is None:
        return
    if size is not None:
        span.set_attribute("adxflow.blob.size", size)
    if exc is not None:
        tracing.failed(span, tracing.code_of(exc))
    span.end()


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
        self._span: Span | None = None

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
        self._span = _span("blob write", self.key)
        try:
            await self._open()
        except BaseException as exc:
            await self._discard()
            _end(self._span, exc)
            raise
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self._closed = True
        span, self._span = self._span, None
        if exc_type is not None:
            await self._discard()
            _end(span, exc)
            return
        try:
            await self._commit()
        except BaseException as failure:
            await self._discard()
            _end(span, failure)
            raise
        self._ref = BlobRef(key=self.key, content_type=self.content_type, size=self.size)
        _end(span, None, size=self.size)

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

    Entering raises :class:`~common.contracts.errors.ArtifactMissing` if there is no blob
    under the key.
    """

    def __init__(self, key: str, chunk_size: int) -> None:
        if chunk_size <= 0:
            raise ValueError(f"chunk_size must be positive, not {chunk_size}")
        self.key = key
        self.chunk_size = chunk_size
        self._span: Span | None = None

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> bytes:
        chunk = await self.read_chunk()
        if not chunk:
            raise StopAsyncIteration
        return chunk

    async def __aenter__(self) -> Self:
        self._span = _span("blob read", self.key)
        try:
            await self._open()
        except BaseException as exc:
            _end(self._span, exc)
            raise
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        span, self._span = self._span, None
        try:
            await self.close()
        finally:
            _end(span, exc)

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

    async def put(self, key: str, data: bytes, content_type: str) -> BlobRef:
        with tracing.client_span("blob put", _attributes(key, size=len(data))):
            return await self._put(key, data, content_type)

    async def get(self, key: str) -> bytes:
        with tracing.client_span("blob get", _attributes(key)) as span:
            data = await self._get(key)
            span.set_attribute("adxflow.blob.size", len(data))
        return data

    async def get_result(self, key: str) -> ResultSet:
        """The stored query result at *key*, parsed off the event loop.

        A result can be many megabytes: parsed in a worker thread, a row at a time
        (`ResultSet.from_json_bytes`), the loop keeps beating for the step and serving others.
        """
        return await asyncio.to_thread(ResultSet.from_json_bytes, await self.get(key))

    async def result_rows(self, key: str) -> AsyncGenerator[tuple[list[Column], list[list[Any]]]]:
        """The stored query result at *key*, streamed: its columns and the rows of each chunk read.

        Only a chunk and its rows are in memory at once, however many rows the
        result has; each chunk is parsed off the event loop. A blob that is not a
        whole stored result raises ``ValueError``. A reader that may stop early
        closes it (``contextlib.aclosing``), which closes the blob.
        """
        stream = RowStream()
        async with self.open(key) as reader:
            async for chunk in reader:
                rows = await asyncio.to_thread(stream.feed, chunk)
                if rows and stream.columns is not None:
                    yield stream.columns, rows
                if stream.done:
                    return
        stream.end()

    @abc.abstractmethod
    async def _put(self, key: str, data: bytes, content_type: str) -> BlobRef: ...

    @abc.abstractmethod
    async def _get(self, key: str) -> bytes: ...

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
