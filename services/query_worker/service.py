"""The query-worker: runs a flow step's KQL or control command.

The result goes to the blob store as it is read, never whole in memory; the
step's output carries the row count, the column names and the first rows (for
conditions and templates). An async control command is started once, and its
operation is then awaited by sending the run back to this step after a delay,
so a worker restart while waiting loses nothing: the wait is a message, not a
coroutine.
"""

from __future__ import annotations

import datetime as dt
import re
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from common.contracts.actions import (
    COMMAND_STEPS,
    KUSTO_STEPS,
    QueryingStep,
    RunAsyncControlCommand,
    RunShowCommand,
)
from common.contracts.errors import AdxflowError, KustoError
from common.contracts.flows import Flow, flow_of, step_spec
from common.contracts.messages import ErrorCode, RunMessage, StepKind, StepOutput, utcnow
from common.contracts.operators import describe, refused_operators
from common.platform.blobs.interface import BlobWriter, artifact_key
from common.platform.http import Check
from common.platform.runtime import Runtime
from common.platform.steps import RetryPolicy, StepPending, StepWorker
from services.query_worker.copying import CopyStep
from services.query_worker.dry_runs import command_not_run, runs_in_test
from services.query_worker.exporting import ExportStep
from services.query_worker.ingesting import IngestStep
from services.query_worker.kusto import KustoRunner, Parameters, client_request_id
from services.query_worker.parameters import step_parameters
from services.query_worker.reading import QueryResult

#: Operation states that mean "not finished yet" (Kusto's `.show operations`).
_WAITING_STATES = frozenset({"InProgress", "Scheduled", "Throttled", "Pending"})


def preview(result: QueryResult, limit: int) -> list[dict[str, Any]]:
    names = [column.name for column in result.columns]
    return [dict(zip(names, row, strict=True)) for row in result.head[:limit]]


class QueryStep:
    def __init__(self, runtime: Runtime, kusto: KustoRunner) -> None:
        self.runtime = runtime
        self.kusto = kusto

    async def perform(self, message: RunMessage) -> StepOutput:
        flow = flow_of(message)
        spec = step_spec(message, flow)
        if message.context.dry_run and isinstance(spec, COMMAND_STEPS) and not runs_in_test(spec.command):
            return StepOutput(detail=command_not_run(spec.command))
        if isinstance(spec, RunAsyncControlCommand):
            return await self._await_operation(message, flow, spec)
        if not isinstance(spec, KUSTO_STEPS):
            raise KustoError(f"step {spec.id!r} ({spec.action}) is not a Kusto step")
        command = isinstance(spec, COMMAND_STEPS)
        text = spec.command if isinstance(spec, COMMAND_STEPS) else spec.query
        if isinstance(spec, RunShowCommand) and not re.match(r"^\s*\.show\b", text, re.IGNORECASE):
            raise KustoError(
                "run_show_command runs '.show ...' commands only", code=ErrorCode.UNSUPPORTED_OPERATOR
            )
        return await self.stored(message, flow, spec, text, command=command)

    async def stored(
        self, message: RunMessage, flow: Flow, spec: QueryingStep, text: str, *, command: bool = False
    ) -> StepOutput:
        """Run *text* for *spec*, its result written to the blob store as it is read (the artifact
        ``result``); the output says what was sent, and what came back."""
        refused = refused_operators(text, allowed=self.runtime.settings.allowed_operators)
        if refused:
            raise KustoError(describe(refused), code=ErrorCode.UNSUPPORTED_OPERATOR, detail={"text": text})
        parameters = (
            {} if command else step_parameters(message, flow, spec.parameters, f"steps.{spec.id}.parameters")
        )
        sent = {
            "text": text,
            "parameters": {name: value for name, (_, value) in parameters.items()},
            "client_request_id": client_request_id(message),
        }
        key = artifact_key(message.run_id, message.step_id, message.attempt, "result.json")
        try:
            # Nothing is stored unless the whole step succeeds: the writer drops what it has on an error.
            async with self.runtime.blobs.writer(key, "application/json") as blob:
                outcome = await self._run(
                    message, flow, spec, text, command=command, parameters=parameters, into=blob
                )
        except AdxflowError as exc:
            # The history shows what was sent beside why it failed.
            exc.detail = {**sent, **exc.detail}
            raise
        return StepOutput(
            row_count=outcome.row_count,
            columns=[column.name for column in outcome.columns],
            preview=preview(outcome, self.runtime.settings.preview_rows),
            artifacts={"result": blob.ref},
            detail={
                **sent,
                "columns": [f"{c.name}:{c.type}" for c in outcome.columns],
                "visualization": outcome.visualization.kind if outcome.visualization else None,
                "truncated": outcome.truncated,
                "truncation": outcome.note,
            },
        )

    async def _run(
        self,
        message: RunMessage,
        flow: Flow,
        spec: Any,
        text: str,
        *,
        command: bool,
        parameters: Parameters,
        into: BlobWriter | None = None,
    ) -> QueryResult:
        settings = self.runtime.settings
        return await self.kusto.run(
            connection=spec.connection or flow.connection,
            database=spec.kusto_database or flow.database,
            text=text,
            command=command,
            parameters=parameters,
            client_request_id=client_request_id(message),
            timeout=self._timeout(spec),
            max_rows=min(spec.max_rows or settings.max_result_rows, settings.max_result_rows_limit),
            max_bytes=min(spec.max_bytes or settings.max_result_bytes, settings.max_result_bytes_limit),
            truncate=spec.on_too_large == "truncate",
            # The step's preview; what waits on an operation reads its first row.
            head=max(settings.preview_rows, 1),
            into=into,
        )

    def _timeout(self, spec: Any) -> float:
        settings = self.runtime.settings
        asked = getattr(spec, "timeout_seconds", None)
        return min(asked, settings.query_timeout_max_seconds) if asked else settings.query_timeout_seconds

    async def _await_operation(
        self, message: RunMessage, flow: Flow, spec: RunAsyncControlCommand
    ) -> StepOutput:
        pending = message.pending or {}
        if "operation_id" not in pending:
            started = await self._run(message, flow, spec, spec.command, command=True, parameters={})
            operation_id = _operation_id(started)
            deadline = utcnow() + dt.timedelta(minutes=spec.timeout_minutes)
            raise StepPending(
                {"operation_id": operation_id, "deadline": deadline.isoformat()}, spec.poll_seconds
            )
        operation_id = str(uuid.UUID(pending["operation_id"]))
        shown = await self._run(
            message, flow, spec, f".show operations {operation_id}", command=True, parameters={}
        )
        rows = preview(shown, 1)
        if not rows:
            raise KustoError(
                f"operation {operation_id} is not known to the cluster", code=ErrorCode.ASYNC_OPERATION_FAILED
            )
        state, status = str(rows[0].get("State")), str(rows[0].get("Status") or "")
        operation = {"id": operation_id, "state": state, "status": status}
        if state in _WAITING_STATES:
            if utcnow() >= dt.datetime.fromisoformat(pending["deadline"]):
                raise KustoError(
                    f"operation {operation_id} was still {state} after {spec.timeout_minutes:g} minutes",
                    code=ErrorCode.REQUEST_TIMEOUT,
                )
            raise StepPending(pending, spec.poll_seconds)
        if state != "Completed":
            raise KustoError(
                f"operation {operation_id} ended {state}: {status or 'no status given'}",
                code=ErrorCode.ASYNC_OPERATION_FAILED,
            )
        return StepOutput(
            row_count=1,
            columns=[column.name for column in shown.columns],
            preview=rows,
            detail={"text": spec.command, "operation": operation},
        )


def _operation_id(result: QueryResult) -> str:
    try:
        index = [column.name for column in result.columns].index("OperationId")
        return str(uuid.UUID(str(result.head[0][index])))
    except (IndexError, ValueError):
        raise KustoError(
            "the async command did not answer with an OperationId", code=ErrorCode.ASYNC_OPERATION_FAILED
        ) from None


@asynccontextmanager
async def running(runtime: Runtime) -> AsyncIterator[dict[str, Check]]:
    """Consume query steps, copies into databases, ingestions into Kusto and exports to files;
    yields what the worker's readiness depends on."""
    kusto = KustoRunner(runtime.connections, timeout=runtime.settings.query_timeout_seconds)
    try:
        step = QueryStep(runtime, kusto)
        await StepWorker(
            runtime.broker, StepKind.QUERY, step.perform, RetryPolicy.of(runtime.settings)
        ).start(runtime.settings.prefetch)
        copies = CopyStep(runtime, step)
        await StepWorker(
            runtime.broker, StepKind.COPY, copies.perform, RetryPolicy.of(runtime.settings)
        ).start(runtime.settings.prefetch)
        ingestions = IngestStep(runtime, kusto)
        await StepWorker(
            runtime.broker, StepKind.INGEST, ingestions.perform, RetryPolicy.of(runtime.settings)
        ).start(runtime.settings.prefetch)
        exports = ExportStep(runtime)
        await StepWorker(
            runtime.broker, StepKind.EXPORT, exports.perform, RetryPolicy.of(runtime.settings)
        ).start(runtime.settings.prefetch)
        yield runtime.checks()
    finally:
        await kusto.close()
