"""Runs and steps as the history API returns them: JSON-ready dicts built from their rows."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Any

from common.contracts.messages import StepStatus
from services.history.store.schema import utc


def duration_ms(start: dt.datetime | None, end: dt.datetime | None) -> float | None:
    if start is None or end is None:
        return None
    return round((end - start).total_seconds() * 1000, 1)


def _iso(value: dt.datetime | None) -> str | None:
    value = utc(value)
    return value.isoformat().replace("+00:00", "Z") if value else None


def run_view(row: Any) -> dict[str, Any]:
    submitted, started, finished = utc(row.submitted_at), utc(row.started_at), utc(row.finished_at)
    return {
        "run_id": row.run_id,
        "flow": row.flow,
        "description": row.description,
        "status": row.status,
        "trigger": row.trigger_kind,
        "scheduled_for": _iso(utc(row.scheduled_for)),
        "parent_run_id": row.parent_run_id,
        "connection": row.connection,
        "database": row.database,
        "parameters": row.parameters or {},
        "submitted_at": _iso(submitted),
        "started_at": _iso(started or submitted),
        "finished_at": _iso(finished),
        "duration_ms": duration_ms(submitted or started, finished),
        "failed_step": row.failed_step,
        "error": {"code": row.error_code, "message": row.error_message} if row.error_code else None,
        "trace_id": row.trace_id,
        "dry_run": bool(row.dry_run),
        "test_recipient": row.test_recipient,
        "scope": (
            {
                "run_id": row.parent_run_id,
                "step_id": row.scope_step,
                "index": row.iteration,
                "branch": row.branch,
            }
            if row.scope_step is not None
            else None
        ),
    }


def _queued_at(
    row: Any,
    submitted: dt.datetime | None,
    finished: dict[tuple[str, int], dt.datetime],
    passed: dict[int, dt.datetime],
) -> dt.datetime | None:
    """When an attempt was queued: recorded, or when what sent it there ended.

    A first attempt was sent on by the step before it (the run's submission for
    the first step), a later one by its failed predecessor.
    """
    if row.queued_at is not None:
        return utc(row.queued_at)
    if row.attempt > 1:
        return finished.get((row.step_id, row.attempt - 1))
    before = [position for position in passed if position < row.position]
    return passed[max(before)] if before else submitted


def steps_view(rows: Sequence[Any], submitted: dt.datetime | None = None) -> list[dict[str, Any]]:
    views = []
    finished_of: dict[tuple[str, int], dt.datetime] = {}
    #: When the run got past each position: the end of its first attempt that did not fail.
    passed: dict[int, dt.datetime] = {}
    for row in rows:
        started, finished = utc(row.started_at), utc(row.finished_at)
        queued = _queued_at(row, submitted, finished_of, passed)
        if queued is not None and started is not None:
            queued = min(queued, started)
        if finished is not None:
            finished_of[(row.step_id, row.attempt)] = finished
            if row.status != StepStatus.FAILED.value:
                passed.setdefault(row.position, finished)
        detail = row.detail or {}
        views.append(
            {
                "step_id": row.step_id,
                "flow_step": row.flow_step,
                "attempt": row.attempt,
                "kind": row.kind,
                "service": row.service,
                "status": row.status,
                "queued_at": _iso(queued),
                "started_at": _iso(started),
                "finished_at": _iso(finished),
                "duration_ms": duration_ms(started, finished),
                "row_count": row.row_count,
                "query": (
                    {"text": detail["text"], "parameters": detail.get("parameters") or {}}
                    if isinstance(detail.get("text"), str)
                    else None
                ),
                "truncated": bool(detail.get("truncated")),
                "error": (
                    {"code": row.error_code, "message": row.error_message, "retryable": bool(row.retryable)}
                    if row.error_code
                    else None
                ),
                "artifacts": row.artifacts or {},
                "detail": row.detail or {},
            }
        )
    return views
