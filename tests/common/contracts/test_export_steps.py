"""The ``export_to_file`` step in a flow document: its source must be an earlier query step, its
options must fit its format, and a run holding it is written on the major that knows exports."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from common.contracts import messages
from common.contracts.actions import ExportToFile, field_path
from common.contracts.flows import Flow, itinerary, new_run
from common.contracts.messages import (
    COPY_MAJOR,
    TRANSFER_MAJOR,
    RunContext,
    RunMessage,
    StepKind,
    TriggerKind,
    UnreadableMessage,
    read_message,
)


def document(*steps: dict[str, Any]) -> dict[str, Any]:
    return {"name": "exports", "connection": "local", "database": "Samples", "steps": list(steps)}


QUERY = {"id": "q", "action": "run_query", "query": "StormEvents | take 10"}


def export(**extra: Any) -> dict[str, Any]:
    return {"id": "export", "action": "export_to_file", "source": "q", "format": "parquet", **extra}


def refusal(flow: dict[str, Any]) -> tuple[str, str]:
    """The one problem pydantic found: (where, message)."""
    with pytest.raises(ValidationError) as raised:
        Flow.model_validate(flow)
    [error] = raised.value.errors()
    return field_path(error["loc"]), str(error.get("ctx", {}).get("error", error["msg"]))


def test_an_export_is_a_step_of_the_query_worker_on_the_transfer_major(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    flow = Flow.model_validate(document(QUERY, export()))

    assert [(step.id, step.kind) for step in itinerary(flow)][1:3] == [
        ("q", StepKind.QUERY),
        ("export", StepKind.EXPORT),
    ]
    run = new_run(flow, RunContext(flow=flow.name, trigger=TriggerKind.MANUAL), "r1")
    assert run.needed_major() == TRANSFER_MAJOR
    body = run.model_dump_json()
    assert read_message(RunMessage, body).itinerary == run.itinerary
    monkeypatch.setattr(messages, "SCHEMA_VERSION", COPY_MAJOR)
    with pytest.raises(UnreadableMessage, match="schema_version 5 is newer than this reader's 4"):
        read_message(RunMessage, body)
    spec = flow.step("export")
    assert isinstance(spec, ExportToFile)
    assert (spec.codec, ExportToFile.model_validate(export(format="csv")).codec) == ("snappy", "none")


@pytest.mark.parametrize(
    ("steps", "message"),
    [
        ([QUERY, export(source="nowhere")], "steps[1].source: 'nowhere' is not an earlier query step"),
        (
            [
                {"id": "mail", "action": "send_email", "to": ["a@example.com"], "subject": "s"},
                export(source="mail"),
            ],
            "steps[1].source: 'mail' is not an earlier query step",
        ),
        ([export(), QUERY], "steps[0].source: refers to step 'q', which runs after it"),
        (
            [
                {"id": "q", "action": "run_async_control_command", "command": ".set-or-append async T <| T"},
                export(),
            ],
            "steps[1].source: 'q' is an async control command, whose result is its operation",
        ),
    ],
)
def test_a_source_that_is_not_an_earlier_query_step_is_refused_naming_the_field(
    steps: list[dict[str, Any]], message: str
) -> None:
    _, said = refusal(document(*steps))

    assert said.startswith(message), said


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (
            {"format": "csv", "compression": "zstd"},
            "compression: csv files are compressed with none, gzip, not zstd",
        ),
        ({"format": "csv", "row_group_rows": 10}, "row_group_rows: only Parquet files have row groups"),
        ({"format": "xlsx"}, "Input should be 'csv' or 'parquet'"),
        ({"name": "{{ run.flow "}, "steps[1].name: template syntax error"),
    ],
)
def test_options_that_do_not_fit_the_format_are_refused_naming_them(
    options: dict[str, Any], message: str
) -> None:
    where, said = refusal(document(QUERY, export(**options)))

    assert message in said, said
    assert where.startswith("steps[1]") or said.startswith("steps[1]"), (where, said)


def test_an_email_attaching_an_export_is_told_its_file_is_linked() -> None:
    mail = {"id": "mail", "action": "send_email", "to": ["a@example.com"], "subject": "s"}

    _, said = refusal(document(QUERY, export(), {**mail, "attachments": ["export"]}))

    assert said.startswith(
        "steps[2].attachments: 'export' is an export: every email of the run links its file"
    )


def test_an_unknown_action_lists_export_to_file() -> None:
    _, said = refusal(document(QUERY, {"id": "x", "action": "export_to_parquet"}))

    assert "export_to_file" in said
