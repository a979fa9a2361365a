"""The database layer: SQLite tuning, concurrent writers, UTC datetimes, migrations."""

from __future__ import annotations

import logging
import subprocess
import sys
import textwrap
import uuid
from datetime import UTC, datetime, timedelta, timezone

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy.engine import make_url

from service import kinds, migrate, outbox, subscriptions
from service.config import PROJECT_ROOT
from service.db import Base, Database, NestedWriteTransaction, insert_many_ignoring_conflicts
from service.magnets import DEFAULT_MAGNET
from service.models import Event, OutboxMessage, OutboxStatus, Subscriber


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


@pytest.mark.slow
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


def test_many_rows_ignoring_conflicts_are_written_as_one_at_a_time_would_be(database_url):
    """insert_many_ignoring_conflicts (unnest arrays on PostgreSQL): every type comes back
    as SQLAlchemy wrote it, rows a unique constraint holds already are left alone, and the
    returned values are those of the rows written, in their order."""
    database = Database.connect(database_url)
    table = OutboxMessage.__table__
    at = datetime(2026, 11, 24, 9, 30, 0, 5, tzinfo=UTC)

    def row(n: int, slot: str | None) -> dict:
        return {
            "day_slot": slot,
            "subscriber_id": None,
            "to_address": f"r{n}@example.com",
            "kind": kinds.SEQUENCE_STEP,
            "template": "sequence/step",
            "context": {"sequence": "glutes", "step": f"day-{n}", "odd": "é \" '"},
            "sequence_step": f"day-{n}",
            "dedupe_key": f"key-{n}",
            "status": OutboxStatus.QUEUED,
            "attempts": 0,
            "due_at": at,
            "created_at": at + timedelta(seconds=n),
        }

    with database.begin() as session:
        assert insert_many_ignoring_conflicts(
            session, table, [row(0, "slot-a"), row(1, None)], returning=table.c.dedupe_key
        ) == ["key-0", "key-1"]
    with database.begin() as session:
        written = insert_many_ignoring_conflicts(
            session,
            table,
            # key-1 is taken, and so is slot-a: only the third is new.
            [row(1, None), {**row(5, "slot-a"), "dedupe_key": "key-5"}, row(2, "slot-b")],
            returning=table.c.dedupe_key,
        )
        assert written == ["key-2"]
        assert insert_many_ignoring_conflicts(session, table, [], returning=table.c.id) == []
    with database.read() as session:
        stored = session.scalars(sa.select(OutboxMessage).order_by(OutboxMessage.id)).all()
    assert [r.dedupe_key for r in stored] == ["key-0", "key-1", "key-2"]
    assert stored[2].context == row(2, None)["context"]
    assert stored[2].status is OutboxStatus.QUEUED and stored[2].day_slot == "slot-b"
    assert (stored[2].due_at, stored[2].created_at) == (at, at + timedelta(seconds=2))
    assert stored[1].day_slot is None
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
        context = MigrationContext.configure(
            connection, opts={"include_name": migrate.include_name}
        )
        differences = compare_metadata(context, Base.metadata)
    engine.dispose()
    assert differences == []


@pytest.mark.slow
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


def test_a_nested_write_transaction_on_one_thread_fails_at_once(sqlite_url):
    database = Database.connect(sqlite_url)
    with database.begin() as outer:
        outer.add(Event(kind="outer", at=datetime.now(UTC)))
        outer.flush()
        with pytest.raises(NestedWriteTransaction), database.begin() as inner:
            inner.add(Event(kind="inner", at=datetime.now(UTC)))
            inner.flush()
    database.dispose()


def test_the_writers_lock_is_released_on_commit_rollback_and_close(sqlite_url):
    """After each way a write transaction can end, another thread writes straight away."""
    import threading

    database = Database.connect(sqlite_url)

    def write_from_another_thread() -> bool:
        done = threading.Event()

        def write() -> None:
            with database.begin() as session:
                session.add(Event(kind="other", at=datetime.now(UTC)))
            done.set()

        threading.Thread(target=write, daemon=True).start()
        return done.wait(timeout=5)

    with database.begin() as session:
        session.add(Event(kind="committed", at=datetime.now(UTC)))
    assert write_from_another_thread()

    with pytest.raises(RuntimeError), database.begin() as session:
        session.add(Event(kind="rolled back", at=datetime.now(UTC)))
        session.flush()
        raise RuntimeError("abandon the unit of work")
    assert write_from_another_thread()

    connection = database.engine.raw_connection()
    connection.dbapi_connection.begin_write()
    connection.invalidate()  # closes the DBAPI connection without a commit or rollback
    assert write_from_another_thread()
    database.dispose()


def test_a_writer_that_never_finishes_makes_others_fail_not_hang(sqlite_url, monkeypatch):
    import threading
    import time

    from service import db

    monkeypatch.setattr(db, "SQLITE_BUSY_TIMEOUT_MS", 300)
    database = Database.connect(sqlite_url)
    stuck = database.engine.raw_connection()
    stuck.dbapi_connection.begin_write()
    outcome: dict[str, object] = {}

    def try_to_write() -> None:
        started = time.monotonic()
        try:
            with database.begin() as session:
                session.add(Event(kind="x", at=datetime.now(UTC)))
        except sa.exc.OperationalError as exc:
            outcome["error"] = str(exc)
        outcome["seconds"] = time.monotonic() - started

    thread = threading.Thread(target=try_to_write)
    thread.start()
    thread.join(timeout=10)
    stuck.rollback()
    stuck.close()
    database.dispose()
    assert "database is locked" in outcome["error"]
    assert outcome["seconds"] < 5


def test_sqlite_never_reuses_a_deleted_subscribers_id(sqlite_url):
    """Ids are in signed links: a new subscriber must not inherit a deleted one's."""
    from service.models import Subscriber
    from tests.helpers import make_subscriber

    database = Database.connect(sqlite_url)
    now = datetime.now(UTC)

    def add(email: str) -> int:
        with database.begin() as session:
            return make_subscriber(session, email, now=now).id

    first = add("first@example.com")
    with database.begin() as session:
        session.execute(sa.delete(Subscriber).where(Subscriber.id == first))
    assert add("second@example.com") > first
    database.dispose()


def test_migrated_sqlite_tables_keep_autoincrement(sqlite_url):
    """Rebuilding a table (Alembic's batch mode on SQLite) must not drop AUTOINCREMENT from
    tables whose ids leave the database (links, Message-IDs)."""
    engine = sa.create_engine(sqlite_url)
    with engine.connect() as connection:
        tables = set(
            connection.exec_driver_sql(
                "SELECT name FROM sqlite_master WHERE type = 'table' AND sql LIKE '%AUTOINCREMENT%'"
            ).scalars()
        )
    engine.dispose()
    assert {"subscribers", "outbox"} <= tables


@pytest.mark.slow
def test_without_pg_trgm_the_schema_is_built_all_the_same(postgres_url, caplog):
    """A role that may create tables but not extensions (a managed database, say) gets the
    whole schema; only the trigram indexes are missing, and the migration says how to add
    them."""
    from tests.conftest import POSTGRES_ADMIN_URL

    suffix = uuid.uuid4().hex[:8]
    role, name = f"newsletter_plain_{suffix}", f"newsletter_plain_{suffix}"
    admin = sa.create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.exec_driver_sql(f'CREATE ROLE "{role}" LOGIN')
        connection.exec_driver_sql(f'CREATE DATABASE "{name}"')  # owned by the superuser
    url = make_url(postgres_url).set(database=name)
    with sa.create_engine(url.set(username="postgres")).begin() as connection:
        connection.exec_driver_sql(f'GRANT ALL ON SCHEMA public TO "{role}"')
    try:
        with caplog.at_level(logging.WARNING):
            migrate.upgrade(url.set(username=role).render_as_string(hide_password=False))
        assert "pg_trgm could not be installed" in caplog.text
        engine = sa.create_engine(url.set(username=role))
        indexes = {index["name"] for index in sa.inspect(engine).get_indexes("subscribers")}
        assert "ix_subscribers_email_key_trgm" not in indexes
        assert migrate.current_revision(engine) == migrate.head_revision()
        engine.dispose()
    finally:
        with admin.connect() as connection:
            connection.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            connection.exec_driver_sql(f'DROP ROLE IF EXISTS "{role}"')
        admin.dispose()


def test_with_pg_trgm_the_search_has_its_indexes(postgres_url):
    engine = sa.create_engine(postgres_url)
    indexes = {index["name"] for index in sa.inspect(engine).get_indexes("subscribers")}
    engine.dispose()
    assert {"ix_subscribers_email_key_trgm", "ix_subscribers_first_name_trgm"} <= indexes


def test_upgrading_gives_existing_subscribers_their_mailbox_key(tmp_path):
    """Migration 0008 fills in the key for rows made before it, and keeps the search
    triggers of 0006 on the way up and down (a table rebuild on SQLite would drop them)."""
    url = f"sqlite:///{tmp_path / 'old.db'}"
    migrate.upgrade(url, "0007")
    engine = sa.create_engine(url)
    with engine.begin() as connection:
        for n, email in enumerate(["B.o.m.b+x@gmail.com", "ann@example.com"]):
            connection.exec_driver_sql(
                "INSERT INTO subscribers (email, email_key, status, time_zone, source, "
                "created_at) VALUES (?, ?, 'pending', 'UTC', 'test', ?)",
                (email, email.lower(), f"2026-01-0{n + 1} 00:00:00"),
            )

    def triggers() -> int:
        with engine.connect() as connection:
            return connection.exec_driver_sql(
                "SELECT count(*) FROM sqlite_master WHERE type = 'trigger'"
            ).scalar()

    assert triggers() == 3
    migrate.upgrade(url)
    with engine.connect() as connection:
        keys = connection.exec_driver_sql(
            "SELECT mailbox_key FROM subscribers ORDER BY id"
        ).scalars()
        assert list(keys) == ["bomb@gmail.com", "ann@example.com"]
    assert triggers() == 3
    migrate.downgrade(url, "0007")
    assert triggers() == 3
    migrate.upgrade(url)
    engine.dispose()


@pytest.mark.slow
def test_upgrading_keeps_each_welcome_sent_once_per_magnet(database_url):
    """Migration 0011: the welcome's dedupe key names the lead magnet. Keys written before it
    (one welcome per reader) become the glute guide's, so a reader who had theirs never
    gets it again; other keys are left alone; and back down again."""
    migrate.downgrade(database_url, "0010")
    engine = sa.create_engine(database_url)
    created = datetime(2026, 11, 1, tzinfo=UTC)
    keys = [
        "welcome:1",
        "welcome:22",
        "broadcast:3:1",
        "sequence:tips:1:day-1",
        None,
        "Welcome:7",  # not the old shape: left alone on both databases
        "welcome:abc",
        "welcome:42",  # its new key exists already (written before the migration ran)
        "welcome:glute-guide:42",
    ]
    with engine.begin() as connection:
        connection.execute(
            sa.text(
                "INSERT INTO subscribers (email, email_key, mailbox_key, status, time_zone, "
                "source, created_at) VALUES ('ann@example.com', 'ann@example.com', "
                "'ann@example.com', 'confirmed', 'UTC', 'test', :at)"
            ),
            {"at": created},
        )
        for key in keys:
            connection.execute(
                sa.text(
                    "INSERT INTO outbox (subscriber_id, to_address, kind, template, context, "
                    "dedupe_key, status, attempts, due_at, created_at) VALUES (1, "
                    "'ann@example.com', 'welcome', 'welcome', '{}', :key, 'sent', 1, :at, :at)"
                ),
                {"key": key, "at": created},
            )

    def stored() -> list[str | None]:
        with engine.connect() as connection:
            return list(
                connection.execute(sa.text("SELECT dedupe_key FROM outbox ORDER BY id")).scalars()
            )

    migrate.upgrade(database_url)
    assert stored() == [
        "welcome:glute-guide:1",
        "welcome:glute-guide:22",
        "broadcast:3:1",
        "sequence:tips:1:day-1",
        None,
        "Welcome:7",
        "welcome:abc",
        "welcome:42",
        "welcome:glute-guide:42",
    ]
    database = Database.connect(database_url)
    with database.begin() as session:
        reader = session.get(Subscriber, 1)
        key = subscriptions.incentive_key(DEFAULT_MAGNET, reader.id)
        assert not outbox.enqueue(
            session, reader, kinds.WELCOME, template="welcome", now=created, dedupe_key=key
        )
        assert outbox.enqueue(
            session,
            reader,
            kinds.WELCOME,
            template="welcome",
            now=created,
            dedupe_key=subscriptions.incentive_key("other", 1),
        )
    database.dispose()
    migrate.downgrade(database_url, "0010")
    assert stored()[: len(keys)] == keys
    assert stored()[len(keys)] == "welcome:other:1"  # no old shape for another magnet's
    migrate.upgrade(database_url)
    engine.dispose()
