"""The steps of a flow: one document per action, from running a query to posting a webhook.

The ``action`` field tells the documents apart. Control-command actions take
``command`` rather than ``query``, because the text is not a query.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Annotated, Literal

from pydantic import EmailStr, Field, field_validator, model_validator

from common.contracts.documents import Document
from common.contracts.messages import ChartKind, Importance
from common.contracts.parameters import Identifier

_ASYNC_KEYWORD = re.compile(r"^\s*\.[A-Za-z-]+(\s+[A-Za-z-]+)?\s+async\b", re.IGNORECASE)

#: What a rendering step draws: the same kinds an ad-hoc job can ask for.
Chart = ChartKind


#: The text of a query or a control command.
KqlText = Annotated[str, Field(min_length=1, max_length=65_536)]


class _Step(Document):
    id: Identifier
    when: str | None = None
    #: A failed step normally ends the run; with ``continue`` the later steps run
    #: (and can report the failure), and the run still ends failed.
    on_failure: Literal["fail", "continue"] = "fail"

    def templates(self) -> dict[str, str]:
        """Template fields by name, for syntax checks."""
        return {"when": self.when} if self.when else {}


class _KustoStep(_Step):
    connection: str | None = None
    database: str | None = None
    #: How long the query may run (the server is told too); the operator's default and maximum apply.
    timeout_seconds: Annotated[float | None, Field(gt=0)] = None
    #: Result caps, enforced while reading (rows, and bytes of the rows' JSON); the operator's
    #: defaults and maxima apply.
    max_rows: Annotated[int | None, Field(gt=0)] = None
    max_bytes: Annotated[int | None, Field(gt=0)] = None
    #: At a cap (or at Kusto's own result limit): fail with ResultTooLarge, or keep the rows read and
    #: flag the result as truncated.
    on_too_large: Literal["fail", "truncate"] = "fail"


class RunQuery(_KustoStep):
    """Rows become the step's output for conditions, templates and per-row delivery."""

    action: Literal["run_query"]
    query: KqlText


class _RenderingStep(_KustoStep):
    """A Kusto step whose result is also drawn: a chart (unless html_table), a table and a CSV."""

    chart: Chart = Chart.HTML_TABLE
    title: Annotated[str | None, Field(max_length=200)] = None
    #: The chart's size in pixels (the PNG in the email, the SVG on the web) and its colours.
    width: Annotated[int, Field(ge=320, le=2400)] = 800
    height: Annotated[int, Field(ge=200, le=1600)] = 450
    theme: Literal["light", "dark"] = "light"
    #: Rows in the HTML table (the CSV always has them all); 0 leaves the table out.
    #: Defaults to the operator's ``table_max_rows``.
    table_rows: Annotated[int | None, Field(ge=0, le=100_000)] = None


class RunQueryAndRenderChart(_RenderingStep):
    action: Literal["run_query_and_render_chart"]
    query: KqlText


class RunControlCommandAndRenderChart(_RenderingStep):
    action: Literal["run_control_command_and_render_chart"]
    command: KqlText


class RunShowCommand(_RenderingStep):
    action: Literal["run_show_command"]
    command: KqlText


class RunAsyncControlCommand(_KustoStep):
    action: Literal["run_async_control_command"]
    command: KqlText
    #: How long to wait for the operation, and how often to ask about it.
    timeout_minutes: Annotated[float, Field(gt=0, le=24 * 60)] = 60
    poll_seconds: Annotated[float, Field(ge=0.05, le=600)] = 10


class _Delivery(_Step):
    #: One delivery per row of this earlier step's result.
    for_each: str | None = None
    max_deliveries: Annotated[int, Field(ge=1, le=10_000)] = 100


class SendEmail(_Delivery):
    action: Literal["send_email"]
    to: Annotated[list[EmailStr], Field(min_length=1, max_length=100)]
    cc: Annotated[list[EmailStr], Field(max_length=100)] = []
    bcc: Annotated[list[EmailStr], Field(max_length=100)] = []
    subject: Annotated[str, Field(min_length=1, max_length=500)]
    #: Defaults to the bodies of every rendered step, in order.
    body_html: str | None = None
    attachments: list[str] = []
    #: Send the attachments as one .zip (they are zipped anyway when the email is over its size budget).
    zip_attachments: bool = False
    importance: Importance = Importance.NORMAL
    #: The sender's display name; the address is the operator's (``ADXFLOW_MAIL_FROM``).
    from_name: Annotated[str | None, Field(min_length=1, max_length=100)] = None

    @field_validator("from_name")
    @classmethod
    def _one_line(cls, value: str | None) -> str | None:
        if value is not None and ("\r" in value or "\n" in value or '"' in value):
            raise ValueError("a display name is one line without double quotes")
        return value

    def templates(self) -> dict[str, str]:
        found = {**super().templates(), "subject": self.subject}
        if self.body_html is not None:
            found["body_html"] = self.body_html
        return found

    def recipients_outside(self, domains: Sequence[str]) -> list[tuple[str, str]]:
        """``(field, address)`` of every recipient outside *domains*, such as ``("cc[0]", ...)``.

        ``example.com`` admits itself and its subdomains (``a.example.com``), not
        ``badexample.com``; case does not matter. Empty *domains* admit everyone.
        """
        allowed = [domain for domain in map(_domain, domains) if domain]
        if not allowed:
            return []
        outside = []
        for name in ("to", "cc", "bcc"):
            for index, address in enumerate(getattr(self, name)):
                domain = _domain(address.rpartition("@")[2])
                if not any(domain == entry or domain.endswith(f".{entry}") for entry in allowed):
                    outside.append((f"{name}[{index}]", address))
        return outside


def _domain(text: str) -> str:
    """A domain as compared: lower case, ASCII (punycode), without ``*.``, ``@`` or the root's dot."""
    name = text.strip().lower().removeprefix("*.").lstrip("@.").rstrip(".")
    try:
        return name.encode("idna").decode("ascii")
    except UnicodeError:
        return name


class PostWebhook(_Delivery):
    action: Literal["post_webhook"]
    #: A target the operator configured (may carry secret headers), or a URL on the allowlist.
    webhook: str | None = None
    url: str | None = None
    #: A JSON template; without one, the payload is made for the receiver named by ``format``.
    body: str | None = None
    #: ``json``: run, step, row count and artifact links; ``slack``: an incoming-webhook message;
    #: ``teams``: a Microsoft Teams message with an Adaptive Card.
    format: Literal["json", "slack", "teams"] = "json"
    #: The message's heading, a text template (``Incident {{ row.EventId }}``); defaults to the
    #: flow's description or name.
    title: Annotated[str | None, Field(min_length=1, max_length=500)] = None

    @model_validator(mode="after")
    def _one_target(self) -> PostWebhook:
        if (self.webhook is None) == (self.url is None):
            raise ValueError("post_webhook names exactly one of 'webhook' (configured) or 'url'")
        return self

    def templates(self) -> dict[str, str]:
        found = super().templates()
        if self.body is not None:
            found["body"] = self.body
        if self.title is not None:
            found["title"] = self.title
        return found


StepSpec = Annotated[
    RunQuery
    | RunQueryAndRenderChart
    | RunControlCommandAndRenderChart
    | RunShowCommand
    | RunAsyncControlCommand
    | SendEmail
    | PostWebhook,
    Field(discriminator="action"),
]

#: A step that runs on a Kusto connection: one of KUSTO_STEPS, as a type.
KustoStep = (
    RunQuery
    | RunQueryAndRenderChart
    | RunControlCommandAndRenderChart
    | RunShowCommand
    | RunAsyncControlCommand
)
KUSTO_STEPS = (
    RunQuery,
    RunQueryAndRenderChart,
    RunControlCommandAndRenderChart,
    RunShowCommand,
    RunAsyncControlCommand,
)
RENDERING_STEPS = (RunQueryAndRenderChart, RunControlCommandAndRenderChart, RunShowCommand)
COMMAND_STEPS = (RunControlCommandAndRenderChart, RunShowCommand, RunAsyncControlCommand)


def check_text(step: StepSpec, where: str) -> None:
    """A ValueError at *where* when the step's text is a command where a query belongs, or the reverse."""
    if isinstance(step, RunQuery | RunQueryAndRenderChart) and step.query.lstrip().startswith("."):
        raise ValueError(
            f"{where}.query: text starting with '.' is a control command; use "
            "run_control_command_and_render_chart, run_show_command or run_async_control_command"
        )
    if isinstance(step, COMMAND_STEPS) and not step.command.lstrip().startswith("."):
        raise ValueError(f"{where}.command: a control command starts with '.'; use run_query for a query")
    if isinstance(step, RunShowCommand) and not re.match(r"^\s*\.show\b", step.command, re.IGNORECASE):
        raise ValueError(f"{where}.command: run_show_command runs '.show ...' commands only")
    if isinstance(step, RunAsyncControlCommand) and not _ASYNC_KEYWORD.match(step.command):
        raise ValueError(
            f"{where}.command: run_async_control_command needs the 'async' keyword, "
            "as in '.set-or-append async T <| ...'"
        )
