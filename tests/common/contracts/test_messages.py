"""The contracts: job validation and the routing slip."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from common.contracts.flows import Flow, flow_of, new_run
from common.contracts.messages import JobRequest, RunContext, StepKind, StepOutput, TriggerKind

JOB: dict[str, Any] = {
    "connection": "local",
    "database": "Samples",
    "query": "StormEvents | count",
    "email": {"to": ["team@example.com"], "subject": "s"},
}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"query": ".show tables"}, "with action 'control_command'"),
        ({"action": "control_command"}, "a control command starts with '.'"),
        (
            {"action": "control_command", "query": ".show tables", "parameters": {"a": 1}},
            "take no query parameters",
        ),
        ({"title": "two\nlines"}, "single line"),
        ({"parameters": {"1x": 1}}, "not a KQL identifier"),
        ({"query": ""}, "at least 1 character"),
    ],
)
def test_invalid_jobs_say_what_is_wrong(change: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        JobRequest.model_validate({**JOB, **change})


def test_a_job_is_a_one_off_flow_of_five_slip_steps() -> None:
    job = JobRequest.model_validate({**JOB, "parameters": {"n": 3, "s": "x"}})
    flow = Flow.model_validate(job.flow_document())
    message = new_run(flow, RunContext(flow="adhoc", trigger=TriggerKind.JOB), "r")

    assert [(step.id, step.kind) for step in message.itinerary] == [
        ("trigger", StepKind.TRIGGER),
        ("query", StepKind.QUERY),
        ("query.render", StepKind.RENDER),
        ("notify", StepKind.NOTIFY),
        ("record", StepKind.RECORD),
    ]
    assert {name: spec.type.value for name, spec in flow.parameters.items()} == {"n": "long", "s": "string"}


def test_the_slip_moves_step_by_step_and_keeps_every_output() -> None:
    flow = Flow.model_validate(JobRequest.model_validate(JOB).flow_document())
    message = new_run(flow, RunContext(flow="adhoc", trigger=TriggerKind.JOB), "r")
    message = message.model_copy(update={"step_id": "query", "attempt": 3})
    following = message.next_step()
    assert following is not None
    onward = message.forwarded(StepOutput(row_count=4), following)

    assert (onward.step_id, onward.attempt) == ("query.render", 1)
    assert onward.outputs["query"].row_count == 4
    assert message.outputs == {}
    last = onward.model_copy(update={"step_id": "record"})
    assert last.next_step() is None


def test_a_run_s_flow_is_its_own_document_at_every_step_even_under_one_run_id() -> None:
    first = Flow.model_validate(JobRequest.model_validate(JOB).flow_document())
    changed = Flow.model_validate(
        JobRequest.model_validate({**JOB, "query": "StormEvents | take 1"}).flow_document()
    )
    context = RunContext(flow="adhoc", trigger=TriggerKind.JOB)
    message = new_run(first, context, "r")
    onward = message.forwarded(StepOutput(row_count=1), message.itinerary[1])
    # A document read again (one validation a process) is the same flow, from any step of the run.
    assert flow_of(message) == first
    assert flow_of(onward) is flow_of(message)
    # Another document is another flow, whatever the run id says.
    assert flow_of(new_run(changed, context, "r")) == changed
    assert flow_of(new_run(changed, context, "r")) != first
