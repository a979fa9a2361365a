"""The scheduler's side of waking up: one thread runs the dispatch passes when asked, and
listeners ask the moment an email is queued (service.wakeup rings).

`Bell` counts passes asked for and passes run. The dispatch thread (`run_passes`) waits
until a pass is asked for, runs one, and says which asks it answered: every ask made
before the pass started. An ask made while a pass runs is answered by the next pass, which
starts at once, so no wake-up is lost; a burst of asks is answered by one pass. The tick
(the APScheduler "dispatch" job, every SCHEDULER_TICK_SECONDS) is an ask too, which waits
for its pass, so a pass that runs long still makes the ticks behind it collapse into one.
A pass that answers a tick is the whole tick; one that answers only wake-ups just sends
what is due (the moment an email is queued, moving sequences on and starting newsletters,
which come due with time, would only delay it). Stopping wakes every waiter. (Why not
have a listener bring the APScheduler job forward instead: a run that finds the job still
counted as running, max_instances=1, is skipped, and that wake-up would be lost.)

Listeners, each on a thread of its own, blocked until something arrives (nothing runs
while idle), and each woken for stopping through a pipe of its own:
- `NotifyListener` (PostgreSQL): one connection of its own that LISTENs, from before the
  first pass. If it drops, the listener says so once, connects again with growing pauses
  (the tick carries on meanwhile), says when it listens again, and asks for a pass for
  whatever was queued while nobody listened.
- `DoorbellListener` (SQLite): binds the Unix socket `<database>.wakeup`. One scheduler per
  database file answers the doorbell: it holds an flock on `<database>.wakeup.lock` as long
  as it runs (so a socket left by a killed one is known to be stale and replaced); another
  scheduler on the same file, or a path too long for a socket, ticks only, and says so.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import select
import socket
import threading
from collections.abc import Callable, Iterable
from typing import Any, NamedTuple

from sqlalchemy import Engine

from service import wakeup

logger = logging.getLogger("scheduler")

# Pauses between attempts to connect the listener again, the last one repeated.
RECONNECT_PAUSES = (0.5, 1.0, 2.0, 5.0, 10.0, 30.0)


class Pass(NamedTuple):
    """The pass to run next: the last ask it answers, and whether a tick is among them."""

    answers: int
    tick: bool


class Bell:
    """Asks for a dispatch pass, and waits for the pass that answers them (see above)."""

    def __init__(self, stop: threading.Event) -> None:
        self._stop = stop
        self._changed = threading.Condition()
        self._asked = 0
        self._tick_asked = 0
        self._answered = 0

    def ring(self, *, tick: bool = False) -> int:
        """Ask for a pass (the whole tick, if `tick`); the number of this ask."""
        with self._changed:
            self._asked += 1
            if tick:
                self._tick_asked = self._asked
            self._changed.notify_all()
            return self._asked

    @property
    def pending(self) -> bool:
        """Whether an ask waits for its pass."""
        with self._changed:
            return self._asked > self._answered

    def next_pass(self) -> Pass | None:
        """Wait until a pass is asked for; that pass, or None once stopping."""
        with self._changed:
            while self._asked == self._answered and not self._stop.is_set():
                self._changed.wait()
            if self._stop.is_set():
                return None
            return Pass(self._asked, self._tick_asked > self._answered)

    def passed(self, answered: Pass) -> None:
        """The pass `answered` is over."""
        with self._changed:
            self._answered = max(self._answered, answered.answers)
            self._changed.notify_all()

    def wait_for(self, ask: int) -> None:
        """Wait until a pass has answered ask number `ask`, or stopping."""
        with self._changed:
            while self._answered < ask and not self._stop.is_set():
                self._changed.wait()

    def wake_all(self) -> None:
        """Every waiter looks at the stop event again (called once it is set)."""
        with self._changed:
            self._changed.notify_all()


def run_passes(
    bell: Bell, run_tick: Callable[[], object], run_wakeup: Callable[[], object]
) -> None:
    """The dispatch thread: one pass per batch of asks, until stopping."""
    while (next_pass := bell.next_pass()) is not None:
        try:
            (run_tick if next_pass.tick else run_wakeup)()
        except Exception:
            # As APScheduler did for the job: say so, and try again when asked.
            logger.exception("the dispatch pass failed")
        finally:
            bell.passed(next_pass)


def ask_and_wait(bell: Bell) -> None:
    """The tick: ask for a whole tick and wait until it has run."""
    bell.wait_for(bell.ring(tick=True))


class Listener:
    """A thread that waits on a file descriptor, and a pipe that wakes it to stop."""

    name = "wakeups"

    def __init__(self, bell: Bell) -> None:
        self.bell = bell
        self._stop_read, self._stop_write = os.pipe()
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)

    def start(self) -> Listener:
        self._thread.start()
        return self

    def close(self, timeout: float = 5.0) -> None:
        self._stopping.set()
        with contextlib.suppress(OSError):
            os.write(self._stop_write, b"x")
        if self._thread.ident is not None:
            self._thread.join(timeout)
        if not self._thread.is_alive():
            os.close(self._stop_read)
            os.close(self._stop_write)

    def _wait(self, fileno: int | None, timeout: float | None = None) -> bool:
        """Block until `fileno` is readable (True), stopping or `timeout` (False)."""
        waited: Iterable[int] = (self._stop_read,) if fileno is None else (fileno, self._stop_read)
        ready, _, _ = select.select(list(waited), [], [], timeout)
        return fileno in ready and not self._stopping.is_set()

    def _run(self) -> None:
        raise NotImplementedError


class DoorbellListener(Listener):
    """SQLite: answers the datagrams sent to `<database>.wakeup`."""

    name = "wakeups-socket"

    def __init__(self, bell: Bell, path: str) -> None:
        super().__init__(bell)
        self.path = path
        self._socket: socket.socket | None = None
        self._lock_file: Any = None

    def bind(self) -> bool:
        """Take the doorbell for this scheduler; False (having said why) if it cannot."""
        if not wakeup.fits(self.path):
            logger.warning(
                "the wake-up socket's path %s is longer than %d bytes: new emails wait for "
                "the tick",
                self.path,
                wakeup.MAX_SOCKET_PATH,
            )
            return False
        lock_file = open(f"{self.path}.lock", "ab")  # noqa: SIM115 - held while running
        try:
            fcntl.flock(lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock_file.close()
            logger.info(
                "another scheduler answers %s: this one finds new emails on its tick", self.path
            )
            return False
        try:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)  # left by a scheduler that died: it held no lock
            bound = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            bound.bind(self.path)
            bound.setblocking(False)
        except OSError as exc:
            lock_file.close()
            logger.warning("cannot bind %s (%s): new emails wait for the tick", self.path, exc)
            return False
        self._socket, self._lock_file = bound, lock_file
        return True

    def _run(self) -> None:
        assert self._socket is not None
        while self._wait(self._socket.fileno()):
            rings = 0
            with contextlib.suppress(BlockingIOError):
                while True:  # every ring queued so far: one pass answers them all
                    self._socket.recv(16)
                    rings += 1
            if rings:
                self.bell.ring()

    def close(self, timeout: float = 5.0) -> None:
        super().close(timeout)
        if self._socket is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)  # still ours: the lock is held until the next line
            self._socket.close()
            self._lock_file.close()
            self._socket = self._lock_file = None


class NotifyListener(Listener):
    """PostgreSQL: LISTENs on a connection of its own, connecting again if it drops."""

    name = "wakeups-listen"

    def __init__(
        self, bell: Bell, engine: Engine, *, pauses: tuple[float, ...] = RECONNECT_PAUSES
    ) -> None:
        super().__init__(bell)
        self.engine = engine
        self.pauses = pauses
        # Set each time LISTEN has succeeded; the backend's pid, for the tests.
        self.listening = threading.Event()
        self.backend_pid: int | None = None
        self._first_attempt = threading.Event()

    def start(self, wait: float = 10.0) -> NotifyListener:
        """Start, and wait (a while at most) until the first attempt to LISTEN is over: a
        scheduler that listens before its first pass starts misses nothing in between."""
        super().start()
        self._first_attempt.wait(wait)
        return self

    def _connect(self) -> Any:
        """A psycopg connection made as the engine makes them (same address and options),
        taken out of its pool, in autocommit, LISTENing."""
        pooled = self.engine.raw_connection()
        connection = pooled.driver_connection
        pooled.detach()  # closed below, not by the pool (which would roll back a dead one)
        try:
            connection.autocommit = True
            connection.execute(f"LISTEN {wakeup.CHANNEL}")
            keep_alive(connection.fileno())
        except BaseException:
            connection.close()
            raise
        return connection

    def _run(self) -> None:
        failures = 0
        while not self._stopping.is_set():
            try:
                connection = self._connect()
            except Exception as exc:
                self._first_attempt.set()
                failures = self._failed(failures, "cannot LISTEN", exc)
                continue
            self.backend_pid = connection.info.backend_pid
            self.listening.set()
            self._first_attempt.set()
            if failures:
                logger.info("listening for new emails again")
                self.bell.ring()  # for whatever was queued while nobody listened
            failures = 0
            try:
                self._listen(connection)
            except Exception as exc:
                failures = self._failed(failures, "lost the LISTEN connection", exc)
            finally:
                self.listening.clear()
                connection.close()

    def _listen(self, connection: Any) -> None:
        while self._wait(connection.fileno()):
            if any(True for _ in connection.notifies(timeout=0)):
                self.bell.ring()
            elif connection.broken or connection.closed:
                raise ConnectionError("the connection is closed")

    def _failed(self, failures: int, what: str, exc: Exception) -> int:
        """Say it once per outage, then wait before trying again."""
        if failures == 0:
            logger.warning("%s (%s): new emails wait for the tick until it is back", what, exc)
        else:
            logger.debug("%s again (%s)", what, exc)
        self._wait(None, self.pauses[min(failures, len(self.pauses) - 1)])
        return failures + 1


def keep_alive(fileno: int) -> None:
    """TCP keepalives every minute on a connection that may say nothing for hours: one
    dropped without a word (a NAT forgetting it, a server gone) is then noticed within
    two minutes, not after libpq's default two hours."""
    probe = socket.socket(fileno=os.dup(fileno))
    try:
        if probe.family in (socket.AF_INET, socket.AF_INET6):
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
            for option, value in (("TCP_KEEPIDLE", 60), ("TCP_KEEPINTVL", 10), ("TCP_KEEPCNT", 6)):
                if hasattr(socket, option):
                    probe.setsockopt(socket.IPPROTO_TCP, getattr(socket, option), value)
    finally:
        probe.close()


def start_listener(bell: Bell, engine: Engine, database_url: str) -> Listener | None:
    """The listener that wakes this scheduler on its database, started; None if there is
    none (an in-memory database, or a doorbell another scheduler holds)."""
    if engine.dialect.name == "postgresql":
        return NotifyListener(bell, engine).start()
    path = wakeup.doorbell_path(database_url)
    if path is None:
        return None
    doorbell = DoorbellListener(bell, path)
    return doorbell.start() if doorbell.bind() else None
