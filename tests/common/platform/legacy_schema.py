"""The tables exactly as adxflow created them before schema migrations (``create_all``), frozen.

Installations made then have these tables and no ``alembic_version``; the upgrade test builds
them from here, fills them, and migrates. Never edit this module: it is what those
databases hold, whatever the models become.
"""

from __future__ import annotations

import sqlalchemy as sa

UtcDateTime = sa.DateTime(timezone=True)

#: services/history/store/schema.py
history = sa.MetaData()

runs = sa.Table(
    "runs",
    history,
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
    sa.Index("ix_runs_submitted_at", "submitted_at"),
    sa.Index("ix_runs_flow_submitted_at", "flow", "submitted_at"),
)

steps = sa.Table(
    "steps",
    history,
    sa.Column("run_id", sa.String(64), sa.ForeignKey("runs.run_id", ondelete="CASCADE"), primary_key=True),
    sa.Column("step_id", sa.String(64), primary_key=True),
    sa.Column("attempt", sa.Integer, primary_key=True),
    sa.Column("position", sa.Integer, nullable=False),
    sa.Column("flow_step", sa.String(64)),
    sa.Column("kind", sa.String(32), nullable=False),
    sa.Column("service", sa.String(32), nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
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

#: services/history/dead_letters.py
letters = sa.MetaData()

dead_letters = sa.Table(
    "dead_letters",
    letters,
    sa.Column("id", sa.String(32), primary_key=True),
    sa.Column("run_id", sa.String(64)),
    sa.Column("step_id", sa.String(64)),
    sa.Column("attempt", sa.Integer),
    sa.Column("routing_key", sa.String(128), nullable=False),
    sa.Column("error_code", sa.String(64)),
    sa.Column("error_message", sa.Text),
    sa.Column("body", sa.Text, nullable=False),
    sa.Column("dead_at", sa.DateTime(timezone=True), nullable=False),
)

#: services/trigger/store.py (FlowStore.create_schema also inserted flow_changes' one row)
trigger = sa.MetaData()

flows = sa.Table(
    "flows",
    trigger,
    sa.Column("name", sa.String(64), primary_key=True),
    sa.Column("document", sa.JSON, nullable=False),
    sa.Column("version", sa.Integer, nullable=False),
    sa.Column("enabled", sa.Boolean, nullable=False),
    sa.Column("trigger_kind", sa.String(16), nullable=False),
    sa.Column("after_flow", sa.String(64)),
    sa.Column("anchor", UtcDateTime, nullable=False),
    sa.Column("created_at", UtcDateTime, nullable=False),
    sa.Column("updated_at", UtcDateTime, nullable=False),
)

flow_slots = sa.Table(
    "flow_slots",
    trigger,
    sa.Column("flow", sa.String(64), primary_key=True),
    sa.Column("slot", sa.String(64), primary_key=True),
    sa.Column("run_id", sa.String(64), nullable=False),
    sa.Column("fired_at", UtcDateTime, nullable=False),
    sa.Index("ix_flow_slots_fired_at", "fired_at"),
)

flow_changes = sa.Table(
    "flow_changes",
    trigger,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("revision", sa.BigInteger, nullable=False),
)

run_requests = sa.Table(
    "run_requests",
    trigger,
    sa.Column("flow", sa.String(64), primary_key=True),
    sa.Column("key", sa.String(255), primary_key=True),
    sa.Column("run_id", sa.String(64), nullable=False),
    sa.Column("created_at", UtcDateTime, nullable=False),
)

#: services/notifier/ledger.py
notifier = sa.MetaData()

deliveries = sa.Table(
    "deliveries",
    notifier,
    sa.Column("run_id", sa.String(64), primary_key=True),
    sa.Column("step_id", sa.String(64), primary_key=True),
    sa.Column("item", sa.String(32), primary_key=True),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("claimed_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("sent_at", sa.DateTime(timezone=True)),
    sa.Column("detail", sa.JSON),
)

#: Each store created only its own tables, each from its own metadata.
ALL = (history, letters, trigger, notifier)
