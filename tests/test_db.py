"""The database layer: SQLite tuning, concurrent writers, UTC datetimes, migrations."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from datetime import UTC, datetime, timedelta, timezone

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from service import migrate
from service.config import PROJECT_ROOT
from service.db import Base, Database
from service.models import Event


def test_sqlite_runs_in_wal_mode_with_a_busy_timeout(sqlite_url):
    database = Database.connect(sqlite_url)
    with database.engine.connect() as connection:
        pragma = lambda name: connection.exec_driver_sql(f"PRAGMA {name}").scalar()  # noqa: E731
        assert pragma("journal_mode") == "wal"
        assert pragma("busy_timeout") == 15000
        assert pragma("foreign_keys") == 1
    database.dispose()


WRITER = textwrap.dedent(
    """
    import sys
    from datetime import datetime, UTC
    from sqlalchemy import func, select
    from service.db import Database
    from service.models import Event

    database = Database.connect(sys.argv[1])
    for n in range(int(sys.argv[2])):
        # Read, then write, in one transaction: the pattern that fails with
        # "database is locked" when transactions start deferred.
        with database.begin() as session:
            count = session.scalar(select(func.count()).select_from(Event))
            session.add(Event(kind="load", at=datetime.now(UTC), detail={"seen": count}))
    print("ok")
    """
)


def test_sqlite_writers_in_several_processes_never_see_database_is_locked(sqlite_url):
    writers = [
        subprocess.Popen(
            [sys.executable, "-c", WRITER, sqlite_url, "150"],
            cwd=PROJECT_ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(4)
    ]
    results = [w.communicate(timeout=120) for w in writers]
    for (out, err), writer in zip(results, writers, strict=True):
        assert writer.returncode == 0, err
        assert out.strip() == "ok"
    database = Database.connect(sqlite_url)
    with database.read() as session:
        assert session.scalar(sa.select(sa.func.count()).select_from(Event)) == 600
    database.dispose()


def test_datetimes_come_back_aware_and_in_utc(database_url):
    database = Database.connect(database_url)
    berlin = timezone(timedelta(hours=1))
    with database.begin() as session:
        session.add(Event(kind="x", at=datetime(2026, 11, 24, 9, 30, tzinfo=berlin)))
    with database.read() as session:
        stored = session.scalar(sa.select(Event.at))
    assert stored == datetime(2026, 11, 24, 8, 30, tzinfo=UTC)
    assert stored.tzinfo is not None and stored.utcoffset() == timedelta(0)
    database.dispose()


def test_naive_datetimes_are_refused(database_url):
    database = Database.connect(database_url)
    with pytest.raises(sa.exc.StatementError, match="naive datetimes"):  # noqa: SIM117
        with database.begin() as session:
            session.add(Event(kind="x", at=datetime(2026, 11, 24, 9, 30)))
            session.flush()
    database.dispose()


def test_migrations_build_exactly_the_models(database_url):
    engine = sa.create_engine(database_url)
    with engine.connect() as connection:
        differences = compare_metadata(MigrationContext.configure(connection), Base.metadata)
    engine.dispose()
    assert differences == []


def test_migrations_go_down_and_up_again(tmp_path):
    url = f"sqlite:///{tmp_path / 'fresh.db'}"
    migrate.upgrade(url)
    engine = sa.create_engine(url)
    assert migrate.current_revision(engine) == migrate.head_revision()
    migrate.downgrade(url, "base")
    assert migrate.current_revision(engine) is None
    assert sa.inspect(engine).get_table_names() == ["alembic_version"]
    migrate.upgrade(url)
    assert "outbox" in sa.inspect(engine).get_table_names()
    engine.dispose()


def test_the_outbox_claim_uses_the_partial_due_index(sqlite_url):
    engine = sa.create_engine(sqlite_url)
    with engine.connect() as connection:
        plan = connection.exec_driver_sql(
            "EXPLAIN QUERY PLAN SELECT id FROM outbox "
            "WHERE status IN ('queued', 'sending') AND due_at <= '2026-01-01' "
            "ORDER BY due_at, id LIMIT 100"
        ).all()
    engine.dispose()
    assert any("ix_outbox_due" in row[-1] for row in plan), plan
