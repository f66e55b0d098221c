"""Prometheus metrics: every series adxflow exports, in one registry per process.

Label values are bounded: flow names (saved flows, and ``adhoc`` for jobs),
step kinds, services, statuses, error codes, connection names and loop names. Run ids,
step ids and error messages are never labels; they belong in logs and the
run history.

Every service serves the registry at ``/metrics`` (trigger and history on
their APIs, the workers on their health servers). In embedded mode all five
services share one process, and so one registry.
"""

from __future__ import annotations

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4

REGISTRY = CollectorRegistry()

#: Seconds: from a few milliseconds (a render) to the longest query timeout.
_DURATION_BUCKETS = (
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1,
    2.5,
    5,
    10,
    30,
    60,
    120,
    300,
    600,
    1800,
    3600,
)
#: Seconds a scheduled run started after its slot.
_LATENESS_BUCKETS = (0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120, 300, 900, 3600)

RUNS = Counter(
    "adxflow_runs",
    "Runs that ended, as history recorded them, by flow and final status.",
    ["flow", "status"],
    registry=REGISTRY,
)
STEP_DURATION = Histogram(
    "adxflow_step_duration_seconds",
    "How long a step took, from its start to its success or failure, by kind, service and status.",
    ["kind", "service", "status"],
    buckets=_DURATION_BUCKETS,
    registry=REGISTRY,
)
STEP_RETRIES = Counter(
    "adxflow_step_retries",
    "Failed step attempts that will be tried again, by step kind and error code.",
    ["kind", "code"],
    registry=REGISTRY,
)
DEAD_LETTERS = Counter(
    "adxflow_dead_letters",
    "Steps sent to the dead-letter queue after their last attempt failed, by step kind and error code.",
    ["kind", "code"],
    registry=REGISTRY,
)
KUSTO_LATENCY = Histogram(
    "adxflow_kusto_query_duration_seconds",
    "Time from sending a Kusto query or command to having read its result (or its error), by connection.",
    ["connection"],
    buckets=_DURATION_BUCKETS,
    registry=REGISTRY,
)
KUSTO_ROWS = Counter(
    "adxflow_kusto_rows_read",
    "Result rows read from Kusto, by connection.",
    ["connection"],
    registry=REGISTRY,
)
KUSTO_BYTES = Counter(
    "adxflow_kusto_bytes_read",
    "Bytes of result rows read from Kusto (each row's compact JSON), by connection.",
    ["connection"],
    registry=REGISTRY,
)
EMAILS_SENT = Counter(
    "adxflow_emails_sent",
    "Emails the SMTP relay accepted.",
    registry=REGISTRY,
)
WEBHOOKS_POSTED = Counter(
    "adxflow_webhooks_posted",
    "Webhook posts the receiver accepted (2xx).",
    registry=REGISTRY,
)
SCHEDULER_LATENESS = Histogram(
    "adxflow_scheduler_lateness_seconds",
    "How long after its slot a scheduled run was fired.",
    buckets=_LATENESS_BUCKETS,
    registry=REGISTRY,
)
LOOP_TICKS = Counter(
    "adxflow_loop_ticks",
    "Rounds of work a supervised loop (scheduler, chainer, stall watcher, retention) did well, by loop.",
    ["loop"],
    registry=REGISTRY,
)
LOOP_FAILURES = Counter(
    "adxflow_loop_failures",
    "Unexpected exceptions a supervised loop recovered from, by loop.",
    ["loop"],
    registry=REGISTRY,
)


async def metrics(_: web.Request) -> web.Response:
    """The registry in Prometheus' text format 0.0.4, which every Prometheus version reads."""
    response = web.Response(body=generate_latest(REGISTRY))
    response.headers["Content-Type"] = CONTENT_TYPE_PLAIN_0_0_4
    return response
