"""Waking the scheduler: a commit that queued an email due now rings once (NOTIFY on
PostgreSQL, a datagram to the socket beside the SQLite file), a rollback never; and the
dispatch thread's bell, which loses no ask and answers a burst with one pass."""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Iterator
from datetime import timedelta

import psycopg
import pytest
from sqlalchemy import select
from sqlalchemy.engine import make_url

from scheduler.__main__ import send_queued, tick
from scheduler.wakeups import Bell, Pass, ask_and_wait, run_passes
from service import kinds, wakeup
from service import outbox as outbox_module
from service.models import Subscriber
from tests.helpers import make_subscriber

MARKER = "wakeup_test_marker"


class Rings:
    """Counts the rings commits have sent, heard the way a scheduler hears them."""

    def __init__(self, database_url: str, engine) -> None:
        self.engine = engine
        path = wakeup.doorbell_path(database_url)
        if path is not None:
            self.socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            self.socket.bind(path)
            self.socket.setblocking(False)
            self.connection = None
        else:
            conninfo = make_url(database_url).set(drivername="postgresql")
            self.connection = psycopg.connect(
                conninfo.render_as_string(hide_password=False), autocommit=True
            )
            self.connection.execute(f"LISTEN {wakeup.CHANNEL}")
            self.connection.execute(f"LISTEN {MARKER}")

    def count(self) -> int:
        """The rings sent since the last count."""
        if self.connection is None:
            rings = 0
            with contextlib.suppress(BlockingIOError):
                while True:
                    self.socket.recv(16)
                    rings += 1
            return rings
        # The server hands notifications out in commit order: every ring sent before the
        # marker is committed comes before it.
        with self.engine.connect() as connection:
            connection.exec_driver_sql(f"NOTIFY {MARKER}")
            connection.commit()
        for rings, notify in enumerate(self.connection.notifies(timeout=10)):
            if notify.channel == MARKER:
                return rings
        raise AssertionError("the marker never came")

    def close(self) -> None:
        if self.connection is None:
            self.socket.close()
        else:
            self.connection.close()


@pytest.fixture
def rings(database_url, services) -> Iterator[Rings]:
    heard = Rings(database_url, services.database.engine)
    yield heard
    heard.close()


def reader(session, clock, n: int = 0) -> Subscriber:
    return make_subscriber(session, f"reader{n}@example.com", now=clock())


def test_a_commit_that_queued_emails_due_now_rings_once(services, rings, clock):
    with services.database.begin() as session:
        for n in range(3):
            outbox_module.enqueue(session, reader(session, clock, n), "confirm", now=clock())
    assert rings.count() == 1


def test_a_rolled_back_transaction_never_rings(services, rings, clock):
    with pytest.raises(RuntimeError), services.database.begin() as session:
        outbox_module.enqueue(session, reader(session, clock), "confirm", now=clock())
        raise RuntimeError("the signup failed after queueing")
    assert rings.count() == 0


def test_a_session_forgets_what_its_rolled_back_transaction_queued(services, rings, clock):
    session = services.database.sessions()
    try:
        session.begin()
        outbox_module.enqueue(session, reader(session, clock), "confirm", now=clock())
        session.rollback()
        session.begin()
        reader(session, clock, 1)  # a write that queues nothing
        session.commit()
    finally:
        session.close()
    assert rings.count() == 0


def test_an_email_due_later_or_a_transaction_that_queues_nothing_does_not_ring(
    services, rings, clock
):
    with services.database.begin() as session:
        outbox_module.enqueue(
            session, reader(session, clock), "confirm", now=clock(), due_at=clock() + timedelta(1)
        )
    with services.database.begin() as session:
        reader(session, clock, 1)
    assert rings.count() == 0


def test_a_duplicate_that_writes_no_row_does_not_ring(services, rings, clock):
    with services.database.begin() as session:
        subscriber = reader(session, clock)
        outbox_module.enqueue(session, subscriber, "confirm", now=clock(), dedupe_key="once")
    assert rings.count() == 1
    with services.database.begin() as session:
        outbox_module.enqueue(session, subscriber, "confirm", now=clock(), dedupe_key="once")
    assert rings.count() == 0


def test_a_savepoint_rings_only_when_its_transaction_commits(services, rings, clock):
    with services.database.begin() as session:
        with session.begin_nested():
            outbox_module.enqueue(session, reader(session, clock), "confirm", now=clock())
        assert rings.count() == 0
    assert rings.count() == 1


def test_a_newsletter_to_everyone_rings_once(services, rings, clock):
    with services.database.begin() as session:
        for n in range(5):
            reader(session, clock, n)
    assert rings.count() == 0
    with services.database.begin() as session:
        outbox_module.enqueue_for_each(
            session,
            select(Subscriber.id, Subscriber.email).subquery(),
            kinds.NEWSLETTER,
            now=clock(),
            context={},
            dedupe_prefix="newsletter:test:",
        )
    assert rings.count() == 1


def test_sequence_steps_ring_when_rows_are_written(services, rings, clock):
    with services.database.begin() as session:
        subscriber = reader(session, clock)
    step = outbox_module.step_row(
        subscriber.id,
        subscriber.email,
        template="confirm",
        sequence="seq",
        step="one",
        dedupe_key="seq:one:1",
        now=clock(),
    )
    with services.database.begin() as session:
        assert outbox_module.enqueue_steps(session, [step], now=clock()) == {"seq:one:1"}
    assert rings.count() == 1
    with services.database.begin() as session:
        assert outbox_module.enqueue_steps(session, [step], now=clock()) == set()
    assert rings.count() == 0


def test_wakeups_off_ring_nothing(make_app, database_url, clock):
    services = make_app(SCHEDULER_WAKEUPS="off").extensions["newsletter"]
    heard = Rings(database_url, services.database.engine)
    try:
        with services.database.begin() as session:
            outbox_module.enqueue(session, reader(session, clock), "confirm", now=clock())
        assert heard.count() == 0
    finally:
        heard.close()


def test_a_doorbell_nobody_listens_to_is_no_error(tmp_path):
    doorbell = wakeup.Doorbell(str(tmp_path / "nobody.wakeup"))
    doorbell.ring()  # ENOENT
    (tmp_path / "not-a-socket.wakeup").write_text("")
    wakeup.Doorbell(str(tmp_path / "not-a-socket.wakeup")).ring()  # ECONNREFUSED
    doorbell.close()


def test_a_sqlite_path_too_long_for_a_socket_rings_nothing(tmp_path):
    deep = tmp_path / ("d" * 60) / ("e" * 60)
    url = f"sqlite:///{deep / 'newsletter.db'}"
    assert not wakeup.fits(wakeup.doorbell_path(url))
    from service.db import Database

    database = Database.connect(url)
    assert database.doorbell is None
    database.dispose()


# --- the bell between the tick, the listeners and the dispatch thread ----------------


def test_an_ask_is_answered_by_the_next_pass():
    bell = Bell(threading.Event())
    assert not bell.pending
    ask = bell.ring()
    assert bell.pending
    next_pass = bell.next_pass()  # returns at once: a pass is asked for
    assert next_pass == Pass(answers=ask, tick=False)
    bell.passed(next_pass)
    assert not bell.pending


def test_a_burst_of_asks_gets_one_pass():
    bell = Bell(threading.Event())
    for _ in range(5):
        bell.ring()
    bell.passed(bell.next_pass())
    assert not bell.pending


def test_an_ask_during_a_pass_is_not_lost():
    bell = Bell(threading.Event())
    bell.ring()
    next_pass = bell.next_pass()
    late = bell.ring()  # the pass has started: it may have read the outbox already
    bell.passed(next_pass)
    assert bell.pending
    assert bell.next_pass().answers == late


def test_a_pass_is_the_whole_tick_when_a_tick_is_among_its_asks():
    bell = Bell(threading.Event())
    bell.ring()
    bell.ring(tick=True)
    bell.ring()
    tick = bell.next_pass()
    assert tick.tick
    bell.passed(tick)
    bell.ring()
    assert bell.next_pass().tick is False


def test_the_dispatch_thread_runs_again_for_a_wakeup_during_its_pass():
    stop = threading.Event()
    bell = Bell(stop)
    passes = []

    def run_tick() -> None:
        passes.append("tick")
        bell.ring()  # an email queued while the tick runs

    def run_wakeup() -> None:
        passes.append("wake-up")
        stop.set()

    bell.ring(tick=True)
    run_passes(bell, run_tick, run_wakeup)  # returns once stopped, on this thread
    assert passes == ["tick", "wake-up"]


def test_a_failing_pass_is_logged_and_the_next_ask_still_runs(caplog):
    stop = threading.Event()
    bell = Bell(stop)
    passes = []

    def run_pass() -> None:
        passes.append(1)
        if len(passes) == 1:
            bell.ring()
            raise RuntimeError("the database went away")
        stop.set()

    bell.ring()
    run_passes(bell, run_pass, run_pass)
    assert len(passes) == 2
    assert "the dispatch pass failed" in caplog.text


def test_the_tick_waits_for_its_pass_and_stopping_wakes_every_waiter():
    stop = threading.Event()
    bell = Bell(stop)
    passes = []
    dispatch = threading.Thread(
        target=run_passes,
        args=(bell, lambda: passes.append("tick"), lambda: passes.append("wake-up")),
    )
    dispatch.start()
    try:
        ask_and_wait(bell)  # returns once a pass has run for it
        assert passes == ["tick"]
    finally:
        stop.set()
        bell.wake_all()
        dispatch.join(timeout=10)
    assert not dispatch.is_alive()
    assert bell.next_pass() is None
    bell.wait_for(bell.ring())  # stopping: no pass will come, and nobody waits for one


def test_a_wakeup_pass_only_sends_and_leaves_sequences_to_the_tick(services, clock):
    """Sequence steps come due with time: moving them on would only delay the email the
    wake-up is for."""
    from service.models import Enrollment, EnrollmentStatus, OutboxMessage, SubscriberStatus

    confirmed = clock() - timedelta(days=3)
    with services.database.begin() as session:
        member = make_subscriber(
            session,
            "member@example.com",
            now=confirmed,
            status=SubscriberStatus.CONFIRMED,
            confirmed_at=confirmed,
        )
        session.add(
            Enrollment(
                subscriber_id=member.id,
                sequence=services.default_sequence.name,
                enrolled_at=confirmed,
                status=EnrollmentStatus.ACTIVE,
                steps_passed=[],
                next_due_at=confirmed,
            )
        )
        outbox_module.enqueue(session, reader(session, clock), "confirm", now=clock())
    dispatcher = services.make_dispatcher("test-worker")
    stop = threading.Event()
    passed = {"started_at": clock(), "clock": clock, "stop": stop}

    report = send_queued(services, dispatcher, **passed)
    assert (report.claimed, report.sent) == (1, 1)
    with services.database.read() as session:
        assert session.scalars(select(OutboxMessage.kind)).all() == ["confirm"]

    report = tick(services, dispatcher, **passed)
    assert (report.claimed, report.sent) == (1, 1)
    with services.database.read() as session:
        assert session.scalars(select(OutboxMessage.kind)).all() == ["confirm", "sequence"]
