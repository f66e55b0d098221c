"""The render gallery, run through the embedded pipeline: what recipients would see, checked by machine."""

from __future__ import annotations

import asyncio
import io
import re
import xml.etree.ElementTree as ET
from html.parser import HTMLParser
from pathlib import Path

import pytest
from PIL import Image

from common.platform.config import Settings
from services.launcher.gallery import EMAIL_ATTACHMENT, EMAIL_EXHIBITS, EXHIBITS, render_gallery

SVG = "{http://www.w3.org/2000/svg}"
HOSTILE = ("<script>alert(1)</script>", '"><img src=x onerror=alert(1)>')


@pytest.fixture(scope="module")
def gallery(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("gallery")
    settings = Settings(data_dir=tmp_path_factory.mktemp("data"), _env_file=None)  # type: ignore[call-arg]
    index = asyncio.run(render_gallery(out, settings))
    assert index == out / "index.html"
    return out


class Elements(HTMLParser):
    """Every start tag of an HTML page, with its attributes."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))


def elements(html: str) -> list[tuple[str, dict[str, str | None]]]:
    parser = Elements()
    parser.feed(html)
    return parser.tags


def svg(gallery: Path, name: str) -> ET.Element:
    return ET.fromstring((gallery / f"{name}.svg").read_bytes())


def axis_labels(root: ET.Element, axis: str) -> list[str]:
    found = []
    for group in root.iter(f"{SVG}g"):
        classes = (group.get("class") or "").split()
        if "axis" in classes and axis in classes:
            found.extend("".join(text.itertext()) for text in group.iter(f"{SVG}text"))
    return [label for label in found if label.strip()]


def test_the_index_links_every_exhibit_and_the_email(gallery: Path) -> None:
    links = {
        attrs.get("href") or attrs.get("src") for _, attrs in elements((gallery / "index.html").read_text())
    }
    for exhibit in EXHIBITS:
        assert f"{exhibit.id}.png" in links, exhibit.id
        assert (gallery / f"{exhibit.id}.png").is_file()
        assert (gallery / f"{exhibit.id}.svg").is_file()
    assert {"email.html", "email.eml"} <= links


@pytest.mark.parametrize("exhibit", [exhibit.id for exhibit in EXHIBITS])
def test_every_chart_is_a_png_of_the_asked_size_and_not_blank(gallery: Path, exhibit: str) -> None:
    image = Image.open(io.BytesIO((gallery / f"{exhibit}.png").read_bytes())).convert("RGB")
    assert image.size == (800, 450)
    background = image.getpixel((2, 2))
    painted = sum(count for count, colour in image.getcolors(800 * 450) or [] if colour != background)
    assert painted > 800 * 450 * 0.005, f"{exhibit} is nearly blank"


def test_an_empty_result_is_drawn_as_a_no_rows_image(gallery: Path) -> None:
    words = " ".join("".join(text.itertext()) for text in svg(gallery, "empty").iter(f"{SVG}text"))
    assert "no rows" in words


def test_a_long_time_series_keeps_its_axes_readable(gallery: Path) -> None:
    root = svg(gallery, "timechart_long")
    x_labels, y_labels = axis_labels(root, "x"), axis_labels(root, "y")
    assert 2 <= len(x_labels) <= 12, x_labels
    assert 2 <= len(y_labels) <= 12, y_labels
    # A year of hours is labelled by dates or months, not by times of day.
    assert all(not re.fullmatch(r"\d\d:\d\d", label) for label in x_labels), x_labels
    # Downsampled: a line's points number about the chart's width, not 8,760.
    widest = max(len((path.get("d") or "").split()) for path in root.iter(f"{SVG}path"))
    assert widest <= 2 * 800


def test_a_pie_of_many_states_shows_the_largest_and_other(gallery: Path) -> None:
    legend = [
        "".join(text.itertext())
        for group in svg(gallery, "pie_many").iter(f"{SVG}g")
        if group.get("class") == "legends"
        for text in group.iter(f"{SVG}text")
    ]
    assert 2 <= len(legend) <= 13, legend
    assert any(entry.startswith("Other") for entry in legend), legend


def test_hostile_text_is_shown_as_text_in_charts_tables_and_the_email(gallery: Path) -> None:
    raw = (gallery / "hostile.svg").read_bytes()
    root = ET.fromstring(raw)
    assert not [
        node.tag for node in root.iter() if node.tag in (f"{SVG}script", f"{SVG}img", f"{SVG}foreignObject")
    ]
    assert b"<script" not in raw
    assert b"<img" not in raw
    words = " ".join("".join(text.itertext()) for text in root.iter(f"{SVG}text"))
    assert HOSTILE[0] in words  # shown, as text

    for page in ("hostile.table.html", "email.html", "index.html"):
        html = (gallery / page).read_text()
        tags = elements(html)
        assert "script" not in {tag for tag, _ in tags}, page
        assert not [attrs for _, attrs in tags if any(name.startswith("on") for name in attrs)], page
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html, page
        assert "&#34;&gt;&lt;img src=x onerror=alert(1)&gt;" in html or "&quot;&gt;&lt;img" in html, page


def test_the_email_preview_shows_the_inline_charts_and_lists_the_attachment(gallery: Path) -> None:
    html = (gallery / "email.html").read_text()
    images = [attrs["src"] for tag, attrs in elements(html) if tag == "img" and attrs.get("src")]
    assert len([src for src in images if src and src.startswith("data:image/png;base64,")]) == len(
        EMAIL_EXHIBITS
    )
    assert f"{EMAIL_ATTACHMENT}.csv" in html
    sent = (gallery / "email.eml").read_bytes()
    assert b"\nSubject: adxflow gallery: " in sent.replace(b"\r\n", b"\n")


def series_colours(gallery: Path, name: str) -> dict[int, str]:
    """The stroke colour of each series (pygal's .color-N rules) of a chart."""
    style = " ".join(node.text or "" for node in svg(gallery, name).iter(f"{SVG}style"))
    return {
        int(index): colour
        for index, colour in re.findall(r"\.color-(\d+)[^{]*\{stroke:(#[0-9a-fA-F]{6})", style)
    }


def test_series_have_distinct_colours_and_keep_them_between_charts(gallery: Path) -> None:
    lines = series_colours(gallery, "timechart_series")
    areas = series_colours(gallery, "stacked_area")

    assert len(lines) == 5
    assert len(set(lines.values())) == 5
    assert len(set(areas.values())) == len(areas) == 4

    def legend_colours(chart: str) -> dict[str, str]:
        names = [
            "".join(text.itertext())
            for group in svg(gallery, chart).iter(f"{SVG}g")
            if group.get("class") == "legends"
            for text in group.iter(f"{SVG}text")
        ]
        colours = series_colours(gallery, chart)
        return {name: colours[index] for index, name in enumerate(names)}

    # Hail, Tornado, Flash Flood and Thunderstorm Wind are in both: the same name, the same colour.
    shared = legend_colours("timechart_series").items() & legend_colours("stacked_area").items()
    assert {name for name, _ in shared} == {"Hail", "Tornado", "Flash Flood", "Thunderstorm Wind"}
