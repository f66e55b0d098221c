"""The steps of a flow: one document per action, from running a query to posting a webhook.

The ``action`` field tells the documents apart. Control-command actions take
``command`` rather than ``query``, because the text is not a query. Three
steps have no action but hold steps of their own, and are told apart by
their key: ``for_each`` (its ``steps`` once per row of an earlier query, each
iteration a child run), ``if`` (its ``then`` or its ``else`` steps) and
``parallel`` (branches of steps run at the same time, each a child run).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Annotated, Any, ClassVar, Literal

from pydantic import ConfigDict, Discriminator, EmailStr, Field, Tag, field_validator, model_validator

from common.contracts.alerts import Alert
from common.contracts.copies import CopyMode
from common.contracts.documents import Document
from common.contracts.messages import ChartKind, Importance
from common.contracts.parameters import Identifier, ParameterType

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


class QueryParameter(Document):
    """A typed query parameter of one step, its value a template (``{{ row.State }}``)."""

    type: ParameterType
    value: Annotated[str, Field(min_length=1, max_length=4096)]


class _Querying(_Step):
    """How a step's KQL is sent to a Kusto connection: the parameters, the connection, the timeout
    and the result caps. Each kind names its Kusto database (``kusto_database``, None: the flow's)."""

    #: Query parameters of this step alone, each rendered and then sent typed (never spliced into
    #: the text): the way a row's values reach a query inside a ``for_each``.
    parameters: dict[Identifier, QueryParameter] = {}
    connection: str | None = None
    #: How long the query may run (the server is told too); the operator's default and maximum apply.
    timeout_seconds: Annotated[float | None, Field(gt=0)] = None
    #: Result caps, enforced while reading (rows, and bytes of the rows' JSON); the operator's
    #: defaults and maxima apply.
    max_rows: Annotated[int | None, Field(gt=0)] = None
    max_bytes: Annotated[int | None, Field(gt=0)] = None
    #: At a cap (or at Kusto's own result limit): fail with ResultTooLarge, or keep the rows read and
    #: flag the result as truncated.
    on_too_large: Literal["fail", "truncate"] = "fail"

    def templates(self) -> dict[str, str]:
        found = super().templates()
        found.update({f"parameters.{name}.value": spec.value for name, spec in self.parameters.items()})
        return found


class _KustoStep(_Querying):
    #: An alert on the step's result: the deliveries after it go out only when it has news.
    alert: Alert | None = None
    database: str | None = None

    @property
    def kusto_database(self) -> str | None:
        """The step's ``database``: the Kusto database its text runs in."""
        return self.database

    def templates(self) -> dict[str, str]:
        found = super().templates()
        if self.alert is not None:
            found.update(self.alert.templates())
        return found


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


#: A table as a copy names it: ``name`` or ``schema.name``.
_TABLE = r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)?$"
ColumnName = Annotated[str, Field(min_length=1, max_length=128)]


class CopyToDatabase(_Querying):
    """A result written into a table of a database the operator configured (``databases:`` in the
    connections file), in one transaction, once per run however often the step is tried
    (:mod:`common.platform.sql`).

    The result is an earlier query step's (``source``) or the step's own query's (``query``, run
    as a ``run_query`` step runs it, with the same parameters, timeout and caps); either way it is
    streamed from the blob store, never loaded whole. ``database`` names the SQL database; the
    query's Kusto database is ``kusto_database``.
    """

    action: Literal["copy_to_database"]
    #: The operator's name for the database.
    database: Identifier
    #: The target table (``schema.table`` allowed), one the operator's allowlist for it admits.
    table: Annotated[str, Field(min_length=1, max_length=255, pattern=_TABLE)]
    #: The earlier query step whose stored result is written.
    source: Identifier | None = None
    #: Or the KQL query whose result is written, run by the step itself.
    query: KqlText | None = None
    #: The Kusto database of ``query``; defaults to the flow's.
    kusto_database: str | None = None
    #: append, replace (at once), upsert on key_columns, or merge (an upsert deleting missing keys).
    mode: CopyMode = CopyMode.APPEND
    key_columns: Annotated[list[ColumnName], Field(max_length=16)] = []

    @model_validator(mode="after")
    def _one_result(self) -> CopyToDatabase:
        if (self.source is None) == (self.query is None):
            raise ValueError(
                "copy_to_database writes exactly one of 'source' (an earlier query step's result) "
                "or 'query' (a query of its own)"
            )
        if self.source is not None:
            for name in self.query_fields():
                raise ValueError(
                    f"{name}: belongs to a copy with its own query; a copy of source {self.source!r} "
                    "writes that step's stored result, so set it on that step"
                )
        return self

    def query_fields(self) -> list[str]:
        """The fields set that only a copy with its own query uses."""
        unset: dict[str, Any] = {
            "kusto_database": None,
            "connection": None,
            "parameters": {},
            "timeout_seconds": None,
            "max_rows": None,
            "max_bytes": None,
            "on_too_large": "fail",
        }
        return [name for name, default in unset.items() if getattr(self, name) != default]

    @model_validator(mode="after")
    def _keys_for_the_mode(self) -> CopyToDatabase:
        keyed = self.mode in (CopyMode.UPSERT, CopyMode.MERGE)
        if keyed and not self.key_columns:
            raise ValueError(f"key_columns: mode {self.mode.value} matches rows by key columns; name them")
        if not keyed and self.key_columns:
            raise ValueError(
                f"key_columns: mode {self.mode.value} matches no rows; only upsert and merge take keys"
            )
        if len(set(self.key_columns)) != len(self.key_columns):
            raise ValueError("key_columns: names a column twice")
        return self


#: A Kusto table name as an ingestion names it.
_KUSTO_TABLE = r"^[A-Za-z_][A-Za-z0-9_]*$"


class SqlSource(Document):
    """Rows to ingest: a query on a database the operator lets flows read (``reads: true``)."""

    #: The operator's name for the database.
    database: Identifier
    #: The SQL, its values only as bound parameters (``:name``: the flow's parameters and the
    #: source's own, by name).
    query: Annotated[str, Field(min_length=1, max_length=65_536)]
    #: Parameters of this query alone, each a template rendered then typed (``{{ row.State }}``).
    parameters: dict[Identifier, QueryParameter] = {}


class FileSource(Document):
    """Rows to ingest from a file: CSV with a header row, JSON lines, or Parquet (gzipped CSV and
    JSON too), in the blob store's ``imports/`` folder or at a URL the operator allows."""

    #: The file's key under ``imports/`` in the blob store (a text template).
    blob: Annotated[str | None, Field(min_length=1, max_length=1024)] = None
    #: An https URL on the operator's ingestion allowlist (a text template).
    url: Annotated[str | None, Field(min_length=1, max_length=4096)] = None
    #: Defaults to what the name ends with: ``.csv``, ``.json`` / ``.jsonl`` / ``.ndjson``,
    #: ``.parquet``, each also with ``.gz``.
    format: Literal["csv", "json", "parquet"] | None = None

    @model_validator(mode="after")
    def _one_place(self) -> FileSource:
        if (self.blob is None) == (self.url is None):
            raise ValueError("from_file names exactly one of 'blob' (in the blob store) or 'url'")
        if self.blob is not None and (self.blob.startswith("/") or ".." in self.blob.split("/")):
            raise ValueError("blob: a key under imports/, without a leading '/' or a '..'")
        return self


class IngestToKusto(_Step):
    """Rows of the operator's database ingested into a Kusto table, once per run however often the
    step is tried: streamed into a staging table, then moved into the target by one command tagged
    with the run and step (``ingest-by``), which a repeated try finds and does not repeat."""

    action: Literal["ingest_to_kusto"]
    #: The Kusto connection and database (the flow's when not given).
    connection: str | None = None
    database: str | None = None
    #: The Kusto table the rows go into.
    table: Annotated[str, Field(min_length=1, max_length=255, pattern=_KUSTO_TABLE)]
    #: Where the rows come from: a query on the operator's database, or a file.
    from_sql: SqlSource | None = None
    from_file: FileSource | None = None
    #: Create the table, or add the columns it lacks, from the source's types (``.create-merge
    #: table``); without it the table must be there with every column of the source.
    create_table: bool = False
    #: ``streaming`` (batches of at most 4 MB through the streaming endpoint, confirmed as they go),
    #: or ``queued`` (the cluster's queued ingestion, for large sources; a real cluster's data
    #: management endpoint, which the local endpoint does not have).
    method: Literal["streaming", "queued"] = "streaming"

    @model_validator(mode="after")
    def _one_source(self) -> IngestToKusto:
        if (self.from_sql is None) == (self.from_file is None):
            raise ValueError("an ingestion reads exactly one of 'from_sql' (a query) or 'from_file'")
        return self

    def templates(self) -> dict[str, str]:
        found = super().templates()
        if self.from_sql is not None:
            for name, spec in self.from_sql.parameters.items():
                found[f"from_sql.parameters.{name}.value"] = spec.value
        if self.from_file is not None:
            for name in ("blob", "url"):
                text = getattr(self.from_file, name)
                if text is not None:
                    found[f"from_file.{name}"] = text
        return found


#: How each format of an export may be compressed, the default first.
EXPORT_COMPRESSIONS: dict[str, tuple[str, ...]] = {
    "parquet": ("snappy", "zstd", "gzip", "none"),
    "csv": ("none", "gzip"),
}


class ExportToFile(_Step):
    """An earlier query step's result written as a CSV or Parquet file into the blob store, as an
    artifact of the run (linked from its emails and webhooks, kept as long as the run)."""

    action: Literal["export_to_file"]
    #: The earlier query step whose stored result is written (streamed, never loaded whole).
    source: Identifier
    format: Literal["csv", "parquet"]
    #: The file's name, a text template (``storms-{{ run.scheduled_for | date('%Y-%m-%d') }}``);
    #: characters other than letters, digits, ``_``, ``-`` and ``.`` become ``_``, and the
    #: format's extension is added. Defaults to the flow's name, the step's id and the run's time.
    name: Annotated[str | None, Field(min_length=1, max_length=500)] = None
    #: Parquet: snappy (default), zstd, gzip or none; CSV: none (default) or gzip (``.csv.gz``).
    compression: Literal["none", "gzip", "snappy", "zstd"] | None = None
    #: Parquet: rows per row group (each is written as it fills, so at most one is held in memory).
    row_group_rows: Annotated[int | None, Field(ge=1, le=1_000_000)] = None

    @model_validator(mode="after")
    def _options_of_the_format(self) -> ExportToFile:
        allowed = EXPORT_COMPRESSIONS[self.format]
        if self.compression is not None and self.compression not in allowed:
            raise ValueError(
                f"compression: {self.format} files are compressed with {', '.join(allowed)}, "
                f"not {self.compression}"
            )
        if self.format != "parquet" and self.row_group_rows is not None:
            raise ValueError("row_group_rows: only Parquet files have row groups")
        return self

    @property
    def codec(self) -> str:
        """The compression the file is written with."""
        return self.compression or EXPORT_COMPRESSIONS[self.format][0]

    def templates(self) -> dict[str, str]:
        found = super().templates()
        if self.name is not None:
            found["name"] = self.name
        return found


class _ScopeStep(_Step):
    """A step holding steps: told apart by its key, and named by it where an action is shown."""

    kind: ClassVar[str]

    @property
    def action(self) -> str:
        return self.kind


class ForEach(_ScopeStep):
    """Its steps once per row of an earlier query step's result, each row an iteration (a child run)."""

    kind: ClassVar[str] = "for_each"
    #: The earlier query step whose rows are iterated.
    for_each: Identifier
    steps: Annotated[list[StepSpec], Field(min_length=1, max_length=50)]
    #: Iterations running at once; the operator's ``scope_max_concurrency`` caps it.
    concurrency: Annotated[int, Field(ge=1, le=10_000)] = 10
    #: Rows iterated at most; the operator's ``scope_max_items`` caps it.
    max_items: Annotated[int, Field(ge=1, le=100_000)] = 1_000
    #: More rows than ``max_items``: fail the step, or iterate the first ``max_items`` and say so.
    on_too_many: Literal["fail", "truncate"] = "fail"
    #: A failed iteration: the others go on (``continue``), or no further iteration starts
    #: (``stop``; those not started count as skipped). Either way the step fails at the end.
    on_item_failure: Literal["continue", "stop"] = "continue"


class If(_ScopeStep):
    """The ``then`` steps when the condition holds, else the ``else`` steps; either list may be empty."""

    model_config = ConfigDict(populate_by_name=True, serialize_by_alias=True)
    kind: ClassVar[str] = "if"
    condition: Annotated[str, Field(alias="if", min_length=1, max_length=4096)]
    then: Annotated[list[StepSpec], Field(max_length=50)] = []
    otherwise: list[StepSpec] = Field(default=[], alias="else", max_length=50)

    def templates(self) -> dict[str, str]:
        return {**super().templates(), "if": self.condition}


class Branch(Document):
    """One branch of a ``parallel`` step: its steps, one after another."""

    id: Identifier
    steps: Annotated[list[StepSpec], Field(min_length=1, max_length=50)]


class Parallel(_ScopeStep):
    """Branches that run at the same time, each a child run; later steps see every branch's outputs."""

    kind: ClassVar[str] = "parallel"
    parallel: Annotated[list[Branch], Field(min_length=2, max_length=20)]

    @model_validator(mode="after")
    def _distinct_branches(self) -> Parallel:
        seen: set[str] = set()
        for index, branch in enumerate(self.parallel):
            if branch.id in seen:
                raise ValueError(f"parallel[{index}].id: {branch.id!r} names an earlier branch")
            seen.add(branch.id)
        return self


#: The keys that make a step without ``action`` a scope step, in the order they are tried.
SCOPE_KEYS = ("for_each", "if", "parallel")


def _step_tag(value: Any) -> str | None:
    """The step document's tag: its action, or for a scope step, its key."""
    if isinstance(value, dict):
        if "action" in value:
            action = value["action"]
            return action if isinstance(action, str) else None
        return next((key for key in SCOPE_KEYS if key in value), None)
    action = getattr(value, "action", None)
    return action if isinstance(action, str) else None


StepSpec = Annotated[
    Annotated[RunQuery, Tag("run_query")]
    | Annotated[RunQueryAndRenderChart, Tag("run_query_and_render_chart")]
    | Annotated[RunControlCommandAndRenderChart, Tag("run_control_command_and_render_chart")]
    | Annotated[RunShowCommand, Tag("run_show_command")]
    | Annotated[RunAsyncControlCommand, Tag("run_async_control_command")]
    | Annotated[SendEmail, Tag("send_email")]
    | Annotated[PostWebhook, Tag("post_webhook")]
    | Annotated[CopyToDatabase, Tag("copy_to_database")]
    | Annotated[IngestToKusto, Tag("ingest_to_kusto")]
    | Annotated[ExportToFile, Tag("export_to_file")]
    | Annotated[ForEach, Tag("for_each")]
    | Annotated[If, Tag("if")]
    | Annotated[Parallel, Tag("parallel")],
    Discriminator(
        _step_tag,
        custom_error_type="unknown_step",
        custom_error_message=(
            "a step names its 'action' (run_query, run_query_and_render_chart, "
            "run_control_command_and_render_chart, run_show_command, run_async_control_command, "
            "send_email, post_webhook, copy_to_database, ingest_to_kusto, export_to_file), "
            "or holds steps as 'for_each', 'if' or 'parallel'"
        ),
        custom_error_context={"discriminator": "action"},
    ),
]

#: Every tag of a step document, as pydantic puts it into an error's location.
STEP_TAGS = frozenset(
    {
        "run_query",
        "run_query_and_render_chart",
        "run_control_command_and_render_chart",
        "run_show_command",
        "run_async_control_command",
        "send_email",
        "post_webhook",
        "copy_to_database",
        "ingest_to_kusto",
        "export_to_file",
        *SCOPE_KEYS,
    }
)


def field_path(location: Sequence[int | str]) -> str:
    """A validation error's location as a flow's author reads it: ``steps[2].steps[0].query``.

    Pydantic puts the step's tag after a list index (``steps.2.run_query.query``); it is left out.
    """
    parts: list[str] = []
    after_index = False
    for part in location:
        if isinstance(part, int):
            if parts:
                parts[-1] += f"[{part}]"
            else:
                parts.append(f"[{part}]")
            after_index = True
            continue
        if not (after_index and part in STEP_TAGS):
            parts.append(str(part))
        after_index = False
    return ".".join(parts)


#: Steps that hold steps of their own.
SCOPE_STEPS = (ForEach, If, Parallel)
#: Steps whose steps run as child runs, joined again before the flow goes on.
FAN_OUT_STEPS = (ForEach, Parallel)


def inner_steps(step: StepSpec) -> list[tuple[str, list[StepSpec]]]:
    """The step lists a scope step holds, each with its field (``steps``, ``then``, ``parallel[1].steps``)."""
    if isinstance(step, ForEach):
        return [("steps", step.steps)]
    if isinstance(step, If):
        return [("then", step.then), ("else", step.otherwise)]
    if isinstance(step, Parallel):
        return [(f"parallel[{index}].steps", branch.steps) for index, branch in enumerate(step.parallel)]
    return []


#: A step that runs on a Kusto connection: one of KUSTO_STEPS, as a type.
KustoStep = (
    RunQuery
    | RunQueryAndRenderChart
    | RunControlCommandAndRenderChart
    | RunShowCommand
    | RunAsyncControlCommand
)
#: A step that sends KQL of its own to a Kusto connection: a Kusto step, or a copy with its own query.
QueryingStep = KustoStep | CopyToDatabase
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
    if isinstance(step, CopyToDatabase) and (step.query or "").lstrip().startswith("."):
        raise ValueError(
            f"{where}.query: text starting with '.' is a control command; a copy runs a query of its own, "
            "or copies the result of an earlier step (source) that runs the command"
        )
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
