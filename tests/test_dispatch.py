"""The dispatch pass: claims, leases, retries, bounces and stops, on both databases,
delivering to a real SMTP server on loopback."""

from __future__ import annotations

import logging
import threading
from datetime import timedelta

import pytest
from sqlalchemy import update

from service import outbox as outbox_module
from service import subscriptions
from service.models import OutboxMessage, OutboxStatus, Subscriber, SubscriberStatus
from tests.helpers import (
    add_pending,
    get_subscriber,
    link_path,
    outbox,
    run_pass,
    services_of,
    sign_up,
)


@pytest.fixture
def app(smtp_app):
    return smtp_app


@pytest.fixture
def client(app):
    return app.test_client()


def subjects(smtp) -> list[str]:
    return [r.message["Subject"] for r in smtp.received]


def set_due(app, when) -> None:
    with services_of(app).database.begin() as session:
        session.execute(update(OutboxMessage).values(due_at=when))


def test_confirmation_email_is_complete(app, client, smtp):
    sign_up(client, "reader@example.com", first_name="Ann")
    report = run_pass(app)
    assert (report.claimed, report.sent) == (1, 1)
    [received] = smtp.handler.wait_for(1)
    message = received.message
    assert received.rcpt_tos == ["reader@example.com"]
    assert message["From"] == "Low Back Relief <hello@newsletter.test>"
    unsubscribe = message["List-Unsubscribe"]
    assert unsubscribe.startswith("<http://newsletter.test/unsubscribe/") and unsubscribe.endswith(
        ">"
    )
    assert message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    text, html = received.part("plain"), received.part("html")
    for part in (text, html):
        assert "12 Test Lane, Testville" in part
        assert "Consult your physician before beginning any exercise program" in part
        assert unsubscribe.strip("<>") in part
        assert "/confirm/" in part
        assert "Ann" not in part  # the confirmation never repeats the name
    row = outbox(app)[0]
    assert row.status is OutboxStatus.SENT
    assert row.sent_at == services_of(app).clock()
    assert row.attempts == 1


@pytest.mark.slow
def test_421_holds_the_queue_without_using_attempts(app, client, smtp, clock):
    for n in range(3):
        sign_up(client, f"r{n}@example.com")
    smtp.faults.mail = "421 4.7.0 Try again later"
    smtp.faults.times = 1
    report = run_pass(app)
    assert (report.sent, report.released) == (0, 3)
    assert report.stopped.startswith("server busy")
    for row in outbox(app):
        assert row.status is OutboxStatus.QUEUED
        assert row.attempts == 0  # the server turned everyone away: no message is to blame
        assert row.due_at == clock() + timedelta(seconds=60)

    clock.advance(seconds=59)
    assert run_pass(app).claimed == 0
    clock.advance(seconds=1)
    assert run_pass(app).sent == 3


def test_relay_denied_stops_delivery_and_bounces_nobody(app, client, smtp):
    sign_up(client, "reader@example.com")
    smtp.faults.rcpt["reader@example.com"] = "554 5.7.1 <reader@example.com>: Relay access denied"
    report = run_pass(app)
    assert report.stopped.startswith("mailer unavailable")
    assert outbox(app)[0].status is OutboxStatus.QUEUED
    assert get_subscriber(app, "reader@example.com").status is SubscriberStatus.PENDING


@pytest.mark.slow
def test_backoff_doubles_and_gives_up_after_the_last_attempt(make_app, smtp, clock):
    app = make_app(MAIL_URL=smtp.url, SEND_MAX_ATTEMPTS=4)
    sign_up(app.test_client(), "reader@example.com")
    smtp.faults.rcpt["reader@example.com"] = "451 4.3.0 Greylisted"
    delays = []
    for _ in range(3):
        run_pass(app)
        row = outbox(app)[0]
        delays.append(row.due_at - clock())
        clock.now = row.due_at
    assert delays == [timedelta(minutes=1), timedelta(minutes=2), timedelta(minutes=4)]
    assert run_pass(app).failed == 1
    row = outbox(app)[0]
    assert row.status is OutboxStatus.FAILED
    assert "gave up after 4 attempts" in row.last_error
    # A temporary failure is no reason to stop mailing the address.
    assert get_subscriber(app, "reader@example.com").status is SubscriberStatus.PENDING


def test_550_bounces_the_address_and_cancels_its_queue(app, client, smtp, clock):
    sign_up(client, "gone@example.com")
    sign_up(client, "fine@example.com")
    clock.advance(hours=2)
    sign_up(client, "gone@example.com")  # a second confirmation, queued behind the first
    smtp.faults.rcpt["gone@example.com"] = "550 5.1.1 No such user here"
    report = run_pass(app)
    assert (report.sent, report.bounced, report.cancelled) == (1, 1, 1)
    rows = outbox(app)
    assert [r.status for r in rows] == [
        OutboxStatus.FAILED,
        OutboxStatus.SENT,
        OutboxStatus.CANCELLED,
    ]
    assert "No such user" in rows[0].last_error
    gone = get_subscriber(app, "gone@example.com")
    assert gone.status is SubscriberStatus.BOUNCED
    assert gone.bounced_at == clock()
    assert [r.rcpt_tos for r in smtp.received] == [["fine@example.com"]]


def test_dropped_connection_retries_that_message_and_carries_on(app, client, smtp):
    for n in range(3):
        sign_up(client, f"r{n}@example.com")
    smtp.faults.drop_at_data = True
    smtp.faults.times = 1
    report = run_pass(app)
    assert (report.sent, report.retried) == (2, 1)
    assert [r.status for r in outbox(app)] == [
        OutboxStatus.QUEUED,
        OutboxStatus.SENT,
        OutboxStatus.SENT,
    ]


@pytest.mark.slow
@pytest.mark.parametrize("fault", ["auth", "down"])
def test_mailer_unavailable_stops_the_pass_and_keeps_everything(
    make_app, smtp, clock, caplog, fault
):
    from tests.smtp_server import SMTPServer, free_port

    if fault == "auth":
        server = SMTPServer(credentials=("owner", "right")).__enter__()
        url = f"smtp://owner:wrong@127.0.0.1:{server.port}"
    else:
        server = None
        url = f"smtp://127.0.0.1:{free_port()}?timeout=2"
    try:
        app = make_app(MAIL_URL=url)
        client = app.test_client()
        for n in range(3):
            sign_up(client, f"r{n}@example.com")
        with caplog.at_level(logging.ERROR, logger="service.dispatch"):
            report = run_pass(app)
        assert report.sent == 0 and report.released == 3
        assert report.stopped.startswith("mailer unavailable")
        assert "MAIL DELIVERY IS STOPPED" in caplog.text
        for row in outbox(app):
            assert row.status is OutboxStatus.QUEUED
            assert row.attempts == 0  # not the message's fault: no attempt is used up
            assert row.due_at == clock() + timedelta(minutes=1)
        assert all(
            get_subscriber(app, f"r{n}@example.com").status is SubscriberStatus.PENDING
            for n in range(3)
        )
    finally:
        if server is not None:
            server.__exit__(None, None, None)


class UnsubscribingMailer:
    """Delivers through the real mailer; after the first message, another subscriber leaves."""

    def __init__(self, inner, app, leaver_email):
        self.inner, self.app, self.leaver_email = inner, app, leaver_email
        self.sent = 0

    def send(self, message):
        self.inner.send(message)
        self.sent += 1
        if self.sent == 1:
            services = services_of(self.app)
            leaver = get_subscriber(self.app, self.leaver_email)
            with services.database.begin() as session:
                subscriptions.unsubscribe(session, leaver.id, via="test", now=services.clock())

    def close(self):
        self.inner.close()


def test_unsubscribe_between_claim_and_send_stops_the_claimed_email(app, client, smtp):
    sign_up(client, "stays@example.com")
    sign_up(client, "leaves@example.com")
    services = services_of(app)
    mailer = UnsubscribingMailer(services.make_mailer(), app, "leaves@example.com")
    report = services.make_dispatcher("w").drain(mailer, clock=services.clock)
    mailer.close()
    assert report.claimed == 2  # both were claimed in one batch
    assert (report.sent, report.cancelled) == (1, 1)
    assert [r.rcpt_tos for r in smtp.received] == [["stays@example.com"]]
    assert outbox(app)[1].status is OutboxStatus.CANCELLED


def test_a_lapsed_lease_lets_another_scheduler_take_over(app, client, smtp, clock):
    sign_up(client, "reader@example.com")
    services = services_of(app)
    with services.database.begin() as session:  # scheduler A claims, then dies
        [claimed] = outbox_module.claim(
            session, worker="A", now=clock(), limit=10, lease=timedelta(minutes=5)
        )
    assert run_pass(app, worker="B").claimed == 0  # the lease holds
    clock.advance(minutes=5, seconds=1)
    assert run_pass(app, worker="B").sent == 1
    with services.database.begin() as session:  # A wakes up: its claim is gone
        assert not outbox_module.mark_sent(session, claimed.id, worker="A", now=clock())
    row = outbox(app)[0]
    assert row.status is OutboxStatus.SENT
    assert row.attempts == 2


def test_a_row_that_keeps_crashing_its_scheduler_is_given_up(make_app, smtp, clock):
    app = make_app(MAIL_URL=smtp.url, SEND_MAX_ATTEMPTS=2)
    sign_up(app.test_client(), "reader@example.com")
    services = services_of(app)
    for worker in ("A", "B"):
        with services.database.begin() as session:
            outbox_module.claim(
                session, worker=worker, now=clock(), limit=1, lease=timedelta(minutes=5)
            )
        clock.advance(minutes=6)
    report = run_pass(app)
    assert (report.sent, report.failed) == (0, 1)
    assert outbox(app)[0].status is OutboxStatus.FAILED
    assert smtp.received == []


@pytest.mark.slow
def test_two_dispatchers_at_once_send_every_row_exactly_once(app, smtp):
    services = services_of(app)
    add_pending(app, 120)
    reports = {}

    def drain(worker: str) -> None:
        dispatcher = services.make_dispatcher(worker)
        dispatcher.policy = type(dispatcher.policy)(batch_size=7)
        mailer = services.make_mailer()
        try:
            reports[worker] = dispatcher.drain(mailer, clock=services.clock)
        finally:
            mailer.close()

    threads = [threading.Thread(target=drain, args=(w,)) for w in ("A", "B")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    received = smtp.handler.wait_for(120)
    recipients = [r.rcpt_tos[0] for r in received]
    assert len(recipients) == 120
    assert len(set(recipients)) == 120
    assert reports["A"].sent + reports["B"].sent == 120
    assert all(r.status is OutboxStatus.SENT for r in outbox(app))


def test_stop_hands_the_rest_of_the_claim_back(app, client, smtp, clock):
    for n in range(4):
        sign_up(client, f"r{n}@example.com")
    services = services_of(app)
    stop = threading.Event()

    class StopAfterFirst:
        def __init__(self, inner):
            self.inner = inner

        def send(self, message):
            self.inner.send(message)
            stop.set()

        def close(self):
            self.inner.close()

    report = services.make_dispatcher("w").drain(
        StopAfterFirst(services.make_mailer()), clock=services.clock, stop=stop
    )
    assert (report.sent, report.released) == (1, 3)
    rows = outbox(app)
    assert [r.status for r in rows] == [OutboxStatus.SENT] + [OutboxStatus.QUEUED] * 3
    assert all(r.attempts == 0 and r.due_at == clock() for r in rows[1:])
    assert run_pass(app).sent == 3


@pytest.mark.slow
def test_a_broken_template_keeps_the_email_until_it_is_fixed(make_app, smtp, tmp_path, clock):
    content = tmp_path / "content"
    (content / "emails").mkdir(parents=True)
    broken = content / "emails" / "confirm.txt"
    broken.write_text(
        '{% extends "layout.txt" %}{% block subject %}{{ no_such_variable }}{% endblock %}'
    )
    app = make_app(MAIL_URL=smtp.url, CONTENT_DIR=str(content))
    sign_up(app.test_client(), "reader@example.com")
    report = run_pass(app)
    assert report.retried == 1 and "no_such_variable" in report.errors[0]
    assert outbox(app)[0].status is OutboxStatus.QUEUED

    broken.unlink()  # the owner fixes it; a restart picks the shipped template up again
    fixed = make_app(MAIL_URL=smtp.url, CONTENT_DIR=str(content))
    clock.advance(minutes=1)
    assert run_pass(fixed).sent == 1


def test_owner_templates_override_the_shipped_ones(make_app, smtp, tmp_path):
    content = tmp_path / "content" / "emails"
    content.mkdir(parents=True)
    (content / "confirm.txt").write_text(
        '{% extends "layout.txt" %}{% block subject %}Bitte bestätigen{% endblock %}'
        "{% block body %}Klick: {{ confirm_url }}{% endblock %}"
    )
    app = make_app(MAIL_URL=smtp.url, CONTENT_DIR=str(tmp_path / "content"))
    sign_up(app.test_client(), "reader@example.com")
    run_pass(app)
    [received] = smtp.handler.wait_for(1)
    assert received.message["Subject"] == "Bitte bestätigen"
    assert "Klick: http://newsletter.test/confirm/" in received.part("plain")
    assert "Yes, send me the guide" in received.part("html")  # the shipped HTML part


class RecordingMailer:
    """The real mailer, noting every message handed to it (delivered or not)."""

    def __init__(self, inner, before_send=None):
        self.inner, self.before_send = inner, before_send
        self.handed: list = []

    def send(self, message):
        self.handed.append(message)
        if self.before_send is not None:
            self.before_send(message)
        self.inner.send(message)

    def close(self):
        self.inner.close()


def drain_with(app, mailer, worker="w"):
    services = services_of(app)
    try:
        return services.make_dispatcher(worker).drain(mailer, clock=services.clock)
    finally:
        mailer.close()


def test_message_id_is_the_same_on_every_attempt(app, client, smtp, clock):
    sign_up(client, "reader@example.com")
    smtp.faults.drop_at_data = True
    smtp.faults.times = 1
    first = RecordingMailer(services_of(app).make_mailer())
    assert drain_with(app, first).retried == 1
    clock.advance(minutes=1)
    second = RecordingMailer(services_of(app).make_mailer())
    assert drain_with(app, second).sent == 1
    ids = [m.message_id for m in first.handed + second.handed]
    assert len(ids) == 2 and ids[0] == ids[1]
    assert smtp.handler.wait_for(1)[0].message["Message-ID"] == ids[0]
    assert ids[0].endswith("@newsletter.test>")


def test_nothing_is_sent_to_unconfirmed_addresses_but_the_confirmation(app, client, smtp):
    sign_up(client, "pending@example.com")
    run_pass(app)
    subscriber = get_subscriber(app, "pending@example.com")
    services = services_of(app)
    with services.database.begin() as session:
        outbox_module.enqueue(
            session,
            session.merge(subscriber),
            kind="welcome",
            template="welcome",
            now=services.clock(),
        )
    report = run_pass(app)
    assert (report.sent, report.cancelled) == (0, 1)
    assert subjects(smtp) == ["Please confirm your email to get the glute guide"]


@pytest.mark.slow
def test_whole_path_through_real_smtp(app, client, smtp, clock):
    """Sign up, confirm from the email, get the guide, unsubscribe by one-click header."""
    sign_up(client, "reader@example.com", first_name="Ann", time_zone="America/Vancouver")
    run_pass(app)
    confirm = link_path(smtp.handler.wait_for(1)[0].part("plain"), "/confirm/")
    assert client.get(confirm).status_code == 200
    assert client.post(confirm).status_code == 303
    clock.advance(seconds=5)
    run_pass(app)
    welcome = smtp.handler.wait_for(2)[1]
    assert welcome.message["Subject"] == "Your Glute-Strengthening Guide is here"
    assert "Hi Ann," in welcome.part("plain")
    download = client.get(link_path(welcome.part("plain"), "/download/"))
    assert download.status_code == 200 and download.data.startswith(b"%PDF-")
    one_click = (
        welcome.message["List-Unsubscribe"].strip("<>").removeprefix("http://newsletter.test")
    )
    response = app.test_client().post(one_click, data={"List-Unsubscribe": "One-Click"})
    assert response.status_code == 200
    assert get_subscriber(app, "reader@example.com").status is SubscriberStatus.UNSUBSCRIBED
    clock.advance(hours=2)
    sign_up(client, "reader@example.com")  # even a new request only asks to confirm again
    run_pass(app)
    assert subjects(smtp)[-1] == "Please confirm your email to get the glute guide"


def test_a_batch_that_outlives_its_lease_never_sends_a_row_twice(make_app, smtp, clock):
    """Scheduler A's batch is slow: its lease on the second row lapses while the first is
    being sent, and B takes the second row over. A must then skip it: sent once."""
    app = make_app(MAIL_URL=smtp.url, SEND_LEASE_SECONDS=60, SMTP_TIMEOUT_SECONDS=5)
    client = app.test_client()
    for n in range(2):
        sign_up(client, f"r{n}@example.com")
    claim_time = [clock()]

    def a_clock():
        if claim_time:  # the claim happens now; A reaches its first row 30 s later
            claimed = claim_time.pop()
            clock.advance(seconds=30)
            return claimed
        return clock()

    def slow_first_send(message):
        if message.to == "r0@example.com":
            clock.advance(seconds=31)  # now past the claim's lease, not past r0's renewal
            assert run_pass(app, worker="B").sent == 1  # B takes the lapsed second row

    services = services_of(app)
    mailer = RecordingMailer(services.make_mailer(), slow_first_send)
    report = services.make_dispatcher("A").drain(mailer, clock=a_clock)
    mailer.close()
    assert (report.sent, report.lost) == (1, 1)
    recipients = sorted(r.rcpt_tos[0] for r in smtp.handler.wait_for(2))
    assert recipients == ["r0@example.com", "r1@example.com"]
    assert all(r.status is OutboxStatus.SENT for r in outbox(app))


def test_one_bad_message_does_not_stall_the_pass(app, client, smtp):
    for n in range(3):
        sign_up(client, f"r{n}@example.com")

    def explode_on_the_first(message):
        if message.to == "r0@example.com":
            raise ValueError("something unforeseen")

    report = drain_with(app, RecordingMailer(services_of(app).make_mailer(), explode_on_the_first))
    assert (report.sent, report.retried) == (2, 1)
    rows = outbox(app)
    assert rows[0].status is OutboxStatus.QUEUED and "something unforeseen" in rows[0].last_error
    assert [r.status for r in rows[1:]] == [OutboxStatus.SENT, OutboxStatus.SENT]


def test_unsubscribing_while_the_email_is_on_the_wire_records_it_as_sent(app, client, smtp):
    sign_up(client, "reader@example.com")

    def unsubscribe_mid_send(message):
        services = services_of(app)
        with services.database.begin() as session:
            subscriptions.unsubscribe(session, 1, via="test", now=services.clock())

    report = drain_with(app, RecordingMailer(services_of(app).make_mailer(), unsubscribe_mid_send))
    assert report.sent == 1
    assert outbox(app)[0].status is OutboxStatus.SENT  # what happened, not what was wished
    assert get_subscriber(app, "reader@example.com").status is SubscriberStatus.UNSUBSCRIBED


def test_a_broken_template_uses_up_no_attempts(make_app, smtp, tmp_path, clock):
    content = tmp_path / "content" / "emails"
    content.mkdir(parents=True)
    (content / "confirm.txt").write_text(
        '{% extends "layout.txt" %}{% block subject %}{{ 1 + "a" }}{% endblock %}'
    )
    app = make_app(MAIL_URL=smtp.url, CONTENT_DIR=str(tmp_path / "content"))
    sign_up(app.test_client(), "reader@example.com")
    for _ in range(12):
        assert run_pass(app).retried == 1
        clock.advance(minutes=1)
    row = outbox(app)[0]
    assert (row.status, row.attempts) == (OutboxStatus.QUEUED, 0)
    assert "TypeError" in row.last_error


def test_the_heartbeat_is_written_after_every_batch(make_app, smtp, clock):
    import threading

    from scheduler.__main__ import tick
    from service import health

    app = make_app(MAIL_URL=smtp.url, SEND_BATCH_SIZE=1)
    client = app.test_client()
    for n in range(3):
        sign_up(client, f"r{n}@example.com")
    services = services_of(app)
    start = clock()

    def ticking_clock():
        return clock.advance(seconds=10)

    tick(
        services,
        services.make_dispatcher("w"),
        started_at=start,
        clock=ticking_clock,
        stop=threading.Event(),
    )
    with services.database.read() as session:
        last = health.last_tick(session)
    # One beat before the pass and one after each of the three batches.
    assert last > start + timedelta(seconds=60)


def test_the_hourly_limit_holds_mail_back_until_the_hour_has_passed(make_app, smtp, clock):
    app = make_app(MAIL_URL=smtp.url, SEND_RATE_PER_HOUR=3)
    client = app.test_client()
    for n in range(5):
        sign_up(client, f"r{n}@example.com")
    report = run_pass(app)
    assert report.sent == 3 and report.stopped == "hourly sending limit reached"
    clock.advance(minutes=59)
    assert run_pass(app).sent == 0
    clock.advance(minutes=1, seconds=1)
    assert run_pass(app).sent == 2
    assert [r.status for r in outbox(app)] == [OutboxStatus.SENT] * 5


def test_the_per_second_limit_spaces_the_emails(app, client, smtp):
    from service.dispatch import Pacer

    for n in range(5):
        sign_up(client, f"r{n}@example.com")
    moment = [100.0]
    slept: list[float] = []

    def sleep(seconds: float) -> None:
        slept.append(round(seconds, 6))
        moment[0] += seconds

    pacer = Pacer(4, monotonic=lambda: moment[0], sleep=sleep)
    services = services_of(app)
    mailer = services.make_mailer()
    report = services.make_dispatcher("w").drain(mailer, clock=services.clock, pacer=pacer)
    mailer.close()
    assert report.sent == 5
    assert slept == [0.25] * 4  # the first goes at once, then one every quarter second


def test_a_database_error_on_the_next_row_keeps_the_last_email_recorded(
    app, client, smtp, monkeypatch
):
    """The outcome of an email is committed with the next row's lease renewal; if that
    renewal fails, the outcome must still be committed, or the email goes out twice."""
    for n in range(2):
        sign_up(client, f"r{n}@example.com")
    calls = []
    real_renew = outbox_module.renew_claim

    def failing_second_renewal(*args, **kwargs):
        calls.append(args[1])
        if len(calls) == 2:
            raise RuntimeError("the database went away")
        return real_renew(*args, **kwargs)

    monkeypatch.setattr(outbox_module, "renew_claim", failing_second_renewal)
    with pytest.raises(RuntimeError, match="went away"):
        run_pass(app)
    rows = outbox(app)
    assert rows[0].status is OutboxStatus.SENT  # delivered, and recorded as such
    assert rows[1].status is OutboxStatus.SENDING  # its lease will bring it back
    assert [r.rcpt_tos for r in smtp.handler.wait_for(1)] == [["r0@example.com"]]


@pytest.mark.slow
def test_with_a_pace_each_email_is_recorded_before_the_wait(app, client, smtp):
    from service.dispatch import Pacer

    for n in range(2):
        sign_up(client, f"r{n}@example.com")
    statuses_while_waiting = []

    def sleep(seconds: float) -> None:
        statuses_while_waiting.append([r.status for r in outbox(app)])

    pacer = Pacer(1, monotonic=lambda: 0.0, sleep=sleep)
    services = services_of(app)
    mailer = services.make_mailer()
    services.make_dispatcher("w").drain(mailer, clock=services.clock, pacer=pacer)
    mailer.close()
    assert statuses_while_waiting == [[OutboxStatus.SENT, OutboxStatus.SENDING]]


def test_an_email_of_a_kind_this_release_does_not_know_waits(app, smtp, clock):
    """A row written by a newer release (a kind not in service.kinds) is kept, its attempts
    untouched, instead of being sent by guesswork or thrown away."""
    sign_up(app.test_client(), "reader@example.com")
    with services_of(app).database.begin() as session:
        session.execute(update(OutboxMessage).values(kind="from_a_newer_release"))
    report = run_pass(app)
    assert (report.sent, report.retried, report.cancelled) == (0, 1, 0)
    assert "from_a_newer_release" in report.errors[0]
    (row,) = outbox(app)
    assert (row.status, row.attempts) == (OutboxStatus.QUEUED, 0)
    with services_of(app).database.begin() as session, pytest.raises(LookupError):
        outbox_module.enqueue(
            session,
            session.get(Subscriber, row.subscriber_id),
            "halfway",
            template="confirm",
            now=clock(),
        )
