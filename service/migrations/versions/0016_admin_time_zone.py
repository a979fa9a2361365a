"""the owner's time zone for the admin pages

Revision ID: 0016
Revises: 0015
Create Date: 2026-11-29

`admin_users.time_zone`: the IANA zone every time on the admin pages is shown in, chosen
on the Account page; empty means DEFAULT_TIME_ZONE.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0016"
down_revision = "0015"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("admin_users", sa.Column("time_zone", sa.String(length=64), nullable=True))


def downgrade() -> None:
    # Plain DROP COLUMN, as in 0014.
    op.execute("ALTER TABLE admin_users DROP COLUMN time_zone")
