"""Alerts: what each instance last showed, deliveries held by mute windows, and silences.

- alert_instances.row: the row an instance last held with, so that what is told when it
  resolves (its row is gone from the result by then) can still say what it was.
- alert_transitions.held: why a notice was not delivered when it was decided: the mute
  window holding it (``muted:<window>``) or the silence (``silenced:<id>``).
- alert_held: notices a mute window holds, until the first evaluation after the window's end
  sends (or drops) them.
- alert_silences: silences of a flow's alerts (optionally one step's, one instance's), until
  a time, with a comment and who set them; ended and expired ones are kept as history.

Added columns are nullable and the tables new: replicas of the previous release write and
read on as before.

Revision ID: 0007_alert_notices
Revises: 0006_alerts
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007_alert_notices"
down_revision = "0006_alerts"
branch_labels = None
depends_on = None

_UTC = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.add_column("alert_instances", sa.Column("row", sa.JSON))
    op.add_column("alert_transitions", sa.Column("held", sa.String(80)))
    op.create_table(
        "alert_held",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("flow", sa.String(64), nullable=False),
        sa.Column("step_id", sa.String(64), nullable=False),
        sa.Column("key", sa.String(1024), nullable=False),
        sa.Column("notice", sa.String(16), nullable=False),
        sa.Column("before", sa.String(16), nullable=False),
        sa.Column("window", sa.String(64), nullable=False),
        sa.Column("run_id", sa.String(64), nullable=False),
        sa.Column("at", _UTC, nullable=False),
    )
    op.create_index("ix_alert_held_flow_step", "alert_held", ["flow", "step_id"])
    op.create_table(
        "alert_silences",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("flow", sa.String(64), nullable=False),
        sa.Column("step_id", sa.String(64)),
        sa.Column("key", sa.String(1024)),
        sa.Column("starts_at", _UTC, nullable=False),
        sa.Column("ends_at", _UTC, nullable=False),
        sa.Column("comment", sa.String(1024), nullable=False),
        sa.Column("created_by", sa.String(128), nullable=False),
        sa.Column("created_at", _UTC, nullable=False),
        sa.Column("ended_at", _UTC),
    )
    op.create_index("ix_alert_silences_flow_ends", "alert_silences", ["flow", "ends_at"])


def downgrade() -> None:
    op.drop_index("ix_alert_silences_flow_ends", table_name="alert_silences")
    op.drop_table("alert_silences")
    op.drop_index("ix_alert_held_flow_step", table_name="alert_held")
    op.drop_table("alert_held")
    with op.batch_alter_table("alert_transitions") as batch:
        batch.drop_column("held")
    with op.batch_alter_table("alert_instances") as batch:
        batch.drop_column("row")
