"""Series colours: the same name, the same colour in every chart; distinct within one; Other grey."""

from __future__ import annotations

import datetime as dt
import re
import xml.etree.ElementTree as ET
from itertools import combinations

from common.contracts.results import Column, ResultSet
from services.render.chart import OTHER, RenderedChart, render_chart
from services.render.chart_style import THEMES, series_colours

SVG = "{http://www.w3.org/2000/svg}"
LIGHT, DARK = THEMES["light"], THEMES["dark"]


def chart_of(states: list[str], kind: str) -> RenderedChart:
    start = dt.datetime(2024, 3, 1, tzinfo=dt.UTC)
    rows = [
        [(start + dt.timedelta(hours=hour)).strftime("%Y-%m-%dT%H:%M:%SZ"), state, hour + rank]
        for hour in range(6)
        for rank, state in enumerate(states)
    ]
    columns = [
        Column(name="T", type="datetime"),
        Column(name="State", type="string"),
        Column(name="N", type="long"),
    ]
    return render_chart(ResultSet(columns=columns, rows=rows), kind)


def drawn_colours(chart: RenderedChart) -> dict[str, str]:
    """Each legend entry's colour, as the chart's CSS gives its colour class."""
    root = ET.fromstring(chart.svg)
    css = "".join(node.text or "" for node in root.iter(f"{SVG}style"))
    by_class = dict(re.findall(r"\.color-(\d+),[^{]*\{stroke:(#[0-9a-f]{6});fill:#[0-9a-f]{6}\}", css))
    found = {}
    for entry in root.iter(f"{SVG}g"):
        if entry.get("class") == "legend reactive activate-serie":
            box, name = entry.find(f"{SVG}rect"), entry.find(f"{SVG}text")
            assert box is not None
            assert name is not None
            assert name.text is not None
            found[name.text] = by_class[box.get("class", "").split()[0].removeprefix("color-")]
    return found


def test_a_series_keeps_its_colour_across_charts() -> None:
    first = drawn_colours(chart_of(["TEXAS", "IOWA", "KANSAS"], "timechart"))
    second = drawn_colours(chart_of(["OHIO", "TEXAS", "GEORGIA", "NEBRASKA"], "stackedareachart"))

    assert first["TEXAS"] == second["TEXAS"]
    assert len(set(first.values())) == 3
    assert len(set(second.values())) == 4


def test_colours_depend_on_the_name_not_the_process() -> None:
    # A fixed digest of the name, not Python's per-process string hash.
    assert series_colours(["TEXAS", "IOWA"], LIGHT) == ["#e15759", "#4e79a7"]
    assert series_colours(["IOWA", "TEXAS"], LIGHT) == ["#4e79a7", "#e15759"]


def test_names_that_share_a_colour_are_told_apart() -> None:
    names = [f"series {n}" for n in range(len(LIGHT.palette))]

    for theme in (LIGHT, DARK):
        assert sorted(series_colours(names, theme)) == sorted(theme.palette)


def test_other_is_grey_and_not_a_series_colour() -> None:
    assigned = series_colours(["A", OTHER, "B"], LIGHT)

    assert assigned[1] == LIGHT.other
    assert LIGHT.other not in LIGHT.palette
    assert DARK.other not in DARK.palette


def test_more_names_than_colours_still_get_one_each() -> None:
    names = [f"n{n}" for n in range(30)]

    assert len(series_colours(names, LIGHT)) == 30


def luminance(colour: str) -> float:
    red, green, blue = (int(colour[index : index + 2], 16) / 255 for index in (1, 3, 5))
    return 0.2126 * red + 0.7152 * green + 0.0722 * blue


def test_each_palette_stands_out_from_its_background_and_within_itself() -> None:
    for theme in (LIGHT, DARK):
        for colour in theme.palette:
            assert abs(luminance(colour) - luminance(theme.background)) > 0.2, (theme, colour)
        for one, other in combinations(theme.palette, 2):
            distance = sum(abs(int(one[i : i + 2], 16) - int(other[i : i + 2], 16)) for i in (1, 3, 5))
            assert distance > 60, (one, other)
    assert luminance(DARK.background) < 0.1 < 0.9 < luminance(DARK.text)
