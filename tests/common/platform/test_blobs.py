"""The blob store: the same behaviour from the folder store and from Azure Blob Storage (on Azurite)."""

from __future__ import annotations

import asyncio
import datetime as dt
import os
from pathlib import Path

import pytest
from pydantic import SecretStr

from common.contracts.errors import ArtifactMissing, BlobStoreError, ConfigurationError
from common.contracts.messages import utcnow
from common.platform.blobs.azure import AzureBlobStore
from common.platform.blobs.folder import FolderBlobStore
from common.platform.blobs.interface import artifact_key
from common.platform.config import Settings, load_settings
from common.platform.runtime import Runtime
from tests.blob_backends import TEST_BLOCK_SIZE, Backend
from tests.conftest import Azurite, Waiter


async def test_a_blob_round_trips_and_is_overwritten_in_place(blobs: Backend) -> None:
    store = blobs.store
    key = artifact_key("run1", "query", 1, "result.json")

    ref = await store.put(key, b'{"rows": []}', "application/json")
    assert ref.size == 12
    assert await store.get(key) == b'{"rows": []}'
    await store.put(key, b"{}", "application/json")
    assert await store.get(key) == b"{}"
    assert await blobs.stored() == [key]


async def test_a_missing_blob_is_an_artifact_error(blobs: Backend) -> None:
    store = blobs.store
    assert await store.exists("runs/x/y/1/z.png") is False
    with pytest.raises(ArtifactMissing, match=r"runs/x/y/1/z\.png"):
        await store.get("runs/x/y/1/z.png")


async def test_missing_names_the_keys_without_a_blob_in_order(blobs: Backend) -> None:
    store = blobs.store
    keys = [artifact_key("run1", "query", 1, name) for name in ("a.json", "b.png", "c.csv", "d.txt")]
    for key in keys[1::2]:
        await store.put(key, b"x", "text/plain")

    assert await store.missing(keys) == [keys[0], keys[2]]
    assert await store.missing(keys[1::2]) == []
    assert await store.missing([]) == []
    with pytest.raises(ValueError, match="invalid blob key"):
        await store.missing(["runs/../../x"])


@pytest.mark.parametrize("key", ["../etc/passwd", "/abs/path", "runs/../../x", "runs//x", "runs/a b"])
async def test_keys_cannot_leave_the_folder(blobs: Backend, key: str) -> None:
    with pytest.raises(ValueError, match="invalid blob key"):
        await blobs.store.put(key, b"x", "text/plain")
    with pytest.raises(ValueError, match="invalid blob key"):
        await blobs.store.delete_prefix(key)


class Boom(Exception):
    pass


async def test_a_streamed_blob_appears_whole_on_a_clean_exit(blobs: Backend) -> None:
    store = blobs.store
    key = artifact_key("run1", "render", 1, "result.csv")
    parts = [b"a" * 10, b"b" * 300_000, b"c", b"d" * 70_000, b"", b"e" * 5]

    async with store.writer(key, "text/csv") as blob:
        for part in parts:
            await blob.write(part)
            assert not await store.exists(key)
        with pytest.raises(RuntimeError, match="exits cleanly"):
            _ = blob.ref

    assert blob.ref.model_dump() == {"key": key, "content_type": "text/csv", "size": sum(map(len, parts))}
    assert await store.get(key) == b"".join(parts)
    assert await blobs.stored() == [key]
    with pytest.raises(RuntimeError, match="closed"):
        await blob.write(b"late")


async def test_a_blob_of_many_blocks_streams_in_and_out_whole(blobs: Backend) -> None:
    data = os.urandom(5 * TEST_BLOCK_SIZE + 12_345)

    async with blobs.store.writer("runs/r/render/1/big.bin", "application/octet-stream") as blob:
        for start in range(0, len(data), 100_000):
            await blob.write(data[start : start + 100_000])
    async with blobs.store.open("runs/r/render/1/big.bin", chunk_size=300_000) as reader:
        chunks = [chunk async for chunk in reader]

    assert blob.ref.size == len(data)
    assert b"".join(chunks) == data
    assert {len(chunk) for chunk in chunks[:-1]} == {300_000}


async def test_an_empty_streamed_blob_is_stored(blobs: Backend) -> None:
    store = blobs.store

    async with store.writer("a/empty.txt", "text/plain") as blob:
        pass

    assert blob.ref.size == 0
    assert await store.get("a/empty.txt") == b""


async def test_an_exception_leaves_nothing_behind_and_keeps_the_earlier_blob(blobs: Backend) -> None:
    store = blobs.store
    key = "runs/r/render/1/result.csv"
    await store.put(key, b"earlier", "text/csv")

    blob = store.writer(key, "text/csv")

    async def write_then_fail() -> None:
        async with blob:
            await blob.write(b"x" * 600_000)
            await blob.write(b"y" * 10)
            assert await blobs.writing(key)
            raise Boom

    with pytest.raises(Boom):
        await write_then_fail()

    assert await blobs.stored() == [key]
    assert await store.get(key) == b"earlier"
    with pytest.raises(RuntimeError, match="exits cleanly"):
        _ = blob.ref


async def test_a_cancelled_writer_leaves_nothing_behind(blobs: Backend) -> None:
    store = blobs.store
    key = "runs/r/render/1/result.csv"
    written = asyncio.Event()

    async def write_forever() -> None:
        async with store.writer(key, "text/csv") as blob:
            await blob.write(b"x" * 600_000)
            written.set()
            await asyncio.Event().wait()

    task = asyncio.create_task(write_forever())
    async with asyncio.timeout(10):
        await written.wait()
    assert await blobs.writing(key)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task

    assert await blobs.stored() == []
    assert not await store.exists(key)


async def test_two_writers_of_one_key_never_mix(blobs: Backend) -> None:
    store = blobs.store
    key = "runs/r/render/1/result.csv"

    first = await store.writer(key, "text/csv").__aenter__()
    async with store.writer(key, "text/csv") as second:
        await first.write(b"1" * 300_000)
        await second.write(b"2" * 300_000)
        await first.write(b"1" * 10)
    committed = [b"2" * 300_000]
    refused: BlobStoreError | None = None
    try:
        await first.__aexit__(None, None, None)
    except BlobStoreError as exc:
        refused = exc
    if refused is None:
        committed.append(b"1" * 300_010)
    else:
        # Azure: the first commit of a key discards the blocks another writer staged, so that
        # writer fails, retryable, and the blob stays whole from the first.
        assert refused.retryable
        assert "another writer" in refused.message

    # The last writer to commit wins, whole; the inner block (second) committed first.
    assert await store.get(key) == committed[-1]
    assert await blobs.stored() == [key]


async def test_a_blob_streams_out_in_chunks(blobs: Backend) -> None:
    store = blobs.store
    data = bytes(range(256)) * 1000
    await store.put("a/b.bin", data, "application/octet-stream")

    async with store.open("a/b.bin", chunk_size=10_000) as blob:
        chunks = [chunk async for chunk in blob]

    assert b"".join(chunks) == data
    assert {len(chunk) for chunk in chunks[:-1]} == {10_000}
    with pytest.raises(RuntimeError, match="not open"):
        await blob.read_chunk()


async def test_streaming_a_missing_blob_is_an_artifact_error(blobs: Backend) -> None:
    with pytest.raises(ArtifactMissing, match=r"runs/x/y/1/z\.csv"):
        async with blobs.store.open("runs/x/y/1/z.csv"):
            pass


@pytest.mark.parametrize("key", ["../etc/passwd", "runs/../../x", "runs/a b"])
async def test_streamed_keys_cannot_leave_the_folder(blobs: Backend, key: str) -> None:
    with pytest.raises(ValueError, match="invalid blob key"):
        blobs.store.writer(key, "text/plain")
    with pytest.raises(ValueError, match="invalid blob key"):
        blobs.store.open(key)


async def test_delete_prefix_takes_one_folder_and_only_it(blobs: Backend) -> None:
    store = blobs.store
    for name in ("a/1.json", "a/chart.png", "b/1.json"):
        await store.put(f"runs/r1/{name}", b"x", "application/octet-stream")
    await store.put("runs/r10/a/1.json", b"x", "application/json")

    deleted = await asyncio.gather(store.delete_prefix("runs/r1"), store.delete_prefix("runs/r1"))

    assert sum(deleted) == 3
    assert await blobs.stored() == ["runs/r10/a/1.json"]
    assert await store.delete_prefix("runs/r1") == 0


async def test_expire_takes_blobs_written_before_the_cutoff(blobs: Backend, wait_until: Waiter) -> None:
    store = blobs.store
    await store.put("runs/old/query/1/result.json", b"{}", "application/json")
    async with store.writer("runs/old/render/1/result.csv", "text/csv") as blob:
        await blob.write(b"x" * 300_000)
    # Azure keeps last-modified times to the second: the new blob goes in a later second.
    old = max([await blobs.modified("runs/old/query/1/result.json"), await blobs.modified(blob.key)])
    cutoff = old.replace(microsecond=0) + dt.timedelta(seconds=1)
    await wait_until(lambda: _after(cutoff + dt.timedelta(milliseconds=50)), what="the next second")
    await store.put("runs/new/query/1/result.json", b"{}", "application/json")

    assert await store.expire(old - dt.timedelta(hours=1)) == 0
    assert await store.expire(cutoff) == 2

    assert await blobs.stored() == ["runs/new/query/1/result.json"]
    assert await store.expire(cutoff) == 0
    with pytest.raises(ValueError, match="timezone-aware"):
        await store.expire(dt.datetime(2026, 1, 1))


async def _after(moment: dt.datetime) -> bool:
    return utcnow() >= moment


async def test_expire_on_a_folder_takes_temp_files_and_emptied_folders(tmp_path: Path) -> None:
    store = FolderBlobStore(tmp_path / "blobs")
    await store.put("runs/old/render/1/chart.png", b"png", "image/png")
    await store.put("runs/kept/render/1/chart.png", b"png", "image/png")
    leftover = tmp_path / "blobs/runs/kept/render/1/.result.csv.1.abcd.tmp"
    leftover.write_bytes(b"half")
    month_ago = (utcnow() - dt.timedelta(days=30)).timestamp()
    for path in (tmp_path / "blobs/runs/old/render/1/chart.png", leftover):
        os.utime(path, (month_ago, month_ago))

    assert await store.expire(utcnow() - dt.timedelta(days=28)) == 2

    assert sorted(p.relative_to(tmp_path / "blobs").as_posix() for p in (tmp_path / "blobs").rglob("*")) == [
        "runs",
        "runs/kept",
        "runs/kept/render",
        "runs/kept/render/1",
        "runs/kept/render/1/chart.png",
    ]


async def test_a_blob_store_is_ready_after_start_and_closes_twice(blobs: Backend) -> None:
    assert await blobs.store.ping()
    await blobs.store.start()
    await blobs.store.put("a/b.txt", b"x", "text/plain")
    await blobs.store.close()
    await blobs.store.close()
    await blobs.store.start()
    assert await blobs.store.get("a/b.txt") == b"x"


@pytest.mark.azurite
async def test_start_creates_the_container_and_the_runtime_closes_the_store(azurite: Azurite) -> None:
    settings = load_settings(
        blob_backend="azure",
        azure_storage_connection_string=azurite.connection_string,
        azure_storage_container=f"t{os.urandom(8).hex()}",
    )
    runtime = Runtime.build(settings, name="test")
    store = runtime.blobs
    assert isinstance(store, AzureBlobStore)
    assert azurite.connection_string not in repr(store)
    assert "AccountKey" not in repr(store)

    async with runtime:
        try:
            assert await runtime.checks()["blob_store"]()
            await store.put("runs/r/query/1/result.json", b"{}", "application/json")
        finally:
            await store.client.delete_container()
        assert not await runtime.checks()["blob_store"]()
        with pytest.raises(BlobStoreError, match=r"HTTP 404 ContainerNotFound") as raised:
            await store.put("runs/r/query/1/result.json", b"{}", "application/json")
        assert not raised.value.retryable

    assert not await store.ping()
    with pytest.raises(RuntimeError, match="not started"):
        await store.exists("runs/r/query/1/result.json")


async def test_an_unreachable_account_is_a_retryable_error() -> None:
    # Port 9 (discard) on loopback: nothing listens, so the connection is refused at once.
    connection_string = (
        "DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey=a2V5;"
        "BlobEndpoint=http://127.0.0.1:9/devstoreaccount1;"
    )
    store = AzureBlobStore("adxflow", connection_string=SecretStr(connection_string), retries=0)

    with pytest.raises(BlobStoreError, match=r"could not open container 'adxflow'.*127\.0\.0\.1:9") as raised:
        await store.start()

    assert raised.value.retryable
    assert "a2V5" not in raised.value.message
    assert not await store.ping()


@pytest.mark.parametrize(
    ("environment", "message"),
    [
        (
            {"blob_backend": "azure"},
            "ADXFLOW_AZURE_STORAGE_CONNECTION_STRING or ADXFLOW_AZURE_STORAGE_ACCOUNT_URL",
        ),
        (
            {"blob_backend": "azure", "azure_storage_account_url": "http://acct.blob.core.windows.net"},
            "ADXFLOW_AZURE_STORAGE_ACCOUNT_URL='http://acct.blob.core.windows.net': must be https://",
        ),
        ({"azure_storage_container": "Reports_2026"}, "ADXFLOW_AZURE_STORAGE_CONTAINER='Reports_2026'"),
        ({"azure_storage_credential": "az_cli"}, "ADXFLOW_AZURE_STORAGE_CREDENTIAL='az_cli'"),
        ({"blob_backend": "s3"}, "ADXFLOW_BLOB_BACKEND='s3'"),
    ],
)
def test_a_bad_azure_setting_names_its_variable(environment: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigurationError) as raised:
        Runtime.build(load_settings(**environment), name="test")
    assert message in raised.value.message


@pytest.mark.parametrize("credential", ["default", "managed_identity", "workload_identity"])
def test_an_account_url_uses_the_configured_identity(credential: str) -> None:
    settings = Settings(
        blob_backend="azure",
        azure_storage_account_url="https://acct.blob.core.windows.net",
        azure_storage_credential=credential,
        azure_storage_connection_string=None,
    )

    store = Runtime.build(settings, name="test").blobs

    assert repr(store) == f"AzureBlobStore(container='adxflow', auth={credential!r})"


async def test_workload_identity_without_its_environment_names_the_setting(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in ("AZURE_CLIENT_ID", "AZURE_TENANT_ID", "AZURE_FEDERATED_TOKEN_FILE"):
        monkeypatch.delenv(name, raising=False)
    store = AzureBlobStore(
        "adxflow", account_url="https://acct.blob.core.windows.net", credential="workload_identity"
    )

    with pytest.raises(ConfigurationError, match=r"ADXFLOW_AZURE_STORAGE_CREDENTIAL='workload_identity'"):
        await store.start()
    assert not await store.ping()
