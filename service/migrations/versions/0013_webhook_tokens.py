"""one-time webhook tokens, so a replayed Mailgun request is refused

Revision ID: 0013
Revises: 0012
Create Date: 2026-11-29

`webhook_tokens` holds each Mailgun webhook token seen, until its signed timestamp is too
old to be accepted anyway (5 minutes); the webhook purges the expired ones as it goes.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "webhook_tokens",
        sa.Column("token", sa.String(length=200), nullable=False),
        sa.Column("fresh_until", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("token", name="pk_webhook_tokens"),
    )
    op.create_index("ix_webhook_tokens_fresh_until", "webhook_tokens", ["fresh_until"])


def downgrade() -> None:
    op.drop_index("ix_webhook_tokens_fresh_until", table_name="webhook_tokens")
    op.drop_table("webhook_tokens")
