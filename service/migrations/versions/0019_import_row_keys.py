"""a staged import row's mailbox and suppression keys

Revision ID: 0019
Revises: 0018
Create Date: 2026-11-29

`import_rows.mailbox_key` and `import_rows.suppression_hash`: worked out when a row is
checked, so that importing a batch is an INSERT ... SELECT from the staged rows (the
resend cooldown's mailbox, and the hash an erased address is remembered by, are computed
in Python). Staged rows are deleted when their import ends: no backfill.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0019"
down_revision = "0018"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("import_rows", sa.Column("mailbox_key", sa.String(320), nullable=True))
    op.add_column("import_rows", sa.Column("suppression_hash", sa.String(64), nullable=True))


def downgrade() -> None:
    # Plain DROP COLUMN, as in 0014.
    op.execute("ALTER TABLE import_rows DROP COLUMN suppression_hash")
    op.execute("ALTER TABLE import_rows DROP COLUMN mailbox_key")
