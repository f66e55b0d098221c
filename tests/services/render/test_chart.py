from __future__ import annotations

import datetime as dt
import io
import math
import time
import xml.etree.ElementTree as ET
from typing import Any

import pytest
from PIL import Image

from common.results import Column, ResultSet, Visualization
from services.render.chart import (
    OTHER,
    ChartError,
    RenderedChart,
    downsample,
    pie_slices,
    render_chart,
    time_ticks,
)

SVG = "{http://www.w3.org/2000/svg}"
START = dt.datetime(2024, 3, 1, tzinfo=dt.UTC)


def result_set(
    columns: list[tuple[str, str]], rows: list[list[Any]], visualization: Visualization | None = None
) -> ResultSet:
    return ResultSet(
        columns=[Column(name=name, type=kind) for name, kind in columns],
        rows=rows,
        visualization=visualization,
    )


def wire(moment: dt.datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def svg_root(chart: RenderedChart) -> ET.Element:
    return ET.fromstring(chart.svg)


def texts(root: ET.Element, selector: str) -> list[str]:
    return ["".join(node.itertext()) for node in root.iterfind(selector, {"": SVG[1:-1]})]


def legend(chart: RenderedChart) -> list[str]:
    return texts(svg_root(chart), ".//g[@class='legends']/g/text")


def assert_real_png(chart: RenderedChart, width: int, height: int) -> Image.Image:
    image = Image.open(io.BytesIO(chart.png))
    image.load()
    assert image.format == "PNG"
    assert image.size == (width, height)
    colours = image.convert("RGB").getcolors(maxcolors=width * height)
    assert colours is not None
    assert len(colours) > 10, "the PNG is a flat image"
    return image


STATES = [
    ("TEXAS", 4701), ("KANSAS", 3166), ("IOWA", 2337), ("ILLINOIS", 2022), ("MISSOURI", 2016),
    ("GEORGIA", 1983), ("MINNESOTA", 1881), ("WISCONSIN", 1850), ("NEBRASKA", 1766),
    ("NEW YORK", 1750), ("OHIO", 1233), ("MICHIGAN", 1099), ("<b>&amp;</b>", 17),
]  # fmt: skip
STORMS = result_set([("State", "string"), ("Events", "long")], [list(row) for row in STATES])


def test_pie_svg_and_png() -> None:
    chart = render_chart(STORMS, "piechart", title="Storm events", width=640, height=360)

    root = svg_root(chart)
    assert "Storm events" in texts(root, ".//text")
    assert root.find(f".//{SVG}script") is None
    assert b"href" not in chart.svg
    assert chart.columns_used == {"x": "State", "y": ["Events"]}
    assert (chart.width, chart.height) == (640, 360)
    assert_real_png(chart, 640, 360)


def test_pie_keeps_top_ten_and_folds_the_rest_into_other() -> None:
    chart = render_chart(STORMS, "piechart")

    names = legend(chart)
    assert len(names) == 11
    assert names[0].startswith("TEXAS: 4,701 (")
    assert names[-1].startswith(f"{OTHER}: ")
    assert not [name for name in names if name.startswith(("OHIO", "MICHIGAN"))]
    slice_values = [
        float(text.replace(",", "")) for text in texts(svg_root(chart), ".//desc[@class='value']")
    ]
    assert sum(slice_values) == sum(events for _, events in STATES)
    assert slice_values[-1] == 1233 + 1099 + 17


def test_pie_slices_helper() -> None:
    totals = [(str(n), float(n)) for n in range(1, 21)]

    slices = pie_slices(totals, limit=5)

    assert [label for label, _ in slices] == ["20", "19", "18", "17", "16", OTHER]
    assert sum(value for _, value in slices) == sum(range(1, 21))
    # One slice more than the limit is drawn as itself; "Other" would hide a name for nothing.
    assert [label for label, _ in pie_slices(totals[:6], limit=5)] == ["6", "5", "4", "3", "2", "1"]


def test_pie_sums_repeated_labels_and_skips_non_positive_values() -> None:
    result = result_set(
        [("State", "string"), ("Events", "real")],
        [["A", 1.5], ["B", 2], ["A", 2.5], ["C", None], ["D", -3], ["E", 0]],
    )

    names = legend(render_chart(result, "piechart"))

    assert names == ["A: 4 (66.7%)", "B: 2 (33.3%)"]


def test_labels_are_escaped_in_svg() -> None:
    chart = render_chart(STORMS, "barchart")

    assert b"<b>" not in chart.svg
    assert "<b>&amp;</b>" in texts(svg_root(chart), ".//text")


def test_barchart_lists_first_row_on_top() -> None:
    result = result_set(
        [("State", "string"), ("Events", "long")], [["FIRST", 30], ["SECOND", 20], ["THIRD", 10]]
    )

    chart = render_chart(result, "barchart", title="Events")

    root = svg_root(chart)
    labels = {node.text: float(node.get("y", "nan")) for node in root.iter(f"{SVG}text")}
    assert labels["FIRST"] < labels["SECOND"] < labels["THIRD"]
    assert chart.columns_used == {"x": "State", "y": ["Events"]}
    assert_real_png(chart, 800, 450)


def test_thirty_bars_are_all_drawn() -> None:
    result = result_set(
        [("State", "string"), ("Events", "long")], [[f"S{n:02d}", n * 100] for n in range(30)]
    )

    chart = render_chart(result, "barchart")

    bars = svg_root(chart).findall(f".//{SVG}rect[@class='rect reactive tooltip-trigger']")
    assert len(bars) == 30
    assert "S00" in texts(svg_root(chart), ".//text")


def test_columnchart_draws_each_numeric_column_as_a_series() -> None:
    result = result_set(
        [("Day", "datetime"), ("Events", "long"), ("Deaths", "long")],
        [[wire(START + dt.timedelta(days=n)), 100 + n, n] for n in range(5)],
    )

    chart = render_chart(result, "columnchart")

    assert legend(chart) == ["Events", "Deaths"]
    assert chart.columns_used == {"x": "Day", "y": ["Events", "Deaths"]}
    assert "2024-03-01" in texts(svg_root(chart), ".//text")


def test_numbers_use_thousands_separators() -> None:
    result = result_set([("State", "string"), ("Events", "long")], [["A", 25_000], ["B", 40_000]])

    labels = texts(svg_root(render_chart(result, "columnchart")), ".//text")

    assert [label for label in labels if label.endswith(",000")]


def test_timechart_splits_series_by_text_column() -> None:
    rows = [
        [wire(START + dt.timedelta(hours=hour)), state, hour * weight]
        for hour in range(48)
        for state, weight in (("TEXAS", 3), ("IOWA", 1), ("OHIO", 2))
    ]
    result = result_set([("Timestamp", "datetime"), ("State", "string"), ("Events", "long")], rows)

    chart = render_chart(result, "timechart", title="Events per hour")

    assert legend(chart) == ["TEXAS", "OHIO", "IOWA"]
    assert chart.columns_used == {"x": "Timestamp", "y": ["Events"], "series": "State"}
    assert len(svg_root(chart).findall(f".//{SVG}path[@class='line reactive nofill']")) == 3
    labels = texts(svg_root(chart), ".//text")
    assert "Events per hour" in labels
    assert "03-02 00:00" in labels
    assert_real_png(chart, 800, 450)


def test_timechart_without_series_draws_every_numeric_column() -> None:
    rows = [[wire(START + dt.timedelta(minutes=m)), m, m * 2.5] for m in range(30)]
    result = result_set([("Timestamp", "datetime"), ("Reads", "long"), ("Writes", "real")], rows)

    chart = render_chart(result, "timechart")

    assert legend(chart) == ["Reads", "Writes"]
    assert chart.columns_used == {"x": "Timestamp", "y": ["Reads", "Writes"]}
    assert "00:10" in texts(svg_root(chart), ".//text")


def test_timechart_keeps_the_largest_series() -> None:
    rows = [[wire(START), f"S{n:02d}", n] for n in range(1, 16)]
    result = result_set([("Timestamp", "datetime"), ("Name", "string"), ("Value", "long")], rows)

    chart = render_chart(result, "timechart")

    assert legend(chart) == [f"S{n:02d}" for n in range(15, 5, -1)]
    assert "top 10 of 15 series by total" in texts(svg_root(chart), ".//text")


def test_timechart_needs_a_datetime_column() -> None:
    result = result_set([("State", "string"), ("Events", "long")], [["TEXAS", 1]])

    with pytest.raises(
        ChartError, match="timechart needs a datetime column; columns are State:string, Events:long"
    ):
        render_chart(result, "timechart")


@pytest.mark.parametrize("kind", ["piechart", "barchart", "timechart"])
def test_charts_need_a_numeric_column(kind: str) -> None:
    result = result_set([("Timestamp", "datetime"), ("State", "string")], [[wire(START), "TEXAS"]])

    with pytest.raises(
        ChartError, match=f"^{kind} needs a numeric column .* Timestamp:datetime, State:string$"
    ):
        render_chart(result, kind)


def test_pie_needs_labels_besides_a_single_number() -> None:
    result = result_set([("Events", "long")], [[1]])

    with pytest.raises(ChartError, match=r"piechart needs a label column.*columns are Events:long"):
        render_chart(result, "piechart")


def test_all_numeric_columns_label_by_the_first() -> None:
    result = result_set([("Hour", "long"), ("Events", "long")], [[0, 5], [1, 7]])

    chart = render_chart(result, "columnchart")

    assert chart.columns_used == {"x": "Hour", "y": ["Events"]}


def test_unknown_kind_is_rejected() -> None:
    with pytest.raises(ChartError, match="unsupported chart kind 'scatterchart'"):
        render_chart(STORMS, "scatterchart")


def test_columns_named_by_the_query_render_operator_win() -> None:
    rows = [[wire(START + dt.timedelta(hours=h)), "A", h, 10 - h] for h in range(5)]
    hints = Visualization(kind="timechart", x_column="Timestamp", y_columns=["Errors"], title="From Kusto")
    result = result_set(
        [("Timestamp", "datetime"), ("Host", "string"), ("Requests", "long"), ("Errors", "long")], rows, hints
    )

    chart = render_chart(result, "timechart")

    assert chart.columns_used == {"x": "Timestamp", "y": ["Errors"], "series": "Host"}
    assert "From Kusto" in texts(svg_root(chart), ".//text")
    missing = result.model_copy(update={"visualization": Visualization(x_column="When")})
    with pytest.raises(ChartError, match="x column 'When', which is not in the result"):
        render_chart(missing, "timechart")


def test_empty_result_draws_no_rows() -> None:
    result = result_set([("State", "string"), ("Events", "long")], [])

    chart = render_chart(result, "barchart", title="Nothing", width=400, height=300)

    assert "no rows" in texts(svg_root(chart), ".//text")
    assert chart.columns_used == {"x": "State", "y": ["Events"]}
    assert_real_png(chart, 400, 300)


def test_empty_result_with_unusable_columns_still_draws() -> None:
    chart = render_chart(result_set([("State", "string")], []), "timechart")

    assert "no rows" in texts(svg_root(chart), ".//text")
    assert chart.columns_used == {}


def test_rows_without_numbers_say_so() -> None:
    result = result_set([("Timestamp", "datetime"), ("Events", "long")], [[wire(START), None]])

    chart = render_chart(result, "timechart")

    assert "no numeric values to plot" in texts(svg_root(chart), ".//text")


def test_control_characters_do_not_break_the_svg() -> None:
    result = result_set([("State", "string"), ("Events", "long")], [["bell\x07tab\tnul\x00", 3], [None, 2]])

    chart = render_chart(result, "piechart", title="ctl\x1b")

    labels = texts(svg_root(chart), ".//text")
    assert "bell\N{REPLACEMENT CHARACTER}tab nul\N{REPLACEMENT CHARACTER}: 3 (60.0%)" in labels
    assert "(empty): 2 (40.0%)" in labels
    assert_real_png(chart, 800, 450)


def test_untitled_chart_has_no_placeholder_title() -> None:
    chart = render_chart(STORMS, "piechart")

    assert b"Pygal" not in chart.svg


def test_ten_thousand_point_timechart_is_fast() -> None:
    rows = [
        [wire(START + dt.timedelta(minutes=m)), 1000 + 500 * math.sin(m / 300) + (m % 7) * 10]
        for m in range(10_000)
    ]
    result = result_set([("Timestamp", "datetime"), ("Latency", "real")], rows)

    started = time.perf_counter()
    chart = render_chart(result, "timechart")
    elapsed = time.perf_counter() - started

    assert_real_png(chart, 800, 450)
    # Downsampled to about one point per pixel, not 10,000 path nodes.
    path = svg_root(chart).find(f".//{SVG}path[@class='line reactive nofill']")
    assert path is not None
    assert path.get("d", "").count(" ") < 2 * 800
    assert elapsed < 1.0


def test_downsample_keeps_ends_and_extremes() -> None:
    points = [(float(x), 0.0) for x in range(1000)]
    points[500] = (500.0, 99.0)
    points[700] = (700.0, -99.0)

    sampled = downsample(points, 50)

    assert len(sampled) == 50
    assert sampled[0] == points[0]
    assert sampled[-1] == points[-1]
    assert (500.0, 99.0) in sampled
    assert (700.0, -99.0) in sampled
    assert [x for x, _ in sampled] == sorted(x for x, _ in sampled)
    assert downsample(points[:10], 50) == points[:10]


@pytest.mark.parametrize(
    ("span", "labels"),
    [
        (dt.timedelta(hours=6), ["00:00", "01:00", "02:00", "03:00", "04:00", "05:00", "06:00"]),
        (dt.timedelta(days=2), ["03-01 00:00", "03-01 06:00", "03-01 12:00"]),
        (dt.timedelta(days=30), ["2024-03-04", "2024-03-11", "2024-03-18", "2024-03-25"]),
        (dt.timedelta(days=700), ["2024-04", "2024-07", "2024-10", "2025-01"]),
    ],
)
def test_time_ticks_fit_the_span(span: dt.timedelta, labels: list[str]) -> None:
    ticks = time_ticks(START.timestamp(), (START + span).timestamp())

    assert 2 <= len(ticks) <= 12
    assert [label for _, label in ticks][: len(labels)] == labels
    positions = [position for position, _ in ticks]
    assert positions == sorted(positions)
    assert positions[0] >= START.timestamp()
    assert positions[-1] <= (START + span).timestamp()
