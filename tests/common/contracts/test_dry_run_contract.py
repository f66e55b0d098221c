"""Test runs on the wire: the mark travels with the run, and a release before test runs refuses one
rather than performing it for real (common/contracts/messages.py, DRY_RUN_MAJOR)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from common.contracts import messages
from common.contracts.flows import Flow, child_itinerary, for_context, new_run
from common.contracts.messages import (
    DRY_RUN_MAJOR,
    TRANSFER_MAJOR,
    RunContext,
    RunInfo,
    RunMessage,
    StatusEvent,
    StepKind,
    StepStatus,
    TriggerKind,
    UnreadableMessage,
    read_message,
)

FLOW: dict[str, Any] = {
    "name": "tested",
    "connection": "local",
    "database": "Samples",
    "steps": [
        {"id": "q", "action": "run_query", "query": "StormEvents | take 3"},
        {"id": "mail", "action": "send_email", "to": ["a@example.com"], "subject": "s"},
        {
            "id": "each",
            "for_each": "q",
            "steps": [{"id": "hook", "action": "post_webhook", "webhook": "ops", "format": "json"}],
        },
    ],
}


def _run(*, dry_run: bool) -> RunMessage:
    flow = Flow.model_validate(FLOW)
    context = RunContext(flow=flow.name, trigger=TriggerKind.MANUAL, dry_run=dry_run, test_recipient=None)
    return new_run(flow, context, "r1")


def test_a_real_run_keeps_the_lowest_major_that_can_say_it() -> None:
    run = _run(dry_run=False)
    assert run.needed_major() < DRY_RUN_MAJOR
    assert all(step.needs is None for step in run.itinerary)


def test_every_step_of_a_test_run_needs_the_major_that_knows_test_runs(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    run = _run(dry_run=True)

    assert {step.needs for step in run.itinerary} == {DRY_RUN_MAJOR}
    body = run.model_dump_json()
    assert json.loads(body)["schema_version"] == DRY_RUN_MAJOR
    read = read_message(RunMessage, body)
    assert (read.context.dry_run, read.itinerary) == (True, run.itinerary)
    # A release before test runs would ignore the mark and deliver: it refuses the run instead.
    monkeypatch.setattr(messages, "SCHEMA_VERSION", TRANSFER_MAJOR)
    with pytest.raises(
        UnreadableMessage, match=f"schema_version {DRY_RUN_MAJOR} is newer than this reader's"
    ):
        read_message(RunMessage, body)


def test_a_test_runs_child_slips_and_status_events_carry_the_mark() -> None:
    run = _run(dry_run=True)
    flow = Flow.model_validate(FLOW)

    child = for_context(child_itinerary(flow, "each"), run.context)

    assert {step.needs for step in child} == {DRY_RUN_MAJOR}
    assert for_context(
        child_itinerary(flow, "each"), RunContext(flow="tested", trigger=TriggerKind.MANUAL)
    ) == (child_itinerary(flow, "each"))
    info = RunInfo.of(
        run.model_copy(update={"context": run.context.model_copy(update={"test_recipient": "t@qa.example"})})
    )
    assert (info.dry_run, info.test_recipient) == (True, "t@qa.example")
    event = StatusEvent(
        run_id="r1",
        step_id="trigger",
        kind=StepKind.TRIGGER,
        service="trigger",
        status=StepStatus.SUCCEEDED,
        run=info,
    )
    assert event.needed_major() == DRY_RUN_MAJOR
