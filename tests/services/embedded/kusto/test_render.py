"""A query's trailing `render`, reported in the v2 QueryProperties table as Kusto reports it."""

from __future__ import annotations

import http.client
import json
import re
from collections.abc import AsyncIterator, Iterator
from typing import Any
from urllib.parse import urlsplit

import pytest
from azure.kusto.data import KustoConnectionStringBuilder
from azure.kusto.data.aio import KustoClient
from azure.kusto.data.exceptions import KustoServiceError
from azure.kusto.data.response import KustoResponseDataSet

from common.contracts.results import Visualization
from services.embedded.kusto.database import write_database
from services.embedded.kusto.endpoint import LocalKusto
from services.embedded.kusto.render import RenderRefused, visualization
from services.query_worker.reading import _visualization

BY_STATE = "StormEvents | summarize Events=count() by State | sort by State asc"
OVER_TIME = (
    "StormEvents | summarize Events=count() by bin(StartTime, 7d), State | sort by StartTime asc, State asc"
)

#: What every response carries for a query without `render`: duckdb-kql's own object.
NO_VISUALIZATION = {
    "Visualization": None,
    "Title": None,
    "XColumn": None,
    "Series": None,
    "YColumns": None,
    "AnomalyColumns": None,
    "XTitle": None,
    "YTitle": None,
    "XAxis": None,
    "YAxis": None,
    "Legend": None,
    "YSplit": None,
    "Accumulate": False,
    "IsQuerySorted": False,
    "Kind": None,
    "Ymin": "NaN",
    "Ymax": "NaN",
    "Xmin": None,
    "Xmax": None,
}


@pytest.fixture(scope="module")
def kusto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalKusto]:
    database = write_database(tmp_path_factory.mktemp("local_kusto_render") / "Samples.duckdb", count=2000)
    with LocalKusto(database) as endpoint:
        yield endpoint


@pytest.fixture
async def client(kusto: LocalKusto) -> AsyncIterator[KustoClient]:
    async with KustoClient(KustoConnectionStringBuilder.with_no_authentication(kusto.url)) as kusto_client:
        yield kusto_client


def shown(response: KustoResponseDataSet) -> dict[str, Any]:
    """The Visualization object of the response's QueryProperties table."""
    tables = [t for t in response.tables if str(t.table_kind).endswith("QueryProperties")]
    assert len(tables) == 1
    values = [row[2] for row in tables[0].raw_rows if row[1] == "Visualization"]
    assert len(values) == 1
    assert isinstance(values[0], str)  # a JSON string in a dynamic column, as Kusto sends it
    parsed: dict[str, Any] = json.loads(values[0])
    return parsed


def primary_rows(response: KustoResponseDataSet) -> list[list[Any]]:
    return [list(row) for row in response.primary_results[0].raw_rows]


async def test_piechart_title_is_reported(client: KustoClient, kusto: LocalKusto) -> None:
    response = await client.execute(kusto.database, f'{BY_STATE} | render piechart with (title="Storms")')
    assert shown(response) == {**NO_VISUALIZATION, "Visualization": "piechart", "Title": "Storms"}


async def test_timechart_columns_are_reported_as_text(client: KustoClient, kusto: LocalKusto) -> None:
    query = (
        f"{OVER_TIME} | render timechart"
        ' with (xcolumn=StartTime, ycolumns=Events, series=State, ytitle="Events")'
    )
    response = await client.execute(kusto.database, query)
    reported = shown(response)
    assert reported["Visualization"] == "timechart"
    assert reported["XColumn"] == "StartTime"
    assert reported["YColumns"] == "Events"
    assert reported["Series"] == "State"
    assert reported["YTitle"] == "Events"
    assert [c.column_name for c in response.primary_results[0].columns] == ["StartTime", "State", "Events"]


async def test_every_property_takes_kusto_form(client: KustoClient, kusto: LocalKusto) -> None:
    query = (
        "StormEvents | summarize Events=count(), Damage=sum(DamageProperty) by State"
        " | render columnchart with (title='By state', xcolumn=State, ycolumns=Events, Damage,"
        ' xtitle="State", ytitle="Count", legend=hidden, ymin=0, ymax=1.5e3, accumulate=true,'
        " kind=stacked, xaxis=linear, yaxis=log, ysplit=axes)"
    )
    response = await client.execute(kusto.database, query)
    assert shown(response) == {
        **NO_VISUALIZATION,
        "Visualization": "columnchart",
        "Title": "By state",
        "XColumn": "State",
        "YColumns": "Events,Damage",
        "XTitle": "State",
        "YTitle": "Count",
        "Legend": "hidden",
        "Ymin": 0.0,
        "Ymax": 1500.0,
        "Accumulate": True,
        "Kind": "stacked",
        "XAxis": "linear",
        "YAxis": "log",
        "YSplit": "axes",
    }


async def test_query_without_render_keeps_the_empty_visualization(
    client: KustoClient, kusto: LocalKusto
) -> None:
    response = await client.execute(kusto.database, BY_STATE)
    assert shown(response) == NO_VISUALIZATION


async def test_render_leaves_the_primary_result_unchanged(client: KustoClient, kusto: LocalKusto) -> None:
    plain = await client.execute(kusto.database, BY_STATE)
    rendered = await client.execute(kusto.database, f'{BY_STATE} | render piechart with (title="Storms")')
    assert primary_rows(rendered) == primary_rows(plain)
    assert len(primary_rows(plain)) > 1
    assert [c.column_name for c in rendered.primary_results[0].columns] == ["State", "Events"]


async def test_render_not_last_is_not_reported(client: KustoClient, kusto: LocalKusto) -> None:
    # The engine runs `render` anywhere as a no-op; only a trailing one is a chart request.
    response = await client.execute(kusto.database, f"{BY_STATE} | render piechart | take 3")
    assert shown(response) == NO_VISUALIZATION
    assert len(primary_rows(response)) == 3


async def test_malformed_render_is_the_engine_400_and_the_server_serves_on(
    client: KustoClient, kusto: LocalKusto
) -> None:
    # It does not parse, so no visualization is read; the engine reports the syntax error.
    with pytest.raises(KustoServiceError, match="could not parse KQL") as refused:
        await client.execute(kusto.database, f"{BY_STATE} | render piechart with (title=)")
    assert refused.value.http_response is not None
    assert refused.value.http_response.status == 400
    response = await client.execute(kusto.database, f"{BY_STATE} | render barchart")
    assert shown(response)["Visualization"] == "barchart"


@pytest.mark.parametrize(
    ("clause", "named"),
    [
        ("render piechart with (title=strcat('a', 'b'))", "title"),
        ("render piechart with (xmin=1)", "xmin"),
        ('render piechart with (title="a", title="b")', "title"),
        ("render sparkline", "'sparkline' is not a chart kind"),
        ('render piechart title="Storms"', "with (name=value"),
    ],
)
async def test_render_not_reported_faithfully_is_a_400_naming_it(
    client: KustoClient, kusto: LocalKusto, clause: str, named: str
) -> None:
    with pytest.raises(KustoServiceError) as refused:
        await client.execute(kusto.database, f"{BY_STATE} | {clause}")
    assert refused.value.http_response is not None
    assert refused.value.http_response.status == 400
    assert named in str(refused.value)


async def test_query_worker_reads_the_reported_visualization(client: KustoClient, kusto: LocalKusto) -> None:
    query = (
        f"{OVER_TIME} | render timechart"
        ' with (title="Weekly", xcolumn=StartTime, ycolumns=Events, series=State)'
    )
    assert _visualization(await client.execute(kusto.database, query)) == Visualization(
        kind="timechart", title="Weekly", x_column="StartTime", y_columns=["Events"], series=["State"]
    )
    assert _visualization(await client.execute(kusto.database, BY_STATE)) is None


def post(kusto: LocalKusto, route: str, csl: str) -> Any:
    address = urlsplit(kusto.url)
    assert address.hostname is not None
    connection = http.client.HTTPConnection(address.hostname, address.port, timeout=10)
    try:
        body = json.dumps({"db": kusto.database, "csl": csl})
        connection.request("POST", route, body, {"Content-Type": "application/json"})
        response = connection.getresponse()
        answer = json.loads(response.read())
        assert response.status == 200, answer
    finally:
        connection.close()
    return answer


def test_v1_query_route_is_unchanged(kusto: LocalKusto) -> None:
    plain = post(kusto, "/v1/rest/query", BY_STATE)
    rendered = post(kusto, "/v1/rest/query", f'{BY_STATE} | render piechart with (title="Storms")')
    assert rendered == plain
    assert len(rendered["Tables"]) == 1


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("T | render card", {"Visualization": "card"}),
        ("let n = 3;\nT | take n\n| render table;", {"Visualization": "table"}),
        ("T // render piechart\n| take 1", None),
        ('print "| render piechart"', None),
        (".show tables | render piechart", None),
        ("T | render piechart with (title=)", None),
        (
            "T | render linechart with (title=@'it''s' \" \\\"now\\\"\", ycolumns=['a b'], [\"c\"], d)",
            {"Visualization": "linechart", "Title": 'it\'s "now"', "YColumns": "a b,c,d"},
        ),
        (
            "T | render 3Dchart with (anomalycolumns=a, b)",
            {"Visualization": "3Dchart", "AnomalyColumns": "a,b"},
        ),
    ],
)
def test_visualization_reads_the_trailing_render(query: str, expected: dict[str, Any] | None) -> None:
    assert visualization(query) == (None if expected is None else {**NO_VISUALIZATION, **expected})


@pytest.mark.parametrize(
    ("query", "named"),
    [
        ("T | render piechart with (ymin=real(3))", "ymin must be a plain number"),
        ("T | render piechart with (ymin=int(3))", "ymin must be a plain number"),
        ('T | render piechart with (title="\\x41")', "escape \\x"),
    ],
)
def test_visualization_refuses_what_it_cannot_read(query: str, named: str) -> None:
    with pytest.raises(RenderRefused, match=re.escape(named)):
        visualization(query)
