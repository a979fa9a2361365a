"""subscribers' mailbox key: the resend cooldown counts per inbox

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-29

`bomb+1@gmail.com`, `b.o.m.b@gmail.com` and full-width spellings of one address are
different subscribers but one inbox; the cooldown between emails that a signup may cause
now counts per inbox. Existing rows get their key here, computed as
service.signup_input.mailbox_key computes it (copied: a migration must not change when
the code does).
"""

from __future__ import annotations

import unicodedata

import sqlalchemy as sa
from alembic import op

revision = '0008'
down_revision = '0007'
branch_labels = None
depends_on = None

DOTS_IGNORED = {"gmail.com": "gmail.com", "googlemail.com": "gmail.com"}
BATCH = 5000


def mailbox_key(email: str) -> str:
    local, _, domain = unicodedata.normalize("NFKC", email).lower().rpartition("@")
    untagged = local.split("+", 1)[0] or local
    if domain in DOTS_IGNORED:
        domain = DOTS_IGNORED[domain]
        untagged = untagged.replace(".", "") or untagged
    return f"{untagged}@{domain}"[:320]


def upgrade() -> None:
    # A plain ADD COLUMN: SQLite keeps the table, and with it the search triggers (0006).
    op.add_column('subscribers', sa.Column('mailbox_key', sa.String(length=320), nullable=True))
    subscribers = sa.table(
        'subscribers',
        sa.column('id', sa.Integer),
        sa.column('email', sa.String),
        sa.column('mailbox_key', sa.String),
    )
    connection = op.get_bind()
    last = 0
    while True:
        rows = connection.execute(
            sa.select(subscribers.c.id, subscribers.c.email)
            .where(subscribers.c.id > last)
            .order_by(subscribers.c.id)
            .limit(BATCH)
        ).all()
        if not rows:
            break
        connection.execute(
            subscribers.update()
            .where(subscribers.c.id == sa.bindparam('row_id'))
            .values(mailbox_key=sa.bindparam('key')),
            [{'row_id': row.id, 'key': mailbox_key(row.email)} for row in rows],
        )
        last = rows[-1].id
    op.create_index('ix_subscribers_mailbox_key', 'subscribers', ['mailbox_key'])


def downgrade() -> None:
    op.drop_index('ix_subscribers_mailbox_key', table_name='subscribers')
    # Plain DROP COLUMN (SQLite 3.35 and later have it): a batch rebuild of the table would
    # drop the search triggers of 0006.
    op.execute('ALTER TABLE subscribers DROP COLUMN mailbox_key')
