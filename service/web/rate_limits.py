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

import time
from typing import Any

from limits.storage import Storage
from sqlalchemy import Column, Float, Integer, MetaData, String, Table, delete, select, text
from sqlalchemy.exc import SQLAlchemyError

from ..db import Database

STORAGE_SCHEME = "newsletter"
SQLITE_FILE = "rate_limits.db"
# Expired rows are swept out once every so many hits of a process.
SWEEP_EVERY = 1000

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
    RETURNING count
    """
)


def create_sqlite_table(database: Database) -> None:
    """The table in a SQLite file of the counters' own (made on first start)."""
    with database.begin() as session:
        rate_limits.create(session.connection(), checkfirst=True)


class DatabaseStorage(Storage):
    """A `limits` storage over one of our databases (see the module's docstring).

    Made by Flask-Limiter from RATELIMIT_STORAGE_URI "newsletter://", with the Database in
    RATELIMIT_STORAGE_OPTIONS.
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
        self.database = database
        self._hits = 0

    @property
    def base_exceptions(self) -> type[Exception]:
        return SQLAlchemyError

    def incr(self, key: str, expiry: int | float, amount: int = 1) -> int:
        now = time.time()
        with self.database.begin() as session:
            count = session.execute(
                _HIT, {"key": key[:255], "amount": amount, "now": now, "expiry": expiry}
            ).scalar_one()
            self._hits += 1
            if self._hits % SWEEP_EVERY == 0:
                session.execute(delete(rate_limits).where(rate_limits.c.expires_at <= now))
        return count

    def _live(self, key: str) -> tuple[int, float] | None:
        with self.database.read() as session:
            row = session.execute(
                select(rate_limits.c.count, rate_limits.c.expires_at).where(
                    rate_limits.c.key == key[:255], rate_limits.c.expires_at > time.time()
                )
            ).first()
        return (row.count, row.expires_at) if row is not None else None

    def get(self, key: str) -> int:
        live = self._live(key)
        return live[0] if live else 0

    def get_expiry(self, key: str) -> float:
        live = self._live(key)
        return live[1] if live else time.time()

    def check(self) -> bool:
        try:
            with self.database.read() as session:
                session.execute(select(1))
        except SQLAlchemyError:
            return False
        return True

    def reset(self) -> int | None:
        with self.database.begin() as session:
            return session.execute(delete(rate_limits)).rowcount

    def clear(self, key: str) -> None:
        with self.database.begin() as session:
            session.execute(delete(rate_limits).where(rate_limits.c.key == key[:255]))
