"""The render service: turns a stored result into a table, a chart and a CSV."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

from common.blobs import artifact_key
from common.contracts import BlobRef, ChartKind, RunMessage, StepKind, StepOutput
from common.errors import RenderError
from common.results import ResultSet
from common.runtime import Runtime
from common.steps import StepWorker
from services.render.chart import ChartError, RenderedChart, render_chart
from services.render.csvfile import render_csv
from services.render.table import render_table, render_text_table


@dataclass(frozen=True)
class Rendered:
    table_html: str
    text: str
    csv: bytes
    chart: RenderedChart | None


def render_all(result: ResultSet, chart: ChartKind, title: str | None, max_rows: int) -> Rendered:
    """Everything a report needs from one result; CPU-bound, run off the event loop."""
    rendered_chart = None
    if chart is not ChartKind.HTML_TABLE:
        try:
            rendered_chart = render_chart(result, chart.value, title=title)
        except ChartError as exc:
            raise RenderError(f"cannot draw a {chart.value}: {exc}") from exc
    return Rendered(
        table_html=render_table(result, max_rows=max_rows),
        text=render_text_table(result),
        csv=render_csv(result),
        chart=rendered_chart,
    )


class RenderStep:
    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime

    async def perform(self, message: RunMessage) -> StepOutput:
        query = message.output_of(StepKind.QUERY)
        result = ResultSet.from_json_bytes(await self.runtime.blobs.get(query.artifacts["result"].key))
        job = message.job
        rendered = await asyncio.to_thread(
            render_all,
            result,
            job.chart,
            job.title or job.email.subject,
            self.runtime.settings.table_max_rows,
        )

        async def put(name: str, data: bytes, content_type: str) -> BlobRef:
            key = artifact_key(message.run_id, message.step_id, message.attempt, name)
            return await self.runtime.blobs.put(key, data, content_type)

        artifacts = {
            "table_html": await put("table.html", rendered.table_html.encode(), "text/html; charset=utf-8"),
            "text": await put("table.txt", rendered.text.encode(), "text/plain; charset=utf-8"),
            "csv": await put("result.csv", rendered.csv, "text/csv; charset=utf-8"),
        }
        detail: dict[str, object] = {"chart": job.chart.value}
        if rendered.chart is not None:
            artifacts["chart_svg"] = await put("chart.svg", rendered.chart.svg, "image/svg+xml")
            artifacts["chart_png"] = await put("chart.png", rendered.chart.png, "image/png")
            detail["columns_used"] = rendered.chart.columns_used
        return StepOutput(row_count=result.row_count, artifacts=artifacts, detail=detail)


@asynccontextmanager
async def running(runtime: Runtime) -> AsyncIterator[None]:
    step = RenderStep(runtime)
    await StepWorker(runtime.broker, StepKind.RENDER, step.perform).start(runtime.settings.prefetch)
    yield
