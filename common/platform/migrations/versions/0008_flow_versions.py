"""Flow versions: every save of a flow kept, with its definition, who saved it and when.

- flow_versions: one row per save, keyed by flow name and version (the number the flow's
  ETag carries): the definition as saved (YAML text: a YAML body as it was sent, a JSON one
  dumped as YAML), the document as stored, who saved it, when, what changed, and the
  version it restored (if it was a restore). Rows outlive their flow: a deleted flow's
  history stays, and a flow created again under its name numbers on from it.

Each existing flow's current version becomes the first entry of its history, its
definition dumped from its stored document, ``saved_by`` null (not recorded then).

A new table only: replicas of the previous release neither read nor write it; a flow they
save meanwhile leaves a gap in its history, not a wrong entry.

Revision ID: 0008_flow_versions
Revises: 0007_alert_notices
"""

from __future__ import annotations

import sqlalchemy as sa
import yaml
from alembic import op

revision = "0008_flow_versions"
down_revision = "0007_alert_notices"
branch_labels = None
depends_on = None

_UTC = sa.DateTime(timezone=True)


def upgrade() -> None:
    versions = op.create_table(
        "flow_versions",
        sa.Column("flow", sa.String(64), primary_key=True),
        sa.Column("version", sa.Integer, primary_key=True),
        sa.Column("definition", sa.Text, nullable=False),
        sa.Column("document", sa.JSON, nullable=False),
        sa.Column("saved_at", _UTC, nullable=False),
        sa.Column("saved_by", sa.String(128)),
        sa.Column("summary", sa.String(1024), nullable=False),
        sa.Column("restored_from", sa.Integer),
    )
    flows = sa.table(
        "flows",
        sa.column("name", sa.String),
        sa.column("document", sa.JSON),
        sa.column("version", sa.Integer),
        sa.column("updated_at", _UTC),
    )
    found = op.get_bind().execute(sa.select(flows).order_by(flows.c.name)).all()
    if found:
        op.bulk_insert(
            versions,
            [
                {
                    "flow": row.name,
                    "version": row.version,
                    # The same dump the trigger writes for a flow saved as JSON.
                    "definition": yaml.safe_dump(row.document, sort_keys=False, allow_unicode=True),
                    "document": row.document,
                    "saved_at": row.updated_at,
                    "saved_by": None,
                    "summary": "as it was when versions began to be kept",
                    "restored_from": None,
                }
                for row in found
            ],
        )


def downgrade() -> None:
    op.drop_table("flow_versions")
