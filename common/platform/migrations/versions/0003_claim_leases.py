"""Leases on claims, so that no transaction stays open while the broker takes a run.

- flow_slots.claimed_until: a slot's claim is committed with a lease before its run is
  handed to the broker, and cleared (null) once the broker took it; a claim whose lease ran
  out unsettled is taken over by any scheduler (FlowStore.take_over), found by its index.
- run_requests.claimed_until: the same for a run request's Idempotency-Key.

Both nullable, and null means what every row meant before: settled. Replicas of the
previous release keep claiming in one transaction and leave the column null.

Revision ID: 0003_claim_leases
Revises: 0002_sweep_indexes
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003_claim_leases"
down_revision = "0002_sweep_indexes"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("flow_slots", sa.Column("claimed_until", sa.DateTime(timezone=True), nullable=True))
    op.create_index("ix_flow_slots_claimed_until", "flow_slots", ["claimed_until"])
    op.add_column("run_requests", sa.Column("claimed_until", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    op.drop_column("run_requests", "claimed_until")
    op.drop_index("ix_flow_slots_claimed_until", table_name="flow_slots")
    op.drop_column("flow_slots", "claimed_until")
