"""`python -m scheduler` as a real process: one pass at a given time, SIGTERM mid-send,
and two schedulers draining one backlog, on both databases."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import func, select

from service import outbox as outbox_module
from service.config import DEV_SECRET_KEY, PROJECT_ROOT
from service.models import OutboxMessage, OutboxStatus, Subscriber, SubscriberStatus
from tests.conftest import TEST_SECRET
from tests.helpers import add_pending, make_subscriber, outbox, services_of

pytestmark = pytest.mark.slow


def scheduler_env(database_url: str, mail_url: str, tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {
        key: value
        for key, value in os.environ.items()
        if key in ("PATH", "HOME", "LANG", "PYTHONPATH", "SYSTEMROOT", "TMPDIR")
    }
    env.update(
        APP_ENV="testing",
        DOTENV_PATH="",
        SECRET_KEY=TEST_SECRET,
        DATABASE_URL=database_url,
        MAIL_URL=mail_url,
        INSTANCE_DIR=str(tmp_path / "instance"),
        BASE_URL="http://newsletter.test",
        MAIL_FROM="Low Back Relief <hello@newsletter.test>",
        OWNER_POSTAL_ADDRESS="12 Test Lane, Testville",
        LOG_LEVEL="INFO",
        PYTHONUNBUFFERED="1",
    )
    env.update(extra)
    return env


def run_scheduler(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    """Run `python -m scheduler ARGS` to the end."""
    return subprocess.run(
        [sys.executable, "-m", "scheduler", *args],
        cwd=PROJECT_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def wait_for_line(process: subprocess.Popen, text: str) -> str:
    """Read the process's output until a line contains `text` (it says so when it has
    acted on a signal); return what was read."""
    seen = []
    for line in process.stdout:
        seen.append(line)
        if text in line:
            return "".join(seen)
    raise AssertionError(f"the process ended without saying {text!r}:\n{''.join(seen)}")


def start_scheduler(env: dict[str, str], *args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "scheduler", *args],
        cwd=PROJECT_ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def test_once_sends_what_is_due_at_the_given_time(app, smtp, database_url, tmp_path, clock):
    add_pending(app, 2)
    later = clock() + timedelta(days=2)
    services = services_of(app)
    with services.database.begin() as session:
        subscriber = session.get(Subscriber, 2)
        outbox_module.enqueue(
            session, subscriber, kind="confirm", template="confirm", now=clock(), due_at=later
        )
    env = scheduler_env(database_url, smtp.url, tmp_path)
    result = run_scheduler(env, "--once", "--now", clock().isoformat())
    assert result.returncode == 0, result.stdout + result.stderr
    assert "sent 2" in result.stdout
    assert [r.status for r in outbox(app)] == [
        OutboxStatus.SENT,
        OutboxStatus.SENT,
        OutboxStatus.QUEUED,
    ]
    assert [row.sent_at for row in outbox(app)[:2]] == [clock(), clock()]

    result = run_scheduler(env, "--once", "--now", later.isoformat())
    assert result.returncode == 0
    assert len(smtp.handler.wait_for(3)) == 3
    from service import health

    with services.database.read() as session:
        assert health.last_tick(session) == later


def test_once_exits_non_zero_when_mail_cannot_go(app, database_url, tmp_path):
    from tests.smtp_server import free_port

    add_pending(app, 1)
    env = scheduler_env(database_url, f"smtp://127.0.0.1:{free_port()}?timeout=2", tmp_path)
    result = run_scheduler(env, "--once")
    assert result.returncode == 1
    assert "MAIL DELIVERY IS STOPPED" in result.stdout + result.stderr
    assert outbox(app)[0].status is OutboxStatus.QUEUED


def test_bad_configuration_is_a_clear_error(tmp_path):
    env = scheduler_env(
        "sqlite:///x.db",
        "console:",
        tmp_path,
        APP_ENV="production",
        SECRET_KEY=DEV_SECRET_KEY,
        BASE_URL="https://news.example.com",
    )
    result = run_scheduler(env, "--once")
    assert result.returncode == 2
    assert "SECRET_KEY" in result.stderr


def test_sigterm_finishes_the_message_in_flight_and_hands_back_the_rest(
    app, smtp, database_url, tmp_path
):
    add_pending(app, 5)
    smtp.handler.gate = threading.Event()
    env = scheduler_env(database_url, smtp.url, tmp_path)
    process = start_scheduler(env, "--tick", "0.2")
    try:
        assert smtp.handler.in_data.wait(timeout=30), "the scheduler never started sending"
        process.send_signal(signal.SIGTERM)
        output = wait_for_line(process, "finishing the message in flight")
        smtp.handler.gate.set()  # only now does the server answer the message in flight
        output += process.communicate(timeout=30)[0]
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 0, output
    assert "finishing the message in flight" in output
    rows = outbox(app)
    assert [r.status for r in rows] == [OutboxStatus.SENT] + [OutboxStatus.QUEUED] * 4
    assert all(r.attempts == 0 and r.claimed_by is None for r in rows[1:])
    assert len(smtp.received) == 1


def test_two_scheduler_processes_send_every_row_once(app, smtp, database_url, tmp_path):
    count = 300
    add_pending(app, count)
    env = scheduler_env(database_url, smtp.url, tmp_path, SEND_BATCH_SIZE="10")
    processes = [start_scheduler(env, "--once") for _ in range(2)]
    outputs = [p.communicate(timeout=120)[0] for p in processes]
    assert [p.returncode for p in processes] == [0, 0], outputs
    received = smtp.handler.wait_for(count)
    recipients = [r.rcpt_tos[0] for r in received]
    assert len(recipients) == count and len(set(recipients)) == count
    with services_of(app).database.read() as session:
        sent = session.scalar(
            select(func.count())
            .select_from(OutboxMessage)
            .where(OutboxMessage.status == OutboxStatus.SENT)
        )
    assert sent == count
    assert all("database is locked" not in out for out in outputs)


def test_sigterm_in_a_once_pass_hands_back_the_rest(app, smtp, database_url, tmp_path):
    add_pending(app, 4)
    smtp.handler.gate = threading.Event()
    process = start_scheduler(scheduler_env(database_url, smtp.url, tmp_path), "--once")
    try:
        assert smtp.handler.in_data.wait(timeout=30), "the pass never started sending"
        process.send_signal(signal.SIGTERM)
        output = wait_for_line(process, "finishing the message in flight")
        smtp.handler.gate.set()
        output += process.communicate(timeout=30)[0]
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 0, output
    assert "stop requested" in output
    rows = outbox(app)
    assert [r.status for r in rows] == [OutboxStatus.SENT] + [OutboxStatus.QUEUED] * 3
    assert all(r.attempts == 0 for r in rows[1:])


def test_a_second_signal_stops_at_once(app, smtp, database_url, tmp_path):
    add_pending(app, 2)
    smtp.handler.gate = threading.Event()  # the server never answers DATA
    process = start_scheduler(scheduler_env(database_url, smtp.url, tmp_path), "--tick", "0.2")
    try:
        assert smtp.handler.in_data.wait(timeout=30)
        process.send_signal(signal.SIGTERM)
        # Signals sent back to back can merge into one: wait until the first was handled.
        wait_for_line(process, "finishing the message in flight")
        process.send_signal(signal.SIGTERM)
        process.communicate(timeout=30)
    finally:
        smtp.handler.gate.set()
        if process.poll() is None:
            process.kill()
    assert process.returncode == 128 + signal.SIGTERM
    # The message in flight keeps its claim; its lease brings it back later.
    assert outbox(app)[0].status is OutboxStatus.SENDING


# --- the drip sequence through real scheduler processes ---------------------------------

MORNING = datetime(2026, 11, 27, 10, 0, tzinfo=UTC)  # within every UTC reader's send window


def add_due_readers(app, count: int) -> None:
    """`count` confirmed readers in UTC, confirmed three days before MORNING: the first
    step ('2 days') is due, not yet planned."""
    from service.models import Enrollment, EnrollmentStatus

    services = services_of(app)
    confirmed = MORNING - timedelta(days=3)
    with services.database.begin() as session:
        for n in range(count):
            reader = make_subscriber(
                session,
                f"r{n}@example.com",
                now=confirmed,
                status=SubscriberStatus.CONFIRMED,
                confirmed_at=confirmed,
            )
            session.add(
                Enrollment(
                    subscriber_id=reader.id,
                    sequence=services.default_sequence.name,
                    enrolled_at=confirmed,
                    status=EnrollmentStatus.ACTIVE,
                    steps_passed=[],
                    next_due_at=confirmed,
                )
            )


def deliveries_by_reader(smtp) -> dict[str, int]:
    counts: dict[str, int] = {}
    for received in smtp.received:
        counts[received.rcpt_tos[0]] = counts.get(received.rcpt_tos[0], 0) + 1
    return counts


def test_two_schedulers_drain_one_backlog_of_due_steps_with_no_duplicate(
    app, smtp, database_url, tmp_path
):
    count = 300
    add_due_readers(app, count)
    env = scheduler_env(
        database_url, smtp.url, tmp_path, SEND_BATCH_SIZE="10", SEQUENCE_BATCH_SIZE="25"
    )
    processes = [start_scheduler(env, "--once", "--now", MORNING.isoformat()) for _ in range(2)]
    outputs = [p.communicate(timeout=120)[0] for p in processes]
    assert [p.returncode for p in processes] == [0, 0], outputs
    smtp.handler.wait_for(count)
    counts = deliveries_by_reader(smtp)
    assert len(counts) == count and set(counts.values()) == {1}
    assert all(r.message["Subject"].startswith("Why your glutes") for r in smtp.received)
    with services_of(app).database.read() as session:
        rows = session.scalars(select(OutboxMessage).where(OutboxMessage.kind == "sequence")).all()
    assert len(rows) == count and {r.status for r in rows} == {OutboxStatus.SENT}


def test_a_scheduler_killed_mid_pass_loses_nothing_and_repeats_at_most_the_email_in_flight(
    app, smtp, database_url, tmp_path
):
    count = 20
    add_due_readers(app, count)
    smtp.handler.gate = threading.Event()
    smtp.handler.gate_after = 7  # the eighth email hangs in DATA
    env = scheduler_env(
        database_url, smtp.url, tmp_path, SEND_LEASE_SECONDS="150", SMTP_TIMEOUT_SECONDS="5"
    )
    process = start_scheduler(env, "--once", "--now", MORNING.isoformat())
    try:
        assert smtp.handler.in_data.wait(timeout=60), "the pass never reached the eighth email"
        process.kill()  # SIGKILL: no chance to clean up
        process.communicate(timeout=30)
    finally:
        smtp.handler.gate.set()  # the server finishes taking the email in flight
        if process.poll() is None:
            process.kill()
    assert process.returncode == -signal.SIGKILL
    # Restart once the dead scheduler's lease has run out.
    later = MORNING + timedelta(seconds=151)
    result = run_scheduler(env, "--once", "--now", later.isoformat())
    assert result.returncode == 0, result.stdout + result.stderr
    smtp.handler.wait_for(count)
    counts = deliveries_by_reader(smtp)
    assert len(counts) == count  # nothing lost
    repeated = [reader for reader, n in counts.items() if n > 1]
    assert len(repeated) <= 1 and all(counts[r] == 2 for r in repeated)
    with services_of(app).database.read() as session:
        statuses = session.scalars(
            select(OutboxMessage.status).where(OutboxMessage.kind == "sequence")
        ).all()
    assert statuses == [OutboxStatus.SENT] * count


def test_a_tick_skipped_while_a_long_pass_runs_is_not_logged(caplog):
    """A newsletter to many readers keeps one pass running for minutes: APScheduler's
    warning at every tick meanwhile says nothing an operator needs, its others stay."""
    from scheduler.__main__ import _not_a_skipped_tick, quiet_apscheduler

    apscheduler_log = logging.getLogger("apscheduler.scheduler")
    caplog.set_level(logging.INFO)
    try:
        quiet_apscheduler()
        apscheduler_log.warning(
            'Execution of job "tick" skipped: maximum number of running instances reached (1)'
        )
        apscheduler_log.warning('Run time of job "tick" was missed by 0:00:07')
    finally:
        apscheduler_log.removeFilter(_not_a_skipped_tick)
        logging.getLogger("apscheduler").setLevel(logging.NOTSET)
    messages = [r.getMessage() for r in caplog.records if r.name.startswith("apscheduler")]
    assert messages == ['Run time of job "tick" was missed by 0:00:07']
