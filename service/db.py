"""The database: declarative base, one engine and session factory per app, SQLite tuning.

SQLite runs in WAL mode with a busy timeout, and every write transaction starts with
`BEGIN IMMEDIATE`: the write lock is taken up front, so a web worker and a scheduler
writing at the same time wait for each other instead of failing with
`database is locked` when a read transaction tries to upgrade to a write.

Writers also queue on an OS file lock (flock on `<database>.lock`) before BEGIN
IMMEDIATE. SQLite's own busy handler waits by sleeping 1, 2, 5, 10 ... 100 ms, so under
load a waiting process can sleep through many hand-overs between the threads of another
and starve for hundreds of milliseconds (bench/signup.py: p99 430 ms); waiting on the file
lock in steps of at most 0.2 ms keeps every writer's wait short. Readers take no lock.
"""

from __future__ import annotations

import fcntl
import functools
import json
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import (
    JSON,
    Column,
    Engine,
    Insert,
    MetaData,
    Table,
    Text,
    bindparam,
    cast,
    create_engine,
    event,
    func,
    insert,
    select,
)
from sqlalchemy import exc as exc_types
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import make_url
from sqlalchemy.orm import DeclarativeBase, Session, sessionmaker

from . import wakeup

SQLITE_BUSY_TIMEOUT_MS = 15_000
READ_ONLY_OPTION = "newsletter_read_only"

# Stable constraint names, so Alembic migrations can refer to them on every backend.
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class NestedWriteTransaction(RuntimeError):
    """A thread opened a second SQLite write transaction while holding one: it would wait
    for itself until the timeout."""


# Which connection holds the writers' lock of which database for which thread.
_writer_lock_holders: dict[tuple[str, int], QueuedWriterConnection] = {}


class QueuedWriterConnection(sqlite3.Connection):
    """A sqlite3 connection whose write transactions queue on a file lock (see above)."""

    def __init__(self, database: str, *args: Any, **kwargs: Any) -> None:
        super().__init__(database, *args, **kwargs)
        self._lock_path = None if database in ("", ":memory:") else f"{database}.lock"
        self._lock_file = open(self._lock_path, "ab") if self._lock_path else None  # noqa: SIM115
        self._holder: tuple[str, int] | None = None

    def begin_write(self) -> None:
        """Wait for the writers' lock, then BEGIN IMMEDIATE."""
        if self._lock_path is not None:
            holder = (self._lock_path, threading.get_ident())
            if holder in _writer_lock_holders:
                raise NestedWriteTransaction(
                    f"this thread already holds a write transaction on {self._lock_path[:-5]}"
                )
            self._wait_for_lock()
            self._holder = holder
            _writer_lock_holders[holder] = self
        try:
            self.execute("BEGIN IMMEDIATE")
        except BaseException:
            self._release()
            raise

    def _wait_for_lock(self) -> None:
        # Polled rather than blocking, so a writer that never finishes makes the others fail
        # after the busy timeout (as SQLite would) instead of hanging. Polls 0.05-0.2 ms
        # apart cost next to no CPU and, measured, wait no longer than a blocking flock.
        assert self._lock_file is not None
        deadline = time.monotonic() + SQLITE_BUSY_TIMEOUT_MS / 1000
        pause = 0.00005
        while True:
            try:
                fcntl.flock(self._lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise sqlite3.OperationalError(
                        "database is locked: another writer held it for "
                        f"{SQLITE_BUSY_TIMEOUT_MS // 1000} s"
                    ) from None
                time.sleep(pause)
                pause = min(pause * 2, 0.0002)

    def _release(self) -> None:
        if self._holder is not None:
            _writer_lock_holders.pop(self._holder, None)
            self._holder = None
            fcntl.flock(self._lock_file, fcntl.LOCK_UN)

    def commit(self) -> None:
        try:
            super().commit()
        finally:
            self._release()

    def rollback(self) -> None:
        try:
            super().rollback()
        finally:
            self._release()

    def close(self) -> None:
        try:
            super().close()
        finally:
            self._release()
            if self._lock_file is not None:
                self._lock_file.close()


def _unicode_lower(value: str | None) -> str | None:
    return value.lower() if isinstance(value, str) else value


def _tune_sqlite(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Let SQLAlchemy, not the driver, decide when transactions begin (see on_begin).
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA foreign_keys=ON")
        # In WAL mode NORMAL is durable against application crashes; only a power loss
        # can roll back the last transactions.
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()
        # SQLite's lower() folds ASCII only; searches for "Émile" need this one.
        dbapi_connection.create_function("unicode_lower", 1, _unicode_lower, deterministic=True)

    @event.listens_for(engine, "begin")
    def on_begin(connection: Any) -> None:
        # Read-only units of work (Database.read) need no write lock: WAL readers never wait.
        if connection.get_execution_options().get(READ_ONLY_OPTION):
            connection.exec_driver_sql("BEGIN")
        else:
            try:
                connection.connection.dbapi_connection.begin_write()
            except sqlite3.OperationalError as exc:  # raised here, SQLAlchemy does not wrap it
                raise exc_types.OperationalError("BEGIN IMMEDIATE", None, exc) from exc


def make_engine(url: str, **kwargs: Any) -> Engine:
    """An engine for `url`; SQLite files get WAL, a busy timeout and BEGIN IMMEDIATE."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(
            url,
            connect_args={
                "timeout": SQLITE_BUSY_TIMEOUT_MS / 1000,
                "factory": QueuedWriterConnection,
            },
            **kwargs,
        )
        _tune_sqlite(engine)
        return engine
    kwargs.setdefault("pool_pre_ping", True)
    return create_engine(url, **kwargs)


@dataclass
class Database:
    """An engine and its session factory; `begin()` is one unit of work."""

    engine: Engine
    sessions: sessionmaker[Session]
    read_sessions: sessionmaker[Session]
    # Wakes the scheduler after a commit that queued an email (service.wakeup).
    doorbell: wakeup.Doorbell | None = None

    @classmethod
    def connect(cls, url: str, *, wakeups: bool = True, **engine_kwargs: Any) -> Database:
        """`wakeups`: commits that queue an email wake the scheduler (service.wakeup)."""
        engine = make_engine(url, **engine_kwargs)
        reader = engine.execution_options(**{READ_ONLY_OPTION: True})
        sessions = sessionmaker(engine, expire_on_commit=False)
        return cls(
            engine,
            sessions,
            sessionmaker(reader, expire_on_commit=False),
            doorbell=wakeup.install(sessions, url) if wakeups else None,
        )

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    @contextmanager
    def begin(self) -> Iterator[Session]:
        """A session in a transaction, committed on success and rolled back on error."""
        with self.sessions.begin() as session:
            yield session

    @contextmanager
    def read(self) -> Iterator[Session]:
        """A session for reading only; on SQLite it takes no write lock."""
        with self.read_sessions.begin() as session:
            yield session

    def dispose(self) -> None:
        self.engine.dispose()
        if self.doorbell is not None:
            self.doorbell.close()


@functools.cache
def _insert_ignoring_conflicts(dialect: str, table: Table, returning: Column) -> Insert:
    if dialect == "postgresql":
        statement = postgresql.insert(table).on_conflict_do_nothing()
    elif dialect == "sqlite":
        statement = sqlite.insert(table).on_conflict_do_nothing()
    else:  # pragma: no cover - only SQLite and PostgreSQL are supported
        statement = insert(table)
    return statement.returning(returning)


def insert_ignoring_conflicts(
    session: Session, table: Table, values: dict[str, Any], *, returning: Column | None = None
) -> Any:
    """Insert a row unless a unique constraint already holds one like it.

    Without `returning`: True if the row was inserted. With a column: its value for the new
    row, or None if nothing was inserted. One statement, no savepoint, on both backends.
    (RETURNING, not rowcount: psycopg reports -1 for an INSERT ... ON CONFLICT DO NOTHING.)
    """
    column = returning if returning is not None else next(iter(table.primary_key.columns))
    statement = _insert_ignoring_conflicts(session.get_bind().dialect.name, table, column)
    value = session.connection().execute(statement, values).scalar_one_or_none()
    return value if returning is not None else value is not None


def insert_many_ignoring_conflicts(
    session: Session, table: Table, rows: list[dict[str, Any]], *, returning: Column
) -> list[Any]:
    """Insert rows (all with the same keys) in their order, leaving alone any that a unique
    constraint already holds; `returning`'s value for each row inserted.

    On PostgreSQL one `INSERT ... SELECT FROM unnest(...)` with an array per column: the
    usual multi-row VALUES has a placeholder per value, and psycopg parses that statement
    in Python on every run (0.1 s for 1,000 sequence steps, most of the tick's time).
    """
    if not rows:
        return []
    if session.get_bind().dialect.name != "postgresql":
        statement = sqlite.insert(table).on_conflict_do_nothing().returning(returning)
        return list(session.connection().execute(statement, rows).scalars())
    names = list(rows[0])
    arrays = (
        func.unnest(*(_array(table.c[name], [row[name] for row in rows]) for name in names))
        .table_valued(*names)
        .render_derived()
    )
    statement = (
        postgresql.insert(table)
        .from_select(names, select(*(arrays.c[name] for name in names)))
        .on_conflict_do_nothing()
        .returning(returning)
    )
    return list(session.connection().execute(statement).scalars())


def _array(column: Column, values: list[Any]) -> Any:
    """`values` as one array parameter of `column`'s type."""
    name = f"column_{column.name}"
    if isinstance(column.type, JSON):
        # As text, serialised as a JSON column is (json.dumps), then cast: psycopg has no
        # array of JSON to send.
        texts = [json.dumps(value) for value in values]
        parameter = bindparam(name, texts, type_=postgresql.ARRAY(Text()))
    else:
        parameter = bindparam(name, values, type_=postgresql.ARRAY(column.type))
    return cast(parameter, postgresql.ARRAY(column.type))


def insert_row(session: Session, table: Table, values: dict[str, Any]) -> None:
    """A plain INSERT through the session's connection: no unit-of-work bookkeeping, for
    rows the session will not read back (the hot signup path writes four of them)."""
    session.connection().execute(table.insert(), values)
