"""The scheduler's listeners: the socket beside SQLite (one scheduler answers it, a stale
one is replaced), LISTEN on PostgreSQL (listening again after its connection is killed),
and a whole scheduler woken by a commit long before its tick."""

from __future__ import annotations

import contextlib
import logging
import signal
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from apscheduler.events import EVENT_JOB_EXECUTED
from sqlalchemy import create_engine
from sqlalchemy.exc import OperationalError

from scheduler.__main__ import StopSignals, make_scheduler
from scheduler.wakeups import Bell, DoorbellListener, NotifyListener, start_listener
from service import wakeup
from tests.helpers import add_pending, services_of


class RecordingBell(Bell):
    """A bell that also says when it was rung."""

    def __init__(self) -> None:
        super().__init__(threading.Event())
        self.rung = threading.Event()

    def ring(self) -> int:
        self.rung.set()
        return super().ring()


def socket_path(tmp_path) -> str:
    return str(tmp_path / "newsletter.db.wakeup")


def test_the_doorbell_wakes_the_scheduler(tmp_path):
    bell = RecordingBell()
    listener = DoorbellListener(bell, socket_path(tmp_path))
    assert listener.bind()
    listener.start()
    try:
        wakeup.Doorbell(listener.path).ring()
        assert bell.rung.wait(timeout=10)
    finally:
        listener.close()
    assert not (tmp_path / "newsletter.db.wakeup").exists()


def test_a_second_scheduler_on_the_same_file_only_ticks(tmp_path, caplog):
    caplog.set_level(logging.INFO)
    first = DoorbellListener(Bell(threading.Event()), socket_path(tmp_path))
    second = DoorbellListener(Bell(threading.Event()), socket_path(tmp_path))
    assert first.bind()
    try:
        assert not second.bind()
        assert "another scheduler answers" in caplog.text
    finally:
        first.close()
    assert second.bind()  # the first has gone: the next one to start answers
    second.close()


def test_a_socket_left_by_a_killed_scheduler_is_replaced(tmp_path):
    left = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    left.bind(socket_path(tmp_path))
    left.close()  # the file stays, as after SIGKILL
    bell = RecordingBell()
    listener = DoorbellListener(bell, socket_path(tmp_path))
    assert listener.bind()
    listener.start()
    try:
        wakeup.Doorbell(listener.path).ring()
        assert bell.rung.wait(timeout=10)
    finally:
        listener.close()


def test_a_socket_path_too_long_means_ticking_and_says_so(tmp_path, caplog):
    path = str(tmp_path / ("d" * 120) / "newsletter.db.wakeup")
    assert not DoorbellListener(Bell(threading.Event()), path).bind()
    assert "longer than 107 bytes" in caplog.text


def test_no_listener_for_an_in_memory_database():
    engine = create_engine("sqlite://")
    assert start_listener(Bell(threading.Event()), engine, "sqlite://") is None


@pytest.fixture
def postgres_engine(postgres_url):
    """LISTEN/NOTIFY is PostgreSQL's: an engine on an empty PostgreSQL database."""
    engine = create_engine(postgres_url)
    yield engine
    engine.dispose()


def notify(engine) -> None:
    with engine.connect() as connection:
        connection.exec_driver_sql(f"NOTIFY {wakeup.CHANNEL}")
        connection.commit()


def test_the_listener_listens_again_after_its_connection_is_killed(postgres_engine, caplog):
    caplog.set_level(logging.INFO)
    bell = RecordingBell()
    listener = NotifyListener(bell, postgres_engine, pauses=(0.0,)).start()
    try:
        assert listener.listening.is_set()  # start() waits for the first LISTEN
        assert not bell.rung.is_set()
        notify(postgres_engine)
        assert bell.rung.wait(timeout=10)

        bell.rung.clear()
        killed = listener.backend_pid
        with postgres_engine.connect() as connection:
            connection.exec_driver_sql(f"SELECT pg_terminate_backend({killed})")
            connection.commit()
        # Listening again, it asks for a pass for whatever came while it was not.
        assert bell.rung.wait(timeout=10)
        assert listener.listening.is_set() and listener.backend_pid != killed

        bell.rung.clear()
        notify(postgres_engine)
        assert bell.rung.wait(timeout=10)
    finally:
        listener.close()
    assert not listener._thread.is_alive()
    said = [r.getMessage() for r in caplog.records if r.levelno >= logging.INFO]
    assert len(said) == 2, said
    assert said[0].startswith("lost the LISTEN connection")
    assert said[1] == "listening for new emails again"


class UnreachableListener(NotifyListener):
    """Its database never answers; it counts the attempts."""

    def __init__(self, engine) -> None:
        super().__init__(RecordingBell(), engine, pauses=(0.0,))
        self.attempts = 0
        self.tried_thrice = threading.Event()

    def _connect(self):
        self.attempts += 1
        if self.attempts == 3:
            self.tried_thrice.set()
        raise OperationalError("connect", None, ConnectionRefusedError("refused"))


def test_an_unreachable_database_is_said_once_and_tried_again(caplog):
    caplog.set_level(logging.DEBUG, logger="scheduler")
    listener = UnreachableListener(create_engine("sqlite://")).start()
    try:
        assert listener.tried_thrice.wait(timeout=10)
    finally:
        listener.close()
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and warnings[0].startswith("cannot LISTEN")
    assert not listener.listening.is_set()


@contextlib.contextmanager
def running_scheduler(app) -> Iterator[None]:
    """The real scheduler in this process, ticking every hour, its first tick done."""
    services = services_of(app)
    signals = StopSignals()
    scheduler = make_scheduler(
        services, services.make_dispatcher("test-worker"), interval=3600, signals=signals
    )
    ticked = threading.Event()
    scheduler.add_listener(lambda e: e.job_id == "dispatch" and ticked.set(), EVENT_JOB_EXECUTED)
    thread = threading.Thread(target=scheduler.start, daemon=True)
    thread.start()
    try:
        assert ticked.wait(timeout=20)  # the first tick has passed, with nothing to send
        yield
    finally:
        signals.stop.set()
        thread.join(timeout=20)
    assert not thread.is_alive()


@pytest.mark.slow
def test_a_commit_wakes_a_running_scheduler_long_before_its_tick(smtp_app, smtp):
    """The tick is an hour: only the wake-up can send the email queued once it runs."""
    with running_scheduler(smtp_app):
        add_pending(smtp_app, 1)
        [received] = smtp.handler.wait_for(1, timeout=20)
        assert received.rcpt_tos == ["r0@example.com"]


@pytest.mark.slow
def test_wakeups_off_binds_no_socket(make_app, sqlite_url):
    path = Path(wakeup.doorbell_path(sqlite_url))
    with running_scheduler(make_app(DATABASE_URL=sqlite_url, SCHEDULER_WAKEUPS="off")):
        assert not path.exists()
    with running_scheduler(make_app(DATABASE_URL=sqlite_url)):
        assert path.exists()
    assert not path.exists()


@pytest.mark.slow
def test_a_scheduler_process_is_woken_by_another_process_commit(app, smtp, database_url, tmp_path):
    from service import outbox as outbox_module
    from tests.helpers import make_subscriber
    from tests.test_scheduler import scheduler_env, start_scheduler

    add_pending(app, 1)
    process = start_scheduler(scheduler_env(database_url, smtp.url, tmp_path), "--tick", "3600")
    try:
        smtp.handler.wait_for(1, timeout=30)  # its first tick: it listens from before it
        services = services_of(app)
        with services.database.begin() as session:
            later = make_subscriber(session, "later@example.com", now=services.clock())
            outbox_module.enqueue(session, later, "confirm", now=services.clock())
        received = smtp.handler.wait_for(2, timeout=30)
        assert [r.rcpt_tos for r in received] == [["r0@example.com"], ["later@example.com"]]
    finally:
        process.send_signal(signal.SIGTERM)
        output = process.communicate(timeout=30)[0]
    assert process.returncode == 0, output
