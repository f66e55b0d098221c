"""The folder blob store."""

from __future__ import annotations

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
