"""The folder blob store."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from common.blobs import FolderBlobStore, artifact_key
from common.errors import ArtifactMissing


async def test_a_blob_round_trips_and_is_overwritten_in_place(tmp_path: Path) -> None:
    store = FolderBlobStore(tmp_path / "blobs")
    await store.ensure()
    key = artifact_key("run1", "query", 1, "result.json")

    ref = await store.put(key, b'{"rows": []}', "application/json")
    assert ref.size == 12
    assert await store.get(key) == b'{"rows": []}'
    await store.put(key, b"{}", "application/json")
    assert await store.get(key) == b"{}"
    assert sorted(p.name for p in (tmp_path / "blobs/runs/run1/query/1").iterdir()) == ["result.json"]


async def test_a_missing_blob_is_an_artifact_error(tmp_path: Path) -> None:
    store = FolderBlobStore(tmp_path)
    assert await store.exists("runs/x/y/1/z.png") is False
    with pytest.raises(ArtifactMissing, match=r"runs/x/y/1/z\.png"):
        await store.get("runs/x/y/1/z.png")


@pytest.mark.parametrize("key", ["../etc/passwd", "/abs/path", "runs/../../x", "runs//x", "runs/a b"])
async def test_keys_cannot_leave_the_folder(tmp_path: Path, key: str) -> None:
    store = FolderBlobStore(tmp_path / "blobs")
    with pytest.raises(ValueError, match="invalid blob key"):
        await store.put(key, b"x", "text/plain")


def files_under(root: Path) -> list[str]:
    return sorted(str(path.relative_to(root)) for path in root.rglob("*") if path.is_file())


class Boom(Exception):
    pass


async def test_a_streamed_blob_appears_whole_on_a_clean_exit(tmp_path: Path) -> None:
    store = FolderBlobStore(tmp_path)
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
    assert files_under(tmp_path) == [key]
    with pytest.raises(RuntimeError, match="closed"):
        await blob.write(b"late")


async def test_an_empty_streamed_blob_is_stored(tmp_path: Path) -> None:
    store = FolderBlobStore(tmp_path)

    async with store.writer("a/empty.txt", "text/plain") as blob:
        pass

    assert blob.ref.size == 0
    assert await store.get("a/empty.txt") == b""


async def test_an_exception_leaves_nothing_behind_and_keeps_the_earlier_blob(tmp_path: Path) -> None:
    store = FolderBlobStore(tmp_path)
    key = "runs/r/render/1/result.csv"
    await store.put(key, b"earlier", "text/csv")

    blob = store.writer(key, "text/csv")

    async def write_then_fail() -> None:
        async with blob:
            await blob.write(b"x" * 600_000)
            await blob.write(b"y" * 10)
            raise Boom

    with pytest.raises(Boom):
        await write_then_fail()

    assert files_under(tmp_path) == [key]
    assert await store.get(key) == b"earlier"
    with pytest.raises(RuntimeError, match="exits cleanly"):
        _ = blob.ref


async def test_a_cancelled_writer_leaves_nothing_behind(tmp_path: Path) -> None:
    store = FolderBlobStore(tmp_path)
    written = asyncio.Event()

    async def write_forever() -> None:
        async with store.writer("runs/r/render/1/result.csv", "text/csv") as blob:
            await blob.write(b"x" * 600_000)
            written.set()
            await asyncio.Event().wait()

    task = asyncio.create_task(write_forever())
    async with asyncio.timeout(10):
        await written.wait()
    assert [name for name in files_under(tmp_path) if name.endswith(".tmp")]
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task

    assert files_under(tmp_path) == []


async def test_two_writers_of_one_key_do_not_mix(tmp_path: Path) -> None:
    store = FolderBlobStore(tmp_path)
    key = "runs/r/render/1/result.csv"

    async with store.writer(key, "text/csv") as first, store.writer(key, "text/csv") as second:
        await first.write(b"1" * 300_000)
        await second.write(b"2" * 300_000)
        await first.write(b"1" * 10)

    # The last writer to finish wins, whole; the inner block (second) finished first.
    assert await store.get(key) == b"1" * 300_010
    assert files_under(tmp_path) == [key]


async def test_a_blob_streams_out_in_chunks(tmp_path: Path) -> None:
    store = FolderBlobStore(tmp_path)
    data = bytes(range(256)) * 1000
    await store.put("a/b.bin", data, "application/octet-stream")

    async with store.open("a/b.bin", chunk_size=10_000) as blob:
        chunks = [chunk async for chunk in blob]

    assert b"".join(chunks) == data
    assert {len(chunk) for chunk in chunks[:-1]} == {10_000}
    with pytest.raises(RuntimeError, match="not open"):
        await blob.read_chunk()


async def test_streaming_a_missing_blob_is_an_artifact_error(tmp_path: Path) -> None:
    store = FolderBlobStore(tmp_path)

    with pytest.raises(ArtifactMissing, match=r"runs/x/y/1/z\.csv"):
        async with store.open("runs/x/y/1/z.csv"):
            pass


@pytest.mark.parametrize("key", ["../etc/passwd", "runs/../../x", "runs/a b"])
def test_streamed_keys_cannot_leave_the_folder(tmp_path: Path, key: str) -> None:
    store = FolderBlobStore(tmp_path)
    with pytest.raises(ValueError, match="invalid blob key"):
        store.writer(key, "text/plain")
    with pytest.raises(ValueError, match="invalid blob key"):
        store.open(key)
