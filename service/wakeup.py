"""Waking the scheduler the moment an email is queued, instead of at its next tick.

`note_queued` (called by service.outbox.queue for every email due now) marks the session;
the session events that service.db installs on its write sessions ring once that
transaction commits, and never for one rolled back:

- PostgreSQL: `NOTIFY outbox`, just before COMMIT. The server delivers it only if the
  transaction commits, to every scheduler LISTENing, and folds the identical
  notifications of one transaction into one (a newsletter of a million rows rings once).
  The server holds a lock through the COMMIT of a transaction that notified, so such
  commits go one at a time: 8 writers doing nothing else fell from 2,200 to 720 commits/s
  on the development machine, while signups (184/s with it, 185/s without, 8 threads in
  one process) are bound by the web app's CPU far below that.
- SQLite (a file): one empty datagram, after COMMIT, to the Unix socket `<database>.wakeup`
  that the running scheduler has bound. Beside the database rather than in the instance
  folder: every process on that database computes the same address. Sent without
  waiting; nobody there (ENOENT, ECONNREFUSED), a full queue (EAGAIN: rings still to be
  read, whose pass finds this email too) or any other error changes nothing: the
  scheduler's tick still finds the email.

A ring carries nothing: whoever answers reads the outbox. The scheduler's side (LISTEN,
binding the socket, waking the dispatch pass) is scheduler/wakeups.py.
"""

from __future__ import annotations

import os
import socket
import threading

from sqlalchemy import event
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, SessionTransaction, sessionmaker

CHANNEL = "outbox"
# session.info's key: this transaction queued an email due now.
QUEUED = "outbox_queued"
# A Unix socket's path is at most 108 bytes (sun_path) with its terminating NUL.
MAX_SOCKET_PATH = 107


def note_queued(session: Session) -> None:
    """The session's transaction queued an email due now: ring when it commits."""
    session.info[QUEUED] = True


def doorbell_path(database_url: str) -> str | None:
    """The Unix socket a scheduler on this SQLite file listens on; None for PostgreSQL or
    an in-memory database."""
    url = make_url(database_url)
    if url.get_backend_name() != "sqlite" or url.database in (None, "", ":memory:"):
        return None
    return os.path.abspath(url.database) + ".wakeup"


def fits(path: str) -> bool:
    """Whether `path` can name a Unix socket here (short enough, and AF_UNIX exists)."""
    return hasattr(socket, "AF_UNIX") and len(os.fsencode(path)) <= MAX_SOCKET_PATH


class Doorbell:
    """Sends the datagram that wakes a scheduler on a SQLite file; one socket per process,
    opened at the first ring (most processes, the CLI's, never ring)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._socket: socket.socket | None = None
        self._lock = threading.Lock()

    def ring(self) -> None:
        try:
            if self._socket is None:
                with self._lock:
                    if self._socket is None:
                        ringer = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
                        ringer.setblocking(False)
                        self._socket = ringer
            self._socket.sendto(b"", self.path)
        except OSError:
            # Nobody listening: the tick will do. A full queue (EAGAIN): the rings in it are
            # read after this commit, and the pass they bring finds this email too.
            pass

    def close(self) -> None:
        with self._lock:
            if self._socket is not None:
                self._socket.close()
                self._socket = None


def install(sessions: sessionmaker[Session], database_url: str) -> Doorbell | None:
    """Ring after every commit of `sessions` that queued an email due now; the SQLite
    doorbell, if there is one, for the caller to close."""
    doorbell = None
    if make_url(database_url).get_backend_name() == "postgresql":

        @event.listens_for(sessions, "before_commit")
        def notify(session: Session) -> None:
            # A savepoint's release is no commit: the outermost transaction says it.
            if session.info.get(QUEUED) and not session.in_nested_transaction():
                session.connection().exec_driver_sql(f"NOTIFY {CHANNEL}")

    else:
        path = doorbell_path(database_url)
        if path is not None and fits(path):
            doorbell = Doorbell(path)
            ring = doorbell.ring

            @event.listens_for(sessions, "after_commit")
            def ring_after_commit(session: Session) -> None:
                if session.info.get(QUEUED) and not session.in_nested_transaction():
                    ring()

    @event.listens_for(sessions, "after_transaction_end")
    def forget(session: Session, transaction: SessionTransaction) -> None:
        # Committed (rung above) or rolled back (nothing to ring): the next transaction
        # of this session starts with nothing queued.
        if transaction.parent is None:
            session.info.pop(QUEUED, None)

    return doorbell
