"""admin sessions held on the server

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-29

A signed cookie used to carry the account id and a per-account epoch, so signing out of one
browser could not end a copy of its cookie. Each session is now a row: signing out deletes
it. Sessions signed in before this migration end (their cookies name no row).
`sessions_reset_at` notes when every session was last ended, which also voids the device
cookies made before it.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0007'
down_revision = '0006'
branch_labels = None
depends_on = None


def upgrade() -> None:
    # First, while no table refers to admin_users: SQLite rebuilds the table to drop a column.
    with op.batch_alter_table('admin_users') as batch_op:
        batch_op.drop_column('session_epoch')
        batch_op.add_column(sa.Column('sessions_reset_at', sa.DateTime(timezone=True), nullable=True))
    op.create_table(
        'admin_sessions',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('admin_id', sa.Integer(), nullable=False),
        sa.Column('token_hash', sa.String(length=64), nullable=False),
        sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('last_seen_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('ip', sa.String(length=45), nullable=True),
        sa.Column('user_agent', sa.String(length=200), nullable=True),
        sa.ForeignKeyConstraint(
            ['admin_id'], ['admin_users.id'],
            name='fk_admin_sessions_admin_id_admin_users', ondelete='CASCADE',
        ),
        sa.PrimaryKeyConstraint('id', name='pk_admin_sessions'),
        sa.UniqueConstraint('token_hash', name='uq_admin_sessions_token_hash'),
    )
    op.create_index('ix_admin_sessions_admin_id', 'admin_sessions', ['admin_id'])


def downgrade() -> None:
    op.drop_index('ix_admin_sessions_admin_id', table_name='admin_sessions')
    op.drop_table('admin_sessions')
    with op.batch_alter_table('admin_users') as batch_op:
        batch_op.drop_column('sessions_reset_at')
        batch_op.add_column(
            sa.Column('session_epoch', sa.Integer(), nullable=False, server_default='0')
        )
