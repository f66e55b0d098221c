"""The chart kinds adxflow draws, and which of them a query's own `render` operator asks for.

Kusto's `render` names a visualization and elaborates it with properties;
`from_query` maps that onto a kind drawn here (or onto none: the table alone)
and says why, so a report can explain a chart nobody asked for by name.
"""

from __future__ import annotations

from typing import Literal

from common.contracts.results import Visualization

CHART_KINDS = (
    "piechart",
    "barchart",
    "columnchart",
    "timechart",
    "linechart",
    "areachart",
    "stackedbarchart",
    "stackedcolumnchart",
    "stackedareachart",
)
#: Kinds whose x axis may be time, numbers or labels, whichever the columns are.
LINE_KINDS = frozenset({"linechart", "areachart", "stackedareachart"})
STACKED_KINDS = frozenset({"stackedbarchart", "stackedcolumnchart", "stackedareachart"})

#: How a stacked chart stacks: values on top of each other, or each stack scaled to 100%.
Stacking = Literal["stacked", "stacked100"]

#: Kusto's kinds that take a `kind=stacked` or `kind=stacked100` property, and their stacked form.
_STACKED_FORM = {
    "barchart": "stackedbarchart",
    "columnchart": "stackedcolumnchart",
    "areachart": "stackedareachart",
}
_DRAWN_AS_ASKED = frozenset({"piechart", "timechart", "linechart", "stackedareachart", *_STACKED_FORM})
_NAMES = {
    "piechart": "a pie chart",
    "barchart": "a bar chart",
    "columnchart": "a column chart",
    "timechart": "a time chart",
    "linechart": "a line chart",
    "areachart": "an area chart",
    "stackedbarchart": "a stacked bar chart",
    "stackedcolumnchart": "a stacked column chart",
    "stackedareachart": "a stacked area chart",
}


def from_query(visualization: Visualization | None) -> tuple[str | None, str]:
    """The kind to draw for the query's `render` (None: the table alone), and a note saying why."""
    asked = visualization.kind if visualization is not None else None
    if visualization is None or not asked:
        return None, "the query has no render operator: a table"
    kind = asked.lower()
    variant = (visualization.variant or "").lower()
    said = f"the query's render operator asks for {asked}"
    if kind == "table":
        return None, f"{said}: a table"
    if kind == "piechart" and variant == "map":
        return None, f"{said} with kind=map, which is drawn as a table"
    if kind == "anomalychart":
        drawn, note = "timechart", f"{said}: drawn as a time chart, without anomaly marks"
    elif kind not in _DRAWN_AS_ASKED:
        return None, f"{said}, which is drawn as a table"
    elif kind in _STACKED_FORM and variant in ("stacked", "stacked100"):
        drawn = _STACKED_FORM[kind]
        scaled = ", each stack scaled to 100%" if variant == "stacked100" else ""
        note = f"{said} with kind={variant}: {_NAMES[drawn]}{scaled}"
    else:
        drawn, note = kind, f"{said}: {_NAMES[kind]}"
    if visualization.accumulate:
        note += "; accumulate=true: running totals"
    return drawn, note


def stacking(kind: str, visualization: Visualization | None) -> Stacking | None:
    """How a chart of `kind` stacks: scaled to 100% only when the query's render asks for it."""
    if kind not in STACKED_KINDS:
        return None
    if visualization is not None and (visualization.variant or "").lower() == "stacked100":
        return "stacked100"
    return "stacked"
