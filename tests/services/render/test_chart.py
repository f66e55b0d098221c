"""Charts from result sets: what they draw, checked in the SVG and the PNG by machine."""

from __future__ import annotations

import datetime as dt
import io
import math
import re
import xml.etree.ElementTree as ET
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from PIL import Image

from common.contracts.results import Column, ResultSet, Visualization
from services.render.chart import (
    CHART_KINDS,
    OTHER,
    ChartError,
    ChartOptions,
    RenderedChart,
    pie_slices,
    render_chart,
)
from services.render.chart_style import THEMES

SVG = "{http://www.w3.org/2000/svg}"
NS = {"": SVG[1:-1]}
START = dt.datetime(2024, 3, 1, tzinfo=dt.UTC)
BERLIN = ZoneInfo("Europe/Berlin")


def result_set(
    columns: list[tuple[str, str]], rows: list[list[Any]], visualization: Visualization | None = None
) -> ResultSet:
    return ResultSet(
        columns=[Column(name=name, type=kind) for name, kind in columns],
        rows=rows,
        visualization=visualization,
    )


def wire(moment: dt.datetime) -> str:
    return moment.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def svg_root(chart: RenderedChart) -> ET.Element:
    return ET.fromstring(chart.svg)


def texts(root: ET.Element, selector: str) -> list[str]:
    return ["".join(node.itertext()) for node in root.iterfind(selector, NS)]


def legend(chart: RenderedChart) -> list[str]:
    return texts(svg_root(chart), ".//g[@class='legends']/g/text")


def axis_labels(chart: RenderedChart, axis: str) -> list[str]:
    """The labels written along one axis ("x" runs across the picture, "y" up it)."""
    labels = []
    for group in svg_root(chart).iter(f"{SVG}g"):
        if (group.get("class") or "").split()[:2] == ["axis", axis]:
            labels += [text for text in texts(group, ".//text") if text]
    return labels


def colours(chart: RenderedChart) -> dict[str, str]:
    """Each legend entry's series colour, as the chart's CSS gives it."""
    root = svg_root(chart)
    css = "".join(texts(root, ".//style"))
    by_class = dict(re.findall(r"\.color-(\d+),[^{]*\{stroke:(#[0-9a-f]{6});fill:#[0-9a-f]{6}\}", css))
    found = {}
    for entry in root.iterfind(".//g[@class='legends']/g", NS):
        box, name = entry.find(f"{SVG}rect"), entry.find(f"{SVG}text")
        assert box is not None
        assert name is not None
        number = re.fullmatch(r"color-(\d+) reactive", box.get("class", ""))
        assert number is not None
        found["".join(name.itertext())] = by_class[number.group(1)]
    return found


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


def hourly(states: dict[str, int], hours: int = 48) -> ResultSet:
    rows = [
        [wire(START + dt.timedelta(hours=hour)), state, hour * weight + 1]
        for hour in range(hours)
        for state, weight in states.items()
    ]
    return result_set([("Timestamp", "datetime"), ("State", "string"), ("Events", "long")], rows)


# --- pie -------------------------------------------------------------------------------------


def test_pie_svg_and_png() -> None:
    chart = render_chart(STORMS, "piechart", ChartOptions(title="Storm events", width=640, height=360))

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


def test_a_200_slice_pie_draws_eleven_distinct_colours_and_a_grey_other() -> None:
    result = result_set(
        [("Source", "string"), ("Bytes", "long")], [[f"host-{n:03d}", 1000 + n * 10] for n in range(200)]
    )

    chart = render_chart(result, "piechart")

    by_name = colours(chart)
    assert len(by_name) == 11
    assert len(set(by_name.values())) == 11
    other = next(colour for name, colour in by_name.items() if name.startswith(f"{OTHER}: "))
    assert other == THEMES["light"].other
    assert_real_png(chart, 800, 450)


# --- bars and columns ------------------------------------------------------------------------


def test_labels_are_escaped_in_svg() -> None:
    chart = render_chart(STORMS, "barchart")

    assert b"<b>" not in chart.svg
    assert "<b>&amp;</b>" in texts(svg_root(chart), ".//text")


HOSTILE = ("<script>alert(1)</script>", '"><img src=x onerror=alert(1)>')


@pytest.mark.parametrize("kind", ["piechart", "barchart", "stackedcolumnchart", "timechart"])
def test_hostile_labels_and_column_names_stay_text(kind: str) -> None:
    script, image = HOSTILE
    rows = [
        [wire(START + dt.timedelta(hours=hour)), label, series, hour + 1]
        for hour in range(3)
        for label, series in ((script, image), (image, script), ("plain", "plain"))
    ]
    result = result_set(
        [("Timestamp", "datetime"), (image, "string"), (script, "string"), (script + "Events", "long")],
        rows,
        Visualization(title=script, x_title=image, x_column="Timestamp" if kind == "timechart" else None),
    )

    chart = render_chart(result, kind)

    root = svg_root(chart)
    tags = {element.tag.removeprefix(SVG) for element in root.iter()}
    assert not tags & {"script", "img", "foreignObject", "iframe"}
    assert b"<script" not in chart.svg
    assert b"<img" not in chart.svg
    written = " ".join(texts(root, ".//text"))
    assert script in written or script[: 30 - 1] in written
    assert_real_png(chart, 800, 450)


def test_barchart_lists_first_row_on_top() -> None:
    result = result_set(
        [("State", "string"), ("Events", "long")], [["FIRST", 30], ["SECOND", 20], ["THIRD", 10]]
    )

    chart = render_chart(result, "barchart", ChartOptions(title="Events"))

    root = svg_root(chart)
    labels = {node.text: float(node.get("y", "nan")) for node in root.iter(f"{SVG}text")}
    assert labels["FIRST"] < labels["SECOND"] < labels["THIRD"]
    assert chart.columns_used == {"x": "State", "y": ["Events"]}
    assert_real_png(chart, 800, 450)


def test_thirty_bars_are_all_drawn_with_at_most_twelve_labels() -> None:
    result = result_set(
        [("State", "string"), ("Events", "long")], [[f"S{n:02d}", n * 1000] for n in range(30)]
    )

    chart = render_chart(result, "barchart")

    bars = svg_root(chart).findall(f".//{SVG}rect[@class='rect reactive tooltip-trigger']")
    assert len(bars) == 30
    categories, values = axis_labels(chart, "y"), axis_labels(chart, "x")
    assert "S00" in categories
    assert 2 <= len(categories) <= 12
    assert 2 <= len(values) <= 12
    assert "25,000" in values


def test_columnchart_draws_each_numeric_column_as_a_series() -> None:
    result = result_set(
        [("Day", "datetime"), ("Events", "long"), ("Deaths", "long")],
        [[wire(START + dt.timedelta(days=n)), 100 + n, n] for n in range(5)],
    )

    chart = render_chart(result, "columnchart")

    assert legend(chart) == ["Events", "Deaths"]
    assert chart.columns_used == {"x": "Day", "y": ["Events", "Deaths"]}
    assert axis_labels(chart, "x") == [f"2024-03-0{day}" for day in range(1, 6)]


def test_datetime_categories_are_dates_at_local_or_utc_midnight_and_minutes_otherwise() -> None:
    midnights = [dt.datetime(2024, 3, day, tzinfo=BERLIN) for day in (1, 2)]
    result = result_set(
        [("Day", "datetime"), ("Events", "long")],
        [[wire(midnight), 5] for midnight in midnights]
        + [["2024-03-03T12:30:00Z", 7], ["2024-03-04T00:00:00Z", 1]],
    )

    in_berlin = axis_labels(render_chart(result, "columnchart", ChartOptions(zone=BERLIN)), "x")
    in_utc = axis_labels(render_chart(result, "columnchart"), "x")

    # Kusto bins days in UTC: a UTC midnight is a day wherever the reader is.
    assert in_berlin == ["2024-03-01", "2024-03-02", "2024-03-03 13:30", "2024-03-04"]
    assert in_utc == ["2024-02-29 23:00", "2024-03-01 23:00", "2024-03-03 12:30", "2024-03-04"]


def test_numbers_use_thousands_separators() -> None:
    result = result_set([("State", "string"), ("Events", "long")], [["A", 25_000], ["B", 40_000]])

    labels = axis_labels(render_chart(result, "columnchart"), "y")

    assert "40,000" in labels
    assert all(re.fullmatch(r"\d{1,3}(,\d{3})*", label) for label in labels)


def test_columns_split_by_a_second_text_column() -> None:
    rows = [
        [state, kind, events]
        for state, weight in (("TEXAS", 3), ("KANSAS", 2), ("IOWA", 1))
        for kind, events in (("Hail", 100 * weight), ("Wind", 70 * weight), ("Flood", 10 * weight))
    ]
    result = result_set([("State", "string"), ("EventType", "string"), ("Events", "long")], rows)

    chart = render_chart(result, "stackedcolumnchart")

    assert chart.columns_used == {
        "x": "State",
        "y": ["Events"],
        "series": ["EventType"],
        "stacked": "stacked",
    }
    assert legend(chart) == ["Hail", "Wind", "Flood"]
    assert axis_labels(chart, "x") == ["TEXAS", "KANSAS", "IOWA"]
    # The value axis reaches the tallest stack, TEXAS: 300 + 210 + 30.
    assert float(axis_labels(chart, "y")[-1].replace(",", "")) >= 540
    assert len(svg_root(chart).findall(f".//{SVG}rect[@class='rect reactive tooltip-trigger']")) == 9


def test_stacked100_labels_percent_up_to_a_hundred() -> None:
    rows = [[state, kind, events] for state in ("A", "B") for kind, events in (("x", 1), ("y", 3))]
    hints = Visualization(kind="barchart", variant="stacked100")
    result = result_set([("State", "string"), ("Kind", "string"), ("Events", "long")], rows, hints)

    chart = render_chart(result, "stackedbarchart")

    values = axis_labels(chart, "x")
    assert values[0] == "0%"
    assert values[-1] == "100%"
    assert chart.columns_used["stacked"] == "stacked100"
    assert "Events, % of total" in texts(svg_root(chart), ".//text")


# --- time and line charts --------------------------------------------------------------------


def test_timechart_splits_series_by_text_column() -> None:
    chart = render_chart(
        hourly({"TEXAS": 3, "IOWA": 1, "OHIO": 2}), "timechart", ChartOptions(title="Events per hour")
    )

    assert legend(chart) == ["TEXAS", "OHIO", "IOWA"]
    assert chart.columns_used == {"x": "Timestamp", "y": ["Events"], "series": ["State"]}
    assert len(svg_root(chart).findall(f".//{SVG}path[@class='line reactive nofill']")) == 3
    labels = texts(svg_root(chart), ".//text")
    assert "Events per hour" in labels
    assert "Timestamp (UTC)" in labels
    assert "Events" in labels
    assert "03-02 00:00" in axis_labels(chart, "x")
    assert_real_png(chart, 800, 450)


def test_timechart_labels_in_the_report_zone() -> None:
    chart = render_chart(hourly({"TEXAS": 1}, hours=7), "timechart", ChartOptions(zone=BERLIN))

    assert axis_labels(chart, "x")[:3] == ["01:00", "02:00", "03:00"]
    assert "Timestamp (Europe/Berlin)" in texts(svg_root(chart), ".//text")


def test_timechart_without_series_draws_every_numeric_column() -> None:
    rows = [[wire(START + dt.timedelta(minutes=m)), m, m * 2.5] for m in range(30)]
    result = result_set([("Timestamp", "datetime"), ("Reads", "long"), ("Writes", "real")], rows)

    chart = render_chart(result, "timechart")

    assert legend(chart) == ["Reads", "Writes"]
    assert chart.columns_used == {"x": "Timestamp", "y": ["Reads", "Writes"]}
    assert "00:10" in axis_labels(chart, "x")


def test_timechart_keeps_the_largest_series() -> None:
    rows = [[wire(START), f"S{n:02d}", n] for n in range(1, 16)]
    result = result_set([("Timestamp", "datetime"), ("Name", "string"), ("Value", "long")], rows)

    chart = render_chart(result, "timechart")

    assert legend(chart) == [f"S{n:02d}" for n in range(15, 5, -1)]
    assert "Timestamp (UTC); top 10 of 15 series by total" in texts(svg_root(chart), ".//text")


def test_stacked_areas_sum_the_smallest_series_as_other() -> None:
    chart = render_chart(hourly({f"S{n:02d}": n for n in range(1, 15)}), "stackedareachart")

    names = legend(chart)
    assert names[:2] == ["S14", "S13"]
    assert names[-1] == OTHER
    assert len(names) == 11
    assert colours(chart)[OTHER] == THEMES["light"].other
    assert chart.columns_used["stacked"] == "stacked"


def test_a_linechart_of_numbers_draws_a_number_axis() -> None:
    result = result_set([("Size", "long"), ("Seconds", "real")], [[n * 10, n * n / 7] for n in range(500)])

    chart = render_chart(result, "linechart")

    assert chart.columns_used == {"x": "Size", "y": ["Seconds"]}
    across = axis_labels(chart, "x")
    assert "0" in across
    assert "5,000" in across
    assert len(across) <= 12


def test_a_linechart_over_time_draws_a_time_axis() -> None:
    rows = [[wire(START + dt.timedelta(days=n)), n % 5] for n in range(90)]
    result = result_set([("Day", "datetime"), ("Events", "long")], rows)

    chart = render_chart(result, "areachart")

    assert re.fullmatch(r"\d{4}-\d{2}-\d{2}", axis_labels(chart, "x")[0])
    assert svg_root(chart).find(f".//{SVG}path[@class='line reactive']") is not None  # filled


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


# --- what the query's render asks ------------------------------------------------------------


def test_columns_named_by_the_query_render_operator_win() -> None:
    rows = [[wire(START + dt.timedelta(hours=h)), "A", h, 10 - h] for h in range(5)]
    hints = Visualization(kind="timechart", x_column="Timestamp", y_columns=["Errors"], title="From Kusto")
    result = result_set(
        [("Timestamp", "datetime"), ("Host", "string"), ("Requests", "long"), ("Errors", "long")], rows, hints
    )

    chart = render_chart(result, "timechart")

    assert chart.columns_used == {"x": "Timestamp", "y": ["Errors"], "series": ["Host"]}
    assert "From Kusto" in texts(svg_root(chart), ".//text")
    assert "From the flow" in texts(
        svg_root(render_chart(result, "timechart", ChartOptions(title="From the flow"))), ".//text"
    )
    missing = result.model_copy(update={"visualization": Visualization(x_column="When")})
    with pytest.raises(ChartError, match="x column 'When', which is not in the result"):
        render_chart(missing, "timechart")


def test_axis_titles_and_legend_follow_the_query() -> None:
    hints = Visualization(x_title="Hour of day", y_title="Storms", legend="hidden")
    result = hourly({"TEXAS": 1, "IOWA": 2}).model_copy(update={"visualization": hints})

    chart = render_chart(result, "linechart")

    labels = texts(svg_root(chart), ".//text")
    assert "Hour of day" in labels
    assert "Storms" in labels
    assert legend(chart) == []


def test_accumulate_draws_running_totals() -> None:
    rows = [[f"D{n}", 10] for n in range(5)]
    result = result_set([("Day", "string"), ("Events", "long")], rows, Visualization(accumulate=True))

    chart = render_chart(result, "columnchart")

    values = [float(text) for text in texts(svg_root(chart), ".//desc[@class='value']")]
    assert values == [10, 20, 30, 40, 50]
    assert chart.columns_used["accumulate"] is True
    assert "Events, running total" in texts(svg_root(chart), ".//text")


def test_y_limits_from_the_query_bound_the_axis_and_clip_the_lines() -> None:
    rows = [[wire(START + dt.timedelta(hours=h)), h * 100] for h in range(24)]
    hints = Visualization(y_min=200, y_max=1000)
    result = result_set([("Timestamp", "datetime"), ("Load", "long")], rows, hints)

    chart = render_chart(result, "timechart")

    values = axis_labels(chart, "y")
    assert (values[0], values[-1]) == ("200", "1,000")
    assert (chart.columns_used["y_min"], chart.columns_used["y_max"]) == (200, 1000)
    root = svg_root(chart)
    clip = root.find(f".//{SVG}clipPath")
    assert clip is not None
    lines = [group for group in root.iter(f"{SVG}g") if (group.get("class") or "").startswith("series")]
    assert lines
    assert all(group.get("clip-path") == f"url(#{clip.get('id')})" for group in lines)


# --- readable at email size ------------------------------------------------------------------


def big_result(kind: str) -> ResultSet:
    """Enough of everything to crowd any axis: many categories, long spans, many series."""
    if kind in ("timechart", "linechart", "areachart", "stackedareachart"):
        rows = [
            [wire(START + dt.timedelta(minutes=37 * n)), f"S{n % 4}", 1_000_000 * math.sin(n / 50) + n]
            for n in range(4000)
        ]
        return result_set([("Timestamp", "datetime"), ("Series", "string"), ("Value", "real")], rows)
    rows = [[f"Category {n:03d}", f"S{n % 3}", 10 ** (n % 7) + n] for n in range(120)]
    return result_set([("Name", "string"), ("Series", "string"), ("Value", "long")], rows)


@pytest.mark.parametrize("kind", [kind for kind in CHART_KINDS if kind != "piechart"])
@pytest.mark.parametrize(("width", "height"), [(800, 450), (480, 300), (1600, 900)])
def test_no_axis_carries_more_than_twelve_labels(kind: str, width: int, height: int) -> None:
    chart = render_chart(big_result(kind), kind, ChartOptions(width=width, height=height))

    across, up = axis_labels(chart, "x"), axis_labels(chart, "y")
    assert 2 <= len(across) <= 12
    assert 2 <= len(up) <= 12
    assert_real_png(chart, width, height)


def test_a_long_series_is_downsampled_to_about_the_width() -> None:
    rows = [
        [wire(START + dt.timedelta(minutes=m)), 1000 + 500 * math.sin(m / 300) + (m % 7) * 10]
        for m in range(10_000)
    ]
    rows[7000][1] = 9000.0  # one spike, which the line must keep
    result = result_set([("Timestamp", "datetime"), ("Latency", "real")], rows)

    chart = render_chart(result, "timechart")

    assert_real_png(chart, 800, 450)
    path = svg_root(chart).find(f".//{SVG}path[@class='line reactive nofill']")
    assert path is not None
    points = re.findall(r"[-\d.]+ [-\d.]+", path.get("d", ""))
    assert 100 < len(points) <= 800
    # The spike is drawn: the line climbs above the 8,000 guide (SVG y grows downwards).
    guide = next(
        node
        for node in svg_root(chart).iterfind(".//g[@class='axis y always_show']/g/text", NS)
        if node.text == "8,000"
    )
    label_offset = 0.35 * 11  # pygal writes a value label a little below its guide
    assert min(float(point.split()[1]) for point in points) < float(guide.get("y", "0")) - label_offset


# --- themes and options ----------------------------------------------------------------------


def test_dark_theme_has_a_dark_background_light_text_and_distinct_series() -> None:
    chart = render_chart(hourly({"TEXAS": 3, "IOWA": 1, "OHIO": 2}), "timechart", ChartOptions(theme="dark"))

    image = assert_real_png(chart, 800, 450).convert("RGB")
    assert sum(image.getpixel((2, 2))) < 3 * 40  # type: ignore[arg-type]
    css = "".join(texts(svg_root(chart), ".//style"))
    assert f"fill:{THEMES['dark'].text}" in css
    by_name = colours(chart)
    assert len(set(by_name.values())) == 3
    assert set(by_name.values()) <= set(THEMES["dark"].palette)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"width": 10}, "chart width must be 100 to 4000 pixels, not 10"),
        ({"height": 99_999}, "chart height must be 100 to 4000 pixels, not 99999"),
        ({"theme": "sepia"}, "chart theme must be one of light, dark, not 'sepia'"),
    ],
)
def test_chart_options_are_checked(options: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        ChartOptions(**options)


# --- nothing to draw -------------------------------------------------------------------------


def test_empty_result_draws_no_rows() -> None:
    result = result_set([("State", "string"), ("Events", "long")], [])

    chart = render_chart(result, "barchart", ChartOptions(title="Nothing", width=400, height=300))

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

    chart = render_chart(result, "piechart", ChartOptions(title="ctl\x1b"))

    labels = texts(svg_root(chart), ".//text")
    assert "bell\N{REPLACEMENT CHARACTER}tab nul\N{REPLACEMENT CHARACTER}: 3 (60.0%)" in labels
    assert "(empty): 2 (40.0%)" in labels
    assert_real_png(chart, 800, 450)


def test_untitled_chart_has_no_placeholder_title() -> None:
    chart = render_chart(STORMS, "piechart")

    assert b"Pygal" not in chart.svg
