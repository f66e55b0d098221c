"""Scope steps in a flow document: which steps each step can use, and refusals that name the field."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from common.contracts.actions import field_path
from common.contracts.flows import Flow, child_itinerary, itinerary
from common.platform.http import invalid_request


def _query(step_id: str, **extra: Any) -> dict[str, Any]:
    return {"id": step_id, "action": "run_query", "query": "StormEvents | take 10", **extra}


def _email(step_id: str, **extra: Any) -> dict[str, Any]:
    return {"id": step_id, "action": "send_email", "to": ["team@example.com"], "subject": "s", **extra}


def _for_each(step_id: str, source: str, *steps: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"id": step_id, "for_each": source, "steps": list(steps), **extra}


def _parallel(step_id: str, **branches: list[dict[str, Any]]) -> dict[str, Any]:
    return {"id": step_id, "parallel": [{"id": name, "steps": steps} for name, steps in branches.items()]}


def _if(step_id: str, then: list[dict[str, Any]], otherwise: list[dict[str, Any]]) -> dict[str, Any]:
    return {"id": step_id, "if": "{{ steps.src.row_count > 0 }}", "then": then, "else": otherwise}


def flow(*steps: dict[str, Any]) -> dict[str, Any]:
    return {"name": "scoped", "connection": "local", "database": "Samples", "steps": list(steps)}


def refusal(document: dict[str, Any]) -> tuple[str, str]:
    """The one problem pydantic found, as (field path, message) the way the API reports it."""
    with pytest.raises(ValidationError) as raised:
        Flow.model_validate(document)
    [error] = raised.value.errors()
    if error["type"] == "value_error":
        field, _, message = str(error["ctx"]["error"]).partition(": ")
        return field, message
    return field_path(error["loc"]), error["msg"]


def test_a_step_inside_a_scope_refers_to_a_step_the_flow_does_not_have() -> None:
    document = flow(
        _query("src"),
        _for_each("each", "src", _query("count", when="{{ steps.nowhere.row_count > 0 }}")),
    )

    assert refusal(document) == (
        "steps[1].steps[0].when",
        "refers to step 'nowhere', which the flow does not have",
    )


def test_a_template_using_a_later_step_is_refused_as_a_cycle() -> None:
    document = flow(
        _query("src"),
        _for_each("each", "src", _email("mail", subject="{{ steps.later.row_count }}")),
        _query("later"),
    )

    field, message = refusal(document)

    assert field == "steps[1].steps[0].subject"
    assert message.startswith("refers to step 'later', which runs after it")
    assert "cycle" in message


def test_a_for_each_over_a_step_that_is_not_a_query_is_refused() -> None:
    document = flow(_query("src"), _email("mail"), _for_each("each", "mail", _query("count")))

    assert refusal(document) == ("steps[2].for_each", "'mail' is not an earlier query step")


def test_a_for_each_over_a_later_query_is_refused() -> None:
    field, message = refusal(flow(_for_each("each", "src", _query("count")), _query("src")))

    assert field == "steps[0].for_each"
    assert "runs after it" in message


@pytest.mark.parametrize(
    ("steps", "field"),
    [
        ([_query("src"), _email("mail", subject="{{ row.State }}")], "steps[1].subject"),
        (
            [_query("src"), _parallel("par", a=[_email("mail", subject="{{ row.State }}")], b=[_query("b")])],
            "steps[1].parallel[0].steps[0].subject",
        ),
        (
            [_query("src"), _if("check", [_query("t", when="{{ row.State }}")], [])],
            "steps[1].then[0].when",
        ),
    ],
)
def test_row_outside_a_for_each_is_refused(steps: list[dict[str, Any]], field: str) -> None:
    assert refusal(flow(*steps)) == (
        field,
        "'row' is defined only inside a for_each step's steps (or in a delivery with for_each, or an alert "
        "with key_columns)",
    )


def test_row_inside_a_for_each_at_any_depth_is_accepted() -> None:
    Flow.model_validate(
        flow(
            _query("src"),
            _for_each(
                "each",
                "src",
                _if("check", [_email("mail", subject="{{ row.State }}")], []),
                _parallel("par", a=[_query("a", when="{{ row.State }}")], b=[_query("b")]),
            ),
        )
    )


def test_a_step_after_a_for_each_cannot_use_a_step_inside_it() -> None:
    document = flow(
        _query("src"),
        _for_each("each", "src", _query("inner")),
        _email("mail", subject="{{ steps.inner.row_count }}"),
    )

    assert refusal(document) == (
        "steps[2].subject",
        "refers to step 'inner', which runs once per row inside for_each 'each'; use steps.each.iterations",
    )


def test_a_step_after_a_for_each_iterates_its_iterations_not_an_inner_step() -> None:
    document = flow(
        _query("src"),
        _for_each("each", "src", _query("inner")),
        _for_each("again", "inner", _query("more")),
    )

    field, message = refusal(document)

    assert field == "steps[2].for_each"
    assert "inside for_each 'each'" in message


@pytest.mark.parametrize(
    ("branches", "field", "used", "branch"),
    [
        (
            {"a": [_query("qa")], "b": [_email("mb", subject="{{ steps.qa.row_count }}")]},
            "steps[1].parallel[1].steps[0].subject",
            "qa",
            "a",
        ),
        (
            {"a": [_email("ma", subject="{{ steps.qb.row_count }}")], "b": [_query("qb")]},
            "steps[1].parallel[0].steps[0].subject",
            "qb",
            "b",
        ),
        (
            {"a": [_query("qa")], "b": [_for_each("each", "qa", _query("inner"))]},
            "steps[1].parallel[1].steps[0].for_each",
            "qa",
            "a",
        ),
        (
            {
                "a": [_query("qa")],
                "b": [_for_each("each", "src", _email("mb", subject="{{ steps.qa.row_count }}"))],
            },
            "steps[1].parallel[1].steps[0].steps[0].subject",
            "qa",
            "a",
        ),
    ],
)
def test_a_step_of_one_parallel_branch_cannot_use_a_step_of_another(
    branches: dict[str, list[dict[str, Any]]], field: str, used: str, branch: str
) -> None:
    document = flow(_query("src"), _parallel("par", **branches))

    assert refusal(document) == (
        field,
        f"refers to step {used!r}, which runs at the same time in branch {branch!r} of parallel 'par'; "
        "the steps after 'par' can use it",
    )


def test_a_branch_uses_its_own_earlier_steps_and_the_steps_after_the_parallel_use_every_branch() -> None:
    Flow.model_validate(
        flow(
            _query("src"),
            _parallel(
                "par",
                a=[_query("qa"), _email("ma", subject="{{ steps.qa.row_count }} {{ steps.src.row_count }}")],
                b=[_query("qb")],
            ),
            _email("after", subject="{{ steps.qa.row_count }} {{ steps.qb.row_count }}"),
        )
    )


def test_the_else_branch_cannot_use_a_step_of_the_then_branch() -> None:
    document = flow(
        _query("src"),
        _if("check", [_query("qt")], [_email("me", subject="{{ steps.qt.row_count }}")]),
    )

    assert refusal(document) == (
        "steps[1].else[0].subject",
        "refers to step 'qt', which is in the then branch of if 'check': only one of the two runs",
    )


def test_the_steps_after_an_if_use_either_branch() -> None:
    Flow.model_validate(
        flow(
            _query("src"),
            _if("check", [_query("qt")], [_query("qe")]),
            _email("mail", subject="{{ steps.qt.row_count }} {{ steps.qe.row_count }}"),
        )
    )


@pytest.mark.parametrize(
    ("scope", "field", "kind"),
    [
        (
            _for_each("each", "src", _email("mail", subject="{{ steps.each.total }}")),
            "steps[1].steps[0]",
            "for_each",
        ),
        (
            _for_each("each", "src", _if("check", [_query("deep", when="{{ steps.each.failed == 0 }}")], [])),
            "steps[1].steps[0].then[0]",
            "for_each",
        ),
        (
            {
                "id": "each",
                "parallel": [
                    {"id": "a", "steps": [_email("mail", subject="{{ steps.each.total }}")]},
                    {"id": "b", "steps": [_query("b")]},
                ],
            },
            "steps[1].parallel[0].steps[0]",
            "parallel",
        ),
    ],
)
def test_a_step_inside_a_for_each_or_parallel_cannot_use_the_step_it_runs_in(
    scope: dict[str, Any], field: str, kind: str
) -> None:
    found, message = refusal(flow(_query("src"), scope))

    assert found in (f"{field}.subject", f"{field}.when")
    assert message == (
        f"refers to step 'each', which it runs inside: {kind} 'each' has an outcome only once its child "
        "runs end (the steps after it can use it)"
    )


def test_a_step_inside_an_if_uses_the_if_which_has_decided_and_the_steps_after_a_scope_use_it() -> None:
    Flow.model_validate(
        flow(
            _query("src"),
            _if("check", [_email("mail", subject="{{ steps.check.branch }}")], []),
            _for_each("each", "src", _query("inner")),
            _email("after", subject="{{ steps.each.total }} of {{ steps.each.succeeded }}"),
        )
    )


@pytest.mark.parametrize(
    ("inner", "field", "said"),
    [
        (_query("inner", query=".show tables"), "steps[1].steps[0].query", "is a control command"),
        (_query("inner", cache_minutes=5), "steps[1].steps[0].cache_minutes", "Extra inputs"),
        (_query("src"), "steps[1].steps[0].id", "'src' is used by an earlier step"),
        (_query("join"), "steps[1].steps[0].id", "'join' is reserved"),
        ({"id": "odd", "query": "StormEvents"}, "steps[1].steps[0]", "names its 'action'"),
    ],
)
def test_a_problem_inside_a_for_each_names_the_nested_field(
    inner: dict[str, Any], field: str, said: str
) -> None:
    found, message = refusal(flow(_query("src"), _for_each("each", "src", inner)))

    assert found == field
    assert said in message


NESTED = flow(
    _query("src"),
    _for_each("each", "src", _if("check", [_query("t")], [_email("e")]), _email("mail")),
    _parallel("par", left=[_query("l")], right=[_query("r1"), _email("r2")]),
    _email("after"),
)


def test_the_parents_slip_holds_each_scope_step_once_and_an_ifs_branches_in_line() -> None:
    document = Flow.model_validate(NESTED)

    slip = [(step.id, step.kind.value) for step in itinerary(document)]

    assert slip == [
        ("trigger", "trigger"),
        ("src", "query"),
        ("each", "scope"),
        ("par", "scope"),
        ("after", "notify"),
        ("record", "record"),
    ]


def test_a_child_runs_slip_holds_its_scopes_steps_and_ends_in_the_join() -> None:
    document = Flow.model_validate(NESTED)

    iteration = [(step.id, step.kind.value) for step in child_itinerary(document, "each")]
    branch = [step.id for step in child_itinerary(document, "par", "right")]

    assert iteration == [
        ("trigger", "trigger"),
        ("check", "scope"),
        ("t", "query"),
        ("e", "notify"),
        ("mail", "notify"),
        ("join", "scope"),
        ("record", "record"),
    ]
    assert branch == ["trigger", "r1", "r2", "join", "record"]


@pytest.mark.parametrize(
    ("scope", "branch"), [("par", "middle"), ("par", None), ("src", None), ("check", None)]
)
def test_a_child_slip_of_no_such_scope_or_branch_is_a_lookup_error(scope: str, branch: str | None) -> None:
    with pytest.raises(LookupError, match=repr(scope)):
        child_itinerary(Flow.model_validate(NESTED), scope, branch)


def test_places_number_every_step_in_document_order_with_its_scope_branch_and_guards() -> None:
    places = Flow.model_validate(NESTED).places

    assert [(step_id, place.order) for step_id, place in places.items()] == [
        (step_id, order)
        for order, step_id in enumerate(
            ["src", "each", "check", "t", "e", "mail", "par", "l", "r1", "r2", "after"]
        )
    ]
    assert places["e"].where == "steps[1].steps[0].else[0]"
    assert (places["e"].scope, places["e"].guards, places["e"].in_row_scope) == (
        "each",
        (("check", "else"),),
        True,
    )
    assert (places["r2"].where, places["r2"].scope, places["r2"].branch) == (
        "steps[2].parallel[1].steps[1]",
        "par",
        "right",
    )
    assert places["r2"].in_row_scope is False
    assert (places["after"].scope, places["after"].guards) == (None, ())


@pytest.mark.parametrize(
    ("scope", "field", "said"),
    [
        ({"id": "c", "if": "", "then": [_query("t")]}, "steps[1].if", "at least 1 character"),
        (
            {"id": "c", "if": "{{ 1 }}", "else": [_query("t", cache=1)]},
            "steps[1].else[0].cache",
            "Extra inputs",
        ),
        (
            _parallel("p", a=[_query("t", cache=1)], b=[_query("u")]),
            "steps[1].parallel[0].steps[0].cache",
            "Extra",
        ),
        (_parallel("p", a=[_query("t")]), "steps[1].parallel", "at least 2 items"),
        (_for_each("e", "bad id", _query("t")), "steps[1].for_each", "should match pattern"),
        (_for_each("e", "src"), "steps[1].steps", "at least 1 item"),
        (
            _for_each("e", "src", _query("t"), concurrency=0),
            "steps[1].concurrency",
            "greater than or equal to 1",
        ),
        (
            _for_each("e", "src", _query("t"), max_items=100_001),
            "steps[1].max_items",
            "less than or equal to",
        ),
    ],
)
def test_a_malformed_scope_step_is_refused_naming_its_field_as_written(
    scope: dict[str, Any], field: str, said: str
) -> None:
    found, message = refusal(flow(_query("src"), scope))

    assert found == field
    assert said in message


def test_an_alert_inside_a_for_each_is_refused_naming_the_field() -> None:
    inner = {"id": "q", "action": "run_query", "query": "T | take 1", "alert": {}}
    assert refusal(
        flow(
            {"id": "src", "action": "run_query", "query": "T | take 3"},
            {"id": "each", "for_each": "src", "steps": [inner]},
        )
    ) == (
        "steps[1].steps[0].alert",
        "an alert belongs to a step of the flow itself, not inside a for_each or parallel (whose child "
        "runs would share it); put the query before the scope",
    )
    # In an if's branch it runs in the flow's own run: accepted.
    Flow.model_validate({**flow(), "steps": [{"id": "c", "if": "{{ true }}", "then": [inner]}]})


def _copy(step_id: str, **extra: Any) -> dict[str, Any]:
    return {"id": step_id, "action": "copy_to_database", "database": "reports", "table": "t", **extra}


@pytest.mark.parametrize(
    ("copy", "found"),
    [
        pytest.param({}, ("steps[1]", "exactly one of 'source'"), id="neither"),
        pytest.param({"source": "src", "query": "T"}, ("steps[1]", "exactly one of 'source'"), id="both"),
        pytest.param(
            {"source": "src", "kusto_database": "Samples"},
            ("steps[1].kusto_database", "belongs to a copy with its own query"),
            id="a-query-field-on-a-copy-of-source",
        ),
        pytest.param(
            {"source": "src", "on_too_large": "truncate"},
            ("steps[1].on_too_large", "belongs to a copy with its own query"),
            id="a-cap-choice-on-a-copy-of-source",
        ),
        pytest.param(
            {"query": ".show tables"}, ("steps[1].query", "is a control command"), id="a-command-as-its-query"
        ),
        pytest.param(
            {"query": "T", "parameters": {"s": {"type": "string", "value": "{{ row.State }}"}}},
            ("steps[1].parameters.s.value", "'row' is defined only inside a for_each"),
            id="row-outside-a-for_each",
        ),
    ],
)
def test_a_copy_that_is_not_one_of_its_two_forms_is_refused_naming_the_field(
    copy: dict[str, Any], found: tuple[str, str]
) -> None:
    with pytest.raises(ValidationError) as raised:
        Flow.model_validate(flow(_query("src"), _copy("save", **copy)))

    # As the API answers it.
    [problem] = invalid_request(raised.value).fields
    assert problem.field == found[0]
    assert found[1] in problem.message


def test_a_copy_with_its_own_query_inside_a_for_each_takes_the_rows_values_as_parameters() -> None:
    parameters = {"s": {"type": "string", "value": "{{ row.State }}"}}
    document = flow(
        _query("src"),
        _for_each("each", "src", _copy("save", query="T | where State == s", parameters=parameters)),
    )

    parsed = Flow.model_validate(document)

    [copy] = [place.spec for place in parsed.places.values() if place.spec.id == "save"]
    assert copy.templates() == {"parameters.s.value": "{{ row.State }}"}
    assert [(step.id, step.kind.value) for step in child_itinerary(parsed, "each")][1] == ("save", "copy")
