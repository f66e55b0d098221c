"""Refusing the operators the connector does not support, before a query is sent."""

from __future__ import annotations

import duckdb_kql
import pytest

from common.contracts.operators import (
    REFUSED_BY_DEFAULT,
    OperatorUse,
    describe,
    refused_operators,
)

#: Appended on a line of its own, makes any query unparseable without touching its earlier lines.
BROKEN_TAIL = "\n| where ("


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("T | fork (take 1) (take 2)", ("fork", 1, 5)),
        ("T | facet by State", ("facet", 1, 5)),
        ("T | evaluate bag_unpack(d)", ("evaluate", 1, 5)),
        ("print 1;\nT | fork (take 1)", ("fork", 2, 5)),
        ("let x = T | evaluate bag_unpack(d);\nx | take 1", ("evaluate", 1, 13)),
        ("let f = () { T | fork (take 1) };\nf()", ("fork", 1, 18)),
        ("union (T | evaluate bag_unpack(d)), U", ("evaluate", 1, 12)),
        ("T | join kind=inner (U | facet by s) on k", ("facet", 1, 26)),
        ("T\n| where x in ((U | evaluate bag_unpack(d) | project a))", ("evaluate", 2, 20)),
        ("T\n|\n    evaluate\n  bag_unpack(d)", ("evaluate", 3, 5)),
        ("T | // a comment between\n  fork (take 1)", ("fork", 2, 3)),
        ("T |\tfork (take 1)", ("fork", 1, 5)),  # a tab is one column, as the parser counts it
        ("T | evaluate hint.distribution=per_node bag_unpack(d)", ("evaluate", 1, 5)),
    ],
)
def test_finds_an_operator_where_it_stands(query: str, expected: tuple[str, int, int]) -> None:
    assert refused_operators(query) == [OperatorUse(*expected)]


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ('evaluate python(typeof(*), "result = df")', ("evaluate", 1, 1)),
        ("T | mv-apply x on (evaluate bag_unpack(d))", ("evaluate", 1, 20)),
        ("print n = toscalar(T | take 1);\nevaluate sql_request('c', 'q')", ("evaluate", 2, 1)),
    ],
)
def test_the_grammar_finds_operators_without_a_pipe(query: str, expected: tuple[str, int, int]) -> None:
    # Out of the lexical fallback's sight, so these pass only if the parse tree is read.
    assert refused_operators(query) == [OperatorUse(*expected)]
    assert refused_operators(query + BROKEN_TAIL) == []


@pytest.mark.parametrize(
    "query",
    [
        'T | where Name == "fork"',
        "T | where Name == '| fork'",
        "T | where Note == @'| evaluate it''s'",
        'T | where Note == "\\" | facet"',
        "T // evaluate later\n| take 1",
        "T | extend evaluate_score = 1",
        "T | project facet_count",
        "T | project ['fork']",
        "T | extend s = ```\n| fork (take 1)\n```",
        "T | extend forked = 1 | where forked > 0",
    ],
)
def test_ignores_names_strings_and_comments(query: str) -> None:
    assert duckdb_kql.validate(query) == []
    assert refused_operators(query) == []


@pytest.mark.parametrize(
    "query",
    [
        'T | where Name == "fork"',
        "T | where Name == '| fork'",
        "T | where Note == @'| evaluate it''s'",
        'T | where Note == "\\" | facet"',
        "T // | evaluate later\n| take 1",
        "T | extend evaluate_score = 1 | project facet_count",
        "T | project ['fork']",
        "T | extend s = ```\n| fork (take 1)\n```",
        "T | extend s = ~~~\n| fork (take 1)\n~~~",
        'T | extend s = h"| fork"',
    ],
)
def test_the_fallback_ignores_names_strings_and_comments(query: str) -> None:
    assert refused_operators(query + BROKEN_TAIL) == []


def test_finds_every_use_in_text_order() -> None:
    query = (
        "let a = T | facet by State;\n"
        "T\n"
        "| evaluate bag_unpack(d)\n"
        "| fork (take 1) (take 2);\n"
        "U | evaluate narrow()"
    )
    assert refused_operators(query) == [
        OperatorUse("facet", 1, 13),
        OperatorUse("evaluate", 3, 3),
        OperatorUse("fork", 4, 3),
        OperatorUse("evaluate", 5, 5),
    ]


def test_an_allowed_operator_passes() -> None:
    query = "T | evaluate bag_unpack(d) | fork (take 1)"
    assert refused_operators(query, allowed={"evaluate"}) == [OperatorUse("fork", 1, 30)]
    assert refused_operators(query, allowed=REFUSED_BY_DEFAULT) == []


def test_allowed_names_are_read_as_kusto_spells_them() -> None:
    query = "T | evaluate bag_unpack(d)"
    assert refused_operators(query, allowed=[" Evaluate "]) == []
    assert refused_operators(query, allowed={"join"}) == [OperatorUse("evaluate", 1, 5)]


def test_allowed_must_not_be_a_single_string() -> None:
    with pytest.raises(TypeError, match="allowed"):
        refused_operators("T | fork (take 1)", allowed="evaluate")


def test_unparseable_text_falls_back_to_the_lexical_scan() -> None:
    query = 'T\n| where Name == "| fork" // | facet\n| fork (take 1) (take 2)\n| where ('
    assert duckdb_kql.validate(query) != []
    assert refused_operators(query) == [OperatorUse("fork", 3, 3)]


@pytest.mark.parametrize(
    "query",
    [
        "T | fork (take 1) (take 2)",
        "print 1;\nT | fork (take 1)",
        "let x = T | evaluate bag_unpack(d);\nx | take 1",
        "union (T | evaluate bag_unpack(d)), U",
        "T\n|\n    evaluate\n  bag_unpack(d)",
        "T | // a comment between\n  fork (take 1)",
        "let a = T | facet by State;\nT\n| evaluate bag_unpack(d)\n| fork (take 1) (take 2)",
    ],
)
def test_the_fallback_places_uses_as_the_grammar_does(query: str) -> None:
    assert refused_operators(query + BROKEN_TAIL) == refused_operators(query) != []


def test_a_control_command_is_scanned() -> None:
    # A control command has no query tree; the query after `<|` is still checked.
    query = ".set-or-replace Report <|\n    T | evaluate bag_unpack(d)"
    assert refused_operators(query) == [OperatorUse("evaluate", 2, 9)]


def test_a_query_too_deep_for_the_parser_is_scanned() -> None:
    nested = "(" * 300 + "1" + ")" * 300
    query = f"T | where x == {nested}\n| fork (take 1)"
    assert refused_operators(query) == [OperatorUse("fork", 2, 3)]


def test_a_query_without_refused_operators_passes() -> None:
    assert refused_operators("StormEvents | where State == 'TEXAS' | take 10") == []
    assert refused_operators("") == []


def test_describe_names_the_operator_its_position_and_the_setting() -> None:
    assert describe([OperatorUse("fork", 1, 15)]) == (
        "the query uses 'fork' at line 1, column 15, which adxflow refuses "
        "(the connector does not support it); an operator may allow it with ADXFLOW_ALLOWED_OPERATORS"
    )


def test_describe_lists_every_use() -> None:
    uses = [OperatorUse("facet", 1, 13), OperatorUse("evaluate", 3, 3), OperatorUse("fork", 4, 3)]
    assert describe(uses) == (
        "the query uses 'facet' at line 1, column 13, 'evaluate' at line 3, column 3 and "
        "'fork' at line 4, column 3, which adxflow refuses (the connector does not support them); "
        "an operator may allow them with ADXFLOW_ALLOWED_OPERATORS"
    )


def test_describe_needs_a_use() -> None:
    with pytest.raises(ValueError, match="at least one"):
        describe([])
