"""A report end to end with the blob store on Azure Blob Storage (Azurite): every service
writes and reads its artifacts there, and nothing lands in the local data folder."""

from __future__ import annotations

from pathlib import Path

import pytest
from azure.storage.blob.aio import BlobServiceClient

from tests.conftest import Azurite
from tests.e2e.conftest import System
from tests.e2e.test_report_job import PIE_JOB, parse


@pytest.mark.azurite
@pytest.mark.blob_backend("azure")
async def test_a_report_runs_with_its_blobs_in_azure(
    system: System, azurite: Azurite, namespace: str, tmp_path: Path
) -> None:
    accepted = await system.submit(PIE_JOB)
    run = await system.finished(accepted["run_id"])

    assert run["status"] == "succeeded", run
    message = parse(await system.smtp.wait_for_message(timeout=30))
    assert any((part.get_filename() or "").endswith(".csv") for part in message.iter_attachments())

    async with BlobServiceClient.from_connection_string(azurite.connection_string) as service:
        container = service.get_container_client(namespace)
        stored = {item.name: item async for item in container.list_blobs()}
    prefix = f"runs/{run['run_id']}/"
    names = {name.removeprefix(prefix) for name in stored}
    assert all(name.startswith(prefix) for name in stored)
    assert {
        "run.json",
        "query/1/result.json",
        "query.render/1/chart.png",
        "query.render/1/result.csv",
        "notify/kept/once.eml",
    } <= names
    csv = stored[f"{prefix}query.render/1/result.csv"]
    assert csv.content_settings.content_type == "text/csv; charset=utf-8"
    assert not (tmp_path / "adxflow" / "blobs").exists()

    # History serves an artifact back out of the container.
    chart = await system.session.get(f"{system.history_url}/v1/artifacts/{prefix}query.render/1/chart.png")
    async with chart:
        assert chart.status == 200
        assert (await chart.read()).startswith(b"\x89PNG")
