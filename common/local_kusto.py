"""The local Kusto endpoint embedded mode queries instead of Azure Data Explorer.

It is duckdb-kql's Kusto REST server over a DuckDB file, run on loopback in a
background thread, so the query worker talks to it with the same
azure-kusto-data client it uses against a real cluster. The handler below
closes the gaps between that client and duckdb-kql 1.1.2:

* azure-kusto-data sends the request's ``properties`` as a JSON *string*; the
  server reads them only as an object, so parameters and ``servertimeout``
  were silently dropped.
* Kusto carries every parameter value as text (``"5"``, ``"long(5)"``,
  ``"datetime(2007-05-01)"``); the engine wants a number where a number is
  declared. Values are read against the query's own declarations by a strict
  literal reader, and a value that is not its declared type is a 400 naming
  the parameter rather than a query run with something else.
* Nagle's algorithm is off: a small response otherwise waits for the client's
  delayed ACK, about 40 ms a query (measured 54 ms against 12 ms for `print 1`).
* Writes: a writable endpoint opens its file read-write and lets the engine run
  its write commands (`.set`, `.append`, `.set-or-append`, `.set-or-replace`,
  and `.create`/`.attach`/`.detach database`); a read-only one refuses them with
  a 403 that says how to start a writable one.
* `async`: Kusto runs `.set-or-append async T <| query` (and the other three
  ingestion verbs) in the background and answers at once with an `OperationId`.
  The engine refuses the keyword, so the server strips it, runs the command on a
  thread through the same serialized path as every query, and records an
  operation. Any other command with `async` is a 400 naming the command.
* `.show operations`, `.show operations <id>` and `.show operations (id, ...)`
  answer from that record with Kusto's columns, without waiting for the
  database, so a client can watch an operation while it runs.
* `render`: the engine runs a query ending in `render` but always reports
  `"Visualization": null`. A trailing `render <kind> with (...)` is read from
  duckdb-kql's parse tree and the v2 response's QueryProperties table carries
  Kusto's Visualization object for it; a property it cannot report faithfully
  is a 400 naming the property.
* A browser page may POST to loopback without asking first; a request carrying
  an `Origin` that is not the Azure Data Explorer UI is refused, so no page can
  send this endpoint a write.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import io
import ipaddress
import json
import re
import signal
import threading
import time
import uuid
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from enum import StrEnum
from pathlib import Path
from types import TracebackType
from typing import Any, NamedTuple, cast

import duckdb_kql
from duckdb import DuckDBPyConnection
from duckdb_kql import KqlError, KqlUnsupportedError
from duckdb_kql.control import is_write_command, strip_leading_comments
from duckdb_kql.ingest import INGESTION_VERBS, parse_ingestion
from duckdb_kql.params import as_datetime, parse_timespan
from duckdb_kql.server import DEFAULT_PORT, KustoRestServer, RestColumn, Result, _Handler, error_response

from common.sample_data import ensure_database

__all__ = [
    "OPERATION_COLUMNS",
    "RENDER_KINDS",
    "LocalKusto",
    "OperationState",
    "ParameterValueError",
    "RenderRefused",
    "RequestRefused",
    "WritesDisabled",
    "parameter_value",
    "start_local_kusto",
    "visualization",
]

#: How often the serving thread looks for a shutdown request; it bounds how long
#: `close()` waits for the accept loop to notice.
_POLL_SECONDS = 0.05
#: How long `close()` keeps interrupting a running query before it gives up on
#: closing the DuckDB connection (the process exit will).
_DRAIN_SECONDS = 5.0


class RequestRefused(ValueError):
    """A request this endpoint answers with 400 before the engine sees it."""


class WritesDisabled(KqlUnsupportedError):
    """A write command sent to an endpoint that opened its database read-only.

    A `KqlUnsupportedError` because that is the refusal duckdb-kql's handler
    answers with 403 when its message says writes are disabled; the message is
    our own, since the engine's points at its `allow_write` knob, not ours.
    """

    def __init__(self, command: str, database: str) -> None:
        KqlError.__init__(
            self,
            f"{command} writes to the database, and writes are disabled here: {database} is open "
            "read-only; an endpoint started with LocalKusto(..., writable=True) runs write commands",
        )
        self.construct = command
        self.span = None
        self.hint = None


class ParameterValueError(RequestRefused):
    """A query parameter's value is not a literal of its declared type."""

    def __init__(self, name: str, kind: str, value: Any) -> None:
        super().__init__(
            f"query parameter {name!r} is declared {kind}, but {value!r:.80} is not a {kind} value"
        )
        self.name = name
        self.kind = kind
        self.value = value


# ---------------------------------------------------------------------------
# Parameter values
# ---------------------------------------------------------------------------

#: Spellings of a typed literal's wrapper, `long(5)`, by the kind they make.
_WRAPPERS = {
    "bool": ("bool", "boolean"),
    "int": ("int", "long"),
    "long": ("long", "int"),
    "real": ("real", "double"),
    "decimal": ("decimal",),
    "datetime": ("datetime", "date"),
    "timespan": ("timespan", "time"),
    "guid": ("guid", "uuid", "uniqueid"),
    "dynamic": ("dynamic",),
}
_RANGES = {"int": (-(2**31), 2**31 - 1), "long": (-(2**63), 2**63 - 1)}

_WRAPPED = re.compile(r"([A-Za-z]+)\s*\((.*)\)", re.DOTALL)
_INTEGER = re.compile(r"[+-]?\d+")
_HEX = re.compile(r"0[xX][0-9a-fA-F]+")
_NUMBER = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?")
_SPECIAL_REALS = {"nan": float("nan"), "+inf": float("inf"), "inf": float("inf"), "-inf": float("-inf")}


def parameter_value(value: Any, kind: str, name: str) -> Any:
    """The value a Kusto client sent for parameter *name*, as duckdb-kql binds it.

    On the wire a string parameter is its raw text and every other type is a
    KQL literal in text form, bare (`5`, `2007-05-01`, `1d`) or wrapped
    (`long(5)`, `datetime(2007-05-01)`, `dynamic([1,2])`). The engine's binder
    wants a JSON bool or number for bool, int, long and real, and reads the
    other kinds from text itself; so those four are parsed here, and the rest
    are unwrapped and checked with the same readers the binder will use, so a
    bad value is refused here, by name, rather than deep in the engine.

    Anything not a string (a client that sent JSON numbers) passes through for
    the binder to judge. Never evaluated, never spliced into the query text.
    """
    if not isinstance(value, str) or kind == "string":
        return value
    text = value.strip()
    wrapped = _WRAPPED.fullmatch(text)
    if wrapped is not None:
        if wrapped.group(1).lower() not in _WRAPPERS.get(kind, ()):
            raise ParameterValueError(name, kind, value)
        text = wrapped.group(2).strip()
        if text == "null":
            return None
    parsed = _read(text, kind)
    if parsed is _INVALID:
        raise ParameterValueError(name, kind, value)
    return parsed


_INVALID = object()


def _read(text: str, kind: str) -> Any:
    if kind == "bool":
        return {"true": True, "false": False}.get(text.lower(), _INVALID)
    if kind in _RANGES:
        if _INTEGER.fullmatch(text):
            number = int(text)
        elif _HEX.fullmatch(text):
            number = int(text, 16)
        else:
            return _INVALID
        low, high = _RANGES[kind]
        return number if low <= number <= high else _INVALID
    if kind == "real":
        if _NUMBER.fullmatch(text):
            return float(text)
        return _SPECIAL_REALS.get(text.lower(), _INVALID)
    if kind == "decimal":
        try:
            return text if _NUMBER.fullmatch(text) and Decimal(text).is_finite() else _INVALID
        except InvalidOperation:
            return _INVALID
    if kind == "datetime":
        try:
            as_datetime(text, "value")
        except KqlError:
            return _INVALID
        return text
    if kind == "timespan":
        return text if parse_timespan(text) is not None else _INVALID
    if kind == "guid":
        try:
            uuid.UUID(text)
        except ValueError:
            return _INVALID
        return text
    if kind == "dynamic":
        try:
            json.loads(text, parse_constant=_refuse_constant)
        except ValueError:
            return _INVALID
        return text
    return _INVALID


def _refuse_constant(name: str) -> Any:
    # `NaN` and `Infinity` are Python's extension to JSON, not Kusto's dynamic.
    raise ValueError(f"{name} is not JSON")


def _typed_parameters(csl: str, parameters: dict[str, Any]) -> dict[str, Any]:
    try:
        declared = {d.name: d.type for d in duckdb_kql.query_parameters(csl)}
    except KqlError:
        return parameters  # the engine reports the query's own error, better than we could
    # An undeclared name is left as sent: the engine refuses it as a likely typo.
    return {
        name: parameter_value(value, declared[name], name) if name in declared else value
        for name, value in parameters.items()
    }


def _normalized_body(body: bytes) -> bytes | None:
    """The request body as the stock handler should read it, or None if unchanged."""
    try:
        request = json.loads(body or b"{}")
    except ValueError:
        return None  # the stock handler answers a malformed body
    if not isinstance(request, dict):
        return None
    properties = request.get("properties")
    changed = False
    if isinstance(properties, str):
        try:
            properties = json.loads(properties)
        except ValueError as exc:
            raise RequestRefused(f"request properties are not JSON: {exc}") from exc
        if not isinstance(properties, dict):
            raise RequestRefused("request properties must be a JSON object")
        changed = True
    if not isinstance(properties, dict):
        return None
    parameters = properties.get("Parameters")
    csl = request.get("csl")
    # Only a request with parameters pays for parsing the query's declarations.
    if isinstance(parameters, dict) and parameters and isinstance(csl, str):
        properties["Parameters"] = _typed_parameters(csl, parameters)
        changed = True
    if not changed:
        return None
    request["properties"] = properties
    return json.dumps(request).encode("utf-8")


# ---------------------------------------------------------------------------
# Visualization
# ---------------------------------------------------------------------------

#: The chart kinds Kusto's `render` draws, spelled as Kusto spells them. The
#: grammar also lets any identifier through in that place; Kusto refuses those.
RENDER_KINDS = frozenset(
    {
        "table",
        "piechart",
        "barchart",
        "columnchart",
        "areachart",
        "linechart",
        "timechart",
        "scatterchart",
        "anomalychart",
        "stackedareachart",
        "pivotchart",
        "card",
        "ladderchart",
        "treemap",
        "timepivot",
        "3Dchart",
        "plotly",
    }
)

#: The Visualization object of a query without `render`, in Kusto's key order:
#: the one duckdb-kql sends with every v2 response.
_NO_VISUALIZATION: dict[str, Any] = {
    "Visualization": None,
    "Title": None,
    "XColumn": None,
    "Series": None,
    "YColumns": None,
    "AnomalyColumns": None,
    "XTitle": None,
    "YTitle": None,
    "XAxis": None,
    "YAxis": None,
    "Legend": None,
    "YSplit": None,
    "Accumulate": False,
    "IsQuerySorted": False,
    "Kind": None,
    "Ymin": "NaN",
    "Ymax": "NaN",
    "Xmin": None,
    "Xmax": None,
}

#: The key each `with (...)` property fills. `xmin` and `xmax` are left out:
#: their value may be any literal, and how Kusto writes a datetime one in this
#: object is not known here, so they are refused rather than guessed.
_RENDER_PROPERTIES = {
    "title": "Title",
    "xtitle": "XTitle",
    "ytitle": "YTitle",
    "xcolumn": "XColumn",
    "ycolumns": "YColumns",
    "series": "Series",
    "anomalycolumns": "AnomalyColumns",
    "kind": "Kind",
    "xaxis": "XAxis",
    "yaxis": "YAxis",
    "legend": "Legend",
    "ysplit": "YSplit",
    "accumulate": "Accumulate",
    "ymin": "Ymin",
    "ymax": "Ymax",
}

_STRING_LITERAL = re.compile(r"[hH]?(?P<verbatim>@?)(?P<quote>['\"])(?P<body>.*)(?P=quote)", re.DOTALL)
_MULTILINE_LITERAL = re.compile(r"[hH]?(?P<fence>```|~~~)(?P<body>.*)(?P=fence)", re.DOTALL)
_STRING_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "0": "\0", "\\": "\\", "'": "'", '"': '"'}


class RenderRefused(RequestRefused):
    """A trailing `render` whose request this endpoint cannot report as Kusto would."""


def visualization(csl: str) -> dict[str, Any] | None:
    """The Visualization object Kusto reports for *csl*'s trailing `render`.

    None when the query does not end in `render`, and when it does not parse:
    the engine answers that with its own syntax error. duckdb-kql lowers
    `render` to nothing, so it is read here from the engine's own parse tree,
    the ANTLR tree of its pinned grammar that `duckdb_kql.parse` returns.
    A value the grammar allows but this endpoint cannot report faithfully
    (`title=strcat(...)`, `xmin=...`, an unknown chart kind) is refused.
    """
    if "render" not in csl:  # spares every other query a second parse
        return None
    try:
        tree = duckdb_kql.parse(csl).tree
    except KqlError:
        return None
    render = _trailing_render(tree)
    if render is None:
        return None
    kind = render.CharType.text
    if kind not in RENDER_KINDS:
        raise RenderRefused(
            f"render {kind!r:.40} is not a chart kind: Kusto draws {', '.join(sorted(RENDER_KINDS))}"
        )
    if render.LegacyPropertyList is not None:
        raise RenderRefused("render properties are read here only in their `with (name=value, ...)` form")
    shown = dict(_NO_VISUALIZATION, Visualization=kind)
    properties = render.WithClause.Properties if render.WithClause is not None else []
    given: set[str] = set()
    for node in properties:
        name = node.Name.text
        key = _RENDER_PROPERTIES.get(name)
        if key is None:
            raise RenderRefused(f"render property {name} is not supported here")
        if name in given:
            raise RenderRefused(f"render property {name} is given twice")
        given.add(name)
        shown[key] = _render_value(node, name)
    return shown


def _trailing_render(tree: Any) -> Any:
    """The `render` operator that ends the query's last statement, if one does."""
    if tree is None:  # a control command
        return None
    statements = tree.query().Statements
    statement = statements[-1].Query if statements else None
    if statement is None:  # a `let` or `declare` last
        return None
    operators = getattr(statement.Expression.getChild(0), "PipedOperators", None)
    if not operators:
        return None
    last = operators[-1].Operator.getChild(0)
    return last if type(last).__name__ == "RenderOperatorContext" else None


def _render_value(node: Any, name: str) -> Any:
    """The value of one `with (...)` property, by the form the grammar read it in."""
    if node.ExpressionValue is not None:  # title, xtitle, ytitle
        return "".join(_string_literal(token, name) for token in _tokens(node.ExpressionValue))
    if node.NameValue is not None:  # xcolumn
        return _column_name(node.NameValue, name)
    if node.NameListValue is not None:  # ycolumns, series, anomalycolumns: Kusto's "a,b"
        return ",".join(_column_name(column, name) for column in node.NameListValue.Names)
    if node.TokenValue is not None:  # kind, xaxis, yaxis, legend, ysplit
        return node.TokenValue.text
    if node.BoolValue is not None:  # accumulate
        return node.BoolValue.text == "true"
    if node.NumberValue is not None:  # ymin, ymax
        text = node.NumberValue.getText()
        if not _NUMBER.fullmatch(text):
            raise RenderRefused(f"render property {name} must be a plain number, not {text!r:.40}")
        return float(text)
    raise RenderRefused(f"render property {name} is not supported here")


def _tokens(node: Any) -> list[str]:
    """The text of each token under *node*, in order; `getText()` would glue them."""
    if node.getChildCount() == 0:
        return [node.getText()]
    return [text for child in node.getChildren() for text in _tokens(child)]


def _column_name(node: Any, name: str) -> str:
    tokens = _tokens(node)
    if len(tokens) == 1:  # an identifier, or a keyword used as one
        return tokens[0]
    if len(tokens) > 2 and tokens[0] == "[" and tokens[-1] == "]":  # ['a name']
        return "".join(_string_literal(token, name) for token in tokens[1:-1])
    raise RenderRefused(f"render property {name} names a column as {''.join(tokens)!r:.40}, not read here")


def _string_literal(token: str, name: str) -> str:
    """One KQL string literal token, decoded: quoted, `@` verbatim, `h` hidden or fenced."""
    fenced = _MULTILINE_LITERAL.fullmatch(token)
    if fenced is not None:
        return fenced.group("body")
    quoted = _STRING_LITERAL.fullmatch(token)
    if quoted is None:
        raise RenderRefused(f"render property {name} must be a string literal, not {token!r:.40}")
    body, quote = quoted.group("body"), quoted.group("quote")
    if quoted.group("verbatim"):
        return body.replace(quote * 2, quote)
    out: list[str] = []
    escaped = iter(body)
    for char in escaped:
        if char == "\\":
            code = next(escaped, "")
            if code not in _STRING_ESCAPES:
                raise RenderRefused(f"render property {name}: the escape \\{code} is not read here")
            char = _STRING_ESCAPES[code]
        out.append(char)
    return "".join(out)


# ---------------------------------------------------------------------------
# Operations
# ---------------------------------------------------------------------------


class OperationState(StrEnum):
    """The `State` of an operation, in Kusto's spelling."""

    IN_PROGRESS = "InProgress"
    COMPLETED = "Completed"
    FAILED = "Failed"
    #: Interrupted because the endpoint closed while it ran.
    CANCELLED = "Cancelled"


#: `.show operations`, Kusto's columns in Kusto's order. The labels follow
#: duckdb-kql's measurements on the Kusto emulator (duckdb_kql.control): a
#: command's bool is `SByte` here, and Duration is `TimeSpan`/`timespan`.
OPERATION_COLUMNS: tuple[RestColumn, ...] = (
    RestColumn("OperationId", "guid", "Guid", "guid"),
    RestColumn("Operation", "string", "String", "string"),
    RestColumn("NodeId", "string", "String", "string"),
    RestColumn("StartedOn", "datetime", "DateTime", "datetime"),
    RestColumn("LastUpdatedOn", "datetime", "DateTime", "datetime"),
    RestColumn("Duration", "timespan", "TimeSpan", "timespan"),
    RestColumn("State", "string", "String", "string"),
    RestColumn("Status", "string", "String", "string"),
    RestColumn("RootActivityId", "guid", "Guid", "guid"),
    RestColumn("ShouldRetry", "bool", "SByte", "bool"),
    RestColumn("Database", "string", "String", "string"),
    RestColumn("Principal", "string", "String", "string"),
    RestColumn("User", "string", "String", "string"),
    RestColumn("AdminEpochStartTime", "datetime", "DateTime", "datetime"),
)

#: What an `async` command answers at once.
_OPERATION_ID = RestColumn("OperationId", "guid", "Guid", "guid")

#: Kusto's `Operation` for each ingestion verb.
_OPERATION_NAMES = {
    ".set": "TableSet",
    ".append": "TableAppend",
    ".set-or-append": "TableSetOrAppend",
    ".set-or-replace": "TableSetOrReplace",
}
assert set(_OPERATION_NAMES) == set(INGESTION_VERBS)

#: How many operations the log keeps; the oldest finished ones go first.
_KEPT_OPERATIONS = 1_000


@dataclass
class Operation:
    """One background command, as `.show operations` reports it."""

    name: str
    database: str
    started_on: dt.datetime
    id: uuid.UUID = field(default_factory=uuid.uuid4)
    root_activity_id: uuid.UUID = field(default_factory=uuid.uuid4)
    state: OperationState = OperationState.IN_PROGRESS
    status: str = ""
    last_updated_on: dt.datetime | None = None

    def row(self, epoch: dt.datetime) -> tuple[Any, ...]:
        updated = self.last_updated_on or self.started_on
        return (
            self.id,
            self.name,
            "",  # NodeId: nothing runs remotely
            self.started_on,
            updated,
            updated - self.started_on,
            self.state.value,
            self.status,
            self.root_activity_id,
            False,  # ShouldRetry
            self.database,
            "",  # Principal and User: the endpoint authenticates no one
            "",
            epoch,
        )


class _OperationLog:
    """The operations one server started, newest last, behind one lock."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._operations: dict[uuid.UUID, Operation] = {}
        self.epoch = dt.datetime.now(dt.UTC)

    def start(self, name: str, database: str) -> Operation:
        operation = Operation(name, database, dt.datetime.now(dt.UTC))
        with self._lock:
            self._operations[operation.id] = operation
            finished = [o.id for o in self._operations.values() if o.state is not OperationState.IN_PROGRESS]
            for old in finished[: max(0, len(self._operations) - _KEPT_OPERATIONS)]:
                del self._operations[old]
        return operation

    def finish(self, operation_id: uuid.UUID, state: OperationState, status: str = "") -> None:
        with self._lock:
            operation = self._operations[operation_id]
            operation.state = state
            operation.status = status
            operation.last_updated_on = dt.datetime.now(dt.UTC)

    def result(self, ids: tuple[uuid.UUID, ...] | None) -> Result:
        """`.show operations`: all, newest first, or the *ids* known, in the order asked."""
        with self._lock:
            if ids is None:
                chosen = list(reversed(self._operations.values()))
            else:
                chosen = [self._operations[i] for i in dict.fromkeys(ids) if i in self._operations]
            rows = [operation.row(self.epoch) for operation in chosen]
        return Result(list(OPERATION_COLUMNS), rows)


_SHOW_OPERATIONS = re.compile(r"\.show\s+operations\b(?P<rest>.*)", re.IGNORECASE | re.DOTALL)
#: A command verb followed by `async`, which is where Kusto puts the keyword.
_ASYNC = re.compile(r"(?P<verb>\.[A-Za-z][A-Za-z-]*)\s+async\b", re.IGNORECASE)
_VERB = re.compile(r"\.[A-Za-z][A-Za-z-]*")
#: Request options that bound the request. An async command's request ends
#: when it answers; the command runs on, as Kusto's does.
_REQUEST_TIMEOUTS = frozenset({"servertimeout", "norequesttimeout"})


def _operation_ids(rest: str) -> tuple[uuid.UUID, ...] | None:
    """The ids after `.show operations`: None for all of them."""
    text = rest.strip().rstrip(";").strip()
    if not text:
        return None
    listed = text[1:-1].split(",") if text.startswith("(") and text.endswith(")") else [text]
    ids = []
    for item in listed:
        written = item.strip().strip("'\"")
        try:
            ids.append(uuid.UUID(written))
        except ValueError:
            raise RequestRefused(
                f".show operations takes an operation id or a parenthesized list of them; "
                f"{item.strip()!r:.80} is not a guid (a pipeline on it is not supported here)"
            ) from None
    return tuple(ids)


class _AsyncCommand(NamedTuple):
    verb: str
    #: The command without `async`, as the engine runs it.
    text: str


def _async_command(head: str) -> _AsyncCommand | None:
    """*head* without its `async` keyword, or None if it has none."""
    match = _ASYNC.match(head)
    if match is None:
        return None
    verb = match.group("verb").lower()
    if verb not in _OPERATION_NAMES:
        raise RequestRefused(
            f"{match.group('verb')} async is not supported here: only "
            f"{', '.join(sorted(_OPERATION_NAMES))} run asynchronously"
        )
    return _AsyncCommand(verb, f"{verb} {head[match.end() :].lstrip()}")


# ---------------------------------------------------------------------------
# The server
# ---------------------------------------------------------------------------


class _LocalHandler(_Handler):
    """duckdb-kql's handler, fed a body it can read in full, answering `render`."""

    disable_nagle_algorithm = True
    #: The request's Visualization object as JSON, while its trailing `render` is answered.
    _visualization: str | None = None

    def do_POST(self) -> None:  # BaseHTTPRequestHandler's interface
        # A page in the browser may POST here without a preflight (a "simple"
        # request); its response is unreadable, but a write would still happen.
        origin = self.headers.get("Origin")
        if origin is not None and origin not in self.kusto.allowed_origins:
            self._send(
                403,
                error_response(f"requests from origin {origin!r:.80} are not accepted", code="Forbidden"),
            )
            self.close_connection = True
            return
        if cast(_LocalServer, self.server).closing:
            self._send(503, error_response("the local Kusto endpoint is shutting down"))
            self.close_connection = True
            return
        original = self.rfile
        try:
            length = int(self.headers.get("Content-Length", "0"))
        except ValueError:
            length = -1
        if length < 0:
            # The stock handler would read to end of stream, which on a
            # keep-alive connection never comes.
            self._send(400, error_response("malformed Content-Length"))
            self.close_connection = True
            return
        body = original.read(length)
        try:
            normalized = _normalized_body(body)
        except RequestRefused as exc:
            self._send(400, error_response(str(exc)))
            return
        if normalized is not None:
            body = normalized
            del self.headers["Content-Length"]
            self.headers["Content-Length"] = str(len(body))
        try:
            self._visualization = _shown_visualization(self.path, body)
        except RenderRefused as exc:
            self._send(400, error_response(str(exc)))
            return
        self.rfile = io.BytesIO(body)
        try:
            super().do_POST()
        finally:
            # The connection's next request is read from this attribute; left on
            # the spent buffer, a keep-alive connection would read nothing.
            self.rfile = original
            self._visualization = None

    def _send(self, status: int, payload: Any) -> None:
        # The stock handler builds the v2 frames and sends them in one call;
        # this is the one place the QueryProperties table can be filled in.
        if self._visualization is not None and status == 200 and isinstance(payload, list):
            payload = [_with_visualization(frame, self._visualization) for frame in payload]
        super()._send(status, payload)


def _shown_visualization(path: str, body: bytes) -> str | None:
    """The Visualization value a v2 query's response carries, or None to leave the stock one."""
    if b"render" not in body or path.split("?", 1)[0].rstrip("/") != "/v2/rest/query":
        return None
    try:
        request = json.loads(body)
    except ValueError:
        return None  # the stock handler answers a malformed body
    csl = request.get("csl") if isinstance(request, dict) else None
    shown = visualization(csl) if isinstance(csl, str) else None
    return None if shown is None else json.dumps(shown)


def _with_visualization(frame: Any, shown: str) -> Any:
    if not isinstance(frame, dict) or frame.get("TableKind") != "QueryProperties":
        return frame
    rows = [[*row[:2], shown] if row[1] == "Visualization" else row for row in frame["Rows"]]
    return {**frame, "Rows": rows}


class _LocalServer(KustoRestServer):
    """The stock server with our handler, background operations, and a close
    that waits for both kinds of work."""

    def __init__(
        self, con: DuckDBPyConnection, *, source: Path, host: str, port: int, writable: bool
    ) -> None:
        # The catalog connection must exist before the stock constructor, which
        # reads it through databases().
        self._catalog = con.cursor()
        self._catalog_lock = threading.Lock()
        super().__init__(con, host=host, port=port, quiet=True, source=str(source), allow_write=writable)
        self.RequestHandlerClass = _LocalHandler
        self._connection = con
        self._source_name = source.name
        self._activity = threading.Condition()
        self._running = 0
        self._closing = False
        self.operations = _OperationLog()

    @property
    def closing(self) -> bool:
        with self._activity:
            return self._closing

    def databases(self) -> list[str]:
        # The handler asks this before every request. On the main connection
        # it would wait behind a running query, and `.show operations` would
        # not answer until the operation it is asked about had finished.
        with self._catalog_lock:
            rows = self._catalog.execute(
                "SELECT database_name FROM duckdb_databases() WHERE NOT internal ORDER BY database_name"
            ).fetchall()
        return [str(row[0]) for row in rows]

    def run(
        self,
        csl: str,
        parameters: dict[str, Any] | None = None,
        database: str | None = None,
        options: dict[str, Any] | None = None,
    ) -> Result:
        head = strip_leading_comments(csl)
        shown = _SHOW_OPERATIONS.match(head)
        if shown is not None:
            return self.operations.result(_operation_ids(shown.group("rest")))
        if not self.allow_write and is_write_command(head):
            verb = _VERB.match(head)
            raise WritesDisabled(verb.group(0) if verb else "the command", self._source_name)
        deferred = _async_command(head)
        if deferred is not None:
            return self._submit(deferred, parameters, database, options)
        self._begin()
        try:
            return super().run(csl, parameters, database, options)
        finally:
            self._end()

    def _begin(self) -> None:
        """Count a piece of work, so close() waits for it; `_end` uncounts it."""
        with self._activity:
            # Keep-alive connections outlive the accept loop, so a request can
            # still arrive after close() began; it must not reach a closed database.
            if self._closing:
                raise RuntimeError("the local Kusto endpoint is shutting down")
            self._running += 1

    def _end(self) -> None:
        with self._activity:
            self._running -= 1
            self._activity.notify_all()

    def _submit(
        self,
        command: _AsyncCommand,
        parameters: dict[str, Any] | None,
        database: str | None,
        options: dict[str, Any] | None,
    ) -> Result:
        """Start *command* on a thread and answer its operation id."""
        # A malformed command or query is the request's error, as on Kusto,
        # not an operation that fails later.
        duckdb_kql.parse(parse_ingestion(command.text).source)
        options = {k: v for k, v in (options or {}).items() if k not in _REQUEST_TIMEOUTS}
        target = database if database and database != "default" else self.database
        self._begin()  # ended by the thread, when the command is done
        operation = self.operations.start(_OPERATION_NAMES[command.verb], target)
        thread = threading.Thread(
            target=self._execute,
            args=(operation.id, command.text, parameters, database, options),
            name=f"local-kusto-operation-{operation.id}",
            daemon=True,
        )
        try:
            thread.start()
        except BaseException as exc:
            self.operations.finish(operation.id, OperationState.FAILED, str(exc))
            self._end()
            raise
        return Result([_OPERATION_ID], [(operation.id,)])

    def _execute(
        self,
        operation_id: uuid.UUID,
        csl: str,
        parameters: dict[str, Any] | None,
        database: str | None,
        options: dict[str, Any],
    ) -> None:
        try:
            # The stock run: the lock that serializes every statement on the
            # one connection; the work was counted when it was submitted.
            super().run(csl, parameters, database, options)
        except Exception as exc:  # any failure is the operation's outcome, not the thread's
            state = OperationState.CANCELLED if self.closing else OperationState.FAILED
            self.operations.finish(operation_id, state, str(exc))
        else:
            self.operations.finish(operation_id, OperationState.COMPLETED)
        finally:
            self._end()

    def close_database(self) -> None:
        """Cancel what is running, background operations included, then close DuckDB.

        The interrupt is repeated because one sent while a query is still being
        translated finds nothing to cancel. Closing a busy connection fails
        rather than waits, so a query that ignores interrupts past the drain
        time leaves the connection to the process exit.
        """
        deadline = time.monotonic() + _DRAIN_SECONDS
        with self._activity:
            self._closing = True
            while self._running and time.monotonic() < deadline:
                self._connection.interrupt()
                self._activity.wait(_POLL_SECONDS)
            if self._running:
                return
        with self._catalog_lock:
            self._catalog.close()
        self._connection.close()


def _loopback(host: str) -> str:
    """*host* if it is an IPv4 loopback address; this endpoint answers anyone
    who can reach it, unauthenticated."""
    if host == "localhost":
        return "127.0.0.1"
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        address = None
    if address is None or address.version != 4 or not address.is_loopback:
        raise ValueError(
            f"host {host!r} is not an IPv4 loopback address; the local Kusto endpoint binds 127.x only"
        )
    return host


class LocalKusto:
    """A Kusto REST endpoint over a DuckDB file, served from a daemon thread.

    ``with LocalKusto(path) as kusto:`` (or ``async with``) starts it; point an
    azure-kusto-data client at `url` and query database `database`.

    Read-only unless *writable*: then the file is opened read-write, the
    engine's write commands run, and so do their `async` forms. A read-write
    DuckDB file is locked to this process while the endpoint is open.
    """

    def __init__(
        self, database_path: Path, *, port: int = 0, host: str = "127.0.0.1", writable: bool = False
    ) -> None:
        self._path = Path(database_path)
        self._host = _loopback(host)
        self._port = port
        self.writable = writable
        self._server: _LocalServer | None = None
        self._thread: threading.Thread | None = None
        self._closed = False

    def __repr__(self) -> str:
        state = "closed" if self._closed else self.url if self._server else "not started"
        mode = "read-write" if self.writable else "read-only"
        return f"<LocalKusto {self._path.name} {mode} {state}>"

    @property
    def url(self) -> str:
        """The cluster URL, with the port actually bound."""
        if self._server is None:
            raise RuntimeError("the local Kusto endpoint is not started")
        return self._server.url

    @property
    def database(self) -> str:
        """The Kusto database name: DuckDB names an attached file after its stem."""
        return self._path.stem

    def start(self) -> LocalKusto:
        """Open the database and start serving; a second call does nothing."""
        if self._closed:
            raise RuntimeError("a closed LocalKusto cannot be restarted")
        if self._server is not None:
            return self
        if not self._path.is_file():
            raise FileNotFoundError(f"no DuckDB database at {self._path}")
        con = duckdb_kql.connect(str(self._path), read_only=not self.writable)
        try:
            server = _LocalServer(
                con, source=self._path, host=self._host, port=self._port, writable=self.writable
            )
        except BaseException:
            con.close()
            raise
        self._thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": _POLL_SECONDS},
            name=f"local-kusto-{server.server_address[1]}",
            daemon=True,
        )
        self._server = server
        self._thread.start()
        return self

    def close(self) -> None:
        """Stop serving and release the port and the database. Idempotent.

        Running queries and background operations are interrupted; an
        interrupted write may leave its target table created but not filled,
        since the engine's statements for one command are not one transaction.
        """
        if self._closed:
            return
        self._closed = True
        server, thread = self._server, self._thread
        if server is None or thread is None:
            return
        server.shutdown()
        server.server_close()
        thread.join()
        server.close_database()

    def __enter__(self) -> LocalKusto:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    async def __aenter__(self) -> LocalKusto:
        return await asyncio.to_thread(self.start)

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        # shutdown() blocks until the accept loop notices; not on the event loop.
        await asyncio.to_thread(self.close)


def start_local_kusto(data_dir: Path, port: int = 0, *, writable: bool = True) -> LocalKusto:
    """A started endpoint over the sample database in *data_dir*, built if missing.

    Writable by default: embedded mode is the user's own sandbox, and flows
    write to it with `.set-or-append` as they would to a cluster.
    """
    return LocalKusto(ensure_database(Path(data_dir)), port=port, writable=writable).start()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m common.local_kusto",
        description="Serve the StormEvents sample database as a local Kusto endpoint.",
    )
    parser.add_argument("--data-dir", type=Path, required=True, help="where the sample database lives")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"default {DEFAULT_PORT}; 0 picks one")
    parser.add_argument("--read-only", action="store_true", help="refuse write commands")
    args = parser.parse_args(argv)
    stop = threading.Event()
    # Ctrl-C and a container's SIGTERM both end the wait, so the endpoint closes
    # through the same path either way.
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    with start_local_kusto(args.data_dir, args.port, writable=not args.read_only) as kusto:
        print(f"Kusto endpoint {kusto.url}, database {kusto.database!r}. Ctrl-C to stop.", flush=True)
        stop.wait()


if __name__ == "__main__":
    main()
