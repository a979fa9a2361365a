"""a lead magnet's incentive email is once per magnet, not once per reader

Revision ID: 0011
Revises: 0010
Create Date: 2026-11-29

The welcome email's dedupe key was `welcome:<subscriber>`: one welcome per reader, ever,
whichever magnet they asked for. It is now `welcome:<magnet>:<subscriber>`. Existing keys
belonged to the only magnet there was, the glute guide (`glute-guide`), and are rewritten
to its key, so nobody who had their welcome gets it again.
"""

from __future__ import annotations

from alembic import op

revision = '0011'
down_revision = '0010'
branch_labels = None
depends_on = None

OLD_PREFIX = 'welcome:'
NEW_PREFIX = 'welcome:glute-guide:'


def _digits(expression: str) -> str:
    """SQL: `expression` is one or more digits, on either database."""
    if op.get_bind().dialect.name == 'postgresql':
        return f"{expression} ~ '^[0-9]+$'"
    return f"({expression} <> '' AND {expression} NOT GLOB '*[^0-9]*')"


def _rewrite(old: str, new: str, *, only_ids: bool) -> None:
    """Keys `old` + rest become `new` + rest, unless that key is taken already (the new
    code ran before this migration and wrote it: the reader has had their email)."""
    rest = f"substr(outbox.dedupe_key, {len(old) + 1})"
    # A range, not LIKE: the unique index finds it, and it is case-sensitive everywhere.
    upper = old[:-1] + chr(ord(old[-1]) + 1)
    conditions = [f"outbox.dedupe_key >= '{old}'", f"outbox.dedupe_key < '{upper}'"]
    if only_ids:
        conditions.append(_digits(rest))
    conditions.append(
        f"NOT EXISTS (SELECT 1 FROM outbox AS taken WHERE taken.dedupe_key = '{new}' || {rest})"
    )
    op.execute(
        f"UPDATE outbox SET dedupe_key = '{new}' || {rest} WHERE " + " AND ".join(conditions)
    )


def upgrade() -> None:
    # Only the old shape: `welcome:` and the subscriber's id.
    _rewrite(OLD_PREFIX, NEW_PREFIX, only_ids=True)


def downgrade() -> None:
    # Keys of other magnets stay as they are: the old shape has no room for them.
    _rewrite(NEW_PREFIX, OLD_PREFIX, only_ids=True)
