"""Async control commands and the `.show operations` table.

Kusto runs `.set-or-append async T <| query` (and the other three ingestion
verbs) in the background and answers at once with an `OperationId`. The
engine refuses the keyword, so the server strips it, runs the command on a
thread through the same serialized path as every query, and records an
operation. Any other command with `async` is a 400 naming the command.

`.show operations`, `.show operations <id>` and `.show operations (id, ...)`
answer from that record with Kusto's columns, without waiting for the
database, so a client can watch an operation while it runs.
"""

from __future__ import annotations

import datetime as dt
import re
import threading
import uuid
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, NamedTuple

from duckdb_kql.ingest import INGESTION_VERBS
from duckdb_kql.server import RestColumn, Result

from services.embedded.kusto.literals import RequestRefused

__all__ = [
    "OPERATION_COLUMNS",
    "OPERATION_ID",
    "OPERATION_NAMES",
    "REQUEST_TIMEOUTS",
    "SHOW_OPERATIONS",
    "AsyncCommand",
    "Operation",
    "OperationLog",
    "OperationState",
    "async_command",
    "operation_ids",
]


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
OPERATION_ID = RestColumn("OperationId", "guid", "Guid", "guid")

#: Kusto's `Operation` for each ingestion verb.
OPERATION_NAMES = {
    ".set": "TableSet",
    ".append": "TableAppend",
    ".set-or-append": "TableSetOrAppend",
    ".set-or-replace": "TableSetOrReplace",
}
assert set(OPERATION_NAMES) == set(INGESTION_VERBS)

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


class OperationLog:
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


SHOW_OPERATIONS = re.compile(r"\.show\s+operations\b(?P<rest>.*)", re.IGNORECASE | re.DOTALL)
#: A command verb followed by `async`, which is where Kusto puts the keyword.
_ASYNC = re.compile(r"(?P<verb>\.[A-Za-z][A-Za-z-]*)\s+async\b", re.IGNORECASE)
#: Request options that bound the request. An async command's request ends
#: when it answers; the command runs on, as Kusto's does.
REQUEST_TIMEOUTS = frozenset({"servertimeout", "norequesttimeout"})


def operation_ids(rest: str) -> tuple[uuid.UUID, ...] | None:
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


class AsyncCommand(NamedTuple):
    verb: str
    #: The command without `async`, as the engine runs it.
    text: str


def async_command(head: str) -> AsyncCommand | None:
    """*head* without its `async` keyword, or None if it has none."""
    match = _ASYNC.match(head)
    if match is None:
        return None
    verb = match.group("verb").lower()
    if verb not in OPERATION_NAMES:
        raise RequestRefused(
            f"{match.group('verb')} async is not supported here: only "
            f"{', '.join(sorted(OPERATION_NAMES))} run asynchronously"
        )
    return AsyncCommand(verb, f"{verb} {head[match.end() :].lstrip()}")
