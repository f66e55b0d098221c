"""Test runs: runs.dry_run and runs.test_recipient.

- runs.dry_run: the run is a test run (its queries ran, nothing was delivered or written); such
  runs are listed apart, left out of a flow's statistics and kept for hours, not days.
- runs.test_recipient: the one address a test run sent its emails to ("send a test"), if any.

Every existing row is a real run: ``dry_run`` is false for them (the server default), and
``test_recipient`` null. Replicas of the previous release do not write the columns; they
refuse a test run's messages (its slip needs the major that knows test runs), so none of
theirs is a test run.

Revision ID: 0009_dry_runs
Revises: 0008_flow_versions
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009_dry_runs"
down_revision = "0008_flow_versions"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("runs", sa.Column("dry_run", sa.Boolean, nullable=False, server_default=sa.false()))
    op.add_column("runs", sa.Column("test_recipient", sa.String(320), nullable=True))
    op.create_index("ix_runs_dry_run_submitted_at", "runs", ["dry_run", "submitted_at"])


def downgrade() -> None:
    op.drop_index("ix_runs_dry_run_submitted_at", table_name="runs")
    # SQLite drops a column by copying the table: in a batch, as Alembic does it there.
    with op.batch_alter_table("runs") as batch:
        batch.drop_column("test_recipient")
        batch.drop_column("dry_run")
