"""The query-worker: runs a step's KQL and leaves the result in the blob store."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from common.blobs import artifact_key
from common.contracts import RunMessage, StepKind, StepOutput
from common.runtime import Runtime
from common.steps import StepWorker
from services.query_worker.kusto import KustoRunner


class QueryStep:
    def __init__(self, runtime: Runtime, kusto: KustoRunner) -> None:
        self.runtime = runtime
        self.kusto = kusto

    async def perform(self, message: RunMessage) -> StepOutput:
        # The ClientRequestId names the run and step, so a query can be found
        # (and cancelled) on the cluster from the run history.
        request_id = f"adxflow;{message.run_id};{message.step_id};{message.attempt}"
        result = await self.kusto.run(message.job, request_id)
        key = artifact_key(message.run_id, message.step_id, message.attempt, "result.json")
        ref = await self.runtime.blobs.put(key, result.to_json_bytes(), "application/json")
        return StepOutput(
            row_count=result.row_count,
            artifacts={"result": ref},
            detail={
                "columns": [f"{c.name}:{c.type}" for c in result.columns],
                "client_request_id": request_id,
            },
        )


@asynccontextmanager
async def running(runtime: Runtime) -> AsyncIterator[None]:
    kusto = KustoRunner(runtime.connections, timeout=runtime.settings.query_timeout_seconds)
    try:
        step = QueryStep(runtime, kusto)
        await StepWorker(runtime.broker, StepKind.QUERY, step.perform).start(runtime.settings.prefetch)
        yield
    finally:
        await kusto.close()
