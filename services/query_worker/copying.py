"""The ``copy_to_database`` step: an earlier query's stored result into a table of the operator's
database.

The result is streamed from the blob store a chunk at a time into one transaction on the
target (:mod:`common.platform.sql`), which also records the run and step in the target's
ledger: a retried or redelivered step finds its copy done and writes nothing again, and a
copy broken off leaves the table as it was. A database that is away is a retryable failure;
a refused table, column or type is not.
"""

from __future__ import annotations

from common.contracts.actions import CopyToDatabase
from common.contracts.errors import DatabaseError
from common.contracts.flows import flow_of, step_spec
from common.contracts.messages import ErrorCode, RunMessage, StepOutput, StepStatus
from common.contracts.results import Column
from common.platform.runtime import Runtime
from common.platform.sql import CopyRequest, SqlDatabase


class CopyStep:
    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime

    async def perform(self, message: RunMessage) -> StepOutput:
        spec = step_spec(message, flow_of(message))
        if not isinstance(spec, CopyToDatabase):
            raise DatabaseError(f"step {spec.id!r} ({spec.action}) copies nothing")
        source = message.outputs.get(spec.source)
        if source is None or source.status is not StepStatus.SUCCEEDED or "result" not in source.artifacts:
            status = source.status.value if source is not None else "not run"
            raise DatabaseError(
                f"steps.{spec.id}.source: {spec.source!r} has no result to copy ({status})",
                code=ErrorCode.TABLE_MISMATCH,
            )
        config = self.runtime.connections.database(spec.database)
        request = CopyRequest(
            run_id=message.run_id,
            step_id=message.step_id,
            table=spec.table,
            mode=spec.mode,
            keys=tuple(spec.key_columns),
            columns=described_columns(source.detail.get("columns", [])),
        )
        rows = self.runtime.blobs.result_rows(source.artifacts["result"].key)
        async with SqlDatabase(spec.database, config) as database:
            outcome = await database.copy(request, rows)
        return StepOutput(
            row_count=outcome.rows,
            detail={
                "database": outcome.database,
                "table": outcome.table,
                "mode": outcome.mode.value,
                "rows": outcome.rows,
                "source_rows": source.row_count,
                "repeated": outcome.repeated,
            },
        )


def described_columns(described: list[str]) -> tuple[Column, ...]:
    """The source's columns as its query step described them (``name:type``), for an empty result."""
    found = []
    for text in described:
        name, _, kind = str(text).rpartition(":")
        if name:
            found.append(Column(name=name, type=kind))
    return tuple(found)
