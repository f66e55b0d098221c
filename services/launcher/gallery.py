"""``adxflow render-gallery OUT_DIR``: every chart kind, drawn from the sample data.

The gallery runs one flow through the real pipeline in embedded mode (the
local Kusto endpoint, the query-worker, render and notifier services), so
what it shows is what a flow's recipients get: a chart of each kind,
including the awkward cases (a long time series, a pie of many slices, an
empty result, a multi-series time chart, text that tries to inject markup),
and the flow's email as a page a browser can show, with its inline charts.
It writes an ``index.html`` linking everything.
"""

from __future__ import annotations

import asyncio
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
from jinja2.sandbox import SandboxedEnvironment
from markupsafe import Markup

from common.contracts.errors import AdxflowError
from common.platform.config import Settings
from services.history.web.email_preview import email_preview
from services.launcher.client import wait_for_run

GALLERY_FLOW = "render-gallery"

_HOSTILE_COLUMN = '"><img src=x onerror=alert(1)>'
_HOSTILE_CELL = "<script>alert(1)</script>"


@dataclass(frozen=True)
class Exhibit:
    """One chart of the gallery: a step of the gallery flow."""

    id: str
    title: str
    chart: str
    query: str
    #: What the exhibit shows a reader (why it is in the gallery).
    shows: str
    theme: str = "light"


EXHIBITS: tuple[Exhibit, ...] = (
    Exhibit(
        "pie_many",
        "Storm events by state",
        "piechart",
        "StormEvents | summarize Events = count() by State | order by Events desc",
        "a pie of 67 states: the largest slices, the rest summed as Other",
    ),
    Exhibit(
        "bar",
        "Most frequent event types",
        "barchart",
        "StormEvents | summarize Events = count() by EventType | top 15 by Events",
        "a horizontal bar chart, first row on top",
    ),
    Exhibit(
        "column",
        "Storm events per month",
        "columnchart",
        "StormEvents | summarize Events = count() by Month = startofmonth(StartTime) | order by Month asc",
        "a column chart with dates as categories",
    ),
    Exhibit(
        "stacked_column",
        "Convective events per month",
        "stackedcolumnchart",
        "StormEvents | summarize Hail = countif(EventType == 'Hail'),"
        " Wind = countif(EventType == 'Thunderstorm Wind'), Tornado = countif(EventType == 'Tornado')"
        " by Month = startofmonth(StartTime) | order by Month asc",
        "a stacked column chart: one stack per month, one colour per column",
    ),
    Exhibit(
        "stacked_bar",
        "Casualties by event type",
        "stackedbarchart",
        "StormEvents | summarize Injuries = sum(InjuriesDirect), Deaths = sum(DeathsDirect) by EventType"
        " | top 10 by Injuries",
        "a stacked horizontal bar chart",
    ),
    Exhibit(
        "line",
        "Average property damage by month of the year",
        "linechart",
        "StormEvents | summarize AverageDamage = avg(DamageProperty) by Month = monthofyear(StartTime)"
        " | order by Month asc",
        "a line chart over numeric categories, with thousands separators",
    ),
    Exhibit(
        "timechart_long",
        "Storm events per hour",
        "timechart",
        "StormEvents | summarize Events = count() by bin(StartTime, 1h) | order by StartTime asc",
        "a long time series (thousands of points) downsampled to the chart's width",
    ),
    Exhibit(
        "timechart_series",
        "Weekly events of five event types",
        "timechart",
        "StormEvents | where EventType in ('Hail', 'Thunderstorm Wind', 'Flash Flood', 'Flood', 'Tornado')"
        " | summarize Events = count() by bin(StartTime, 7d), EventType",
        "a time chart with one line per value of a text column",
    ),
    Exhibit(
        "area",
        "Storm events per day",
        "areachart",
        "StormEvents | summarize Events = count() by bin(StartTime, 1d) | order by StartTime asc",
        "an area chart over time",
    ),
    Exhibit(
        "stacked_area",
        "Property damage per week, by event type",
        "stackedareachart",
        "StormEvents | where EventType in ('Hail', 'Thunderstorm Wind', 'Tornado', 'Flash Flood')"
        " | summarize Damage = sum(DamageProperty) by bin(StartTime, 7d), EventType",
        "a stacked area chart, a series per event type",
    ),
    Exhibit(
        "from_query",
        "(title from the query)",
        "from_query",
        "StormEvents | summarize Events = count() by bin(StartTime, 1d) | order by StartTime asc"
        " | render timechart with (title='Events so far this year', ytitle='Events', accumulate=true)",
        "from_query: the query's own render operator (kind, title, y title, accumulate) decides",
    ),
    Exhibit(
        "empty",
        "Storm events in Atlantis",
        "timechart",
        "StormEvents | where State == 'ATLANTIS' | summarize Events = count() by bin(StartTime, 1d)",
        "an empty result: a clear 'no rows' image instead of an error",
    ),
    Exhibit(
        "dark",
        "Reports by source",
        "columnchart",
        "StormEvents | summarize Events = count() by Source | top 8 by Events",
        "the dark theme",
        theme="dark",
    ),
    Exhibit(
        "hostile",
        "Text that tries to inject markup",
        "piechart",
        f"datatable(['{_HOSTILE_COLUMN}']: string, Events: long)"
        f" ['{_HOSTILE_CELL}', 5, 'plain & simple', 3, 'a \"quoted\" <b>tag</b>', 2]",
        "hostile text in a column name and in cells, shown as text, never as markup",
    ),
)

#: The exhibits the gallery's email carries in its body; one more travels as attachments.
EMAIL_EXHIBITS = ("pie_many", "timechart_series", "hostile")
EMAIL_ATTACHMENT = "column"


def gallery_flow() -> dict[str, Any]:
    steps: list[dict[str, Any]] = []
    for exhibit in EXHIBITS:
        step: dict[str, Any] = {
            "id": exhibit.id,
            "action": "run_query_and_render_chart",
            "query": exhibit.query,
            "chart": exhibit.chart,
            "theme": exhibit.theme,
            "table_rows": 20,
        }
        if exhibit.chart != "from_query":
            step["title"] = exhibit.title
        steps.append(step)
    body = "\n".join(
        f'<h2 style="font-size:16px;margin:16px 0 4px 0">{{{{ steps.{name}.row_count }}}} rows</h2>'
        f"{{{{ steps.{name}.body_html }}}}"
        for name in EMAIL_EXHIBITS
    )
    steps.append(
        {
            "id": "mail",
            "action": "send_email",
            "to": ["gallery@example.com"],
            "subject": "adxflow gallery: {{ steps.pie_many.row_count }} states, {{ run.id }}",
            "from_name": "adxflow gallery",
            "body_html": "<p>Charts and tables as recipients see them.</p>\n" + body,
            "attachments": [EMAIL_ATTACHMENT],
            "importance": "high",
        }
    )
    return {
        "name": GALLERY_FLOW,
        "description": "Every chart kind, drawn from the sample data",
        "connection": "local",
        "database": "Samples",
        "trigger": {"timezone": "Europe/Berlin"},
        "steps": steps,
    }


async def render_gallery(out_dir: Path, settings: Settings, *, timeout: float = 120.0) -> Path:
    """Run the gallery flow in embedded mode and write its pictures and pages to *out_dir*."""
    from services.launcher.system import embedded_system

    await asyncio.to_thread(out_dir.mkdir, parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="adxflow-gallery-") as scratch:
        settings = settings.model_copy(
            update={
                "data_dir": Path(scratch),
                "blob_dir": None,
                "outbox_dir": None,
                "database_url": None,
                "amqp_url": None,
                "embedded_smtp": True,
                "trigger_port": 0,
                "history_port": 0,
                "smtp_port": 0,
                "email_allowed_domains": [],
            }
        )
        async with embedded_system(settings) as system, aiohttp.ClientSession() as session:
            flow = gallery_flow()
            async with session.put(f"{system.trigger_url}/v1/flows/{GALLERY_FLOW}", json=flow) as response:
                if response.status not in (200, 201):
                    raise AdxflowError(f"the gallery flow was refused: {await response.text()}")
            async with session.post(
                f"{system.trigger_url}/v1/flows/{GALLERY_FLOW}/runs", json={}
            ) as response:
                started = await response.json()
                if response.status != 202:
                    raise AdxflowError(f"the gallery run was refused: {started}")
            run = await wait_for_run(session, f"{system.history_url}/v1/runs/{started['run_id']}", timeout)
            if run["status"] != "succeeded":
                failed = [step for step in run["steps"] if step["status"] == "failed"]
                raise AdxflowError(f"the gallery run failed: {failed}")

            async def fetch(href: str) -> bytes:
                async with session.get(f"{system.history_url}{href}") as response:
                    response.raise_for_status()
                    return await response.read()

            return await _write(out_dir, run, fetch)


async def _write(out_dir: Path, run: dict[str, Any], fetch: Any) -> Path:
    steps = {step["step_id"]: step for step in run["steps"]}
    cards = []
    for exhibit in EXHIBITS:
        rendered = steps[f"{exhibit.id}.render"]
        artifacts = rendered["artifacts"]
        files = {}
        for name, suffix in (("chart_png", "png"), ("chart_svg", "svg"), ("table_html", "table.html")):
            if name in artifacts:
                path = out_dir / f"{exhibit.id}.{suffix}"
                path.write_bytes(await fetch(artifacts[name]["href"]))
                files[name] = path.name
        cards.append(
            {
                "exhibit": exhibit,
                "files": files,
                "rows": steps[exhibit.id].get("row_count"),
                "detail": rendered.get("detail") or {},
                "table": Markup((out_dir / files["table_html"]).read_text("utf-8")),
            }
        )
    sent = steps["mail"]["artifacts"]["email"]
    raw = await fetch(sent["href"])
    (out_dir / "email.eml").write_bytes(raw)
    (out_dir / "email.html").write_text(email_preview(raw), "utf-8")
    index = out_dir / "index.html"
    index.write_text(_index_template.render(cards=cards, run=run), "utf-8")
    return index


_environment = SandboxedEnvironment(autoescape=True)

_index_template = _environment.from_string("""\
<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>adxflow chart gallery</title>
<style>
body { margin: 24px; font-family: Segoe UI, Helvetica, Arial, sans-serif; color: #1f2328; }
section { margin: 32px 0; border-top: 1px solid #d0d7de; padding-top: 12px; }
h2 { font-size: 17px; margin: 0; }
.about { margin: 4px 0; color: #57606a; }
pre { background: #f6f8fa; padding: 8px; white-space: pre-wrap; font-size: 12px; }
img { max-width: 100%; border: 1px solid #d0d7de; }
</style></head>
<body>
<h1>adxflow chart gallery</h1>
<p>Drawn from the sample StormEvents table by run <code>{{ run.run_id }}</code> of the flow
<code>{{ run.flow }}</code>. <a href="email.html">The flow's email</a> (<a href="email.eml">.eml</a>).</p>
{%- for card in cards %}
<section id="{{ card.exhibit.id }}">
<h2>{{ card.exhibit.id }}: {{ card.exhibit.chart }}</h2>
<p class="about">{{ card.exhibit.shows }}; {{ card.rows }} rows.
 Drawn as {{ card.detail.drawn_as }} ({{ card.detail.why }}).
{%- if card.detail.columns_used %} Columns:
{%- for role, names in card.detail.columns_used.items() %}
 {{ role }} = {{ names | join(", ") if names is sequence and names is not string else names }}
{%- if not loop.last %};{% endif %}
{%- endfor %}.{% endif %}</p>
<pre>{{ card.exhibit.query }}</pre>
{%- if card.files.chart_png %}
<p><img src="{{ card.files.chart_png }}" alt="{{ card.exhibit.title }}">
<br><a href="{{ card.files.chart_svg }}">SVG</a> · <a href="{{ card.files.chart_png }}">PNG</a></p>
{%- endif %}
<details><summary>Table</summary>{{ card.table }}</details>
</section>
{%- endfor %}
</body></html>
""")
