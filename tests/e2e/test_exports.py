"""Exports end to end: a flow's query result written as a Parquet file by the query worker and
mailed as a link, in process and on RabbitMQ, the link serving the file from the history
service; a CSV export with its blobs on Azure Blob Storage (Azurite); a flow exporting what is
not an earlier query step is refused at save, naming the field."""

from __future__ import annotations

import asyncio
import datetime as dt
import email
import email.policy
import gzip
import io
import json
import re
from email.message import EmailMessage
from typing import Any

import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
from azure.kusto.data import KustoClient, KustoConnectionStringBuilder

from tests.e2e.conftest import System

QUERY = (
    "StormEvents | where DeathsDirect > 0 "
    "| project StartTime, EventId, State, DamageProperty, BeginLat, StormSummary, "
    "Lasted = EndTime - StartTime | order by EventId asc"
)


def export_flow(**export: Any) -> dict[str, Any]:
    return {
        "name": "deadly-export",
        "connection": "local",
        "database": "Samples",
        "steps": [
            {"id": "deadly", "action": "run_query", "query": QUERY},
            {"id": "export", "action": "export_to_file", "source": "deadly", **export},
            {
                "id": "mail",
                "action": "send_email",
                "to": ["team@example.com"],
                "subject": "Deadly storms",
                "body_html": (
                    "<p>{{ steps.export.row_count }} deadly storms, in {{ steps.export.file.name }}</p>"
                ),
            },
        ],
    }


def kusto_rows(kusto_url: str) -> list[dict[str, Any]]:
    client = KustoClient(KustoConnectionStringBuilder.with_no_authentication(kusto_url))
    try:
        return [row.to_dict() for row in client.execute("Samples", QUERY).primary_results[0].rows]
    finally:
        client.close()


async def mailed(system: System) -> EmailMessage:
    path = await system.smtp.wait_for_message(timeout=30)
    message = email.message_from_bytes(path.read_bytes(), policy=email.policy.default)
    assert isinstance(message, EmailMessage)
    return message


async def linked_file(system: System, message: EmailMessage, suffix: str) -> tuple[str, bytes, str]:
    """The one exported file *message* links to: its URL, its bytes as served, its content type."""
    html = message.get_body(preferencelist=("html",))
    assert html is not None
    body = str(html.get_content())
    [url] = re.findall(rf'href="([^"]+/v1/artifacts/[^"]+{re.escape(suffix)})"', body)
    assert url.startswith(f"{system.history_url}/v1/artifacts/runs/")
    async with system.session.get(url) as response:
        assert response.status == 200
        return url, await response.read(), response.content_type


@pytest.mark.parametrize("system", ["in_process", "rabbitmq"], indirect=True)
async def test_a_parquet_export_is_mailed_as_a_link_that_serves_the_query_rows(system: System) -> None:
    await system.save_flow(export_flow(format="parquet", compression="zstd", row_group_rows=40))
    want = await asyncio.to_thread(kusto_rows, system.kusto_url)
    assert len(want) > 40, "the sample data has deadly storms for more than one row group"

    run = await system.finished((await system.start_flow("deadly-export"))["run_id"])
    message = await mailed(system)

    assert run["status"] == "succeeded", run
    url, data, content_type = await linked_file(system, message, ".parquet")
    assert content_type == "application/vnd.apache.parquet"
    assert list(message.iter_attachments()) == [], "the file is linked, not attached"
    html = message.get_body(preferencelist=("html",))
    assert html is not None
    assert f"{len(want)} deadly storms, in deadly-export-export-" in str(html.get_content())

    file = pq.ParquetFile(io.BytesIO(data))
    assert file.metadata.num_row_groups == -(-len(want) // 40)
    assert file.metadata.row_group(0).column(0).compression == "ZSTD"
    got = file.read().to_pylist()
    assert [row["EventId"] for row in got] == [row["EventId"] for row in want]
    for read, sent in zip(got, want, strict=True):
        assert read["StartTime"] == sent["StartTime"].astimezone(dt.UTC)
        assert (read["State"], read["DamageProperty"], read["BeginLat"]) == (
            sent["State"],
            sent["DamageProperty"],
            sent["BeginLat"],
        )
        assert json.loads(read["StormSummary"]) == sent["StormSummary"]
        assert read["Lasted"] == sent["Lasted"] // dt.timedelta(microseconds=1) * 10, "100 ns ticks"

    [step] = [step for step in run["steps"] if step["step_id"] == "export"]
    detail = step["detail"]
    assert (detail["format"], detail["compression"], detail["rows"]) == ("parquet", "zstd", len(want))
    assert detail["bytes"] == len(data)
    assert detail["file"]["url"] == url
    assert url.endswith(detail["file"]["key"])


@pytest.mark.azurite
@pytest.mark.blob_backend("azure")
@pytest.mark.parametrize("system", ["in_process"], indirect=True)
async def test_a_gzipped_csv_export_lives_in_azure_blob_storage(system: System) -> None:
    await system.save_flow(export_flow(format="csv", compression="gzip", name="deadly {{ run.flow }}"))
    want = await asyncio.to_thread(kusto_rows, system.kusto_url)

    run = await system.finished((await system.start_flow("deadly-export"))["run_id"])
    message = await mailed(system)

    assert run["status"] == "succeeded", run
    url, data, content_type = await linked_file(system, message, ".csv.gz")
    assert url.endswith(f"/runs/{run['run_id']}/export/1/deadly_deadly-export.csv.gz")
    assert content_type == "application/gzip"
    table = pacsv.read_csv(io.BytesIO(gzip.decompress(data)))
    assert table.column_names == list(want[0])
    assert table.column("EventId").to_pylist() == [row["EventId"] for row in want]
    assert table.column("State").to_pylist() == [row["State"] for row in want]


@pytest.mark.parametrize("system", ["in_process"], indirect=True)
async def test_an_export_of_what_is_not_an_earlier_query_step_is_refused_at_save(system: System) -> None:
    document = export_flow(format="parquet")
    document["steps"][1]["source"] = "mail"

    async with system.session.put(f"{system.trigger_url}/v1/flows/deadly-export", json=document) as response:
        body = await response.json()

    assert response.status == 400, body
    fields = {problem["field"]: problem["message"] for problem in body["error"]["fields"]}
    assert any(
        name.startswith("steps[1].source") and "'mail'" in message for name, message in fields.items()
    ), fields
