"""The trace of each run: runs.trace_id.

- runs.trace_id: the OpenTelemetry trace id (32 hex digits) of the run's trace, which the
  trigger starts and the routing slip carries (common.platform.tracing); the run page shows it
  and links it to a trace UI.

Nullable, and null means what every row meant before: not traced. Replicas of the previous
release ignore the StatusEvent's RunInfo.trace_id and leave the column null.

Revision ID: 0004_run_trace_ids
Revises: 0003_claim_leases
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004_run_trace_ids"
down_revision = "0003_claim_leases"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("runs", sa.Column("trace_id", sa.String(32), nullable=True))


def downgrade() -> None:
    op.drop_column("runs", "trace_id")
