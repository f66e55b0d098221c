"""Alerts: each alert's instances, their transitions, and each evaluation's outcome.

- alerts: one row per alert (a flow's Kusto step with ``alert:``), locked by each evaluation
  so that two runs of it (on two trigger replicas) take turns.
- alert_instances: each instance's state, since when, how far it is pending, when it last held
  and when it was last told.
- alert_transitions: every change of an instance's state, and every notice, with its run.
- alert_evaluations: what each run's evaluation decided, so that a redelivered one repeats it.

New tables only: replicas of the previous release never see them (a flow with an alert is
major 3 on the wire, which they refuse).

Revision ID: 0006_alerts
Revises: 0005_scopes
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006_alerts"
down_revision = "0005_scopes"
branch_labels = None
depends_on = None

_UTC = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "alerts",
        sa.Column("flow", sa.String(64), primary_key=True),
        sa.Column("step_id", sa.String(64), primary_key=True),
        sa.Column("last_run_id", sa.String(64)),
        sa.Column("evaluated_at", _UTC),
        sa.Column("updated_at", _UTC, nullable=False),
    )
    op.create_table(
        "alert_instances",
        sa.Column("flow", sa.String(64), primary_key=True),
        sa.Column("step_id", sa.String(64), primary_key=True),
        sa.Column("key", sa.String(1024), primary_key=True),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("since", _UTC),
        sa.Column("pending_count", sa.Integer, nullable=False),
        sa.Column("last_held", _UTC),
        sa.Column("notified_at", _UTC),
    )
    op.create_table(
        "alert_transitions",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("flow", sa.String(64), nullable=False),
        sa.Column("step_id", sa.String(64), nullable=False),
        sa.Column("key", sa.String(1024), nullable=False),
        sa.Column("run_id", sa.String(64), nullable=False),
        sa.Column("before", sa.String(16), nullable=False),
        sa.Column("after", sa.String(16), nullable=False),
        sa.Column("notice", sa.String(16)),
        sa.Column("at", _UTC, nullable=False),
    )
    op.create_index("ix_alert_transitions_flow_step_at", "alert_transitions", ["flow", "step_id", "at"])
    op.create_table(
        "alert_evaluations",
        sa.Column("flow", sa.String(64), primary_key=True),
        sa.Column("step_id", sa.String(64), primary_key=True),
        sa.Column("run_id", sa.String(64), primary_key=True),
        sa.Column("outcome", sa.JSON, nullable=False),
        sa.Column("at", _UTC, nullable=False),
    )
    op.create_index("ix_alert_evaluations_at", "alert_evaluations", ["at"])


def downgrade() -> None:
    op.drop_index("ix_alert_evaluations_at", table_name="alert_evaluations")
    op.drop_table("alert_evaluations")
    op.drop_index("ix_alert_transitions_flow_step_at", table_name="alert_transitions")
    op.drop_table("alert_transitions")
    op.drop_table("alert_instances")
    op.drop_table("alerts")
