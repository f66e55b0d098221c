"""A file an ingestion reads: fetched from the blob store's ``imports/`` folder or from a URL on the
operator's ingestion allowlist, onto disk (never whole in memory, at most
``ingest_file_max_bytes``), then read a batch of rows at a time on a thread.

* CSV (``.csv``, ``.csv.gz``): the first row names the columns; every field is
  text, which Kusto reads as the type of the target's column of that name (a
  column the target lacks is a string).
* JSON lines (``.json``, ``.jsonl``, ``.ndjson``, gzipped too): one object a line;
  the columns are the keys of the first batch's objects, in the order they first
  appear (keys seen only later are left out), typed from JSON's own types where
  the target has no such column (true/false bool, whole numbers long, other
  numbers real, objects and arrays dynamic, anything else string).
* Parquet: the file's own types (Kusto's, where a field's metadata says
  ``kusto_type``, as `export_to_file` writes them); read a row group's batch at a
  time.

Gzip is told by its magic bytes, whatever the name says. A missing blob or a
URL that answers 404 or 410 fails the step for good (``ArtifactMissing``); a
server error or a broken connection fails it as retryable (``FileUnavailable``).
"""

from __future__ import annotations

import asyncio
import codecs
import csv
import gzip
import io
import json
import re
import tempfile
from collections.abc import AsyncGenerator, Callable, Generator
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Literal, Self

import aiohttp
import pyarrow as pa
import pyarrow.parquet as pq
from yarl import URL

from common.contracts.actions import FileSource
from common.contracts.errors import AdxflowError, ArtifactMissing, FileUnavailable
from common.contracts.messages import ErrorCode, RunMessage
from common.contracts.results import Column
from common.contracts.templates import render_text, template_context
from common.platform.runtime import Runtime
from common.platform.sql import Batch
from common.platform.webhooks import WebhookRefused, ingest_policy, without_secrets

#: The blob store's folder files are ingested from.
IMPORTS = "imports/"
FileFormat = Literal["csv", "json", "parquet"]
_GZIP = b"\x1f\x8b"
_EXTENSIONS: dict[str, FileFormat] = {
    ".csv": "csv",
    ".json": "json",
    ".jsonl": "json",
    ".ndjson": "json",
    ".parquet": "parquet",
}
_KEY = re.compile(r"^(?!.*(^|/)\.\.(/|$))[A-Za-z0-9_][A-Za-z0-9_./ -]*$")
_DOWNLOAD_CHUNK = 1 << 20


def file_format(name: str, declared: FileFormat | None, field: str) -> FileFormat:
    """The format *declared*, or the one *name*'s extension (before any ``.gz``) says."""
    if declared is not None:
        return declared
    stem = name.lower().split("?", 1)[0]
    stem = stem.removesuffix(".gz")
    for extension, kind in _EXTENSIONS.items():
        if stem.endswith(extension):
            return kind
    raise AdxflowError(
        f"{field}: {name!r} ends with none of {', '.join(_EXTENSIONS)} (each also .gz); say its 'format'",
        code=ErrorCode.INVALID_PARAMETERS,
    )


class IngestFile:
    """One step's file, on disk for as long as the ``async with`` lasts."""

    def __init__(self, runtime: Runtime, message: RunMessage, step_id: str, source: FileSource) -> None:
        self._runtime = runtime
        self._message = message
        self._field = f"steps.{step_id}.from_file"
        self._source = source
        self._scratch: tempfile.TemporaryDirectory[str] | None = None
        self.path = Path()
        #: Where the file came from, as history shows it (a URL without its query).
        self.shown = ""
        self.format: FileFormat = "csv"
        #: Whether the file's columns carry their types (Parquet) or Kusto reads the fields (CSV, JSON).
        self.typed = False

    async def __aenter__(self) -> Self:
        self._scratch = tempfile.TemporaryDirectory(prefix="adxflow-ingest-")
        self.path = Path(self._scratch.name) / "file"
        try:
            await self._fetch()
        except BaseException:
            self._scratch.cleanup()
            raise
        self.typed = self.format == "parquet"
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._scratch is not None:
            self._scratch.cleanup()

    async def _fetch(self) -> None:
        context = template_context(self._message)
        source = self._source
        limit = self._runtime.settings.ingest_file_max_bytes
        with self.path.open("wb") as into:
            if source.blob is not None:
                key = render_text(source.blob, context, field=f"{self._field}.blob").strip()
                if not _KEY.match(key):
                    raise AdxflowError(
                        f"{self._field}.blob: {key!r} is not a key under imports/ (no '..', no leading '/')",
                        code=ErrorCode.INVALID_PARAMETERS,
                    )
                self.shown = IMPORTS + key
                self.format = file_format(key, source.format, f"{self._field}.format")
                async with self._runtime.blobs.open(self.shown) as blob:
                    async for chunk in blob:
                        _write_capped(into, chunk, limit, self.shown)
            else:
                assert source.url is not None
                url = render_text(source.url, context, field=f"{self._field}.url").strip()
                try:
                    target = ingest_policy(self._runtime.settings).allowed(url, f"{self._field}.url")
                except WebhookRefused as exc:
                    raise AdxflowError(str(exc), code=ErrorCode.INVALID_PARAMETERS) from None
                self.shown = without_secrets(URL(target.url))
                self.format = file_format(url, source.format, f"{self._field}.format")
                await self._download(target.url, into, limit)

    async def _download(self, url: str, into: IO[bytes], limit: int) -> None:
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=30, sock_read=60)
        try:
            async with (
                aiohttp.ClientSession(timeout=timeout) as session,
                session.get(url, allow_redirects=False) as response,
            ):
                if response.status in (404, 410):
                    raise ArtifactMissing(f"{self._field}.url: {self.shown} answered {response.status}")
                if response.status >= 500 or response.status == 429:
                    raise FileUnavailable(f"{self._field}.url: {self.shown} answered {response.status}")
                if response.status != 200:
                    raise AdxflowError(
                        f"{self._field}.url: {self.shown} answered {response.status}, not 200",
                        code=ErrorCode.INVALID_PARAMETERS,
                    )
                async for chunk in response.content.iter_chunked(_DOWNLOAD_CHUNK):
                    _write_capped(into, chunk, limit, self.shown)
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise FileUnavailable(f"{self._field}.url: {self.shown} could not be read: {exc}") from exc

    async def batches(self, rows: int) -> AsyncGenerator[Batch]:
        """The file's rows, *rows* at a time, each batch read on a thread."""
        reader = _READERS[self.format](self.path, rows)
        try:
            while True:
                batch = await asyncio.to_thread(next, reader, None)
                if batch is None:
                    return
                yield batch
        finally:
            reader.close()


def _write_capped(into: IO[bytes], chunk: bytes, limit: int, shown: str) -> None:
    if into.tell() + len(chunk) > limit:
        raise AdxflowError(
            f"{shown} is larger than ingest_file_max_bytes={limit:,}, the most one ingestion fetches",
            code=ErrorCode.RESULT_TOO_LARGE,
        )
    into.write(chunk)


def _opened(path: Path) -> IO[bytes] | gzip.GzipFile:
    with path.open("rb") as probe:
        magic = probe.read(2)
    if magic == _GZIP:
        return gzip.GzipFile(path, "rb")
    return path.open("rb")


def _csv_rows(path: Path, rows: int) -> Generator[Batch]:
    with _opened(path) as raw, io.TextIOWrapper(raw, encoding="utf-8-sig", newline="") as text:
        reader = csv.reader(text)
        header = next(reader, None)
        if not header:
            yield [], []
            return
        columns = [Column(name=name.strip(), type="string") for name in header]
        batch: list[list[Any]] = []
        for line in reader:
            if len(line) != len(columns):
                raise AdxflowError(
                    f"line {reader.line_num} of the file has {len(line)} fields for {len(columns)} columns",
                    code=ErrorCode.TABLE_MISMATCH,
                )
            batch.append(line)
            if len(batch) == rows:
                yield columns, batch
                batch = []
        yield columns, batch


def _json_type(value: Any) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "long"
    if isinstance(value, float):
        return "real"
    if isinstance(value, dict | list):
        return "dynamic"
    return "string"


def _json_rows(path: Path, rows: int) -> Generator[Batch]:
    decoder = codecs.getincrementaldecoder("utf-8-sig")()
    columns: list[Column] | None = None
    pending: list[dict[str, Any]] = []
    with _opened(path) as raw:
        for number, line in enumerate(raw, start=1):
            text = decoder.decode(line).strip()
            if not text:
                continue
            try:
                document = json.loads(text)
            except ValueError as exc:
                raise AdxflowError(
                    f"line {number} of the file is not JSON: {exc}", code=ErrorCode.TABLE_MISMATCH
                ) from None
            if not isinstance(document, dict):
                raise AdxflowError(
                    f"line {number} of the file is not a JSON object", code=ErrorCode.TABLE_MISMATCH
                )
            pending.append(document)
            if len(pending) == rows:
                columns = columns or _json_columns(pending)
                yield columns, _by_name(columns, pending)
                pending = []
    columns = columns or _json_columns(pending)
    yield columns, _by_name(columns, pending)


def _json_columns(documents: list[dict[str, Any]]) -> list[Column]:
    kinds: dict[str, str | None] = {}
    for document in documents:
        for name, value in document.items():
            if kinds.get(name) is None:
                kinds[name] = None if value is None else _json_type(value)
    return [Column(name=name, type=kind or "string") for name, kind in kinds.items()]


def _by_name(columns: list[Column], documents: list[dict[str, Any]]) -> list[list[Any]]:
    names = [column.name for column in columns]
    return [[document.get(name) for name in names] for document in documents]


def _arrow_type(field: pa.Field) -> str:
    declared = (field.metadata or {}).get(b"kusto_type")
    if declared:
        return declared.decode("utf-8")
    kind = field.type
    if pa.types.is_boolean(kind):
        return "bool"
    if pa.types.is_integer(kind):
        return "long" if kind.bit_width == 64 else "int"
    if pa.types.is_floating(kind):
        return "real"
    if pa.types.is_decimal(kind):
        return "decimal"
    if pa.types.is_timestamp(kind) or pa.types.is_date(kind):
        return "datetime"
    if pa.types.is_duration(kind) or pa.types.is_time(kind):
        return "timespan"
    if pa.types.is_nested(kind):
        return "dynamic"
    return "string"


def _parquet_rows(path: Path, rows: int) -> Generator[Batch]:
    with pq.ParquetFile(path) as parquet:
        schema = parquet.schema_arrow
        columns = [Column(name=field.name, type=_arrow_type(field)) for field in schema]
        sent = False
        for batch in parquet.iter_batches(batch_size=rows):
            sent = True
            yield (
                columns,
                [list(row) for row in zip(*(array.to_pylist() for array in batch.columns), strict=True)],
            )
        if not sent:
            yield columns, []


_READERS: dict[FileFormat, Callable[[Path, int], Generator[Batch]]] = {
    "csv": _csv_rows,
    "json": _json_rows,
    "parquet": _parquet_rows,
}
