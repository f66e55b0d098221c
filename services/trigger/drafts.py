"""A flow draft checked without saving it: each problem with its field and where that field is in the text.

A draft is the text an editor holds, YAML or JSON, exactly as ``PUT
/v1/flows/{name}`` takes it. :func:`examine` reads it and checks the document
itself (its syntax, then the flow's own rules); the API adds the server's
checks (:func:`~services.trigger.validation.check_flow`) to the same
:class:`Examined`, and the command line the schedule's. A problem names its
field as a refusal does (``steps[1].query``) and carries the span of the YAML
node that field is (:mod:`common.platform.locations`): a missing field's
mapping, an unknown field's key, a syntax error's mark.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass, field
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from common.contracts.flows import Flow
from common.platform.http import checked_document, compose_yaml, field_errors
from common.platform.locations import Span, locate
from common.platform.routes import Refusal, absent_if_none
from services.trigger.schedule import Schedule, ScheduleError
from services.trigger.timetable import schedule_of

#: How many of a scheduled draft's next fire times it is shown with.
NEXT_FIRES = 5


class DraftProblem(BaseModel):
    """One problem with a draft, where an editor can mark it."""

    model_config = ConfigDict(extra="forbid")

    field: str = Field(description="The field at fault (`steps[1].query`); empty for the document itself.")
    message: str
    line: int | None = absent_if_none("Where the field starts in the text, from 1.", minimum=1)
    column: int | None = absent_if_none("Its column on that line, from 1.", minimum=1)
    end_line: int | None = absent_if_none("Where the field ends.", minimum=1)
    end_column: int | None = absent_if_none("The column just past its end.", minimum=1)


class DraftFlow(BaseModel):
    """What the draft would be once saved: its name and trigger in words."""

    model_config = ConfigDict(extra="forbid")

    name: str
    trigger: str = Field(json_schema_extra={"enum": ["cron", "every", "after", "manual"]})
    schedule: str = Field(description="The trigger in words.")
    next_fires: list[str] = Field(
        description=f"The next {NEXT_FIRES} scheduled runs (cron and every triggers with a valid schedule).",
        json_schema_extra={"items": {"type": "string", "format": "date-time"}},
    )


class DraftReport(BaseModel):
    """Everything a save of the draft would refuse, and nothing saved."""

    model_config = ConfigDict(extra="forbid")

    valid: bool = Field(description="Whether a save would accept the draft.")
    problems: list[DraftProblem]
    flow: DraftFlow | None = absent_if_none("The flow the draft describes, once its document is valid.")


def trigger_words(flow: Flow) -> tuple[str, Schedule | None]:
    """A flow's trigger in words, and its schedule if it has one (ScheduleError if that is invalid)."""
    trigger = flow.trigger
    if trigger.kind in ("cron", "every"):
        schedule = schedule_of(flow)
        return schedule.describe(), schedule
    if trigger.after is not None:
        statuses = ", ".join(status.value for status in trigger.after.status)
        return f"after {trigger.after.flow} ({statuses})", None
    return "on demand", None


@dataclass
class Examined:
    """A draft as read: the flow if its document is valid, its problems so far, its nodes."""

    flow: Flow | None = None
    problems: list[DraftProblem] = field(default_factory=list)
    root: yaml.Node | None = None

    def add(self, field: str, message: str, *, key: bool = False) -> None:
        """A problem with *field*, placed at its node (with *key*, at its key) when the text has nodes."""
        span = locate(self.root, field, key=key) if self.root is not None else None
        self._add(field, message, span)

    def _add(self, field: str, message: str, span: Span | None) -> None:
        where: dict[str, Any] = {} if span is None else vars(span)
        self.problems.append(DraftProblem(field=field, message=message, **where))

    def report(self, now: dt.datetime) -> DraftReport:
        return DraftReport(valid=not self.problems, problems=self.problems, flow=self._summary(now))

    def _summary(self, now: dt.datetime) -> DraftFlow | None:
        if self.flow is None:
            return None
        try:
            words, schedule = trigger_words(self.flow)
            fires = next_fires(schedule, now) if schedule is not None else []
        except ScheduleError as exc:
            words, fires = f"invalid schedule: {exc.problem}", []
        flow = self.flow
        return DraftFlow(name=flow.name, trigger=flow.trigger.kind, schedule=words, next_fires=fires)


def next_fires(schedule: Schedule, after: dt.datetime) -> list[str]:
    """The :data:`NEXT_FIRES` fire times of *schedule* after *after*, as ISO instants."""
    fires = []
    for _ in range(NEXT_FIRES):
        after = schedule.next_after(after)
        fires.append(after.isoformat())
    return fires


def examine(text: str, *, is_yaml: bool = True) -> Examined:
    """Read *text* (YAML, or JSON) and check the flow it holds against the flow's own rules."""
    examined = Examined()
    document = _read(text, is_yaml, examined)
    if examined.problems:
        return examined
    if not isinstance(document, dict):
        examined.add("", "a flow is a mapping of its fields (name, connection, database, steps, ...)")
        return examined
    try:
        examined.flow = Flow.model_validate(document)
    except ValidationError as exc:
        for name, message, kind in field_errors(exc):
            examined.add(name, message, key=kind == "extra_forbidden")
    return examined


def _read(text: str, is_yaml: bool, examined: Examined) -> Any:
    """The document *text* holds, with its nodes kept on *examined*; a syntax error is a problem."""
    if not is_yaml:
        try:
            document = checked_document(json.loads(text)) if text.strip() else {}
        except Refusal as exc:
            examined.add("", exc.message)
            return None
        except RecursionError:
            examined.add("", "the document is nested too deeply")
            return None
        except json.JSONDecodeError as exc:
            span = Span(exc.lineno, exc.colno, exc.lineno, exc.colno + 1)
            examined._add("", f"not valid JSON: {exc.msg}", span)
            return None
    try:
        yaml_document, examined.root = compose_yaml(text)
    except yaml.MarkedYAMLError as exc:
        if is_yaml:
            mark = exc.problem_mark or exc.context_mark
            problem = " ".join(part for part in (exc.context, exc.problem) if part)
            examined._add("", f"not valid YAML: {problem}", Span.at(mark) if mark is not None else None)
        return None if is_yaml else document
    except (yaml.YAMLError, Refusal, ValueError) as exc:
        # A JSON text YAML cannot read is still a document, only without lines.
        if is_yaml:
            examined._add("", f"the document cannot be read: {getattr(exc, 'message', exc)}", None)
        return None if is_yaml else document
    if not is_yaml:
        return document
    return {} if yaml_document is None else yaml_document
