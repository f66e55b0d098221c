"""The query worker's export step over a stored result, into the folder blob store and Azure Blob
Storage (Azurite): CSV and Parquet files read back with pyarrow hold the result's values with
their types, nulls, time zones, text and exact decimals; an empty result keeps its columns; a
large one is written a row group at a time, in memory that does not grow with it; a source
without a result fails the step naming it."""

from __future__ import annotations

import datetime as dt
import io
import math
import tracemalloc
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest

from common.contracts.errors import ArtifactMissing
from common.contracts.flows import Flow, new_run
from common.contracts.messages import BlobRef, RunContext, RunMessage, StepOutput, StepStatus, TriggerKind
from common.contracts.results import Column, ResultSet
from common.contracts.templates import TemplateError
from common.contracts.topology import Topology
from common.platform.blobs.folder import FolderBlobStore
from common.platform.blobs.interface import BlobStore
from common.platform.broker.memory import InProcessBroker
from common.platform.config import Settings
from common.platform.connections import Connections
from common.platform.runtime import Runtime
from services.query_worker.exporting import ExportStep, file_name
from tests.blob_backends import Backend

HISTORY_URL = "https://history.example"
GUID = "00000001-0000-0000-0001-020304050607"
EVERY_TYPE = [
    Column(name="b", type="bool"),
    Column(name="i", type="int"),
    Column(name="l", type="long"),
    Column(name="r", type="real"),
    Column(name="d", type="decimal"),
    Column(name="s", type="string"),
    Column(name="g", type="guid"),
    Column(name="t", type="datetime"),
    Column(name="ts", type="timespan"),
    Column(name="dy", type="dynamic"),
]
#: Rows as Kusto sends them: decimals and timespans as text, NaN as text, a dynamic as JSON.
EVERY_VALUE: list[list[Any]] = [
    [
        True,
        1,
        2**40,
        1.5,
        "12345678901234567890.123456789",
        "Zürich ☃ 東京",
        GUID,
        "2015-01-01T01:01:01.0000001Z",
        "1.00:00:01.0010001",
        {"rowId": 1, "arr": [0, 1], "name": "Ünï"},
    ],
    [False, -7, -3, "NaN", "0.1", "", GUID, "2024-03-31T23:30:00+02:00", "-00:00:00.0000015", "text"],
    [None] * 10,
]


def export_flow(**export: Any) -> Flow:
    return Flow.model_validate(
        {
            "name": "storms",
            "connection": "local",
            "database": "Samples",
            "steps": [
                {"id": "q", "action": "run_query", "query": "StormEvents"},
                {"id": "export", "action": "export_to_file", "source": "q", **export},
            ],
        }
    )


def runtime_on(store: BlobStore) -> Runtime:
    return Runtime(
        settings=Settings(),
        broker=InProcessBroker(Topology("exporting")),
        blobs=store,
        connections=Connections(),
        history_url=HISTORY_URL,
    )


async def stored(store: BlobStore, key: str, result: ResultSet) -> BlobRef:
    """*result* stored at *key* as the query step stores one: streamed in."""
    data = result.to_json_bytes()
    async with store.writer(key, "application/json") as blob:
        for start in range(0, len(data), 256 * 1024):
            await blob.write(data[start : start + 256 * 1024])
    return blob.ref


async def at_export(
    store: BlobStore,
    flow: Flow,
    columns: list[Column],
    rows: list[list[Any]],
    status: StepStatus = StepStatus.SUCCEEDED,
) -> RunMessage:
    """A run of *flow* at its export step, its query having left *rows* (or failed)."""
    run_id = uuid.uuid4().hex
    ref = await stored(store, f"runs/{run_id}/q/1/result.json", ResultSet(columns=columns, rows=rows))
    query = StepOutput(
        status=status,
        row_count=len(rows),
        artifacts={"result": ref} if status is StepStatus.SUCCEEDED else {},
        detail={"columns": [f"{c.name}:{c.type}" for c in columns]},
    )
    context = RunContext(
        flow=flow.name, trigger=TriggerKind.SCHEDULE, scheduled_for=dt.datetime(2026, 3, 1, 8, tzinfo=dt.UTC)
    )
    run = new_run(flow, context, run_id)
    return run.model_copy(update={"step_id": "export", "outputs": {"q": query}})


async def exported(store: BlobStore, message: RunMessage) -> tuple[StepOutput, bytes]:
    output = await ExportStep(runtime_on(store)).perform(message)
    return output, await store.get(output.artifacts["file"].key)


async def test_parquet_keeps_every_kusto_type_with_nulls_zones_text_and_exact_decimals(
    blobs: Backend,
) -> None:
    message = await at_export(blobs.store, export_flow(format="parquet"), EVERY_TYPE, EVERY_VALUE)

    output, data = await exported(blobs.store, message)

    table = pq.read_table(io.BytesIO(data))
    types = {field.name: field.type for field in table.schema}
    assert types == {
        "b": pa.bool_(),
        "i": pa.int32(),
        "l": pa.int64(),
        "r": pa.float64(),
        "d": pa.string(),
        "s": pa.string(),
        "g": pa.string(),
        "t": pa.timestamp("us", tz="UTC"),
        "ts": pa.int64(),
        "dy": pa.json_(),
    }
    kusto = {field.name: field.metadata[b"kusto_type"].decode() for field in table.schema}
    assert kusto == {column.name: column.type for column in EVERY_TYPE}
    got = table.to_pydict()
    assert got["b"] == [True, False, None]
    assert got["i"] == [1, -7, None]
    assert got["l"] == [2**40, -3, None]
    assert got["r"][0] == 1.5
    assert math.isnan(got["r"][1])
    assert got["r"][2] is None
    assert got["d"] == ["12345678901234567890.123456789", "0.1", None]
    assert got["s"] == ["Zürich ☃ 東京", "", None]
    assert got["g"] == [GUID, GUID, None]
    # The instant in UTC; the seventh digit of the 100 ns tick is below a microsecond.
    assert got["t"] == [
        dt.datetime(2015, 1, 1, 1, 1, 1, tzinfo=dt.UTC),
        dt.datetime(2024, 3, 31, 21, 30, tzinfo=dt.UTC),
        None,
    ]
    assert got["ts"] == [(86_400 + 1) * 10**7 + 10_001, -15, None]
    assert got["dy"] == ['{"rowId":1,"arr":[0,1],"name":"Ünï"}', '"text"', None]
    assert pq.ParquetFile(io.BytesIO(data)).metadata.row_group(0).column(0).compression == "SNAPPY"

    key = output.artifacts["file"].key
    assert key == f"runs/{message.run_id}/export/1/storms-export-20260301T080000Z.parquet"
    assert output.artifacts["file"].content_type == "application/vnd.apache.parquet"
    assert output.row_count == 3
    assert output.detail["rows"] == 3
    assert output.detail["bytes"] == len(data) == output.artifacts["file"].size
    assert output.detail["row_groups"] == 1
    assert output.detail["truncated"] is False
    assert (output.detail["format"], output.detail["compression"]) == ("parquet", "snappy")
    assert output.detail["file"]["url"] == f"{HISTORY_URL}/v1/artifacts/{key}"


@pytest.mark.parametrize("compression", ["none", "gzip"])
async def test_csv_keeps_the_values_as_kusto_sent_them(blobs: Backend, compression: str) -> None:
    flow = export_flow(format="csv", compression=compression, name="Storms: {{ run.flow }} ☃")
    message = await at_export(blobs.store, flow, EVERY_TYPE, EVERY_VALUE)

    output, data = await exported(blobs.store, message)

    suffix = ".csv.gz" if compression == "gzip" else ".csv"
    assert output.artifacts["file"].key.endswith(f"/Storms_storms{suffix}")
    source = pa.input_stream(pa.py_buffer(data), compression="gzip" if compression == "gzip" else None)
    as_text = pacsv.ConvertOptions(column_types={column.name: pa.string() for column in EVERY_TYPE})
    table = pacsv.read_csv(source, convert_options=as_text)
    assert table.column_names == [column.name for column in EVERY_TYPE]
    assert [list(row.values()) for row in table.to_pylist()] == [
        [
            "true",
            "1",
            str(2**40),
            "1.5",
            "12345678901234567890.123456789",
            "Zürich ☃ 東京",
            GUID,
            "2015-01-01T01:01:01.0000001Z",
            "1.00:00:01.0010001",
            '{"rowId":1,"arr":[0,1],"name":"Ünï"}',
        ],
        [
            "false",
            "-7",
            "-3",
            "NaN",
            "0.1",
            "",
            GUID,
            "2024-03-31T23:30:00+02:00",
            "-00:00:00.0000015",
            '"text"',
        ],
        [""] * 10,
    ]
    plain = data if compression == "none" else pa.input_stream(pa.py_buffer(data), compression="gzip").read()
    assert plain.startswith(b"b,i,l,r,d,s,g,t,ts,dy\r\n")
    inferred = pacsv.ConvertOptions(include_columns=["b", "i", "l"])
    typed = pacsv.read_csv(pa.py_buffer(plain), convert_options=inferred).to_pydict()
    assert (typed["b"], typed["i"], typed["l"]) == ([True, False, None], [1, -7, None], [2**40, -3, None])


@pytest.mark.parametrize("format", ["parquet", "csv"])
async def test_an_empty_result_keeps_its_columns(blobs: Backend, format: str) -> None:
    message = await at_export(blobs.store, export_flow(format=format), EVERY_TYPE, [])

    output, data = await exported(blobs.store, message)

    assert output.row_count == 0
    if format == "parquet":
        table = pq.read_table(io.BytesIO(data))
        assert table.num_rows == 0
        assert table.schema.field("t").type == pa.timestamp("us", tz="UTC")
        assert table.column_names == [column.name for column in EVERY_TYPE]
        assert output.detail["row_groups"] == 0
    else:
        assert data == b"b,i,l,r,d,s,g,t,ts,dy\r\n"


async def test_a_large_result_is_written_a_row_group_at_a_time(blobs: Backend) -> None:
    columns = [Column(name="n", type="long"), Column(name="label", type="string")]
    rows: list[list[Any]] = [[n, f"row {n} of a result read in chunks"] for n in range(100_000)]
    ref = await stored(
        blobs.store, f"runs/{uuid.uuid4().hex}/q/1/result.json", ResultSet(columns=columns, rows=rows)
    )
    chunks = [chunk async for chunk in blobs.store.result_rows(ref.key)]
    assert len(chunks) > 3, "the stored result is read in several chunks"
    message = await at_export(
        blobs.store, export_flow(format="parquet", row_group_rows=12_000), columns, rows
    )

    output, data = await exported(blobs.store, message)

    file = pq.ParquetFile(io.BytesIO(data))
    sizes = [file.metadata.row_group(index).num_rows for index in range(file.metadata.num_row_groups)]
    assert sizes == [12_000] * 8 + [4_000]
    assert output.detail["row_groups"] == 9
    table = file.read()
    assert table.column("n").to_pylist() == list(range(100_000))
    assert table.column("label")[99_999].as_py() == "row 99999 of a result read in chunks"


async def peak_of_export(store: BlobStore, count: int) -> int:
    """The most memory Python held while exporting a result of *count* rows as Parquet (what Arrow
    holds is a row group at most: the test above counts them)."""
    columns = [
        Column(name="n", type="long"),
        Column(name="label", type="string"),
        Column(name="t", type="datetime"),
    ]
    rows: list[list[Any]] = [[n, f"row {n} of a big result", "2007-01-01T00:00:00Z"] for n in range(count)]
    message = await at_export(store, export_flow(format="parquet", row_group_rows=10_000), columns, rows)
    del rows
    tracemalloc.start()
    try:
        output = await ExportStep(runtime_on(store)).perform(message)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert output.detail["row_groups"] == count // 10_000
    return peak


async def test_the_memory_an_export_holds_does_not_grow_with_the_result(
    tmp_path: Path, record_property: Callable[[str, object], None]
) -> None:
    async with FolderBlobStore(tmp_path / "blobs") as store:
        small = await peak_of_export(store, 40_000)
        large = await peak_of_export(store, 160_000)

    record_property("export_peak_bytes", {"40k rows": small, "160k rows": large})
    assert large < small * 1.25, (small, large)


@pytest.mark.parametrize("status", [StepStatus.FAILED, StepStatus.SKIPPED])
async def test_a_source_without_a_result_fails_the_export_naming_the_field(
    blobs: Backend, status: StepStatus
) -> None:
    message = await at_export(blobs.store, export_flow(format="parquet"), EVERY_TYPE, [], status)

    with pytest.raises(
        ArtifactMissing, match=rf"steps\.export\.source: 'q' has no result to export \({status}\)"
    ):
        await ExportStep(runtime_on(blobs.store)).perform(message)
    assert not [key for key in await blobs.stored() if "/export/" in key]


async def test_a_name_that_renders_to_nothing_fails_naming_the_field(blobs: Backend) -> None:
    flow = export_flow(format="csv", name="{{ run.parameters.get('x', '') }}..")
    message = await at_export(blobs.store, flow, EVERY_TYPE, [])

    with pytest.raises(TemplateError, match=r"steps\.export\.name: .* no letter or digit"):
        await ExportStep(runtime_on(blobs.store)).perform(message)


def test_a_file_name_keeps_safe_characters_and_ends_in_its_extension_once() -> None:
    assert file_name("Storms 2026-03-01", ".parquet") == "Storms_2026-03-01.parquet"
    assert file_name("../../etc/passwd", ".csv") == "etc_passwd.csv"
    assert file_name("report.CSV", ".csv") == "report.csv"
    assert file_name(".hidden", ".csv.gz") == "hidden.csv.gz"
    assert len(file_name("x" * 400, ".parquet")) == 150 + len(".parquet")
    with pytest.raises(ValueError, match="no letter or digit"):
        file_name(" / ", ".csv")
