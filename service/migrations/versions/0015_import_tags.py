"""tags from imports: a staged row's tags, and the tags an import adds to every row

Revision ID: 0015
Revises: 0014
Create Date: 2026-11-29

- `import_rows.tags`: the row's own `tags` cell, checked and joined by ';'.
- `imports.tags`: the tags the owner chose for every row of the file (the admin's field,
  `subscribers import --tag`).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0015"
down_revision = "0014"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("import_rows", sa.Column("tags", sa.Text(), nullable=True))
    op.add_column("imports", sa.Column("tags", sa.JSON(), nullable=False, server_default="[]"))


def downgrade() -> None:
    # Plain DROP COLUMN, as in 0014.
    op.execute("ALTER TABLE imports DROP COLUMN tags")
    op.execute("ALTER TABLE import_rows DROP COLUMN tags")
