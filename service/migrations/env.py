"""Alembic's entry point: migrate the database named in the config with our engine setup."""

from __future__ import annotations

from alembic import context

from service import migrate, models
from service.db import Base, make_engine

config = context.config


def render_item(type_: str, obj: object, autogen_context: object) -> str | bool:
    """Write UTCDateTime columns as plain timezone-aware DateTime: migrations stay independent
    of model code."""
    if type_ == "type" and isinstance(obj, models.UTCDateTime):
        return "sa.DateTime(timezone=True)"
    return False


def run_migrations() -> None:
    engine = make_engine(config.get_main_option("sqlalchemy.url"))
    try:
        with engine.connect() as connection:
            context.configure(
                connection=connection,
                target_metadata=Base.metadata,
                render_as_batch=connection.dialect.name == "sqlite",
                compare_type=True,
                render_item=render_item,
                include_name=migrate.include_name,
            )
            with context.begin_transaction():
                context.run_migrations()
    finally:
        engine.dispose()


if context.is_offline_mode():
    raise SystemExit("offline (SQL script) migrations are not supported; run against a database")
run_migrations()
