"""Rolling upgrades: the rules of schema_version, tested both ways (common/contracts/messages.py).

"Older" is this release reading what a newer one wrote: extra fields, a newer
minor, a flow document with a key it does not know. "Newer" is this release
reading what an older one wrote: no schema_minor, optional fields missing.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from pydantic import ValidationError

from common.contracts import messages
from common.contracts.flows import Flow, child_itinerary, flow_of, new_run, read_back
from common.contracts.messages import (
    ALERT_MAJOR,
    COPY_MAJOR,
    SCHEMA_MINOR,
    SCHEMA_VERSION,
    SCOPE_MAJOR,
    SERVICE_OF,
    TRANSFER_MAJOR,
    DeadLetterRecord,
    ErrorCode,
    ErrorInfo,
    RunCompleted,
    RunContext,
    RunInfo,
    RunMessage,
    StatusEvent,
    StepKind,
    StepOutput,
    StepStatus,
    TriggerKind,
    UnreadableMessage,
    read_message,
)

FLOW: dict[str, Any] = {
    "name": "upgrades",
    "connection": "local",
    "database": "Samples",
    "parameters": {"n": {"type": "long", "default": 1}},
    "trigger": {"every": "1h"},
    "steps": [
        {"id": "q", "action": "run_query_and_render_chart", "query": "StormEvents | take n"},
        {"id": "mail", "action": "send_email", "to": ["a@example.com"], "subject": "s"},
    ],
}


def message() -> RunMessage:
    flow = Flow.model_validate(FLOW)
    return new_run(flow, RunContext(flow=flow.name, trigger=TriggerKind.MANUAL), "r1")


def from_a_newer_release() -> dict[str, Any]:
    """This release's run message as a newer minor would write it: fields added at every level."""
    body = json.loads(message().model_dump_json())
    body["schema_minor"] = SCHEMA_MINOR + 4
    body["priority"] = "high"
    body["context"]["tenant"] = "blue"
    body["itinerary"][1]["queue_hint"] = "fast"
    body["flow"]["owner"] = "team-a"
    body["flow"]["steps"][0]["cache_minutes"] = 5
    body["flow"]["trigger"]["jitter"] = "5m"
    body["flow"]["parameters"]["n"]["unit"] = "rows"
    return body


# -- an older reader, a newer message ------------------------------------------


def test_a_newer_minor_with_unknown_fields_is_read_and_its_fields_survive_forwarding() -> None:
    read = read_message(RunMessage, json.dumps(from_a_newer_release()))
    query = read.model_copy(update={"step_id": "q"})

    forwarded = json.loads(query.forwarded(StepOutput(row_count=2), read.itinerary[2]).model_dump_json())

    assert forwarded["step_id"] == "q.render"
    assert forwarded["outputs"]["q"]["row_count"] == 2
    assert forwarded["priority"] == "high"
    assert forwarded["context"]["tenant"] == "blue"
    assert forwarded["itinerary"][1]["queue_hint"] == "fast"
    assert forwarded["flow"]["steps"][0]["cache_minutes"] == 5
    # The newest writer the message went through.
    assert forwarded["schema_minor"] == SCHEMA_MINOR + 4
    # No scope step in it: written on the first major, which every release reads.
    assert forwarded["schema_version"] == 1


def test_the_flow_a_newer_release_wrote_is_run_as_this_one_understands_it() -> None:
    read = read_message(RunMessage, json.dumps(from_a_newer_release()))

    flow = flow_of(read)

    assert flow.step("q").model_dump().get("cache_minutes") is None
    assert flow.trigger.every == "1h"
    assert flow.parameters["n"].default == 1
    assert read.flow["steps"][0]["cache_minutes"] == 5


def test_a_flow_read_back_leaves_newer_keys_out_but_still_checks_what_it_knows() -> None:
    document = from_a_newer_release()["flow"]
    assert read_back(document).name == "upgrades"

    document["steps"][0]["chart"] = "no-such-chart"
    with pytest.raises(ValidationError, match=r"steps\.0\.run_query_and_render_chart\.chart"):
        read_back(document)


@pytest.mark.parametrize(
    ("where", "change"),
    [
        ("owner", lambda flow: flow.update(owner="team-a")),
        (
            "steps.0.run_query_and_render_chart.cache_minutes",
            lambda flow: flow["steps"][0].update(cache_minutes=5),
        ),
        ("trigger.jitter", lambda flow: flow["trigger"].update(jitter="5m")),
        ("parameters.n.unit", lambda flow: flow["parameters"]["n"].update(unit="rows")),
    ],
)
def test_a_flow_from_a_person_stays_strict_naming_the_unknown_key(where: str, change: Any) -> None:
    document = json.loads(json.dumps(FLOW))
    change(document)

    with pytest.raises(ValidationError) as raised:
        Flow.model_validate(document)

    [error] = raised.value.errors()
    assert ".".join(str(part) for part in error["loc"]) == where
    assert error["type"] == "extra_forbidden"


def test_a_higher_major_is_refused_naming_both_versions() -> None:
    body = from_a_newer_release()
    body["schema_version"] = SCHEMA_VERSION + 1
    body["itinerary"] = "a shape this release has never seen"

    with pytest.raises(UnreadableMessage) as raised:
        read_message(RunMessage, json.dumps(body))

    reason = raised.value.reason
    assert reason.startswith("unreadable RunMessage: schema_version: ")
    assert f"schema_version {SCHEMA_VERSION + 1} is newer than this reader's {SCHEMA_VERSION}" in reason
    # The major says it all; the errors it causes elsewhere would only hide it.
    assert "itinerary" not in reason


@pytest.mark.parametrize("model", [RunMessage, StatusEvent, DeadLetterRecord, RunCompleted])
def test_every_message_refuses_a_higher_major(model: type[Any]) -> None:
    with pytest.raises(UnreadableMessage, match="is newer than this reader's"):
        read_message(model, json.dumps({"schema_version": SCHEMA_VERSION + 1}))


def test_a_malformed_message_names_its_fields() -> None:
    with pytest.raises(UnreadableMessage, match=r"^unreadable RunCompleted: flow: Field required; status"):
        read_message(RunCompleted, b'{"schema_version": 1, "run_id": "r"}')


def test_an_error_code_from_a_newer_release_is_kept_as_it_came() -> None:
    event = {
        "run_id": "r1",
        "step_id": "q",
        "kind": "query",
        "service": "query_worker",
        "status": "failed",
        "error": {"code": "KustoQuotaExceeded", "message": "over quota", "retryable": True},
    }

    read = read_message(StatusEvent, json.dumps(event))

    assert read.error is not None
    assert read.error.code == "KustoQuotaExceeded"
    assert json.loads(read.model_dump_json())["error"]["code"] == "KustoQuotaExceeded"
    assert ErrorInfo(code=ErrorCode.STALLED, message="m").code is ErrorCode.STALLED


def test_a_status_event_keeps_the_newer_fields_of_the_run_it_carries() -> None:
    event = {
        "run_id": "r1",
        "step_id": "q",
        "kind": "query",
        "service": "query_worker",
        "status": "failed",
        "sampled": True,
        "message": from_a_newer_release(),
    }

    read = read_message(StatusEvent, json.dumps(event))

    assert read.message is not None
    kept = json.loads(read.message.model_dump_json())
    assert kept["priority"] == "high"
    assert kept["flow"]["owner"] == "team-a"


# -- a newer reader, an older message ------------------------------------------


def test_a_message_from_before_minors_were_counted_is_read_with_its_defaults() -> None:
    body = json.loads(message().model_dump_json())
    # As the release before schema_minor wrote it, without the fields added since.
    for added in ("schema_minor", "resend", "pending", "outputs"):
        body.pop(added, None)
    body["itinerary"][1].pop("flow_step")

    read = read_message(RunMessage, json.dumps(body))

    assert read.schema_minor == 0
    assert read.resend is None
    assert read.pending is None
    assert read.outputs == {}
    assert read.itinerary[1].flow_step is None
    assert json.loads(read.model_dump_json())["schema_minor"] == SCHEMA_MINOR


def test_a_completed_run_without_a_version_reads_as_the_first_major() -> None:
    read = read_message(
        RunCompleted,
        b'{"run_id": "r", "flow": "f", "status": "succeeded", "finished_at": "2026-01-01T00:00:00Z"}',
    )

    assert (read.schema_version, read.schema_minor) == (1, 0)


# -- the scope major: written only where a message needs it ----------------------

SCOPED: dict[str, Any] = {
    **FLOW,
    "steps": [
        {"id": "q", "action": "run_query", "query": "StormEvents | take n"},
        {
            "id": "each",
            "for_each": "q",
            "steps": [{"id": "mail", "action": "send_email", "to": ["a@example.com"], "subject": "s"}],
        },
    ],
}


def scoped_message() -> RunMessage:
    flow = Flow.model_validate(SCOPED)
    return new_run(flow, RunContext(flow=flow.name, trigger=TriggerKind.MANUAL), "r2")


def child_message() -> RunMessage:
    """An iteration of the for_each: none of its own steps is a scope step but its join."""
    flow = Flow.model_validate(SCOPED)
    parent = scoped_message()
    return parent.model_copy(update={"run_id": "c1", "itinerary": child_itinerary(flow, "each")})


@pytest.fixture
def major_1_reader(monkeypatch: pytest.MonkeyPatch) -> None:
    """This module's reader as a release that knows only the first major."""
    monkeypatch.setattr(messages, "SCHEMA_VERSION", 1)


def status_event(kind: StepKind, **extra: Any) -> StatusEvent:
    return StatusEvent(
        run_id="r", step_id="s", kind=kind, service=SERVICE_OF[kind], status=StepStatus.RUNNING, **extra
    )


def test_a_run_without_scope_steps_is_written_on_the_first_major(major_1_reader: None) -> None:
    body = message().model_dump_json()

    assert json.loads(body)["schema_version"] == 1
    assert read_message(RunMessage, body).run_id == "r1"


def test_a_run_with_a_scope_step_is_written_on_the_scope_major_which_a_major_1_reader_refuses(
    major_1_reader: None,
) -> None:
    body = scoped_message().model_dump_json()

    assert json.loads(body)["schema_version"] == SCOPE_MAJOR == 2
    with pytest.raises(UnreadableMessage, match="schema_version 2 is newer than this reader's 1"):
        read_message(RunMessage, body)


def test_a_child_run_is_written_on_the_scope_major_for_its_join() -> None:
    child = child_message()

    assert [step.kind for step in child.itinerary if step.kind is StepKind.SCOPE] == [StepKind.SCOPE]
    assert json.loads(child.model_dump_json())["schema_version"] == 2
    # This release reads what it wrote.
    assert read_message(RunMessage, child.model_dump_json()).itinerary == child.itinerary


def test_a_message_read_on_the_scope_major_without_a_scope_step_is_written_on_the_first() -> None:
    body = json.loads(message().model_dump_json())
    body["schema_version"] = 2

    read = read_message(RunMessage, json.dumps(body))

    assert read.schema_version == 2
    assert json.loads(read.model_dump_json())["schema_version"] == 1
    assert read.model_dump(mode="json")["schema_version"] == 1


@pytest.mark.parametrize(
    ("event", "major"),
    [
        pytest.param(lambda: status_event(StepKind.QUERY), 1, id="query-step"),
        pytest.param(lambda: status_event(StepKind.SCOPE), 2, id="scope-step"),
        pytest.param(
            lambda: status_event(StepKind.TRIGGER, run=RunInfo.of(message())), 1, id="run-without-scopes"
        ),
        pytest.param(
            lambda: status_event(StepKind.TRIGGER, run=RunInfo.of(scoped_message())), 2, id="run-with-scopes"
        ),
        pytest.param(
            lambda: status_event(StepKind.QUERY, message=message()), 1, id="kept-run-without-scopes"
        ),
        pytest.param(
            lambda: status_event(StepKind.QUERY, message=scoped_message()), 2, id="kept-run-with-scopes"
        ),
    ],
)
def test_a_status_event_is_written_on_the_scope_major_only_when_it_says_something_of_a_scope(
    event: Any, major: int
) -> None:
    assert json.loads(event().model_dump_json())["schema_version"] == major


@pytest.mark.parametrize(("run", "major"), [(message, 1), (scoped_message, 2)])
def test_a_dead_letter_is_written_on_the_major_of_the_run_it_holds(run: Any, major: int) -> None:
    record = DeadLetterRecord(
        run_id="r",
        step_id="q",
        attempt=3,
        routing_key="query",
        error=ErrorInfo(code=ErrorCode.INTERNAL, message="m"),
        message=run(),
    )

    assert json.loads(record.model_dump_json())["schema_version"] == major


def test_a_status_event_of_a_scope_step_is_refused_by_a_major_1_reader(major_1_reader: None) -> None:
    scope = status_event(StepKind.SCOPE).model_dump_json()
    query = status_event(StepKind.QUERY).model_dump_json()

    assert read_message(StatusEvent, query).kind is StepKind.QUERY
    with pytest.raises(UnreadableMessage, match="schema_version 2 is newer than this reader's 1"):
        read_message(StatusEvent, scope)


ALERTED: dict[str, Any] = {
    "name": "alerted",
    "connection": "local",
    "database": "Samples",
    "steps": [{"id": "q", "action": "run_query", "query": "T | take 1", "alert": {"key_columns": ["Id"]}}],
}


def test_a_run_with_an_alert_is_written_on_the_alert_major_which_a_scope_major_reader_refuses(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    flow = Flow.model_validate(ALERTED)
    run = new_run(flow, RunContext(flow=flow.name, trigger=TriggerKind.MANUAL), "r3")
    assert [step.kind for step in run.itinerary][1:3] == [StepKind.QUERY, StepKind.ALERT]
    body = run.model_dump_json()
    event = status_event(StepKind.ALERT).model_dump_json()

    assert json.loads(body)["schema_version"] == ALERT_MAJOR == 3
    assert json.loads(event)["schema_version"] == 3
    assert read_message(RunMessage, body).itinerary == run.itinerary
    # A release that knows scopes but not alerts leaves both to a newer replica.
    monkeypatch.setattr(messages, "SCHEMA_VERSION", 2)
    with pytest.raises(UnreadableMessage, match="schema_version 3 is newer than this reader's 2"):
        read_message(RunMessage, body)
    with pytest.raises(UnreadableMessage, match="schema_version 3 is newer than this reader's 2"):
        read_message(StatusEvent, event)
    # Its scope runs are still on the major it reads.
    assert json.loads(scoped_message().model_dump_json())["schema_version"] == 2


COPYING: dict[str, Any] = {
    "name": "copying",
    "connection": "local",
    "database": "Samples",
    "steps": [
        {"id": "q", "action": "run_query", "query": "T | take 1"},
        {"id": "save", "action": "copy_to_database", "database": "reports", "table": "t", "source": "q"},
    ],
}


def test_a_run_with_a_copy_is_written_on_the_copy_major_which_an_alert_major_reader_refuses(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    flow = Flow.model_validate(COPYING)
    run = new_run(flow, RunContext(flow=flow.name, trigger=TriggerKind.MANUAL), "r4")
    assert [step.kind for step in run.itinerary][1:3] == [StepKind.QUERY, StepKind.COPY]
    body = run.model_dump_json()
    event = status_event(StepKind.COPY).model_dump_json()

    assert json.loads(body)["schema_version"] == COPY_MAJOR == 4
    assert read_message(RunMessage, body).itinerary == run.itinerary
    monkeypatch.setattr(messages, "SCHEMA_VERSION", 3)
    with pytest.raises(UnreadableMessage, match="schema_version 4 is newer than this reader's 3"):
        read_message(RunMessage, body)
    with pytest.raises(UnreadableMessage, match="schema_version 4 is newer than this reader's 3"):
        read_message(StatusEvent, event)
    # Runs of flows without a copy are still on the majors older readers read.
    assert (
        json.loads(
            new_run(
                Flow.model_validate(ALERTED), RunContext(flow="alerted", trigger=TriggerKind.MANUAL), "r5"
            ).model_dump_json()
        )["schema_version"]
        == 3
    )


INGESTING: dict[str, Any] = {
    "name": "ingesting",
    "connection": "local",
    "database": "Samples",
    "steps": [
        {
            "id": "load",
            "action": "ingest_to_kusto",
            "table": "Orders",
            "from_sql": {"database": "orders", "query": "SELECT 1 AS one"},
        },
    ],
}


def test_a_run_with_an_ingestion_is_written_on_the_transfer_major_which_a_copy_major_reader_refuses(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    flow = Flow.model_validate(INGESTING)
    run = new_run(flow, RunContext(flow=flow.name, trigger=TriggerKind.MANUAL), "r6")
    assert [step.kind for step in run.itinerary][1] == StepKind.INGEST
    body = run.model_dump_json()

    assert json.loads(body)["schema_version"] == TRANSFER_MAJOR == 5
    assert read_message(RunMessage, body).itinerary == run.itinerary
    monkeypatch.setattr(messages, "SCHEMA_VERSION", COPY_MAJOR)
    with pytest.raises(UnreadableMessage, match="schema_version 5 is newer than this reader's 4"):
        read_message(RunMessage, body)
    with pytest.raises(UnreadableMessage, match="schema_version 5 is newer than this reader's 4"):
        read_message(StatusEvent, status_event(StepKind.INGEST).model_dump_json())
    # Runs of flows with a copy alone are still on the copy major.
    assert (
        json.loads(
            new_run(
                Flow.model_validate(COPYING), RunContext(flow="copying", trigger=TriggerKind.MANUAL), "r7"
            ).model_dump_json()
        )["schema_version"]
        == 4
    )


def test_a_run_with_a_copy_of_its_own_query_is_written_on_the_transfer_major(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    flow = Flow.model_validate(
        {
            "name": "copying",
            "connection": "local",
            "database": "Samples",
            "steps": [
                {
                    "id": "save",
                    "action": "copy_to_database",
                    "database": "reports",
                    "table": "t",
                    "query": "T",
                },
            ],
        }
    )
    run = new_run(flow, RunContext(flow=flow.name, trigger=TriggerKind.MANUAL), "r8")
    body = run.model_dump_json()

    assert [(step.kind, step.needs) for step in run.itinerary][1] == (StepKind.COPY, TRANSFER_MAJOR)
    assert json.loads(body)["schema_version"] == TRANSFER_MAJOR
    # A release of the copy major would run the copy without the query it does not know: it refuses it.
    monkeypatch.setattr(messages, "SCHEMA_VERSION", COPY_MAJOR)
    with pytest.raises(UnreadableMessage, match="schema_version 5 is newer than this reader's 4"):
        read_message(RunMessage, body)
