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

from common.contracts.flows import Flow, flow_of, new_run, read_back
from common.contracts.messages import (
    SCHEMA_MINOR,
    SCHEMA_VERSION,
    DeadLetterRecord,
    ErrorCode,
    ErrorInfo,
    RunCompleted,
    RunContext,
    RunMessage,
    StatusEvent,
    StepOutput,
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
