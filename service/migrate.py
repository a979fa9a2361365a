"""Schema migrations (Alembic): upgrade a database to the current schema, or check it."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine

MIGRATIONS = Path(__file__).resolve().parent / "migrations"


# Objects the models do not describe, which comparisons of the models with a database
# leave out: search indexes made by migration 0006 with SQL the models cannot express (an
# FTS5 table and its shadow tables on SQLite, trigram indexes on PostgreSQL), and the
# rate-limit counters of 0009 (service/web/rate_limits.py; PostgreSQL only).
UNMODELLED_OBJECTS = frozenset(
    {
        "subscriber_search",
        *(f"subscriber_search_{shadow}" for shadow in ("data", "idx", "docsize", "config")),
        "ix_subscribers_email_key_trgm",
        "ix_subscribers_first_name_trgm",
        "rate_limits",
    }
)


def include_name(name: str | None, type_: str, parent_names: object) -> bool:
    """Alembic's filter for comparing the models with a database."""
    return name not in UNMODELLED_OBJECTS


def alembic_config(database_url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    # Alembic's config interpolates '%'; URLs with escaped passwords contain it.
    config.set_main_option("sqlalchemy.url", database_url.replace("%", "%%"))
    return config


def upgrade(database_url: str, revision: str = "head") -> None:
    """Bring the database up to `revision` (creating it if it is empty)."""
    command.upgrade(alembic_config(database_url), revision)


def downgrade(database_url: str, revision: str) -> None:
    command.downgrade(alembic_config(database_url), revision)


def current_revision(engine: Engine) -> str | None:
    with engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()


def head_revision() -> str | None:
    return ScriptDirectory.from_config(alembic_config("sqlite://")).get_current_head()
