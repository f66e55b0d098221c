"""Scopes: iterations and branches as child runs, and what the trigger keeps while they run.

- runs.scope_step, runs.iteration, runs.branch: a child run's place in its parent (whose id is
  runs.parent_run_id): the parent's for_each or parallel step, the iteration's row number or the
  branch's position, and the branch's id. An index on (parent_run_id, scope_step, iteration)
  lists a step's iterations in order.
- scopes: one row per fanned-out step of a run, holding the parent's run message while its child
  runs go, and the counts of its items.
- scope_items: one row per iteration or branch: its row, its child run, its status and outputs.

Every column on runs is nullable, and null means what every row meant before: a run that is
nobody's child. Replicas of the previous release ignore RunInfo.scope and leave them null; they
never see a scope (a flow with scope steps is major 2 on the wire, which they refuse).

Revision ID: 0005_scopes
Revises: 0004_run_trace_ids
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005_scopes"
down_revision = "0004_run_trace_ids"
branch_labels = None
depends_on = None

_UTC = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.add_column("runs", sa.Column("scope_step", sa.String(64), nullable=True))
    op.add_column("runs", sa.Column("iteration", sa.Integer, nullable=True))
    op.add_column("runs", sa.Column("branch", sa.String(64), nullable=True))
    op.create_index("ix_runs_parent_scope_iteration", "runs", ["parent_run_id", "scope_step", "iteration"])
    op.create_table(
        "scopes",
        sa.Column("run_id", sa.String(64), primary_key=True),
        sa.Column("step_id", sa.String(64), primary_key=True),
        sa.Column("attempt", sa.Integer, nullable=False),
        sa.Column("message", sa.JSON, nullable=False),
        sa.Column("total", sa.Integer, nullable=False),
        sa.Column("concurrency", sa.Integer, nullable=False),
        sa.Column("running", sa.Integer, nullable=False),
        sa.Column("succeeded", sa.Integer, nullable=False),
        sa.Column("failed", sa.Integer, nullable=False),
        sa.Column("skipped", sa.Integer, nullable=False),
        sa.Column("stopping", sa.Boolean, nullable=False),
        sa.Column("truncated", sa.Boolean, nullable=False),
        sa.Column("finished_at", _UTC),
        sa.Column("forwarded", sa.Boolean, nullable=False),
        sa.Column("parent_stopped", sa.Boolean, nullable=False),
        sa.Column("reported_at", _UTC),
        sa.Column("created_at", _UTC, nullable=False),
        sa.Column("updated_at", _UTC, nullable=False),
    )
    op.create_table(
        "scope_items",
        sa.Column("run_id", sa.String(64), primary_key=True),
        sa.Column("step_id", sa.String(64), primary_key=True),
        sa.Column("item", sa.Integer, primary_key=True),
        sa.Column("child_run_id", sa.String(64), nullable=False),
        sa.Column("branch", sa.String(64)),
        sa.Column("row", sa.JSON),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("started_by", sa.Integer),
        sa.Column("published", sa.Boolean, nullable=False),
        sa.Column("outputs", sa.JSON),
        sa.Column("finished_at", _UTC),
        sa.UniqueConstraint("child_run_id", name="uq_scope_items_child_run_id"),
    )
    op.create_index("ix_scope_items_started_by", "scope_items", ["run_id", "step_id", "started_by"])
    op.create_index("ix_scope_items_status", "scope_items", ["run_id", "step_id", "status", "item"])


def downgrade() -> None:
    op.drop_index("ix_scope_items_status", table_name="scope_items")
    op.drop_index("ix_scope_items_started_by", table_name="scope_items")
    op.drop_table("scope_items")
    op.drop_table("scopes")
    op.drop_index("ix_runs_parent_scope_iteration", table_name="runs")
    op.drop_column("runs", "branch")
    op.drop_column("runs", "iteration")
    op.drop_column("runs", "scope_step")
