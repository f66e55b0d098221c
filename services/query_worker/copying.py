"""The ``copy_to_database`` step: a query's result into a table of the operator's database.

The result is an earlier query step's, stored in the blob store, or the step's own query's,
which the step runs first as a query step runs it (:meth:`QueryStep.stored`: typed parameters,
the timeout, the caps), into the blob store too. Either way it is streamed from the blob store a
chunk at a time into one transaction on the target (:mod:`common.platform.sql`), which also
records the run and step in the target's ledger: a retried or redelivered step finds its copy
done and writes nothing again, and a copy broken off leaves the table as it was. A database that
is away is a retryable failure; a refused table, column or type is not.
"""

from __future__ import annotations

from contextlib import aclosing
from typing import TYPE_CHECKING

from common.contracts.actions import CopyToDatabase
from common.contracts.copies import CopyOutcome
from common.contracts.dry_runs import NOT_WRITTEN
from common.contracts.errors import AdxflowError, DatabaseError
from common.contracts.flows import flow_of, step_spec
from common.contracts.messages import ErrorCode, RunMessage, StepOutput, StepStatus
from common.contracts.results import Column
from common.platform.runtime import Runtime
from common.platform.sql import CopyRequest, SqlDatabase
from services.query_worker.dry_runs import sampled

if TYPE_CHECKING:
    from services.query_worker.service import QueryStep

#: What a copy's own query adds to the step's detail: what was sent, and what came back.
_QUERY_DETAIL = ("text", "parameters", "client_request_id", "columns", "truncated", "truncation")


class CopyStep:
    def __init__(self, runtime: Runtime, queries: QueryStep) -> None:
        self.runtime = runtime
        self.queries = queries

    async def perform(self, message: RunMessage) -> StepOutput:
        flow = flow_of(message)
        spec = step_spec(message, flow)
        if not isinstance(spec, CopyToDatabase):
            raise DatabaseError(f"step {spec.id!r} ({spec.action}) copies nothing")
        if spec.query is not None:
            # The query's result is stored like a query step's; it is what the history shows as sent.
            source = await self.queries.stored(message, flow, spec, spec.query)
            sent = {name: source.detail[name] for name in _QUERY_DETAIL if name in source.detail}
        else:
            source = self._source(message, spec)
            sent = {}
        if message.context.dry_run:
            # A test run reads what the copy would write, and writes nothing (nor the copy's ledger).
            async with aclosing(self.runtime.blobs.result_rows(source.artifacts["result"].key)) as rows:
                would = await sampled(rows)
            return StepOutput(
                row_count=would.rows,
                artifacts={"result": source.artifacts["result"]} if spec.query is not None else {},
                detail={
                    **sent,
                    "dry_run": NOT_WRITTEN,
                    "database": spec.database,
                    "table": spec.table,
                    "mode": spec.mode.value,
                    **would.detail(),
                },
            )
        try:
            outcome = await self._copy(message, spec, source)
        except AdxflowError as exc:
            exc.detail = {**sent, **exc.detail}
            raise
        return StepOutput(
            row_count=outcome.rows,
            # A copy's own result stays with it, as a query step's does; a source's is that step's.
            artifacts={"result": source.artifacts["result"]} if spec.query is not None else {},
            detail={
                **sent,
                "database": outcome.database,
                "table": outcome.table,
                "mode": outcome.mode.value,
                "rows": outcome.rows,
                "source_rows": source.row_count,
                "repeated": outcome.repeated,
            },
        )

    @staticmethod
    def _source(message: RunMessage, spec: CopyToDatabase) -> StepOutput:
        source = message.outputs.get(spec.source or "")
        if source is None or source.status is not StepStatus.SUCCEEDED or "result" not in source.artifacts:
            status = source.status.value if source is not None else "not run"
            raise DatabaseError(
                f"steps.{spec.id}.source: {spec.source!r} has no result to copy ({status})",
                code=ErrorCode.TABLE_MISMATCH,
            )
        return source

    async def _copy(self, message: RunMessage, spec: CopyToDatabase, source: StepOutput) -> CopyOutcome:
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
        # A copy broken off stops reading: the blob is closed then, not when the reader is collected.
        async with SqlDatabase(spec.database, config) as database, aclosing(rows):
            return await database.copy(request, rows)


def described_columns(described: list[str]) -> tuple[Column, ...]:
    """The source's columns as its query step described them (``name:type``), for an empty result."""
    found = []
    for text in described:
        name, _, kind = str(text).rpartition(":")
        if name:
            found.append(Column(name=name, type=kind))
    return tuple(found)
