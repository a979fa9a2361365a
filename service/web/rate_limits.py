"""Rate-limit counters that every process of the service shares, without Redis.

Flask-Limiter keeps its counters in memory by default, one set per process: gunicorn's
workers then each allowed the full budget (with 8 workers, 40 of 80 signups got through
a limit of 5 a minute). By default the counters now live in a table:

- beside a SQLite database, in a SQLite file of their own (`INSTANCE_DIR/rate_limits.db`),
  so counting never waits for the main database's write lock;
- on PostgreSQL, in the `rate_limits` table of the service's database (migration 0009,
  UNLOGGED: counters need no crash safety), shared by web processes on every machine.

Fixed windows, as Flask-Limiter's default strategy: one row per limit and client, holding
the count and when its window ends; one upsert per hit. `limits` reads the wall clock
itself (these counters are an edge of the service), so this storage does too.
"""

from __future__ import annotations

import hashlib
import threading
import time
from typing import Any

from limits.storage import Storage
from sqlalchemy import (
    Column,
    Float,
    Integer,
    MetaData,
    String,
    Table,
    bindparam,
    create_engine,
    delete,
    select,
    text,
)
from sqlalchemy.exc import DBAPIError, SQLAlchemyError

from ..db import Database
from ..prepared import PreparedStatement

STORAGE_SCHEME = "newsletter"
SQLITE_FILE = "rate_limits.db"
# Expired rows are swept out once every so many hits of a process.
SWEEP_EVERY = 1000
# The count and window an increment returned answer the reads for the response's
# X-RateLimit headers that follow it in the same request (Flask-Limiter reads them
# straight after counting), instead of two more queries.
RECENT_SECONDS = 1.0

rate_limits = Table(
    "rate_limits",
    MetaData(),
    Column("key", String(255), primary_key=True),
    Column("count", Integer, nullable=False),
    Column("expires_at", Float, nullable=False),  # unix time, as `limits` keeps it
)

# The same statement on SQLite (3.35 and later) and PostgreSQL: a new window starts when
# the last one is over.
_HIT = text(
    """
    INSERT INTO rate_limits (key, count, expires_at) VALUES (:key, :amount, :now + :expiry)
    ON CONFLICT (key) DO UPDATE SET
        count = CASE WHEN rate_limits.expires_at <= :now
                     THEN excluded.count ELSE rate_limits.count + excluded.count END,
        expires_at = CASE WHEN rate_limits.expires_at <= :now
                          THEN excluded.expires_at ELSE rate_limits.expires_at END
    RETURNING count, expires_at
    """
)
_REFUND = text(
    """
    UPDATE rate_limits
    SET count = CASE WHEN count > :amount THEN count - :amount ELSE 0 END
    WHERE key = :key AND expires_at > :now
    RETURNING count, expires_at
    """
)
_LIVE = select(rate_limits.c.count, rate_limits.c.expires_at).where(
    rate_limits.c.key == bindparam("key"), rate_limits.c.expires_at > bindparam("now")
)
_SWEEP = delete(rate_limits).where(rate_limits.c.expires_at <= bindparam("now"))
_CLEAR = delete(rate_limits).where(rate_limits.c.key == bindparam("key"))
_RESET = delete(rate_limits)


def _stored_key(key: str) -> str:
    """The key as a row holds it: as it is when short and printable ASCII, else a digest
    (a key may carry what a client typed: a NUL, a surrogate, a megabyte)."""
    if len(key) <= 200 and key.isascii() and key.isprintable():
        return key
    return "sha256:" + hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()


def create_sqlite_table(database: Database) -> None:
    """The table in a SQLite file of the counters' own (made on first start)."""
    with database.begin() as session:
        rate_limits.create(session.connection(), checkfirst=True)


class DatabaseStorage(Storage):
    """A `limits` storage over one of our databases (see the module's docstring).

    Made by Flask-Limiter from RATELIMIT_STORAGE_URI "newsletter://", with the Database in
    RATELIMIT_STORAGE_OPTIONS. A signup is counted on every request, so each operation is
    one prepared statement on a pooled connection (service.db.PreparedStatement): on
    PostgreSQL in autocommit and without the pool's ping (a connection the server dropped
    is retried once instead), on SQLite in a write transaction queued on the writers' lock.
    """

    STORAGE_SCHEME = [STORAGE_SCHEME]

    def __init__(
        self,
        uri: str | None = None,
        wrap_exceptions: bool = False,
        *,
        database: Database,
        **options: Any,
    ) -> None:
        super().__init__(uri, wrap_exceptions=wrap_exceptions, **options)
        engine = database.engine
        self._sqlite = engine.dialect.name == "sqlite"
        if not self._sqlite:
            # Every statement commits by itself: nothing to roll back when a connection
            # goes back to the pool.
            engine = create_engine(
                engine.url,
                isolation_level="AUTOCOMMIT",
                pool_size=2,
                pool_pre_ping=False,
                pool_reset_on_return=None,
            )
        self._engine = engine
        dialect = engine.dialect
        self._statements = {
            name: PreparedStatement(statement, dialect)
            for name, statement in (
                ("hit", _HIT),
                ("refund", _REFUND),
                ("live", _LIVE),
                ("sweep", _SWEEP),
                ("clear", _CLEAR),
                ("reset", _RESET),
            )
        }
        self._hits = 0
        self._recent = threading.local()

    @property
    def base_exceptions(self) -> type[Exception]:
        return SQLAlchemyError

    def _run(self, name: str, values: dict[str, Any], *, write: bool) -> Any:
        try:
            return self._run_once(name, values, write=write)
        except DBAPIError as exc:
            if not exc.connection_invalidated:
                raise
            # The server dropped the connection (a restart): once more, on a fresh one.
            return self._run_once(name, values, write=write)

    def _run_once(self, name: str, values: dict[str, Any], *, write: bool) -> Any:
        statement = self._statements[name]
        with self._engine.connect() as connection:
            if self._sqlite and write:
                with connection.begin():  # BEGIN IMMEDIATE after the writers' lock
                    return self._result(name, statement, connection, values)
            return self._result(name, statement, connection, values)

    @staticmethod
    def _result(name: str, statement: PreparedStatement, connection: Any, values: Any) -> Any:
        if name in ("hit", "refund", "live"):
            # An integer and a float: the driver's values need no processing.
            rows = statement.rows(connection, values)
            return tuple(rows[0]) if rows else None
        return statement.rowcount(connection, values)

    def incr(self, key: str, expiry: int | float, amount: int = 1) -> int:
        now = time.time()
        key = _stored_key(key)
        if amount < 0:  # a refund: only of a live window, and never below nothing
            self._recent.hit = None
            found = self._run("refund", {"key": key, "amount": -amount, "now": now}, write=True)
            return found[0] if found else 0
        count, expires_at = self._run(
            "hit", {"key": key, "amount": amount, "now": now, "expiry": expiry}, write=True
        )
        self._recent.hit = (key, count, expires_at, now)
        self._hits += 1
        if self._hits % SWEEP_EVERY == 0:
            self._run("sweep", {"now": now}, write=True)
        return count

    def _live(self, key: str) -> tuple[int, float] | None:
        key = _stored_key(key)
        now = time.time()
        recent = getattr(self._recent, "hit", None)
        if recent is not None and recent[0] == key and now - recent[3] < RECENT_SECONDS:
            return recent[1], recent[2]
        return self._run("live", {"key": key, "now": now}, write=False)

    def get(self, key: str) -> int:
        live = self._live(key)
        return live[0] if live else 0

    def get_expiry(self, key: str) -> float:
        live = self._live(key)
        return live[1] if live else time.time()

    def check(self) -> bool:
        try:
            self._run("live", {"key": "", "now": 0.0}, write=False)
        except SQLAlchemyError:
            return False
        return True

    def reset(self) -> int | None:
        self._recent.hit = None
        return self._run("reset", {}, write=True)

    def clear(self, key: str) -> None:
        self._recent.hit = None
        self._run("clear", {"key": _stored_key(key)}, write=True)
