"""broadcasts

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-24
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'broadcasts',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('subject', sa.String(length=200), nullable=False),
        sa.Column('body', sa.Text(), nullable=False),
        sa.Column('status', sa.Enum('draft', 'scheduled', 'sending', 'paused', 'sent', 'cancelled', name='broadcaststatus', native_enum=False, create_constraint=True, length=16), nullable=False),
        sa.Column('audience_source', sa.String(length=100), nullable=False),
        sa.Column('audience_sequence', sa.String(length=16), nullable=False),
        sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('scheduled_at', sa.DateTime(timezone=True), nullable=True),
        sa.Column('started_at', sa.DateTime(timezone=True), nullable=True),
        sa.Column('finished_at', sa.DateTime(timezone=True), nullable=True),
        sa.Column('recipients', sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint('id'),
    )
    op.create_index(op.f('ix_broadcasts_status'), 'broadcasts', ['status'], unique=False)
    # SQLite rebuilds the table to add a foreign key: keep AUTOINCREMENT (ids in Message-IDs).
    with op.batch_alter_table('outbox', schema=None, table_kwargs={'sqlite_autoincrement': True}) as batch_op:
        batch_op.add_column(sa.Column('broadcast_id', sa.Integer(), nullable=True))
        batch_op.create_index('ix_outbox_broadcast', ['broadcast_id'], unique=False, sqlite_where=sa.text('broadcast_id IS NOT NULL'), postgresql_where=sa.text('broadcast_id IS NOT NULL'))
        batch_op.create_foreign_key('fk_outbox_broadcast_id_broadcasts', 'broadcasts', ['broadcast_id'], ['id'], ondelete='SET NULL')


def downgrade() -> None:
    with op.batch_alter_table('outbox', schema=None, table_kwargs={'sqlite_autoincrement': True}) as batch_op:
        batch_op.drop_constraint('fk_outbox_broadcast_id_broadcasts', type_='foreignkey')
        batch_op.drop_index('ix_outbox_broadcast', sqlite_where=sa.text('broadcast_id IS NOT NULL'), postgresql_where=sa.text('broadcast_id IS NOT NULL'))
        batch_op.drop_column('broadcast_id')
    op.drop_index(op.f('ix_broadcasts_status'), table_name='broadcasts')
    op.drop_table('broadcasts')
