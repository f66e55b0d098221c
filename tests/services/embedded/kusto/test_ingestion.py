"""Streaming ingestion and ingest-by tags on the local Kusto endpoint, driven by the real
azure-kusto-ingest clients and read back with azure-kusto-data."""

from __future__ import annotations

import datetime as dt
import gzip
import io
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import duckdb
import pytest
from azure.kusto.data import DataFormat, KustoClient, KustoConnectionStringBuilder
from azure.kusto.data.aio import KustoClient as AioKustoClient
from azure.kusto.data.exceptions import KustoApiError, KustoServiceError
from azure.kusto.ingest import (
    FileDescriptor,
    IngestionProperties,
    KustoStreamingIngestClient,
    ManagedStreamingIngestClient,
    StreamDescriptor,
)

from services.embedded.kusto.database import write_database
from services.embedded.kusto.endpoint import LocalKusto
from tests.conftest import poll_until

SCHEMA = "At:datetime, Name:string, Count:long, Details:dynamic"
UTC = dt.UTC


@pytest.fixture(scope="module")
def kusto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalKusto]:
    path = write_database(tmp_path_factory.mktemp("local_kusto_ingestion") / "Landing.duckdb", count=50)
    with LocalKusto(path, writable=True) as endpoint:
        yield endpoint


@pytest.fixture(scope="module")
def kcsb(kusto: LocalKusto) -> KustoConnectionStringBuilder:
    return KustoConnectionStringBuilder.with_no_authentication(kusto.url)


@pytest.fixture
def client(kcsb: KustoConnectionStringBuilder) -> Iterator[KustoClient]:
    with KustoClient(kcsb) as kusto_client:
        yield kusto_client


@pytest.fixture
def streaming(kcsb: KustoConnectionStringBuilder) -> Iterator[KustoStreamingIngestClient]:
    with KustoStreamingIngestClient(kcsb) as ingest_client:
        yield ingest_client


@pytest.fixture
def table(client: KustoClient, kusto: LocalKusto) -> str:
    """A table of its own for each test, created empty as a caller would before ingesting."""
    name = f"Events_{uuid.uuid4().hex[:12]}"
    client.execute_mgmt(kusto.database, f".set {name} <| datatable({SCHEMA}) []")
    return name


def rows(client: KustoClient, kusto: LocalKusto, query: str) -> list[list[Any]]:
    """The query's rows as azure-kusto-data parses them (datetimes, dynamic values)."""
    return [row.to_list() for row in client.execute(kusto.database, query).primary_results[0]]


def mgmt(client: KustoClient, kusto: LocalKusto, command: str) -> list[list[Any]]:
    return [list(row) for row in client.execute_mgmt(kusto.database, command).primary_results[0].raw_rows]


def properties(kusto: LocalKusto, table: str, data_format: DataFormat) -> IngestionProperties:
    return IngestionProperties(kusto.database, table, data_format=data_format)


def test_streaming_csv_maps_fields_by_position(
    streaming: KustoStreamingIngestClient, client: KustoClient, kusto: LocalKusto, table: str
) -> None:
    data = (
        '2024-05-01T10:00:00Z,"comma, and ""quotes""",1,"{""k"": [1, 2]}"\n'
        "2024-05-02T11:30:00.250Z,,2,\n"
        "2024-05-03T00:00:00Z,unicode \u00e9\u4e2d,3,{}\n"
    ).encode()
    streaming.ingest_from_stream(io.BytesIO(data), properties(kusto, table, DataFormat.CSV))

    assert rows(client, kusto, f"{table} | order by Count asc") == [
        [dt.datetime(2024, 5, 1, 10, tzinfo=UTC), 'comma, and "quotes"', 1, {"k": [1, 2]}],
        # An empty string field is an empty string, as in Kusto; empty fields of other types are null.
        [dt.datetime(2024, 5, 2, 11, 30, 0, 250_000, tzinfo=UTC), "", 2, None],
        [dt.datetime(2024, 5, 3, tzinfo=UTC), "unicode \u00e9\u4e2d", 3, {}],
    ]


def test_streaming_json_maps_fields_by_name(
    streaming: KustoStreamingIngestClient, client: KustoClient, kusto: LocalKusto, table: str
) -> None:
    data = (
        b'{"Count": 1, "Name": "first", "At": "2024-05-01T10:00:00Z", "Details": {"a": 1}, "Extra": true}\n'
        b'{"Name": "second", "Count": 2}\n'
    )
    streaming.ingest_from_stream(io.BytesIO(data), properties(kusto, table, DataFormat.JSON))

    assert rows(client, kusto, f"{table} | order by Count asc | project Name, Count, At, Details") == [
        ["first", 1, dt.datetime(2024, 5, 1, 10, tzinfo=UTC), {"a": 1}],
        ["second", 2, None, None],
    ]


def test_timespans_are_read_as_kusto_writes_them_in_csv_and_json(
    streaming: KustoStreamingIngestClient, client: KustoClient, kusto: LocalKusto
) -> None:
    table = f"Spans_{uuid.uuid4().hex[:12]}"
    client.execute_mgmt(kusto.database, f".set {table} <| datatable(Id:long, Took:timespan) []")
    csv_data = b"1,1.02:03:04.5000000\n2,-00:00:01\n3,\n4,00:10\n5,00:00:00.0000001\n"
    streaming.ingest_from_stream(io.BytesIO(csv_data), properties(kusto, table, DataFormat.CSV))
    json_data = b'{"Id": 6, "Took": "-3.00:00:00.25"}\n'
    streaming.ingest_from_stream(io.BytesIO(json_data), properties(kusto, table, DataFormat.JSON))

    assert rows(client, kusto, f"{table} | order by Id asc") == [
        [1, dt.timedelta(days=1, hours=2, minutes=3, seconds=4.5)],
        [2, dt.timedelta(seconds=-1)],
        [3, None],
        [4, dt.timedelta(minutes=10)],
        # DuckDB keeps microseconds: a lone tick is below them.
        [5, dt.timedelta(0)],
        [6, -dt.timedelta(days=3, milliseconds=250)],
    ]
    with pytest.raises(KustoServiceError, match="timespan value 1 hour is not"):
        streaming.ingest_from_stream(io.BytesIO(b"7,1 hour\n"), properties(kusto, table, DataFormat.CSV))


def test_a_table_without_string_columns_takes_csv_and_quoted_line_breaks_are_read(
    streaming: KustoStreamingIngestClient, client: KustoClient, kusto: LocalKusto, table: str
) -> None:
    numbers = f"Numbers_{uuid.uuid4().hex[:12]}"
    client.execute_mgmt(kusto.database, f".set {numbers} <| datatable(A:long, B:real) []")
    streaming.ingest_from_stream(io.BytesIO(b"1,0.5\n2,\n"), properties(kusto, numbers, DataFormat.CSV))
    data = b'2024-05-01T10:00:00Z,"two\nlines",1,\n2024-05-01T10:00:00Z,short\n'
    streaming.ingest_from_stream(io.BytesIO(data), properties(kusto, table, DataFormat.CSV))

    assert rows(client, kusto, f"{numbers} | order by A asc") == [[1, 0.5], [2, None]]
    assert rows(client, kusto, f"{table} | order by Name asc | project Name, Count") == [
        ["short", None],
        ["two\nlines", 1],
    ]


def test_managed_client_streams_a_multijson_array(
    kcsb: KustoConnectionStringBuilder, client: KustoClient, kusto: LocalKusto, table: str
) -> None:
    data = b'[\n  {"Name": "a", "Count": 1},\n  {"Name": "b", "Count": 2}\n]'
    with ManagedStreamingIngestClient(kcsb) as managed:
        managed.ingest_from_stream(io.BytesIO(data), properties(kusto, table, DataFormat.MULTIJSON))

    assert rows(client, kusto, f"{table} | order by Count asc | project Name, Count") == [["a", 1], ["b", 2]]


def test_compressed_files_and_parquet_are_read_whatever_the_encoding_header_says(
    streaming: KustoStreamingIngestClient, client: KustoClient, kusto: LocalKusto, table: str, tmp_path: Path
) -> None:
    # A .gz file goes out as it is; the client compresses nothing twice.
    compressed = tmp_path / "rows.csv.gz"
    compressed.write_bytes(gzip.compress(b"2024-05-01T00:00:00Z,gzipped file,1,\n"))
    streaming.ingest_from_file(FileDescriptor(str(compressed)), properties(kusto, table, DataFormat.CSV))
    # A stream the caller says is compressed is sent without the client's own gzip.
    stream = io.BytesIO(gzip.compress(b"2024-05-02T00:00:00Z,gzipped stream,2,\n"))
    streaming.ingest_from_stream(
        StreamDescriptor(stream, is_compressed=True), properties(kusto, table, DataFormat.CSV)
    )
    # Parquet is not compressible to the client, which still sends Content-Encoding: gzip.
    parquet = tmp_path / "rows.parquet"
    with duckdb.connect() as con:
        con.execute(
            "COPY (SELECT 3::BIGINT AS Count, 'parquet' AS Name, TIMESTAMP '2024-05-03' AS At) "
            f"TO '{parquet}'"
        )
    streaming.ingest_from_file(FileDescriptor(str(parquet)), properties(kusto, table, DataFormat.PARQUET))

    assert rows(client, kusto, f"{table} | order by Count asc | project Name, Count, At") == [
        ["gzipped file", 1, dt.datetime(2024, 5, 1, tzinfo=UTC)],
        ["gzipped stream", 2, dt.datetime(2024, 5, 2, tzinfo=UTC)],
        ["parquet", 3, dt.datetime(2024, 5, 3, tzinfo=UTC)],
    ]


@pytest.mark.parametrize("client_class", [KustoStreamingIngestClient, ManagedStreamingIngestClient])
def test_missing_table_is_refused_naming_it(
    kcsb: KustoConnectionStringBuilder, kusto: LocalKusto, client_class: type[KustoStreamingIngestClient]
) -> None:
    missing = f"Missing_{uuid.uuid4().hex[:8]}"
    with client_class(kcsb) as ingest_client, pytest.raises(KustoApiError) as refused:
        ingest_client.ingest_from_stream(io.BytesIO(b"1\n"), properties(kusto, missing, DataFormat.CSV))

    error = refused.value.get_api_error()
    assert error.code == "BadRequest_EntityNotFound"
    assert error.description == f"Entity ID '{missing}' of kind 'Table' was not found."
    # Permanent: the managed client neither retried it nor fell back to queued ingestion.
    assert error.permanent
    assert refused.value.http_response is not None
    assert refused.value.http_response.status_code == 400


def test_malformed_row_leaves_the_table_as_it_was(
    streaming: KustoStreamingIngestClient, client: KustoClient, kusto: LocalKusto, table: str
) -> None:
    streaming.ingest_from_stream(
        io.BytesIO(b"2024-05-01,kept,1,\n"), properties(kusto, table, DataFormat.CSV)
    )
    with pytest.raises(KustoApiError) as refused:
        streaming.ingest_from_stream(
            io.BytesIO(b"2024-05-02,fine,2,\n2024-05-03,bad,not a number,\n"),
            properties(kusto, table, DataFormat.CSV),
        )

    assert "not a number" in str(refused.value)
    assert rows(client, kusto, f"{table} | project Name") == [["kept"]]


@pytest.mark.parametrize(
    ("ingestion", "reason"),
    [
        ({"data_format": DataFormat.AVRO}, "streamFormat 'avro' is not served here"),
        (
            {"data_format": DataFormat.JSON, "ingestion_mapping_reference": "EventsMapping"},
            "ingestion mapping 'EventsMapping' cannot be used",
        ),
    ],
)
def test_what_is_not_served_is_refused_by_name(
    streaming: KustoStreamingIngestClient,
    client: KustoClient,
    kusto: LocalKusto,
    table: str,
    ingestion: dict[str, Any],
    reason: str,
) -> None:
    with pytest.raises(KustoApiError) as refused:
        streaming.ingest_from_stream(
            io.BytesIO(b"{}"), IngestionProperties(kusto.database, table, **ingestion)
        )

    assert reason in str(refused.value)
    assert rows(client, kusto, f"{table} | count") == [[0]]


def test_query_ingestion_with_the_same_ingest_by_tag_twice_ingests_once(
    client: KustoClient, kusto: LocalKusto, table: str
) -> None:
    command = (
        f".set-or-append {table} with (tags='[\"ingest-by:run-1\"]', ingestIfNotExists='[\"run-1\"]') <| "
        f"datatable({SCHEMA}) [datetime(2024-05-01), 'once', 1, dynamic(null)]"
    )
    first = client.execute_mgmt(kusto.database, command).primary_results[0]
    retried = client.execute_mgmt(kusto.database, command).primary_results[0]

    assert [row["RowCount"] for row in first] == [1]
    # Held back: no extent created, so no row, under the same columns.
    assert [c.column_name for c in retried.columns] == [c.column_name for c in first.columns]
    assert [c.column_type for c in retried.columns] == [c.column_type for c in first.columns]
    assert retried.raw_rows == []
    assert rows(client, kusto, f"{table} | project Name") == [["once"]]

    other = command.replace("run-1", "run-2").replace("'once'", "'twice'")
    mgmt(client, kusto, other)
    assert rows(client, kusto, f"{table} | order by Count asc, Name asc | project Name") == [
        ["once"],
        ["twice"],
    ]


async def test_async_ingestion_with_the_same_ingest_by_tag_twice_ingests_once(
    kcsb: KustoConnectionStringBuilder, kusto: LocalKusto, table: str
) -> None:
    command = (
        f".append async {table} with (tags='[\"ingest-by:nightly\"]', ingestIfNotExists='[\"nightly\"]') <| "
        f"datatable({SCHEMA}) [datetime(2024-05-01), 'nightly', 1, dynamic(null)]"
    )
    async with AioKustoClient(kcsb) as aio:

        async def run_to_completion() -> None:
            answer = await aio.execute_mgmt(kusto.database, command)
            [[operation]] = answer.primary_results[0].raw_rows
            state: list[str] = []

            async def finished() -> bool:
                shown = await aio.execute_mgmt(kusto.database, f".show operations {operation}")
                state[:] = [shown.primary_results[0].rows[0]["State"]]
                return state[0] != "InProgress"

            await poll_until(finished, 30, f"operation {operation}")
            assert state == ["Completed"]

        await run_to_completion()
        await run_to_completion()
        counted = await aio.execute(kusto.database, f"{table} | count")

    assert counted.primary_results[0].raw_rows == [[1]]


def test_inline_ingestion_with_the_same_ingest_by_tag_twice_ingests_once(
    client: KustoClient, kusto: LocalKusto, table: str
) -> None:
    command = (
        f".ingest inline into table {table} "
        "with (tags='[\"ingest-by:batch-7\"]', ingestIfNotExists='[\"batch-7\"]') <|\n"
        "2024-05-01T00:00:00Z,inline,7,\n"
        '2024-05-02T00:00:00Z,"inline, quoted",8,\n'
    )
    [[extent]] = mgmt(client, kusto, command)
    [[retried]] = mgmt(client, kusto, command)

    assert uuid.UUID(extent) != uuid.UUID(int=0)
    # Kusto's answer when no extent was created: one row with the zero extent id.
    assert uuid.UUID(retried) == uuid.UUID(int=0)
    assert rows(client, kusto, f"{table} | order by Count asc | project Name, Count") == [
        ["inline", 7],
        ["inline, quoted", 8],
    ]
    extents = client.execute_mgmt(kusto.database, f".show table {table} extents").primary_results[0]
    tagged = [row for row in extents if row["Tags"] == "ingest-by:batch-7"]
    assert [(row["ExtentId"], row["RowCount"]) for row in tagged] == [(extent, 2)]


def test_extents_of_a_missing_table_are_refused_naming_it(client: KustoClient, kusto: LocalKusto) -> None:
    with pytest.raises(KustoServiceError) as refused:
        mgmt(client, kusto, ".show table Absent extents")

    assert "Entity ID 'Absent' of kind 'Table' was not found." in str(refused.value)


def test_ingest_by_tag_of_one_table_does_not_hold_back_another(
    client: KustoClient, kusto: LocalKusto, table: str
) -> None:
    other = f"Other_{uuid.uuid4().hex[:12]}"
    mgmt(client, kusto, f".set {other} <| datatable({SCHEMA}) []")
    for target in (table, other):
        mgmt(
            client,
            kusto,
            f".ingest inline into table {target} with (tags='[\"ingest-by:shared\"]', "
            "ingestIfNotExists='[\"shared\"]') <|\n2024-05-01T00:00:00Z,row,1,\n",
        )

    assert rows(client, kusto, f"union {table}, {other} | count") == [[2]]


def test_unsupported_ingestion_property_is_refused_by_name(
    client: KustoClient, kusto: LocalKusto, table: str
) -> None:
    with pytest.raises(KustoServiceError) as refused:
        mgmt(client, kusto, f".append {table} with (creationTime='2024-01-01') <| datatable({SCHEMA}) []")

    assert "ingestion property creationtime not supported here" in str(refused.value)


def test_read_only_endpoint_refuses_streaming_ingestion(tmp_path: Path) -> None:
    path = write_database(tmp_path / "Reference.duckdb", count=20)
    with LocalKusto(path) as kusto:
        kcsb = KustoConnectionStringBuilder.with_no_authentication(kusto.url)
        with KustoStreamingIngestClient(kcsb) as ingest_client, pytest.raises(KustoApiError) as refused:
            ingest_client.ingest_from_stream(
                io.BytesIO(b"1\n"),
                IngestionProperties(kusto.database, "StormEvents", data_format=DataFormat.CSV),
            )

    assert refused.value.http_response is not None
    assert refused.value.http_response.status_code == 403
    assert "writes are disabled" in str(refused.value)
