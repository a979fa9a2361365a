"""rate-limit counters shared by every web process (PostgreSQL)

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-29

The limiter's counters lived in each process's memory, so each gunicorn worker allowed the
whole budget. On PostgreSQL they now live here, UNLOGGED (counters need no crash safety
and cost no WAL). A SQLite installation keeps them in a file of their own instead
(service/web/rate_limits.py), so this table is made on PostgreSQL only; it is not one of
the models.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0009'
down_revision = '0008'
branch_labels = None
depends_on = None


def upgrade() -> None:
    if op.get_bind().dialect.name != 'postgresql':
        return
    op.create_table(
        'rate_limits',
        sa.Column('key', sa.String(length=255), nullable=False),
        sa.Column('count', sa.Integer(), nullable=False),
        sa.Column('expires_at', sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint('key', name='pk_rate_limits'),
        prefixes=['UNLOGGED'],
    )


def downgrade() -> None:
    if op.get_bind().dialect.name != 'postgresql':
        return
    op.drop_table('rate_limits')
