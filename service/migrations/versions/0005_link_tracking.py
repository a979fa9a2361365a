"""link tracking

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-25
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'links',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('url', sa.Text(), nullable=False),
        sa.Column('url_hash', sa.String(length=64), nullable=False),
        sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint('id'),
        sa.UniqueConstraint('url_hash'),
    )
    op.create_table(
        'clicks',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('link_id', sa.Integer(), nullable=False),
        sa.Column('outbox_id', sa.Integer(), nullable=True),
        sa.Column('subscriber_id', sa.Integer(), nullable=True),
        sa.Column('at', sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(['link_id'], ['links.id'], ondelete='CASCADE'),
        sa.ForeignKeyConstraint(['outbox_id'], ['outbox.id'], ondelete='SET NULL'),
        sa.ForeignKeyConstraint(['subscriber_id'], ['subscribers.id'], ondelete='SET NULL'),
        sa.PrimaryKeyConstraint('id'),
    )
    op.create_index('ix_clicks_link_outbox', 'clicks', ['link_id', 'outbox_id'], unique=False)
    op.create_index(op.f('ix_clicks_outbox_id'), 'clicks', ['outbox_id'], unique=False)
    op.create_index(op.f('ix_clicks_subscriber_id'), 'clicks', ['subscriber_id'], unique=False)


def downgrade() -> None:
    op.drop_index(op.f('ix_clicks_subscriber_id'), table_name='clicks')
    op.drop_index(op.f('ix_clicks_outbox_id'), table_name='clicks')
    op.drop_index('ix_clicks_link_outbox', table_name='clicks')
    op.drop_table('clicks')
    op.drop_table('links')
