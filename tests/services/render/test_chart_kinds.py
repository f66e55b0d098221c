"""What a query's own `render` operator asks for, mapped onto the kinds drawn here."""

from __future__ import annotations

from typing import Any

import pytest

from common.contracts.results import Visualization
from services.render.chart import CHART_KINDS, from_query
from services.render.chart_kinds import STACKED_KINDS, stacking


@pytest.mark.parametrize(
    ("asked", "kind", "note"),
    [
        ({"kind": "piechart"}, "piechart", "the query's render operator asks for piechart: a pie chart"),
        ({"kind": "barchart"}, "barchart", "the query's render operator asks for barchart: a bar chart"),
        (
            {"kind": "columnchart", "variant": "default"},
            "columnchart",
            "asks for columnchart: a column chart",
        ),
        (
            {"kind": "columnchart", "variant": "unstacked"},
            "columnchart",
            "asks for columnchart: a column chart",
        ),
        (
            {"kind": "columnchart", "variant": "stacked"},
            "stackedcolumnchart",
            "asks for columnchart with kind=stacked: a stacked column chart",
        ),
        (
            {"kind": "barchart", "variant": "stacked100"},
            "stackedbarchart",
            "asks for barchart with kind=stacked100: a stacked bar chart, each stack scaled to 100%",
        ),
        ({"kind": "areachart"}, "areachart", "asks for areachart: an area chart"),
        (
            {"kind": "areachart", "variant": "stacked"},
            "stackedareachart",
            "kind=stacked: a stacked area chart",
        ),
        ({"kind": "stackedareachart"}, "stackedareachart", "asks for stackedareachart: a stacked area chart"),
        ({"kind": "timechart"}, "timechart", "asks for timechart: a time chart"),
        ({"kind": "linechart"}, "linechart", "asks for linechart: a line chart"),
        ({"kind": "TimeChart"}, "timechart", "asks for TimeChart: a time chart"),
        (
            {"kind": "anomalychart"},
            "timechart",
            "asks for anomalychart: drawn as a time chart, without anomaly",
        ),
        (
            {"kind": "timechart", "accumulate": True},
            "timechart",
            "a time chart; accumulate=true: running totals",
        ),
        ({"kind": "table"}, None, "the query's render operator asks for table: a table"),
        ({"kind": "card"}, None, "asks for card, which is drawn as a table"),
        ({"kind": "pivotchart"}, None, "asks for pivotchart, which is drawn as a table"),
        ({"kind": "scatterchart"}, None, "asks for scatterchart, which is drawn as a table"),
        ({"kind": "3Dchart"}, None, "asks for 3Dchart, which is drawn as a table"),
        (
            {"kind": "piechart", "variant": "map"},
            None,
            "asks for piechart with kind=map, which is drawn as a table",
        ),
        ({}, None, "the query has no render operator: a table"),
    ],
)
def test_from_query(asked: dict[str, Any], kind: str | None, note: str) -> None:
    drawn, why = from_query(Visualization(**asked))

    assert drawn == kind
    assert note in why
    assert drawn is None or drawn in CHART_KINDS


def test_no_visualization_is_a_table() -> None:
    assert from_query(None) == (None, "the query has no render operator: a table")


@pytest.mark.parametrize(
    ("kind", "variant", "stacks"),
    [
        ("stackedcolumnchart", None, "stacked"),
        ("stackedcolumnchart", "stacked100", "stacked100"),
        ("stackedareachart", "Stacked100", "stacked100"),
        ("columnchart", "stacked100", None),
        ("timechart", None, None),
    ],
)
def test_stacking(kind: str, variant: str | None, stacks: str | None) -> None:
    assert stacking(kind, Visualization(variant=variant)) == stacks
    assert (stacks is not None) == (kind in STACKED_KINDS)
