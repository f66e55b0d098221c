"""A query's `render` properties, read from Kusto's v2 response into `Visualization`.

The render_*.json fixtures are v2 response bodies in the frame layout of the
recorded deft.json, with the Visualization value Kusto writes for a `render`
(column lists as comma-separated text, Ymin/Ymax "NaN" when unset). They go
through azure-kusto-data's own response parsing; the local Kusto endpoint
reports a trailing `render ... with (...)` the same way, end to end.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from azure.kusto.data import KustoConnectionStringBuilder
from azure.kusto.data.aio import KustoClient
from azure.kusto.data.response import KustoResponseDataSetV2

from common.contracts.results import ResultSet, Visualization
from services.embedded.kusto.database import write_database
from services.embedded.kusto.endpoint import LocalKusto
from services.query_worker.reading import ResultReader, _visualization, _visualization_of
from services.render.chart import from_query, render_chart

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "kusto-v2"


def response(name: str) -> KustoResponseDataSetV2:
    return KustoResponseDataSetV2(json.loads((FIXTURES / name).read_text()))


def properties_row(shown: dict[str, Any]) -> list[list[Any]]:
    """A QueryProperties row carrying `shown` as Kusto does: a JSON string in a dynamic column."""
    return [[1, "Visualization", json.dumps(shown)]]


def test_a_stacked_columnchart_is_read_from_a_v2_response() -> None:
    visualization = _visualization(response("render_columnchart_stacked.json"))

    assert visualization == Visualization(
        kind="columnchart",
        title="Storm events by state",
        x_column="State",
        y_columns=["Events"],
        series=["EventType"],
        x_title="State",
        y_title="Storm events",
        legend="visible",
        y_min=None,
        y_max=None,
        accumulate=False,
        variant="stacked",
    )
    assert from_query(visualization)[0] == "stackedcolumnchart"


def test_stacked100_accumulate_limits_and_hidden_legend_are_read() -> None:
    visualization = _visualization(response("render_areachart_stacked100.json"))

    assert visualization is not None
    assert (visualization.kind, visualization.variant) == ("areachart", "stacked100")
    assert visualization.accumulate is True
    assert (visualization.y_min, visualization.y_max) == (0.0, 100.0)
    assert visualization.legend == "hidden"
    assert (visualization.x_column, visualization.y_columns, visualization.series) == (
        "StartTime",
        ["Events"],
        ["State"],
    )
    assert visualization.x_title is None
    assert visualization.y_title == "Share of events"


async def test_the_read_result_draws_the_chart_the_query_asked_for() -> None:
    reader = ResultReader(max_rows=1000, max_bytes=2**20, head=1000)
    await reader.read_loaded(response("render_columnchart_stacked.json"))
    read = await reader.finish(truncate=False)
    result = ResultSet(columns=read.columns, rows=read.head, visualization=read.visualization)

    kind, note = from_query(result.visualization)
    assert kind is not None
    chart = render_chart(result, kind)

    assert (
        note == "the query's render operator asks for columnchart with kind=stacked: a stacked column chart"
    )
    assert chart.columns_used == {
        "x": "State",
        "y": ["Events"],
        "series": ["EventType"],
        "stacked": "stacked",
    }


@pytest.mark.parametrize(
    ("given", "read"),
    [
        ({"Ymin": "NaN", "Ymax": "NaN"}, {"y_min": None, "y_max": None}),
        ({"Ymin": 5, "Ymax": "1.5e3"}, {"y_min": 5.0, "y_max": 1500.0}),
        ({"Ymin": float("nan"), "Ymax": None}, {"y_min": None, "y_max": None}),
        ({"Accumulate": "true"}, {"accumulate": True}),
        ({"Accumulate": False}, {"accumulate": False}),
        ({"Legend": "Hidden"}, {"legend": "hidden"}),
        ({"Legend": "sideways"}, {"legend": None}),
        ({"Kind": "Stacked100"}, {"variant": "stacked100"}),
        ({"Kind": ""}, {"variant": None}),
        (
            {"YColumns": "a b, c,,d", "Series": ["s1", "s2"]},
            {"y_columns": ["a b", "c", "d"], "series": ["s1", "s2"]},
        ),
        ({"YColumns": "", "Title": "", "XTitle": ""}, {"y_columns": None, "title": None, "x_title": None}),
    ],
)
def test_each_property_is_read_as_kusto_writes_it(given: dict[str, Any], read: dict[str, Any]) -> None:
    visualization = _visualization_of(properties_row({"Visualization": "timechart", **given}))

    assert visualization is not None
    assert {name: getattr(visualization, name) for name in read} == read


@pytest.mark.parametrize("shown", [{"Visualization": None}, {"Visualization": ""}, None, []])
def test_no_render_is_no_visualization(shown: Any) -> None:
    assert _visualization_of(properties_row(shown)) is None


# --- end to end through the local Kusto endpoint ---------------------------------------------


@pytest.fixture(scope="module")
def kusto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalKusto]:
    database = write_database(tmp_path_factory.mktemp("visualization") / "Samples.duckdb", count=2000)
    with LocalKusto(database) as endpoint:
        yield endpoint


@pytest.fixture
async def client(kusto: LocalKusto) -> AsyncIterator[KustoClient]:
    async with KustoClient(KustoConnectionStringBuilder.with_no_authentication(kusto.url)) as kusto_client:
        yield kusto_client


async def test_a_render_with_every_property_arrives_as_a_visualization(
    client: KustoClient, kusto: LocalKusto
) -> None:
    query = (
        "StormEvents | summarize Events=count() by bin(StartTime, 7d), State"
        " | render areachart with (title='Share by state', xcolumn=StartTime, ycolumns=Events, series=State,"
        " xtitle='Week', ytitle='Share', legend=hidden, ymin=0, ymax=100, accumulate=true, kind=stacked100)"
    )

    visualization = _visualization(await client.execute(kusto.database, query))

    assert visualization == Visualization(
        kind="areachart",
        title="Share by state",
        x_column="StartTime",
        y_columns=["Events"],
        series=["State"],
        x_title="Week",
        y_title="Share",
        legend="hidden",
        y_min=0.0,
        y_max=100.0,
        accumulate=True,
        variant="stacked100",
    )
    kind, note = from_query(visualization)
    assert kind == "stackedareachart"
    assert note.endswith("each stack scaled to 100%; accumulate=true: running totals")


async def test_a_query_render_is_drawn_as_asked(client: KustoClient, kusto: LocalKusto) -> None:
    query = (
        "StormEvents | summarize Events=count() by State, EventType"
        " | render barchart with (kind=stacked, ytitle='Storm events')"
    )
    reader = ResultReader(max_rows=10_000, max_bytes=2**24, head=10_000)
    await reader.read_loaded(await client.execute(kusto.database, query))
    read = await reader.finish(truncate=False)
    result = ResultSet(columns=read.columns, rows=read.head, visualization=read.visualization)

    kind, _ = from_query(result.visualization)
    assert kind == "stackedbarchart"
    chart = render_chart(result, kind)

    assert chart.columns_used == {
        "x": "State",
        "y": ["Events"],
        "series": ["EventType"],
        "stacked": "stacked",
    }
    assert b"Storm events" in chart.svg
