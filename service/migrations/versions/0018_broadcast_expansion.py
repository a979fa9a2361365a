"""a newsletter's rows written in chunks

Revision ID: 0018
Revises: 0017
Create Date: 2026-11-29

`broadcasts.audience_through`: the highest subscriber id when the send started (its
audience); `broadcasts.expanded_through`: the last subscriber id whose row is queued. Both 0
for every newsletter sent before, which reads as fully queued, as they were.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0018"
down_revision = "0017"
branch_labels = None
depends_on = None


def upgrade() -> None:
    for column in ("audience_through", "expanded_through"):
        op.add_column(
            "broadcasts", sa.Column(column, sa.Integer(), nullable=False, server_default="0")
        )


def downgrade() -> None:
    # Plain DROP COLUMN, as in 0014.
    op.execute("ALTER TABLE broadcasts DROP COLUMN expanded_through")
    op.execute("ALTER TABLE broadcasts DROP COLUMN audience_through")
