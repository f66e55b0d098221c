"""The report a user would otherwise script by hand: the pipeline's yardstick.

One process with asyncio: each job runs the query with azure-kusto-data's async
client, draws the chart with adxflow's own ``render_chart`` (pygal and cairosvg,
in a worker thread, so the picture is the pipeline's) and the table with its
``render_table``, writes the CSV with the standard library, and sends one
``multipart`` email (HTML with the chart inline, the CSV and PNG attached) with
``aiosmtplib``, a connection per email as the notifier does. *concurrency* jobs
are in flight at once, each worker starting its next job when its email is sent.

Run: ``python -m benchmarks.direct --cluster URL --smtp-port PORT --jobs N
--concurrency C --tag TAG``. The email of job *i* has the subject ``TAG i``; the
script prints one JSON object mapping each subject to the wall-clock time its job
started. One job (subject ``TAG warm-up``) runs first and is not counted.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import io
import json
import time
from email.message import EmailMessage
from email.utils import make_msgid

import aiosmtplib
from azure.kusto.data import KustoConnectionStringBuilder
from azure.kusto.data.aio import KustoClient

from common.contracts.results import Column, ResultSet
from services.render.chart import ChartOptions, render_chart
from services.render.table import render_table

DATABASE = "Samples"
QUERY = "StormEvents | summarize Events = count() by State | top 10 by Events"
CHART = "piechart"
TITLE = "Storm events by state (top 10)"
RECIPIENT = "team@example.com"
SENDER = "adxflow <adxflow@localhost>"


def job(subject: str) -> dict[str, object]:
    """The same report as an ad-hoc job for the pipeline's ``POST /v1/jobs``."""
    return {
        "connection": "local",
        "database": DATABASE,
        "query": QUERY,
        "chart": CHART,
        "title": TITLE,
        "email": {"to": [RECIPIENT], "subject": subject},
    }


def _csv(result: ResultSet) -> bytes:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow([column.name for column in result.columns])
    writer.writerows(result.rows)
    return out.getvalue().encode("utf-8")


def _email(subject: str, result: ResultSet, png: bytes) -> EmailMessage:
    cid = make_msgid(domain="localhost")
    message = EmailMessage()
    message["From"] = SENDER
    message["To"] = RECIPIENT
    message["Subject"] = subject
    message["Message-ID"] = make_msgid(domain="localhost")
    message.set_content(f"{TITLE}\n\n{result.row_count} rows; the chart and the data are attached.")
    html = f'<html><body><p><img src="cid:{cid[1:-1]}" alt="{TITLE}"></p>{render_table(result)}</body></html>'
    message.add_alternative(html, subtype="html")
    message.get_payload()[1].add_related(png, "image", "png", cid=cid)  # type: ignore[index]
    message.add_attachment(_csv(result), "text", "csv", filename="query.csv")
    message.add_attachment(png, "image", "png", filename="query.png")
    return message


async def report(client: KustoClient, smtp_port: int, subject: str) -> None:
    response = await client.execute(DATABASE, QUERY)
    table = response.primary_results[0]
    result = ResultSet(
        columns=[Column(name=c.column_name, type=str(c.column_type).lower()) for c in table.columns],
        rows=[list(row) for row in table.raw_rows],
    )
    chart = await asyncio.to_thread(render_chart, result, CHART, ChartOptions(title=TITLE))
    await aiosmtplib.send(_email(subject, result, chart.png), hostname="127.0.0.1", port=smtp_port)


async def run(cluster: str, smtp_port: int, jobs: int, concurrency: int, tag: str) -> dict[str, float]:
    started: dict[str, float] = {}
    pending = iter(range(jobs))
    async with KustoClient(KustoConnectionStringBuilder.with_no_authentication(cluster)) as client:
        await report(client, smtp_port, f"{tag} warm-up")

        async def worker() -> None:
            for index in pending:
                subject = f"{tag} {index}"
                started[subject] = time.time()
                await report(client, smtp_port, subject)

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cluster", required=True)
    parser.add_argument("--smtp-port", type=int, required=True)
    parser.add_argument("--jobs", type=int, required=True)
    parser.add_argument("--concurrency", type=int, required=True)
    parser.add_argument("--tag", required=True)
    args = parser.parse_args()
    started = asyncio.run(run(args.cluster, args.smtp_port, args.jobs, args.concurrency, args.tag))
    print(json.dumps(started))


if __name__ == "__main__":
    main()
