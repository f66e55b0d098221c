"""The tables as they were before schema migrations: runs, steps, dead letters, flows, slots, ledger.

A database those releases made (with ``create_all``) already has some or all of them and no
``alembic_version``: each table found is adopted if its columns are the ones below, and
refused otherwise; each missing one is created. Either way the database ends at this
revision with every table, and flow_changes holds its one row.

Revision ID: 0001_baseline
Revises:
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from common.platform.schema import SchemaError

revision = "0001_baseline"
down_revision = None
branch_labels = None
depends_on = None

UtcDateTime = sa.DateTime(timezone=True)


def _table(name: str, *elements: sa.schema.SchemaItem, indexes: Sequence[tuple[str, list[str]]] = ()) -> None:
    inspector = sa.inspect(op.get_bind())
    if not inspector.has_table(name):
        op.create_table(name, *elements)
        for index, columns in indexes:
            op.create_index(index, name, columns)
        return
    found = {column["name"] for column in inspector.get_columns(name)}
    expected = {element.name for element in elements if isinstance(element, sa.Column)}
    if found != expected:
        missing, unexpected = sorted(expected - found), sorted(found - expected)
        raise SchemaError(
            f"table {name!r} exists but is not adxflow's as it was before migrations "
            f"(missing columns: {missing or 'none'}; unexpected: {unexpected or 'none'}); "
            "point ADXFLOW_DATABASE_URL at adxflow's own database"
        )
    present = {index["name"] for index in inspector.get_indexes(name)}
    for index, columns in indexes:
        if index not in present:
            op.create_index(index, name, columns)


def upgrade() -> None:
    _table(
        "runs",
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
        indexes=[
            ("ix_runs_submitted_at", ["submitted_at"]),
            ("ix_runs_flow_submitted_at", ["flow", "submitted_at"]),
        ],
    )
    _table(
        "steps",
        sa.Column(
            "run_id", sa.String(64), sa.ForeignKey("runs.run_id", ondelete="CASCADE"), primary_key=True
        ),
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
    _table(
        "dead_letters",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("run_id", sa.String(64)),
        sa.Column("step_id", sa.String(64)),
        sa.Column("attempt", sa.Integer),
        sa.Column("routing_key", sa.String(128), nullable=False),
        sa.Column("error_code", sa.String(64)),
        sa.Column("error_message", sa.Text),
        sa.Column("body", sa.Text, nullable=False),
        sa.Column("dead_at", UtcDateTime, nullable=False),
    )
    _table(
        "flows",
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
    _table(
        "flow_slots",
        sa.Column("flow", sa.String(64), primary_key=True),
        sa.Column("slot", sa.String(64), primary_key=True),
        sa.Column("run_id", sa.String(64), nullable=False),
        sa.Column("fired_at", UtcDateTime, nullable=False),
        indexes=[("ix_flow_slots_fired_at", ["fired_at"])],
    )
    _table(
        "flow_changes",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("revision", sa.BigInteger, nullable=False),
    )
    _table(
        "run_requests",
        sa.Column("flow", sa.String(64), primary_key=True),
        sa.Column("key", sa.String(255), primary_key=True),
        sa.Column("run_id", sa.String(64), nullable=False),
        sa.Column("created_at", UtcDateTime, nullable=False),
    )
    _table(
        "deliveries",
        sa.Column("run_id", sa.String(64), primary_key=True),
        sa.Column("step_id", sa.String(64), primary_key=True),
        sa.Column("item", sa.String(32), primary_key=True),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("claimed_at", UtcDateTime, nullable=False),
        sa.Column("sent_at", UtcDateTime),
        sa.Column("detail", sa.JSON),
    )
    # The one row whose revision every change to a flow moves (the trigger used to insert it at start).
    changes = sa.table("flow_changes", sa.column("id", sa.Integer), sa.column("revision", sa.BigInteger))
    if op.get_bind().execute(sa.select(sa.func.count()).select_from(changes)).scalar_one() == 0:
        op.bulk_insert(changes, [{"id": 1, "revision": 0}])


def downgrade() -> None:
    raise SchemaError("0001_baseline is where adxflow's schema begins; there is nothing before it to go to")
