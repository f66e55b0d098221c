"""The blob store on Azure Blob Storage, for services on more than one machine.

Blobs are block blobs in one container, named by their keys. A streamed blob
is staged block by block and committed with its block list when the writer
exits cleanly: until then readers see the earlier blob or none, and the
staged blocks of a writer that failed stay uncommitted, where no reader sees
them and the service discards them (at the next commit of the key, or after
seven days).

Authentication is by connection string (development, Azurite) or by an Entra
token for an ``https://`` account URL: ``DefaultAzureCredential`` without its
developer and interactive sources, or a managed or workload identity alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import secrets
from collections.abc import AsyncIterator, Iterable
from typing import TYPE_CHECKING, Literal
from urllib.parse import urlsplit

from azure.core import MatchConditions
from azure.core.exceptions import (
    AzureError,
    HttpResponseError,
    ResourceExistsError,
    ResourceModifiedError,
    ResourceNotFoundError,
)
from azure.storage.blob import BlobBlock, ContentSettings
from azure.storage.blob.aio import BlobClient, BlobServiceClient, ContainerClient, ExponentialRetry
from pydantic import SecretStr

from common.contracts.errors import BlobStoreError, ConfigurationError
from common.contracts.messages import BlobRef
from common.platform.blobs.azure_errors import blob_error, error_code, translated
from common.platform.blobs.interface import (
    CHUNK_SIZE,
    BlobReader,
    BlobStore,
    BlobWriter,
    check_cutoff,
    check_key,
)
from common.platform.config import Settings

if TYPE_CHECKING:
    from azure.core.credentials_async import AsyncTokenCredential

Credential = Literal["default", "managed_identity", "workload_identity"]

#: Bytes a writer gathers before it stages them as one block: 50,000 blocks make a 200 GiB blob.
BLOCK_SIZE = 4 * 1024 * 1024
#: Bytes one download request fetches; a reader holds at most this much at once.
_DOWNLOAD_SIZE = 4 * 1024 * 1024
#: Deletes in flight at once during delete_prefix and expire.
_DELETES = 16
_PING_SECONDS = 5.0


class AzureBlobStore(BlobStore):
    """Blobs in one Azure Blob Storage container, created at start if missing."""

    def __init__(
        self,
        container: str,
        *,
        connection_string: SecretStr | None = None,
        account_url: str | None = None,
        credential: Credential = "default",
        block_size: int = BLOCK_SIZE,
        retries: int = 3,
    ) -> None:
        if connection_string is None and account_url is None:
            raise ValueError("an Azure blob store needs a connection string or an account URL")
        if connection_string is None and account_url is not None and urlsplit(account_url).scheme != "https":
            raise ValueError(f"tokens go only over https, and the account URL is {account_url!r}")
        if block_size <= 0:
            raise ValueError(f"block_size must be positive, not {block_size}")
        self.container = container
        self.block_size = block_size
        self.retries = retries
        self._connection_string = connection_string
        self._account_url = account_url
        self._credential_kind = credential
        self._credential: AsyncTokenCredential | None = None
        self._service: BlobServiceClient | None = None
        self._client: ContainerClient | None = None

    @classmethod
    def from_settings(cls, settings: Settings) -> AzureBlobStore:
        """The store ``ADXFLOW_AZURE_STORAGE_*`` describe; a missing or unsafe one names its variable."""
        connection_string = settings.azure_storage_connection_string
        account_url = settings.azure_storage_account_url
        if connection_string is None and account_url is None:
            raise ConfigurationError(
                "ADXFLOW_BLOB_BACKEND=azure needs ADXFLOW_AZURE_STORAGE_CONNECTION_STRING "
                "or ADXFLOW_AZURE_STORAGE_ACCOUNT_URL"
            )
        if connection_string is None and account_url is not None and urlsplit(account_url).scheme != "https":
            raise ConfigurationError(
                f"ADXFLOW_AZURE_STORAGE_ACCOUNT_URL={account_url!r}: must be https:// "
                "(adxflow sends its identity's tokens over https only)"
            )
        return cls(
            settings.azure_storage_container,
            connection_string=connection_string,
            account_url=None if connection_string is not None else account_url,
            credential=settings.azure_storage_credential,
        )

    def __repr__(self) -> str:
        auth = "connection string" if self._connection_string is not None else self._credential_kind
        return f"AzureBlobStore(container={self.container!r}, auth={auth!r})"

    @property
    def client(self) -> ContainerClient:
        if self._client is None:
            raise RuntimeError("the Azure blob store is not started")
        return self._client

    async def start(self) -> None:
        if self._client is not None:
            return
        # Seconds apart, not the library's default of 15 s and more: a step that still fails is
        # retried by adxflow with its own backoff, and a worker should not sit a minute on one call.
        retry = ExponentialRetry(
            initial_backoff=1, increment_base=2, retry_total=self.retries, random_jitter_range=1
        )
        if self._connection_string is not None:
            service = BlobServiceClient.from_connection_string(
                self._connection_string.get_secret_value(),
                retry_policy=retry,
                max_single_get_size=_DOWNLOAD_SIZE,
                max_chunk_get_size=_DOWNLOAD_SIZE,
            )
        else:
            assert self._account_url is not None
            try:
                self._credential = _credential(self._credential_kind)
            except ValueError as exc:
                raise ConfigurationError(
                    f"ADXFLOW_AZURE_STORAGE_CREDENTIAL={self._credential_kind!r}: {exc}"
                ) from None
            service = BlobServiceClient(
                self._account_url,
                credential=self._credential,
                retry_policy=retry,
                max_single_get_size=_DOWNLOAD_SIZE,
                max_chunk_get_size=_DOWNLOAD_SIZE,
            )
        self._service = service
        self._client = service.get_container_client(self.container)
        try:
            await service.__aenter__()
            # Looked up first, so that an identity allowed to write blobs but not to create
            # containers can start once an operator has made the container.
            with translated("open container", self.container):
                if not await self._client.exists():
                    with contextlib.suppress(ResourceExistsError):
                        await self._client.create_container()
        except BaseException:
            await self.close()
            raise

    async def close(self) -> None:
        service, self._service, self._client = self._service, None, None
        credential, self._credential = self._credential, None
        try:
            if service is not None:
                await service.close()
        finally:
            if credential is not None:
                await credential.close()

    def _blob(self, key: str) -> BlobClient:
        return self.client.get_blob_client(check_key(key))

    async def _put(self, key: str, data: bytes, content_type: str) -> BlobRef:
        blob = self._blob(key)
        with translated("write", key):
            await blob.upload_blob(
                data, overwrite=True, content_settings=ContentSettings(content_type=content_type)
            )
        return BlobRef(key=key, content_type=content_type, size=len(data))

    async def _get(self, key: str) -> bytes:
        blob = self._blob(key)
        with translated("read", key):
            download = await blob.download_blob()
            return await download.readall()

    def writer(self, key: str, content_type: str) -> BlobWriter:
        return _AzureBlobWriter(self._blob(key), key, content_type, self.block_size)

    def open(self, key: str, *, chunk_size: int = CHUNK_SIZE) -> BlobReader:
        return _AzureBlobReader(self._blob(key), key, chunk_size)

    async def exists(self, key: str) -> bool:
        blob = self._blob(key)
        with translated("look up", key):
            return await blob.exists()

    async def delete_prefix(self, prefix: str) -> int:
        folder = check_key(prefix) + "/"
        with translated("list", folder):
            names = [item.name async for item in self.client.list_blobs(name_starts_with=folder)]
        return await self._delete((name, None) for name in names)

    async def expire(self, older_than: dt.datetime) -> int:
        cutoff = check_cutoff(older_than)
        with translated("list", self.container):
            old = [
                (item.name, item.etag)
                async for item in self.client.list_blobs()
                if item.last_modified is not None and item.last_modified < cutoff
            ]
        return await self._delete(old)

    async def _delete(self, blobs: Iterable[tuple[str, str | None]]) -> int:
        """Delete each blob, unless its etag (when given) shows it was rewritten since it was listed."""
        limit = asyncio.Semaphore(_DELETES)

        async def delete(name: str, etag: str | None) -> bool:
            async with limit:
                with translated("delete", name):
                    try:
                        if etag is None:
                            await self.client.delete_blob(name)
                        else:
                            await self.client.delete_blob(
                                name, etag=etag, match_condition=MatchConditions.IfNotModified
                            )
                    except (ResourceNotFoundError, ResourceModifiedError):
                        return False
                    return True

        async with asyncio.TaskGroup() as group:
            tasks = [group.create_task(delete(name, etag)) for name, etag in blobs]
        return sum(task.result() for task in tasks)

    async def ping(self) -> bool:
        try:
            async with asyncio.timeout(_PING_SECONDS):
                await self.client.get_container_properties(retry_total=0)
        except (AzureError, TimeoutError, RuntimeError):
            return False
        return True


def _credential(kind: Credential) -> AsyncTokenCredential:
    from azure.identity import aio as identity

    match kind:
        case "managed_identity":
            return identity.ManagedIdentityCredential()
        case "workload_identity":
            return identity.WorkloadIdentityCredential()
        case "default":
            # A service has no person at its keyboard: only the environment's service principal,
            # workload identity and managed identity are tried, never a developer's sign-in.
            return identity.DefaultAzureCredential(
                exclude_cli_credential=True,
                exclude_developer_cli_credential=True,
                exclude_powershell_credential=True,
                exclude_visual_studio_code_credential=True,
                exclude_shared_token_cache_credential=True,
            )


class _AzureBlobWriter(BlobWriter):
    """Stages what it was given as one block once that reaches ``block_size``; commits on a clean exit.

    Writes are kept as they came, not copied into a buffer: a write of a block or more is
    staged as it is. A blob smaller than one block goes up in a single request at commit.
    Block ids are unique to the writer, so two writers of one key never commit each other's
    blocks: the first commit discards the other's staged blocks, whose own commit then
    fails, retryable, and the blob stays whole from the first.
    """

    def __init__(self, blob: BlobClient, key: str, content_type: str, block_size: int) -> None:
        super().__init__(key, content_type)
        self._blob = blob
        self._block_size = block_size
        self._prefix = secrets.token_hex(8)
        self._blocks: list[BlobBlock] = []
        self._pending: list[bytes] = []
        self._pending_size = 0

    async def _open(self) -> None:
        pass

    async def _write(self, data: bytes) -> None:
        self._pending.append(bytes(data))
        self._pending_size += len(data)
        if self._pending_size >= self._block_size:
            await self._stage(self._take_pending())

    def _take_pending(self) -> bytes:
        pending, self._pending, self._pending_size = self._pending, [], 0
        return pending[0] if len(pending) == 1 else b"".join(pending)

    async def _stage(self, data: bytes) -> None:
        block_id = f"{self._prefix}-{len(self._blocks):06d}"
        with translated("write", self.key):
            await self._blob.stage_block(block_id, data, length=len(data))
        self._blocks.append(BlobBlock(block_id))

    async def _commit(self) -> None:
        settings = ContentSettings(content_type=self.content_type)
        if not self._blocks:
            with translated("write", self.key):
                await self._blob.upload_blob(self._take_pending(), overwrite=True, content_settings=settings)
            return
        if self._pending:
            await self._stage(self._take_pending())
        try:
            await self._blob.commit_block_list(self._blocks, content_settings=settings)
        except HttpResponseError as exc:
            if error_code(exc) == "InvalidBlockList":
                raise BlobStoreError(
                    f"blob store: {self.key!r} was committed by another writer while this one wrote it",
                    retryable=True,
                ) from None
            raise blob_error("write", self.key, exc) from None
        except AzureError as exc:
            raise blob_error("write", self.key, exc) from None

    async def _discard(self) -> None:
        # Staged blocks cannot be deleted on their own; uncommitted, nobody reads them.
        self._pending, self._pending_size = [], 0
        self._blocks = []


class _AzureBlobReader(BlobReader):
    """Downloads ``_DOWNLOAD_SIZE`` at a time (every request pinned to the blob's etag); hands out chunks."""

    def __init__(self, blob: BlobClient, key: str, chunk_size: int) -> None:
        super().__init__(key, chunk_size)
        self._blob = blob
        self._chunks: AsyncIterator[bytes] | None = None
        self._buffer = bytearray()

    async def _open(self) -> None:
        with translated("read", self.key):
            download = await self._blob.download_blob()
        self._chunks = download.chunks()

    async def read_chunk(self) -> bytes:
        if self._chunks is None:
            raise RuntimeError(f"blob {self.key!r} is not open for reading")
        while len(self._buffer) < self.chunk_size:
            with translated("read", self.key):
                piece = await anext(self._chunks, b"")
            if not piece:
                break
            self._buffer += piece
        chunk = bytes(self._buffer[: self.chunk_size])
        del self._buffer[: self.chunk_size]
        return chunk

    async def close(self) -> None:
        self._chunks = None
        self._buffer = bytearray()
