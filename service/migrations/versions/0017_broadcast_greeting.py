"""a newsletter's greeting, on or off

Revision ID: 0017
Revises: 0016
Create Date: 2026-11-29

`broadcasts.greeting`: whether the email starts with "Hi <first name>,"; on for every
newsletter written before the owner could choose, as they were sent.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0017"
down_revision = "0016"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column(
        "broadcasts", sa.Column("greeting", sa.Boolean(), nullable=False, server_default=sa.true())
    )


def downgrade() -> None:
    # Plain DROP COLUMN, as in 0014.
    op.execute("ALTER TABLE broadcasts DROP COLUMN greeting")
