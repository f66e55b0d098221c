"""Tabular operators the Power Automate Kusto connector refuses, found before the query is sent.

The connector rejects some operators outright, and a flow written against it
must not come to depend on them here. adxflow therefore refuses them itself,
naming the operator and where it is, unless the operator configuration allows
them (``ADXFLOW_ALLOWED_OPERATORS``).

An operator is found as an *operator*: by the parse tree of Kusto's own
grammar, the one duckdb-kql vendors and ``duckdb_kql.parse`` returns. A string
literal, a comment or a column named ``evaluate_score`` is not an operator, and
a ``let`` body, a subquery or a later statement is still the query.

Text that grammar cannot read falls back to a lexical scan (see
:func:`_scan`): a control command (it has no query tree), a query in newer
syntax than the pinned grammar, or one nested too deeply for ANTLR's recursive
descent. The scan skips string literals and comments and matches a keyword
only where it directly follows a ``|``, ignoring whitespace and comments in
between, which is where a tabular operator stands in a pipeline.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["REFUSED_BY_DEFAULT", "OperatorUse", "describe", "refused_operators"]

#: Operators the connector refuses; `evaluate` covers every plugin (`evaluate bag_unpack(...)`).
REFUSED_BY_DEFAULT: frozenset[str] = frozenset({"fork", "facet", "evaluate"})

#: The grammar's rule for each refused operator, by its context class name (`Kql.g4`,
#: pinned with duckdb-kql). The tree's classes are matched by name, as
#: `services.embedded.kusto.endpoint` does, so nothing imports duckdb-kql's private ANTLR module.
_RULES = {
    "ForkOperatorContext": "fork",
    "FacetByOperatorContext": "facet",
    "EvaluateOperatorContext": "evaluate",
}


@dataclass(frozen=True)
class OperatorUse:
    """One use of an operator in the query text; `line` and `column` are 1-based."""

    operator: str
    line: int
    column: int


def refused_operators(query: str, *, allowed: Collection[str] = ()) -> list[OperatorUse]:
    """Every use in *query* of an operator the connector refuses and *allowed* does not name.

    Uses come in the order they appear in the text. *allowed* names operators
    as Kusto spells them (`evaluate`); names outside :data:`REFUSED_BY_DEFAULT`
    change nothing.
    """
    if isinstance(allowed, str):  # a str is a Collection[str] of its letters
        raise TypeError("allowed must be a collection of operator names, not one str")
    refused = REFUSED_BY_DEFAULT - {name.strip().lower() for name in allowed}
    # A refused operator is spelled out in the text, so most queries need no parse.
    if not any(name in query for name in refused):
        return []
    # Imported only here: the grammar's generated parser holds some 80 MB, which a worker whose
    # queries name no refused operator never needs.
    import duckdb_kql
    from duckdb_kql import KqlSyntaxError

    try:
        tree = duckdb_kql.parse(query).tree
    except (KqlSyntaxError, RecursionError):
        tree = None
    uses = _scan(query, refused) if tree is None else _from_tree(tree, refused)
    return sorted(uses, key=lambda use: (use.line, use.column))


def describe(uses: Sequence[OperatorUse]) -> str:
    """The refusal, naming each operator and its position, and how to allow it."""
    if not uses:
        raise ValueError("describe() needs at least one operator use")
    where = [f"{use.operator!r} at line {use.line}, column {use.column}" for use in uses]
    listed = where[0] if len(where) == 1 else ", ".join(where[:-1]) + " and " + where[-1]
    pronoun = "it" if len({use.operator for use in uses}) == 1 else "them"
    return (
        f"the query uses {listed}, which adxflow refuses (the connector does not support {pronoun}); "
        f"an operator may allow {pronoun} with ADXFLOW_ALLOWED_OPERATORS"
    )


def _from_tree(tree: Any, refused: frozenset[str]) -> Iterator[OperatorUse]:
    """Uses found in the ANTLR parse tree; each is placed at its keyword, the rule's first token."""
    # Iterative: a tree deep enough to parse can still be too deep to walk recursively.
    pending = [tree]
    while pending:
        node = pending.pop()
        operator = _RULES.get(type(node).__name__)
        if operator in refused:
            yield OperatorUse(operator, node.start.line, node.start.column + 1)
        pending.extend(getattr(node, "children", None) or ())  # a terminal has none, a rule may have None


# The lexical scan. KQL is case-sensitive (`EVALUATE` is not an operator), and
# its comments are `//` to the end of the line; there is no block comment.
_WORD = re.compile(r"[A-Za-z0-9_]+")
_SPACE = re.compile(r"\s+")
_COMMENT = re.compile(r"//[^\n]*")
_FENCED = re.compile(r"```.*?(?:```|\Z)|~~~.*?(?:~~~|\Z)", re.DOTALL)
# A regular string ends at its quote, skipping `\` escapes, or, unterminated, at the line's end.
_QUOTED = re.compile(r"'(?:[^'\\\n]|\\.)*(?:'|$)|\"(?:[^\"\\\n]|\\.)*(?:\"|$)", re.MULTILINE)
# A verbatim string has no escapes; a doubled quote stands for one.
_VERBATIM = re.compile(r"@(?:'(?:[^'\n]|'')*(?:'|$)|\"(?:[^\"\n]|\"\")*(?:\"|$))", re.MULTILINE)
_SKIPPED = (_SPACE, _COMMENT, _FENCED, _VERBATIM, _QUOTED)


def _scan(text: str, refused: frozenset[str]) -> Iterator[OperatorUse]:
    """Refused keywords directly after a `|`, outside strings and comments.

    `<|` (a control command's query) ends in `|` as well, so its first operator
    is found too. What the scan cannot see is an operator that opens a
    statement or a parenthesized subquery without a pipe (`evaluate
    python(...)` alone): that takes the grammar.
    """
    position = 0
    after_pipe = False
    while position < len(text):
        for pattern in _SKIPPED:
            skipped = pattern.match(text, position)
            if skipped and skipped.end() > position:
                # Whitespace and comments keep a pipe pending; a literal ends it.
                after_pipe = after_pipe and pattern in (_SPACE, _COMMENT)
                position = skipped.end()
                break
        else:
            word = _WORD.match(text, position)
            if word:
                if after_pipe and word.group() in refused:
                    line_start = text.rfind("\n", 0, position) + 1
                    yield OperatorUse(
                        word.group(), text.count("\n", 0, position) + 1, position - line_start + 1
                    )
                after_pipe = False
                position = word.end()
            else:
                after_pipe = text[position] == "|"
                position += 1
