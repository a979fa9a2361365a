"""imports checked and carried out in batches, outside the web request

Revision ID: 0010
Revises: 0009
Create Date: 2026-11-29

An upload used to be parsed, checked and imported inside one web request, holding every
row in memory: a 49 MB file outlived gunicorn's worker timeout at ~950 MB. The file now
lives in `import_chunks` (so any process can read it, and nothing stays on disk), its
checked rows in `import_rows`, and the import's progress in `imports`.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0010'
down_revision = '0009'
branch_labels = None
depends_on = None

STATUSES = ('checking', 'checked', 'importing', 'done', 'failed', 'cancelled')


def upgrade() -> None:
    op.create_table(
        'imports',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column(
            'status',
            sa.Enum(*STATUSES, name='importstatus', native_enum=False, create_constraint=True,
                    length=16),
            nullable=False,
        ),
        sa.Column('filename', sa.String(length=255), nullable=False),
        sa.Column('size_bytes', sa.Integer(), nullable=False),
        sa.Column('created_by', sa.String(length=320), nullable=False),
        sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('finished_at', sa.DateTime(timezone=True), nullable=True),
        sa.Column('columns', sa.JSON(), nullable=False),
        sa.Column('counts', sa.JSON(), nullable=False),
        sa.Column('issues', sa.JSON(), nullable=False),
        sa.Column('bytes_read', sa.Integer(), nullable=False),
        sa.Column('mode', sa.String(length=16), nullable=True),
        sa.Column('consent_text', sa.Text(), nullable=True),
        sa.Column('join_sequence', sa.Boolean(), nullable=False),
        sa.Column('sequence', sa.String(length=64), nullable=True),
        sa.Column('applied_line', sa.Integer(), nullable=False),
        sa.Column('applied', sa.JSON(), nullable=False),
        sa.Column('error', sa.Text(), nullable=True),
        sa.Column('interruptions', sa.Integer(), nullable=False),
        sa.Column('claimed_by', sa.String(length=100), nullable=True),
        sa.Column('lease_until', sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint('id', name='pk_imports'),
    )
    op.create_index('ix_imports_status', 'imports', ['status'])
    op.create_table(
        'import_chunks',
        sa.Column('import_id', sa.Integer(), nullable=False),
        sa.Column('seq', sa.Integer(), autoincrement=False, nullable=False),
        sa.Column('data', sa.LargeBinary(), nullable=False),
        sa.ForeignKeyConstraint(
            ['import_id'], ['imports.id'],
            name='fk_import_chunks_import_id_imports', ondelete='CASCADE',
        ),
        sa.PrimaryKeyConstraint('import_id', 'seq', name='pk_import_chunks'),
    )
    op.create_table(
        'import_rows',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('import_id', sa.Integer(), nullable=False),
        sa.Column('line', sa.Integer(), nullable=False),
        sa.Column('outcome', sa.String(length=16), nullable=False),
        sa.Column('email', sa.String(length=320), nullable=False),
        sa.Column('email_key', sa.String(length=320), nullable=True),
        sa.Column('first_name', sa.String(length=100), nullable=True),
        sa.Column('time_zone', sa.String(length=64), nullable=False),
        sa.Column('source', sa.String(length=100), nullable=False),
        sa.Column('status', sa.String(length=16), nullable=True),
        sa.Column('signed_up', sa.DateTime(timezone=True), nullable=True),
        sa.Column('confirmed', sa.DateTime(timezone=True), nullable=True),
        sa.Column('unsubscribed', sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ['import_id'], ['imports.id'],
            name='fk_import_rows_import_id_imports', ondelete='CASCADE',
        ),
        sa.PrimaryKeyConstraint('id', name='pk_import_rows'),
    )
    op.create_index(
        'uq_import_rows_import_email_key', 'import_rows', ['import_id', 'email_key'], unique=True
    )
    op.create_index('ix_import_rows_import_line', 'import_rows', ['import_id', 'line'])


def downgrade() -> None:
    op.drop_table('import_rows')
    op.drop_table('import_chunks')
    op.drop_index('ix_imports_status', table_name='imports')
    op.drop_table('imports')
