"""The render service: turns a stored result into a table, a chart and a CSV.

It also writes the step's ``body_html``: the chart (referenced by Content-ID,
so the notifier can carry it inline) above the table, which is what a flow's
email shows when it inserts ``{{ steps.<id>.body_html }}``.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import AsyncIterator, Awaitable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from zoneinfo import ZoneInfo

from markupsafe import Markup, escape

from common.contracts.actions import RENDERING_STEPS, Chart
from common.contracts.dry_runs import NOT_RENDERED
from common.contracts.errors import RenderError
from common.contracts.flows import flow_of, step_spec
from common.contracts.messages import BlobRef, RunMessage, StepKind, StepOutput, chart_content_id
from common.contracts.results import ResultSet
from common.platform.blobs.interface import artifact_key
from common.platform.http import Check
from common.platform.runtime import Runtime
from common.platform.steps import RetryPolicy, StepWorker, all_of
from services.render.chart import ChartError, ChartOptions, RenderedChart, from_query, render_chart
from services.render.csvfile import store_csv
from services.render.table import render_table, render_text_table

_HTML = "text/html; charset=utf-8"


@dataclass(frozen=True)
class Rendered:
    table_html: str
    text: str
    chart: RenderedChart | None
    drawn_as: str


def chart_kind(chart: Chart, result: ResultSet) -> tuple[str, str]:
    """What to draw for *chart* (a chart kind, or html_table), and a note saying how it was chosen."""
    if chart is Chart.FROM_QUERY:
        drawn, note = from_query(result.visualization)
        return drawn or Chart.HTML_TABLE.value, note
    if chart is Chart.HTML_TABLE:
        return chart.value, "the step asks for a table"
    return chart.value, f"the step asks for a {chart.value}"


def render_all(
    result: ResultSet, drawing: str, options: ChartOptions, table_rows: int, zone: dt.tzinfo
) -> Rendered:
    """The chart and the tables of one result; CPU-bound, run off the event loop."""
    rendered_chart = None
    if drawing != Chart.HTML_TABLE.value:
        try:
            rendered_chart = render_chart(result, drawing, options)
        except ChartError as exc:
            raise RenderError(f"cannot draw a {drawing}: {exc}") from exc
    return Rendered(
        table_html=render_table(result, max_rows=table_rows, zone=zone) if table_rows else "",
        text=render_text_table(result, zone=zone),
        chart=rendered_chart,
        drawn_as=drawing,
    )


def body_html(rendered: Rendered, content_id: str, title: str | None) -> str:
    parts = []
    if rendered.chart is not None:
        alt = escape(title or "chart")
        parts.append(
            f'<p style="margin:0 0 12px 0"><img src="cid:{escape(content_id)}" alt="{alt}" '
            f'width="{min(rendered.chart.width, 640)}" '
            'style="display:block;border:0;max-width:100%;height:auto"></p>'
        )
    if rendered.table_html:
        parts.append(rendered.table_html)
    return str(Markup("\n").join(Markup(part) for part in parts))


class RenderStep:
    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime

    async def perform(self, message: RunMessage) -> StepOutput:
        flow = flow_of(message)
        spec = step_spec(message, flow)
        if not isinstance(spec, RENDERING_STEPS):
            raise RenderError(f"step {spec.id!r} ({spec.action}) renders nothing")
        query = message.outputs[spec.id]
        if "result" not in query.artifacts and query.detail.get("dry_run"):
            # A test run did not send the step's control command: there is nothing to draw.
            return StepOutput(detail={"dry_run": NOT_RENDERED})
        result = await self.runtime.blobs.get_result(query.artifacts["result"].key)
        drawing, note = chart_kind(spec.chart, result)
        title = spec.title or (result.visualization.title if result.visualization else None)
        zone = ZoneInfo(flow.trigger.timezone)
        options = ChartOptions(title=title, width=spec.width, height=spec.height, theme=spec.theme, zone=zone)
        table_rows = self.runtime.settings.table_max_rows if spec.table_rows is None else spec.table_rows
        rendered = await asyncio.to_thread(render_all, result, drawing, options, table_rows, zone)

        def key(name: str) -> str:
            return artifact_key(message.run_id, message.step_id, message.attempt, name)

        async def put(name: str, data: bytes, content_type: str) -> BlobRef:
            return await self.runtime.blobs.put(key(name), data, content_type)

        content_id = chart_content_id(message.run_id, spec.id)
        body = body_html(rendered, content_id, title)
        if query.detail.get("truncated"):
            # The reader stopped at a cap: say so where the reader of the email looks.
            cut = escape(str(query.detail.get("truncation") or "the result was cut short"))
            body += f'\n<p style="font-size:13px;color:#9a6700;margin:6px 0 0 0">{cut}</p>'

        stored: dict[str, Awaitable[BlobRef]] = {
            "body_html": put("body.html", body.encode(), _HTML),
            "text": put("table.txt", rendered.text.encode(), "text/plain; charset=utf-8"),
            # Streamed: the CSV of a big result is never whole in memory.
            "csv": store_csv(result, self.runtime.blobs, key("result.csv")),
        }
        if rendered.table_html:
            stored["table_html"] = put("table.html", rendered.table_html.encode(), _HTML)
        detail: dict[str, object] = {"chart": spec.chart.value, "drawn_as": rendered.drawn_as, "why": note}
        if table_rows < result.row_count:
            detail["table_rows"] = f"{table_rows:,} of {result.row_count:,} in the table; all in the CSV"
        if rendered.chart is not None:
            stored["chart_svg"] = put("chart.svg", rendered.chart.svg, "image/svg+xml")
            stored["chart_png"] = put("chart.png", rendered.chart.png, "image/png")
            detail["columns_used"] = rendered.chart.columns_used
            # The email may be sent from another run than this one (after a parallel step).
            detail["content_id"] = content_id
        # The artifacts are written at once; a redelivery writes them again under the same keys.
        artifacts = dict(zip(stored, await all_of(*stored.values()), strict=True))
        return StepOutput(row_count=result.row_count, artifacts=artifacts, detail=detail)


@asynccontextmanager
async def running(runtime: Runtime) -> AsyncIterator[dict[str, Check]]:
    """Consume render steps; yields what the worker's readiness depends on."""
    step = RenderStep(runtime)
    await StepWorker(runtime.broker, StepKind.RENDER, step.perform, RetryPolicy.of(runtime.settings)).start(
        runtime.settings.prefetch
    )
    yield runtime.checks()
