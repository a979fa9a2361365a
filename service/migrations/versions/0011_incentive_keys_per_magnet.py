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


def _position(haystack: str, needle: str) -> str:
    """SQL for where `needle` first occurs in `haystack` (0: nowhere), on either database."""
    if op.get_bind().dialect.name == 'postgresql':
        return f"strpos({haystack}, {needle})"
    return f"instr({haystack}, {needle})"


def upgrade() -> None:
    # Only the old shape: `welcome:` and digits, no second colon.
    rest = f"substr(dedupe_key, {len(OLD_PREFIX) + 1})"
    no_second_colon = _position(rest, "':'") + " = 0"
    op.execute(
        f"UPDATE outbox SET dedupe_key = '{NEW_PREFIX}' || {rest} "
        f"WHERE dedupe_key LIKE '{OLD_PREFIX}%' AND {no_second_colon}"
    )


def downgrade() -> None:
    # Keys of other magnets stay as they are: the old shape has no room for them.
    rest = f"substr(dedupe_key, {len(NEW_PREFIX) + 1})"
    op.execute(
        f"UPDATE outbox SET dedupe_key = '{OLD_PREFIX}' || {rest} "
        f"WHERE dedupe_key LIKE '{NEW_PREFIX}%'"
    )
