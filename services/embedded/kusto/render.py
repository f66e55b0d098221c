"""The trailing `render` operator, reported as Kusto's Visualization properties.

The engine runs a query ending in `render` but always reports
`"Visualization": null`. A trailing `render <kind> with (...)` is read from
duckdb-kql's parse tree and the v2 response's QueryProperties table carries
Kusto's Visualization object for it; a property it cannot report faithfully
is a 400 naming the property.
"""

from __future__ import annotations

import json
import re
from typing import Any

import duckdb_kql
from duckdb_kql import KqlError

from services.embedded.kusto.literals import NUMBER, RequestRefused

__all__ = ["RENDER_KINDS", "RenderRefused", "shown_visualization", "visualization", "with_visualization"]

#: The chart kinds Kusto's `render` draws, spelled as Kusto spells them. The
#: grammar also lets any identifier through in that place; Kusto refuses those.
RENDER_KINDS = frozenset(
    {
        "table",
        "piechart",
        "barchart",
        "columnchart",
        "areachart",
        "linechart",
        "timechart",
        "scatterchart",
        "anomalychart",
        "stackedareachart",
        "pivotchart",
        "card",
        "ladderchart",
        "treemap",
        "timepivot",
        "3Dchart",
        "plotly",
    }
)

#: The Visualization object of a query without `render`, in Kusto's key order:
#: the one duckdb-kql sends with every v2 response.
_NO_VISUALIZATION: dict[str, Any] = {
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

#: The key each `with (...)` property fills. `xmin` and `xmax` are left out:
#: their value may be any literal, and how Kusto writes a datetime one in this
#: object is not known here, so they are refused rather than guessed.
_RENDER_PROPERTIES = {
    "title": "Title",
    "xtitle": "XTitle",
    "ytitle": "YTitle",
    "xcolumn": "XColumn",
    "ycolumns": "YColumns",
    "series": "Series",
    "anomalycolumns": "AnomalyColumns",
    "kind": "Kind",
    "xaxis": "XAxis",
    "yaxis": "YAxis",
    "legend": "Legend",
    "ysplit": "YSplit",
    "accumulate": "Accumulate",
    "ymin": "Ymin",
    "ymax": "Ymax",
}

_STRING_LITERAL = re.compile(r"[hH]?(?P<verbatim>@?)(?P<quote>['\"])(?P<body>.*)(?P=quote)", re.DOTALL)
_MULTILINE_LITERAL = re.compile(r"[hH]?(?P<fence>```|~~~)(?P<body>.*)(?P=fence)", re.DOTALL)
_STRING_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "0": "\0", "\\": "\\", "'": "'", '"': '"'}


class RenderRefused(RequestRefused):
    """A trailing `render` whose request this endpoint cannot report as Kusto would."""


def visualization(csl: str) -> dict[str, Any] | None:
    """The Visualization object Kusto reports for *csl*'s trailing `render`.

    None when the query does not end in `render`, and when it does not parse:
    the engine answers that with its own syntax error. duckdb-kql lowers
    `render` to nothing, so it is read here from the engine's own parse tree,
    the ANTLR tree of its pinned grammar that `duckdb_kql.parse` returns.
    A value the grammar allows but this endpoint cannot report faithfully
    (`title=strcat(...)`, `xmin=...`, an unknown chart kind) is refused.
    """
    if "render" not in csl:  # spares every other query a second parse
        return None
    try:
        tree = duckdb_kql.parse(csl).tree
    except KqlError:
        return None
    render = _trailing_render(tree)
    if render is None:
        return None
    kind = render.CharType.text
    if kind not in RENDER_KINDS:
        raise RenderRefused(
            f"render {kind!r:.40} is not a chart kind: Kusto draws {', '.join(sorted(RENDER_KINDS))}"
        )
    if render.LegacyPropertyList is not None:
        raise RenderRefused("render properties are read here only in their `with (name=value, ...)` form")
    shown = dict(_NO_VISUALIZATION, Visualization=kind)
    properties = render.WithClause.Properties if render.WithClause is not None else []
    given: set[str] = set()
    for node in properties:
        name = node.Name.text
        key = _RENDER_PROPERTIES.get(name)
        if key is None:
            raise RenderRefused(f"render property {name} is not supported here")
        if name in given:
            raise RenderRefused(f"render property {name} is given twice")
        given.add(name)
        shown[key] = _render_value(node, name)
    return shown


def _trailing_render(tree: Any) -> Any:
    """The `render` operator that ends the query's last statement, if one does."""
    if tree is None:  # a control command
        return None
    statements = tree.query().Statements
    statement = statements[-1].Query if statements else None
    if statement is None:  # a `let` or `declare` last
        return None
    operators = getattr(statement.Expression.getChild(0), "PipedOperators", None)
    if not operators:
        return None
    last = operators[-1].Operator.getChild(0)
    return last if type(last).__name__ == "RenderOperatorContext" else None


def _render_value(node: Any, name: str) -> Any:
    """The value of one `with (...)` property, by the form the grammar read it in."""
    if node.ExpressionValue is not None:  # title, xtitle, ytitle
        return "".join(_string_literal(token, name) for token in _tokens(node.ExpressionValue))
    if node.NameValue is not None:  # xcolumn
        return _column_name(node.NameValue, name)
    if node.NameListValue is not None:  # ycolumns, series, anomalycolumns: Kusto's "a,b"
        return ",".join(_column_name(column, name) for column in node.NameListValue.Names)
    if node.TokenValue is not None:  # kind, xaxis, yaxis, legend, ysplit
        return node.TokenValue.text
    if node.BoolValue is not None:  # accumulate
        return node.BoolValue.text == "true"
    if node.NumberValue is not None:  # ymin, ymax
        text = node.NumberValue.getText()
        if not NUMBER.fullmatch(text):
            raise RenderRefused(f"render property {name} must be a plain number, not {text!r:.40}")
        return float(text)
    raise RenderRefused(f"render property {name} is not supported here")


def _tokens(node: Any) -> list[str]:
    """The text of each token under *node*, in order; `getText()` would glue them."""
    if node.getChildCount() == 0:
        return [node.getText()]
    return [text for child in node.getChildren() for text in _tokens(child)]


def _column_name(node: Any, name: str) -> str:
    tokens = _tokens(node)
    if len(tokens) == 1:  # an identifier, or a keyword used as one
        return tokens[0]
    if len(tokens) > 2 and tokens[0] == "[" and tokens[-1] == "]":  # ['a name']
        return "".join(_string_literal(token, name) for token in tokens[1:-1])
    raise RenderRefused(f"render property {name} names a column as {''.join(tokens)!r:.40}, not read here")


def _string_literal(token: str, name: str) -> str:
    """One KQL string literal token, decoded: quoted, `@` verbatim, `h` hidden or fenced."""
    fenced = _MULTILINE_LITERAL.fullmatch(token)
    if fenced is not None:
        return fenced.group("body")
    quoted = _STRING_LITERAL.fullmatch(token)
    if quoted is None:
        raise RenderRefused(f"render property {name} must be a string literal, not {token!r:.40}")
    body, quote = quoted.group("body"), quoted.group("quote")
    if quoted.group("verbatim"):
        return body.replace(quote * 2, quote)
    out: list[str] = []
    escaped = iter(body)
    for char in escaped:
        if char == "\\":
            code = next(escaped, "")
            if code not in _STRING_ESCAPES:
                raise RenderRefused(f"render property {name}: the escape \\{code} is not read here")
            char = _STRING_ESCAPES[code]
        out.append(char)
    return "".join(out)


def shown_visualization(path: str, body: bytes) -> str | None:
    """The Visualization value a v2 query's response carries, or None to leave the stock one."""
    if b"render" not in body or path.split("?", 1)[0].rstrip("/") != "/v2/rest/query":
        return None
    try:
        request = json.loads(body)
    except ValueError:
        return None  # the stock handler answers a malformed body
    csl = request.get("csl") if isinstance(request, dict) else None
    shown = visualization(csl) if isinstance(csl, str) else None
    return None if shown is None else json.dumps(shown)


def with_visualization(frame: Any, shown: str) -> Any:
    if not isinstance(frame, dict) or frame.get("TableKind") != "QueryProperties":
        return frame
    rows = [[*row[:2], shown] if row[1] == "Visualization" else row for row in frame["Rows"]]
    return {**frame, "Rows": rows}
