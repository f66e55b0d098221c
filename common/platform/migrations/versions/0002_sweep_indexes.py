"""Indexes for two sweeps that read their whole table: stalled runs, and retention's dead letters.

- runs (status, updated_at): the stall sweep looks every minute or so for unfinished runs
  with no news since a cutoff (HistoryStore.fail_stalled); without it, it read every run.
- dead_letters (run_id, step_id): retention deletes the dead letters of each batch of
  expired runs, and a re-run clears the one its failed step left (DeadLetterStore).

Revision ID: 0002_sweep_indexes
Revises: 0001_baseline
"""

from __future__ import annotations

from alembic import op

revision = "0002_sweep_indexes"
down_revision = "0001_baseline"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_runs_status_updated_at", "runs", ["status", "updated_at"])
    op.create_index("ix_dead_letters_run_id_step_id", "dead_letters", ["run_id", "step_id"])


def downgrade() -> None:
    op.drop_index("ix_dead_letters_run_id_step_id", table_name="dead_letters")
    op.drop_index("ix_runs_status_updated_at", table_name="runs")
