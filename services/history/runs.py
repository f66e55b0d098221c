"""Runs as the API and the pages read them: a filtered page with its cursor, one run, a flow's numbers.

Both read through these functions, so a page shows what the API answers; a
bad filter raises :class:`~common.platform.routes.InvalidParameter` naming it.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from common.contracts.messages import RunStatus, StepStatus, TriggerKind, utcnow
from common.platform.routes import InvalidParameter
from services.history.bodies import (
    ARTIFACTS_PATH,
    Durations,
    FlowStats,
    IterationPage,
    RunDetail,
    RunPage,
    RunSummary,
)
from services.history.store import HistoryStore

Order = Literal["desc", "asc"]
#: The most runs one page holds.
MAX_LIMIT = 500


def _cursor(run: RunSummary, order: Order) -> str:
    return _encode([run.submitted_at, run.run_id, order])


def _parse_cursor(value: str, order: Order) -> tuple[dt.datetime, str]:
    try:
        padded = value + "=" * (-len(value) % 4)
        at, run_id, issued_for = json.loads(base64.urlsafe_b64decode(padded))
        moment = dt.datetime.fromisoformat(at.replace("Z", "+00:00"))
    except (ValueError, TypeError, AttributeError):
        raise InvalidParameter("cursor", "cursor is not one this API returned") from None
    if issued_for != order or moment.tzinfo is None:
        raise InvalidParameter("cursor", f"cursor was returned for order={issued_for}, not order={order}")
    return moment, str(run_id)


def _instant(query: Mapping[str, str], name: str) -> dt.datetime | None:
    """An ISO 8601 time from the query string; without a zone it is UTC."""
    if name not in query:
        return None
    try:
        moment = dt.datetime.fromisoformat(query[name].replace("Z", "+00:00").replace(" ", "+"))
    except ValueError:
        raise InvalidParameter(name, "must be an ISO 8601 time, such as 2026-03-01T06:00:00Z") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=dt.UTC)


@dataclass(frozen=True)
class RunFilters:
    """Which runs a page lists, in which order, from where."""

    status: RunStatus | None = None
    flow: str | None = None
    trigger: TriggerKind | None = None
    since: dt.datetime | None = None
    until: dt.datetime | None = None
    limit: int = 50
    order: Order = "desc"
    after: tuple[dt.datetime, str] | None = None
    #: Whether the child runs of for_each and parallel steps are listed too.
    children: bool = False
    #: Only test runs (True), only real ones (False), or both (None).
    dry_run: bool | None = None

    @classmethod
    def parse(cls, query: Mapping[str, str], *, flow: str | None = None) -> RunFilters:
        """The filters a query string asks for; *flow*, from the path, overrides its ``flow``."""
        status, limit = _status(query), _limit(query)
        asked = query.get("order", "desc")
        if asked not in ("desc", "asc"):
            raise InvalidParameter("order", "must be desc or asc")
        order: Order = "asc" if asked == "asc" else "desc"
        after = _parse_cursor(query["cursor"], order) if "cursor" in query else None
        since, until = _instant(query, "since"), _instant(query, "until")
        try:
            trigger = TriggerKind(query["trigger"]) if "trigger" in query else None
        except ValueError:
            raise InvalidParameter("trigger", f"must be one of {', '.join(TriggerKind)}") from None
        children = _flag(query, "children")
        dry_run = _flag(query, "dry_run") if "dry_run" in query else None
        return cls(
            status, flow or query.get("flow"), trigger, since, until, limit, order, after, children, dry_run
        )


def _flag(query: Mapping[str, str], name: str) -> bool:
    value = query.get(name, "false")
    if value not in ("true", "false"):
        raise InvalidParameter(name, "must be true or false")
    return value == "true"


def _status(query: Mapping[str, str]) -> RunStatus | None:
    try:
        return RunStatus(query["status"]) if "status" in query else None
    except ValueError:
        raise InvalidParameter("status", f"must be one of {', '.join(RunStatus)}") from None


def _limit(query: Mapping[str, str]) -> int:
    try:
        limit = int(query.get("limit", "50"))
        if not 1 <= limit <= MAX_LIMIT:
            raise ValueError
    except ValueError:
        raise InvalidParameter("limit", f"must be an integer from 1 to {MAX_LIMIT}") from None
    return limit


async def list_runs(store: HistoryStore, filters: RunFilters) -> RunPage:
    """One page of the runs *filters* ask for, with the cursor of the next page if there is one."""
    views = await store.list_runs(
        status=filters.status,
        flow=filters.flow,
        trigger=filters.trigger.value if filters.trigger else None,
        since=filters.since,
        until=filters.until,
        limit=filters.limit + 1,
        ascending=filters.order == "asc",
        after=filters.after,
        children=filters.children,
        dry_run=filters.dry_run,
    )
    runs = [RunSummary.model_validate(view) for view in views[: filters.limit]]
    more = len(views) > filters.limit
    return RunPage(runs=runs, next_cursor=_cursor(runs[-1], filters.order) if more and runs else None)


async def list_iterations(
    store: HistoryStore, run_id: str, step_id: str, query: Mapping[str, str]
) -> IterationPage | None:
    """One page of the child runs of *run_id*'s scope step *step_id*; None if the run has no such step.

    *query* may ask for a ``status`` (``failed``: the iterations to look at),
    a ``limit`` and the ``cursor`` of the page before.
    """
    status, limit = _status(query), _limit(query)
    after = _iteration_cursor(query["cursor"]) if "cursor" in query else None
    attempts = await store.latest_attempts(run_id)
    step = attempts.get(step_id)
    if step is None:
        return None
    if step["kind"] != "scope" or step["detail"].get("scope") == "if":
        raise InvalidParameter(
            "step_id", f"step {step_id!r} of run {run_id} is not a for_each or parallel step"
        )
    views = await store.iterations(run_id, step_id, status=status, after=after, limit=limit + 1)
    iterations = [RunSummary.model_validate(view) for view in views[:limit]]
    last = iterations[-1].scope if len(views) > limit and iterations else None
    return IterationPage(
        run_id=run_id,
        step_id=step_id,
        counts=await _iteration_counts(store, run_id, step_id, step),
        iterations=iterations,
        next_cursor=_encode([last.index]) if last is not None else None,
    )


async def _iteration_counts(
    store: HistoryStore, run_id: str, step_id: str, step: dict[str, Any]
) -> dict[str, int]:
    """The step's items by status: its runs as history has them now (an iteration re-run since the
    step last reported counts as it ended); the items without a run wait for one while the step
    runs, and were skipped once it ended."""
    statuses = await store.iteration_statuses(run_id, step_id)
    ran = sum(statuses.values())
    total = step["detail"].get("total")
    total = total if isinstance(total, int) and total >= ran else ran
    ended = StepStatus(step["status"]).terminal
    return {
        "total": total,
        "waiting": 0 if ended else total - ran,
        "running": statuses.get("running", 0) + statuses.get("queued", 0),
        "succeeded": statuses.get("succeeded", 0),
        "failed": statuses.get("failed", 0),
        "skipped": total - ran if ended else 0,
    }


def _encode(value: list[Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(value).encode()).decode().rstrip("=")


def _iteration_cursor(value: str) -> int:
    try:
        padded = value + "=" * (-len(value) % 4)
        (index,) = json.loads(base64.urlsafe_b64decode(padded))
        if not isinstance(index, int):
            raise TypeError
    except (ValueError, TypeError):
        raise InvalidParameter("cursor", "cursor is not one this API returned") from None
    return index


async def find_run(store: HistoryStore, run_id: str) -> RunDetail | None:
    """The run with every attempt of every step, its artifacts as links to the API; None if unknown."""
    view = await store.get_run(run_id)
    if view is None:
        return None
    steps = [{**step, "artifacts": _links(step["artifacts"])} for step in view["steps"]]
    return RunDetail.model_validate({**view, "steps": steps})


def _links(artifacts: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {
        name: {
            "href": f"{ARTIFACTS_PATH}{ref['key']}",
            "content_type": ref["content_type"],
            "size": ref["size"],
        }
        for name, ref in artifacts.items()
    }


_WINDOW = re.compile(r"^([1-9][0-9]{0,4})([mhd])$")
_UNITS = {"m": "minutes", "h": "hours", "d": "days"}
#: The longest window a stats request may ask for.
MAX_WINDOW = dt.timedelta(days=366)


def parse_window(value: str) -> dt.timedelta:
    match = _WINDOW.match(value)
    window = dt.timedelta(**{_UNITS[match.group(2)]: int(match.group(1))}) if match else None
    if window is None or window > MAX_WINDOW:
        raise InvalidParameter(
            "window", "must be a number and a unit m, h or d (such as 1h, 24h, 7d), at most 366d"
        )
    return window


def percentile(ordered: list[float], fraction: float) -> float | None:
    """The *fraction* percentile of sorted values, interpolating between the nearest two."""
    if not ordered:
        return None
    position = (len(ordered) - 1) * fraction
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return round(ordered[low] + (ordered[high] - ordered[low]) * (position - low), 1)


async def flow_stats(store: HistoryStore, flow: str, window: str) -> FlowStats:
    """How the runs of *flow* submitted in the last *window* (``7d``, ``24h``) went."""
    until = utcnow()
    since = until - parse_window(window)
    runs = await store.flow_runs(flow, since, until)
    succeeded = sum(status == RunStatus.SUCCEEDED.value for status, _ in runs)
    failed = sum(status == RunStatus.FAILED.value for status, _ in runs)
    durations = sorted(ms for status, ms in runs if ms is not None and RunStatus(status).terminal)
    return FlowStats(
        flow=flow,
        window=window,
        since=since.isoformat().replace("+00:00", "Z"),
        until=until.isoformat().replace("+00:00", "Z"),
        runs=len(runs),
        succeeded=succeeded,
        failed=failed,
        unfinished=len(runs) - succeeded - failed,
        success_rate=round(succeeded / (succeeded + failed), 4) if succeeded + failed else None,
        duration_ms=Durations(p50=percentile(durations, 0.5), p95=percentile(durations, 0.95)),
    )
