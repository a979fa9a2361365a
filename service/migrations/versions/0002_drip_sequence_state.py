"""drip sequence state

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-24
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('enrollments', schema=None) as batch_op:
        batch_op.add_column(sa.Column('status', sa.Enum('active', 'paused', 'finished', 'stopped', name='enrollmentstatus', native_enum=False, create_constraint=True, length=16), nullable=False, server_default='active'))
        batch_op.add_column(sa.Column('steps_passed', sa.JSON(), nullable=False, server_default='[]'))
        batch_op.add_column(sa.Column('next_step', sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column('next_due_at', sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column('last_step_at', sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column('paused_at', sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column('resumed_at', sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column('finished_at', sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column('stopped_at', sa.DateTime(timezone=True), nullable=True))
        batch_op.create_index('ix_enrollments_due', ['next_due_at'], unique=False, sqlite_where=sa.text("status = 'active'"), postgresql_where=sa.text("status = 'active'"))

    # Subscribers enrolled before the sequence existed start it now: the next tick plans
    # their first step from their confirmation time.
    op.execute("UPDATE enrollments SET next_due_at = enrolled_at WHERE next_due_at IS NULL")

    with op.batch_alter_table('outbox', schema=None) as batch_op:
        batch_op.add_column(sa.Column('sequence_step', sa.String(length=64), nullable=True))
        batch_op.create_index(batch_op.f('ix_outbox_sent_at'), ['sent_at'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('outbox', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_outbox_sent_at'))
        batch_op.drop_column('sequence_step')

    with op.batch_alter_table('enrollments', schema=None) as batch_op:
        batch_op.drop_index('ix_enrollments_due', sqlite_where=sa.text("status = 'active'"), postgresql_where=sa.text("status = 'active'"))
        batch_op.drop_column('stopped_at')
        batch_op.drop_column('finished_at')
        batch_op.drop_column('resumed_at')
        batch_op.drop_column('paused_at')
        batch_op.drop_column('last_step_at')
        batch_op.drop_column('next_due_at')
        batch_op.drop_column('next_step')
        batch_op.drop_column('steps_passed')
        batch_op.drop_constraint('enrollmentstatus', type_='check')
        batch_op.drop_column('status')
