"""The contracts: job validation and the routing slip."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from common.contracts import JobRequest, RunMessage, StepKind, StepOutput, report_itinerary, utcnow

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


def test_the_slip_moves_step_by_step_and_keeps_every_output() -> None:
    message = RunMessage(
        run_id="r",
        step_id="query",
        attempt=3,
        submitted_at=utcnow(),
        job=JobRequest.model_validate(JOB),
        itinerary=report_itinerary(),
    )
    following = message.next_step()
    assert following is not None
    onward = message.forwarded(StepOutput(row_count=4), following)

    assert (onward.step_id, onward.attempt) == ("render", 1)
    assert onward.output_of(StepKind.QUERY).row_count == 4
    assert message.outputs == {}
    last = onward.model_copy(update={"step_id": "record"})
    assert last.next_step() is None
    with pytest.raises(LookupError, match="no output from a render step"):
        onward.output_of(StepKind.RENDER)
