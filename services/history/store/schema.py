"""The run history's tables: a row per run, a row per attempt of each of its steps.

The same tables on SQLite (embedded mode) and PostgreSQL (deployed).
"""

from __future__ import annotations

import sqlalchemy as sa

from common.platform.database import read_utc

metadata = sa.MetaData()

UtcDateTime = sa.DateTime(timezone=True)

runs = sa.Table(
    "runs",
    metadata,
    sa.Column("run_id", sa.String(64), primary_key=True),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("flow", sa.String(64)),
    sa.Column("description", sa.Text),
    sa.Column("trigger_kind", sa.String(16)),
    sa.Column("scheduled_for", UtcDateTime),
    sa.Column("parent_run_id", sa.String(64)),
    sa.Column("connection", sa.String(128)),
    sa.Column("database", sa.String(256)),
    sa.Column("parameters", sa.JSON),
    sa.Column("step_count", sa.Integer),
    sa.Column("submitted_at", UtcDateTime),
    sa.Column("started_at", UtcDateTime),
    sa.Column("finished_at", UtcDateTime),
    sa.Column("failed_step", sa.String(64)),
    sa.Column("error_code", sa.String(64)),
    sa.Column("error_message", sa.Text),
    sa.Column("updated_at", UtcDateTime, nullable=False),
    #: The run's trace (32 hex digits), when its trigger traced it.
    sa.Column("trace_id", sa.String(32)),
    #: A child run's place in its parent (``parent_run_id``): the parent's for_each or parallel
    #: step, the iteration's row number (or the branch's position), and the branch's id.
    sa.Column("scope_step", sa.String(64)),
    sa.Column("iteration", sa.Integer),
    sa.Column("branch", sa.String(64)),
    #: A test run (nothing delivered): listed apart, out of the statistics, kept for hours.
    sa.Column("dry_run", sa.Boolean, nullable=False, server_default=sa.false()),
    #: The one address a test run sent its emails to, if any.
    sa.Column("test_recipient", sa.String(320)),
    sa.Index("ix_runs_submitted_at", "submitted_at"),
    sa.Index("ix_runs_parent_scope_iteration", "parent_run_id", "scope_step", "iteration"),
    sa.Index("ix_runs_flow_submitted_at", "flow", "submitted_at"),
    #: The stall sweep: unfinished runs with no news since a cutoff.
    sa.Index("ix_runs_status_updated_at", "status", "updated_at"),
    sa.Index("ix_runs_dry_run_submitted_at", "dry_run", "submitted_at"),
)

steps = sa.Table(
    "steps",
    metadata,
    sa.Column("run_id", sa.String(64), sa.ForeignKey("runs.run_id", ondelete="CASCADE"), primary_key=True),
    sa.Column("step_id", sa.String(64), primary_key=True),
    sa.Column("attempt", sa.Integer, primary_key=True),
    sa.Column("position", sa.Integer, nullable=False),
    sa.Column("flow_step", sa.String(64)),
    sa.Column("kind", sa.String(32), nullable=False),
    sa.Column("service", sa.String(32), nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    #: Set when history itself queued the attempt (a resend or a re-run); derived otherwise.
    sa.Column("queued_at", UtcDateTime),
    sa.Column("started_at", UtcDateTime),
    sa.Column("finished_at", UtcDateTime),
    sa.Column("row_count", sa.BigInteger),
    sa.Column("error_code", sa.String(64)),
    sa.Column("error_message", sa.Text),
    sa.Column("retryable", sa.Boolean),
    sa.Column("artifacts", sa.JSON),
    sa.Column("detail", sa.JSON),
)


#: Times as read back from the database, zone-aware (SQLite hands them back naive).
utc = read_utc
