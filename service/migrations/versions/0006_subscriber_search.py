"""subscriber search: trigram indexes on the address and the first name

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-25

A search for part of an address or name ("émile", "@clinic.example") matches anywhere in
the text, which no ordinary index can serve: without these, a search that matches few
people reads the whole table. SQLite gets an FTS5 table with the trigram tokenizer, kept
in step with `subscribers` by triggers (the table holds no text of its own). PostgreSQL
gets GIN indexes with pg_trgm, which serve the LIKE the search already runs; where the
extension cannot be installed, the search still works, reading the table.

A later migration that rebuilds `subscribers` on SQLite (a batch ALTER) drops these
triggers with the old table and must create them again; the search tests in
tests/test_admin.py fail if it does not.
"""

from __future__ import annotations

import logging

import sqlalchemy as sa
from alembic import op

revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None

logger = logging.getLogger("alembic.runtime.migration")

SQLITE_UP = [
    """CREATE VIRTUAL TABLE subscriber_search USING fts5(
        email_key, first_name,
        content='subscribers', content_rowid='id', tokenize='trigram'
    )""",
    """CREATE TRIGGER subscriber_search_insert AFTER INSERT ON subscribers BEGIN
        INSERT INTO subscriber_search (rowid, email_key, first_name)
        VALUES (new.id, new.email_key, new.first_name);
    END""",
    """CREATE TRIGGER subscriber_search_delete AFTER DELETE ON subscribers BEGIN
        INSERT INTO subscriber_search (subscriber_search, rowid, email_key, first_name)
        VALUES ('delete', old.id, old.email_key, old.first_name);
    END""",
    """CREATE TRIGGER subscriber_search_update AFTER UPDATE OF email_key, first_name
    ON subscribers BEGIN
        INSERT INTO subscriber_search (subscriber_search, rowid, email_key, first_name)
        VALUES ('delete', old.id, old.email_key, old.first_name);
        INSERT INTO subscriber_search (rowid, email_key, first_name)
        VALUES (new.id, new.email_key, new.first_name);
    END""",
    "INSERT INTO subscriber_search (subscriber_search) VALUES ('rebuild')",
]
SQLITE_DOWN = [
    "DROP TRIGGER IF EXISTS subscriber_search_update",
    "DROP TRIGGER IF EXISTS subscriber_search_delete",
    "DROP TRIGGER IF EXISTS subscriber_search_insert",
    "DROP TABLE IF EXISTS subscriber_search",
]
POSTGRES_INDEXES = {
    "ix_subscribers_email_key_trgm": "email_key gin_trgm_ops",
    "ix_subscribers_first_name_trgm": "lower(first_name) gin_trgm_ops",
}


def upgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name == "sqlite":
        for statement in SQLITE_UP:
            op.execute(statement)
        return
    try:
        with bind.begin_nested():
            op.execute("CREATE EXTENSION IF NOT EXISTS pg_trgm")
    except sa.exc.DBAPIError as exc:
        logger.warning(
            "pg_trgm could not be installed (%s): subscriber searches will read the whole "
            "table. To index them, have a superuser run CREATE EXTENSION pg_trgm, then run "
            "the CREATE INDEX statements in %s.",
            exc.orig,
            __file__,
        )
        return
    for name, expression in POSTGRES_INDEXES.items():
        op.execute(f"CREATE INDEX {name} ON subscribers USING gin ({expression})")


def downgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        for statement in SQLITE_DOWN:
            op.execute(statement)
        return
    for name in POSTGRES_INDEXES:
        op.execute(f"DROP INDEX IF EXISTS {name}")
