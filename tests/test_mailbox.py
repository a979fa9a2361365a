"""service.feedback.mailbox against a real Dovecot (IMAP and POP3 over TLS), on both
databases: each corpus message appended to INBOX, one poll handles them all, a second
changes nothing; the scheduler's job and `flask bounces receive`."""

from __future__ import annotations

import logging
import secrets
import socket
import threading
from pathlib import Path

import pytest
from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError

from scheduler.bounces import MailboxJob, mailbox_job
from service import outbox as outbox_module
from service.feedback import mailbox_sessions
from service.feedback.mailbox import (
    AfterHandling,
    BounceMailbox,
    MailboxAddress,
    MailboxError,
    PollReport,
)
from service.models import (
    FeedbackEvent,
    FeedbackType,
    OutboxMessage,
    OutboxStatus,
    SubscriberStatus,
)
from tests.conftest import missing
from tests.helpers import (
    add_pending,
    get_subscriber,
    make_subscriber,
    outbox,
    run_pass,
    services_of,
)
from tests.imap_server import DovecotServer, dovecot_available
from tests.test_scheduler import run_scheduler, scheduler_env

CORPUS = Path(__file__).parent / "data" / "bounces"
# The outbox rows the corpus's marks name, in the order they are made (ids 1, 2, ...).
READERS = [
    "gone@example.com",
    "full@example.com",
    "reader@example.com",  # wrote the auto-reply
    "complainer@example.com",
    "postfix-gone@example.com",
    "exchange-gone@contoso.example",
    "gmail-gone@gmail.example",
    "gmail-old@gmail.example",
    "exim-gone@example.net",
    "qmail-gone@example.org",
    "several-a@example.com",
    "several-b@example.org",
]
BOUNCED = {
    "gone@example.com",
    "postfix-gone@example.com",
    "exchange-gone@contoso.example",
    "gmail-gone@gmail.example",
    "gmail-old@gmail.example",
    "exim-gone@example.net",
    "qmail-gone@example.org",
}
# dsn_several quotes nothing of ours: anyone could have written it, so it changes nothing.
STILL_CONFIRMED = {
    "full@example.com",
    "reader@example.com",
    "several-a@example.com",
    "several-b@example.org",
}
# Reports: one per file, two in dsn_several; none in the auto-reply and the junk.
ALL_REPORTS = 11


@pytest.fixture(scope="session")
def dovecot():
    why = dovecot_available()
    if why:
        missing("Dovecot", "REQUIRE_IMAP", why)
    with DovecotServer() as server:
        yield server


@pytest.fixture
def account(dovecot):
    return dovecot.add_user()


@pytest.fixture
def readers(app, clock):
    """A confirmed reader for each corpus address, each sent one email (outbox ids 1..12)."""
    services = services_of(app)
    with services.database.begin() as session:
        for address in READERS:
            subscriber = make_subscriber(
                session, address, now=clock(), status=SubscriberStatus.CONFIRMED
            )
            outbox_module.enqueue(session, subscriber, "confirm", template="confirm", now=clock())
        session.execute(update(OutboxMessage).values(status=OutboxStatus.SENT, sent_at=clock()))
    rows = outbox(app)
    assert [(row.id, row.to_address) for row in rows] == list(enumerate(READERS, start=1))
    return rows


def corpus(*names: str) -> list[bytes]:
    return [(CORPUS / name).read_bytes() for name in names]


def every_file() -> list[str]:
    return sorted(p.name for p in CORPUS.glob("*.eml"))


def poll(app, mailbox: BounceMailbox) -> PollReport:
    services = services_of(app)
    return mailbox.poll(services.database, services.feedback, now=services.clock())


def mailbox_for(dovecot, account, scheme="imaps", after="move:Processed") -> BounceMailbox:
    return BounceMailbox.from_settings(
        dovecot.url(scheme, *account), after, ssl_context=dovecot.ssl_context()
    )


def statuses(app) -> dict[str, SubscriberStatus]:
    return {address: get_subscriber(app, address).status for address in READERS}


def events(app) -> list[FeedbackEvent]:
    with services_of(app).database.read() as session:
        return list(session.scalars(select(FeedbackEvent).order_by(FeedbackEvent.id)))


@pytest.mark.slow
def test_one_poll_handles_every_kind_and_a_second_changes_nothing(app, readers, dovecot, account):
    dovecot.append(*account, corpus(*every_file()))
    mailbox = mailbox_for(dovecot, account)

    report = poll(app, mailbox)
    assert (report.read, report.recorded, report.duplicates) == (12, ALL_REPORTS, 0)
    assert (report.not_bounces, report.unparseable, report.filed) == (1, 1, 11)

    after = statuses(app)
    assert {a for a, s in after.items() if s is SubscriberStatus.BOUNCED} == BOUNCED
    assert after["complainer@example.com"] is SubscriberStatus.UNSUBSCRIBED
    assert {a for a, s in after.items() if s is SubscriberStatus.CONFIRMED} == STILL_CONFIRMED
    by_address = {event.email: event for event in events(app)}
    assert len(by_address) == ALL_REPORTS
    for address, event in by_address.items():
        if address.startswith("several-"):
            assert (event.outbox_id, event.outcome) == (None, "not verified"), address
        else:  # by Message-ID or by VERP
            assert event.outbox_id == READERS.index(address) + 1, address
        assert event.source == "mailbox"
        assert event.payload.startswith(("Return-Path", "Delivered-To", "Return-path"))
    assert by_address["full@example.com"].type is FeedbackType.SOFT
    assert by_address["complainer@example.com"].type is FeedbackType.COMPLAINT

    # Only the junk is left in INBOX, unread, marked so the next poll passes it by.
    [junk] = dovecot.folder(*account)
    assert b"exclusive offer" in junk
    assert len(dovecot.folder(*account, "Processed")) == 11
    client = dovecot.imap(*account)
    client.select("INBOX", readonly=True)
    _, flags = client.fetch("1", "(FLAGS)")
    client.logout()
    assert b"NewsletterUnparseable" in flags[0] and b"\\Seen" not in flags[0]

    again = poll(app, mailbox)
    assert vars(again) == vars(PollReport())
    assert statuses(app) == after
    assert len(events(app)) == ALL_REPORTS
    # Another process (a restart) does not count the junk again either.
    assert poll(app, mailbox_for(dovecot, account)).read == 0


@pytest.mark.slow
def test_delete_leaves_no_folder_behind(app, readers, dovecot, account):
    dovecot.append(*account, corpus("dsn_hard.eml", "junk.eml", "auto_reply.eml"))
    report = poll(app, mailbox_for(dovecot, account, after="delete"))
    assert (report.recorded, report.filed, report.unparseable) == (1, 2, 1)
    [junk] = dovecot.folder(*account)
    assert b"exclusive offer" in junk
    assert dovecot.folder(*account, "Processed") == []
    assert get_subscriber(app, "gone@example.com").status is SubscriberStatus.BOUNCED


@pytest.mark.slow
def test_a_crash_after_the_commit_records_nothing_twice(
    app, readers, dovecot, account, monkeypatch
):
    dovecot.append(*account, corpus("dsn_hard.eml", "arf_complaint.eml"))

    def cut(self, uids):
        raise ConnectionResetError("connection reset by peer")

    with monkeypatch.context() as patch:
        patch.setattr(mailbox_sessions.ImapSession, "file", cut)
        with pytest.raises(MailboxError, match="connection reset"):
            poll(app, mailbox_for(dovecot, account))
    assert len(events(app)) == 2  # committed before the move failed
    assert len(dovecot.folder(*account)) == 2  # and both still there

    report = poll(app, mailbox_for(dovecot, account))
    assert (report.read, report.recorded, report.duplicates, report.filed) == (2, 0, 2, 2)
    assert len(events(app)) == 2
    assert dovecot.folder(*account) == []


@pytest.mark.slow
def test_a_message_the_database_refuses_is_left_in_place_and_holds_up_no_other(
    app, readers, dovecot, account
):
    dovecot.append(*account, corpus("dsn_hard.eml", "exim_failed.eml", "arf_complaint.eml"))
    services = services_of(app)

    class Refusing:
        """The service's Feedback, refusing what is about exim-gone@example.net."""

        def record(self, session, report, *, now):
            if report.email == "exim-gone@example.net":
                raise IntegrityError("INSERT ...", {}, Exception("value too long"))
            return services.feedback.record(session, report, now=now)

    mailbox = mailbox_for(dovecot, account)
    report = mailbox.poll(services.database, Refusing(), now=services.clock())
    assert (report.read, report.recorded, report.unparseable, report.filed) == (3, 2, 1, 2)
    [left] = dovecot.folder(*account)
    assert b"exim-gone@example.net" in left
    assert {event.email for event in events(app)} == {"gone@example.com", "complainer@example.com"}
    assert poll(app, mailbox).read == 0  # counted once


@pytest.mark.slow
def test_without_move_the_message_is_copied_deleted_and_expunged(
    app, readers, dovecot, account, monkeypatch
):
    dovecot.append(*account, corpus("dsn_hard.eml", "junk.eml"))
    mailbox = mailbox_for(dovecot, account, after="move:Bounced mail")
    real_enter = mailbox_sessions.ImapSession.__enter__

    def without_move(self):
        session = real_enter(self)
        session.capabilities.discard("MOVE")
        return session

    monkeypatch.setattr(mailbox_sessions.ImapSession, "__enter__", without_move)
    assert poll(app, mailbox).filed == 1
    assert len(dovecot.folder(*account, "Bounced mail")) == 1
    assert len(dovecot.folder(*account)) == 1


@pytest.mark.slow
def test_pop3s_with_percent_encoded_credentials(app, readers, dovecot):
    account = dovecot.add_user(f"bounces-{secrets.token_hex(3)}@newsletter.test", "p@ss/w rd%")
    dovecot.append(*account, corpus("dsn_hard.eml", "arf_complaint.eml", "junk.eml"))
    mailbox = mailbox_for(dovecot, account, scheme="pop3s")
    assert "%40" in dovecot.url("pop3s", *account)

    report = poll(app, mailbox)
    assert (report.read, report.recorded, report.unparseable, report.filed) == (3, 2, 1, 2)
    assert get_subscriber(app, "gone@example.com").status is SubscriberStatus.BOUNCED
    assert get_subscriber(app, "complainer@example.com").status is SubscriberStatus.UNSUBSCRIBED
    # POP3 has one folder: move: deletes (the text is kept in the event's payload).
    [junk] = dovecot.folder(*account)
    assert b"exclusive offer" in junk
    assert poll(app, mailbox).read == 0  # the junk is remembered by its UIDL


@pytest.mark.slow
def test_imap_uses_starttls(app, readers, dovecot, account):
    dovecot.append(*account, corpus("dsn_hard.eml"))
    # The test server refuses a login before TLS (disable_plaintext_auth): getting in at
    # all on the plain port means STARTTLS was used.
    report = poll(app, mailbox_for(dovecot, account, scheme="imap"))
    assert report.recorded == 1


class NoStartTLS:
    """An IMAP server that offers no STARTTLS, and notes what the client sends."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.received: list[bytes] = []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        connection, _ = self.listener.accept()
        with connection, connection.makefile("rwb") as stream:
            stream.write(b"* OK IMAP4rev1 ready\r\n")
            stream.flush()
            for line in stream:
                self.received.append(line)
                tag = line.split(b" ", 1)[0]
                if b"CAPABILITY" in line.upper():
                    stream.write(b"* CAPABILITY IMAP4rev1 AUTH=PLAIN LOGIN\r\n")
                stream.write(tag + b" OK done\r\n")
                stream.flush()


def test_imap_without_starttls_is_refused_before_the_password(app):
    server = NoStartTLS()
    mailbox = BounceMailbox.from_settings(
        f"imap://bounces:secret@127.0.0.1:{server.port}/INBOX", "delete"
    )
    with pytest.raises(MailboxError, match="offers no STARTTLS"):
        poll(app, mailbox)
    assert not any(b"secret" in line for line in server.received)


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_a_dead_mailbox_is_a_clear_error(app):
    mailbox = BounceMailbox.from_settings(
        f"imaps://bounces:secret@127.0.0.1:{closed_port()}/INBOX", "move:Processed"
    )
    with pytest.raises(MailboxError) as caught:
        poll(app, mailbox)
    message = str(caught.value)
    assert "connection refused" in message
    assert "imaps://bounces@127.0.0.1" in message and "secret" not in message


@pytest.mark.slow
def test_a_wrong_password_or_an_untrusted_certificate_is_a_clear_error(app, dovecot, account):
    # A server of its own: after a failed login Dovecot makes every login from that
    # address wait a few seconds, and the other tests share this one's.
    with DovecotServer() as own:
        user, _ = own.add_user()
        with pytest.raises(MailboxError, match=r"the server said: .*AUTHENTICATIONFAILED"):
            poll(app, mailbox_for(own, (user, "wrong")))
    untrusted = BounceMailbox.from_settings(dovecot.url("imaps", *account), "delete")
    with pytest.raises(MailboxError, match="certificate is not trusted"):
        poll(app, untrusted)


@pytest.mark.slow
def test_the_scheduler_job_survives_a_dead_mailbox_and_backs_off(smtp_app, clock, caplog, client):
    app = smtp_app
    services = services_of(app)
    services.settings = services.settings.__class__(
        **{
            **vars(services.settings),
            "BOUNCE_MAILBOX_URL": f"imaps://bounces:secret@127.0.0.1:{closed_port()}/INBOX",
            "BOUNCE_MAILBOX_INTERVAL_SECONDS": 60,
        }
    )
    job = mailbox_job(services, clock=clock)
    assert isinstance(job, MailboxJob)
    with caplog.at_level(logging.ERROR, logger="scheduler.bounces"):
        assert job() is None
        assert job() is None  # backing off: not even tried
    [line] = caplog.records
    assert "connection refused" in line.getMessage()
    assert "next try in 120 s" in line.getMessage()
    clock.advance(seconds=120)
    with caplog.at_level(logging.ERROR, logger="scheduler.bounces"):
        job()
    assert "next try in 240 s" in caplog.records[-1].getMessage()
    # Mail goes out all the same.
    client.post("/subscribe", data={"email": "new@example.com"})
    assert run_pass(app).sent == 1


@pytest.mark.slow
def test_the_scheduler_process_sends_mail_and_reads_the_mailbox_apart(
    app, readers, smtp, database_url, tmp_path, dovecot, account
):
    add_pending(app, 1)  # r0@example.com, due now
    dovecot.append(*account, corpus("dsn_hard.eml"))
    env = scheduler_env(
        database_url,
        smtp.url,
        tmp_path,
        BOUNCE_MAILBOX_URL=dovecot.url("imaps", *account) + f"?cafile={dovecot.cafile()}",
        BOUNCE_MAILBOX_AFTER="delete",
    )
    result = run_scheduler(env, "--once", "--now", services_of(app).clock().isoformat())
    assert result.returncode == 0, result.stdout + result.stderr
    assert "sent 1" in result.stdout
    assert get_subscriber(app, "gone@example.com").status is SubscriberStatus.BOUNCED

    # A dead mailbox: one line, and mail goes out all the same.
    services = services_of(app)
    with services.database.begin() as session:
        subscriber = make_subscriber(session, "late@example.com", now=services.clock())
        outbox_module.enqueue(
            session, subscriber, "confirm", template="confirm", now=services.clock()
        )
    env["BOUNCE_MAILBOX_URL"] = f"imaps://bounces:secret@127.0.0.1:{closed_port()}/INBOX"
    result = run_scheduler(env, "--once", "--now", services_of(app).clock().isoformat())
    assert result.returncode == 0, result.stdout + result.stderr
    assert "sent 1" in result.stdout
    output = result.stdout + result.stderr
    assert output.count("bounce mailbox imaps://bounces@127.0.0.1") == 1
    assert "connection refused" in output and "secret" not in output


def test_a_wrong_mailbox_url_is_said_once_and_nothing_polls(app, caplog):
    services = services_of(app)
    services.settings = services.settings.__class__(
        **{**vars(services.settings), "BOUNCE_MAILBOX_URL": "ftp://x@y/"}
    )
    with caplog.at_level(logging.ERROR, logger="scheduler.bounces"):
        assert mailbox_job(services, clock=services.clock) is None
    assert "imaps://, imap:// or pop3s://" in caplog.text


def test_mailbox_urls_and_after_settings():
    address = MailboxAddress.from_url(
        "imaps://bounce%40news.example:p%3Ass%2F@mail.example/Bounces"
    )
    assert (address.user, address.password, address.host, address.port, address.folder) == (
        "bounce@news.example",
        "p:ss/",
        "mail.example",
        993,
        "Bounces",
    )
    assert str(address) == "imaps://bounce@news.example@mail.example:993/Bounces"
    assert MailboxAddress.from_url("imap://u:p@h").port == 143
    assert MailboxAddress.from_url("pop3s://u:p@h?cafile=/etc/ca.pem").cafile == "/etc/ca.pem"
    for wrong in ("pop3://u:p@h", "imaps://h/INBOX", "pop3s://u:p@h/Other", "imaps://u:p@h/Ünï"):
        with pytest.raises(ValueError):
            MailboxAddress.from_url(wrong)
    assert AfterHandling.from_setting("delete").folder is None
    assert AfterHandling.from_setting("move:Processed").folder == "Processed"
    for wrong in ("move:", "archive", ""):
        with pytest.raises(ValueError):
            AfterHandling.from_setting(wrong)
    with pytest.raises(ValueError, match="into the folder that is read"):
        BounceMailbox.from_settings("imaps://u:p@h/Bounces", "move:Bounces")


# --- flask bounces receive --------------------------------------------------------------


def receive(app, raw: bytes):
    return app.test_cli_runner().invoke(args=["bounces", "receive"], input=raw)


def test_bounces_receive_records_a_dsn_from_stdin(app, readers):
    [raw] = corpus("dsn_hard.eml")
    result = receive(app, raw)
    assert result.exit_code == 0, result.output
    assert "recorded: hard for gone@example.com (bounced)" in result.output
    assert get_subscriber(app, "gone@example.com").status is SubscriberStatus.BOUNCED
    [event] = events(app)
    assert event.outbox_id == 1

    again = receive(app, raw)
    assert again.exit_code == 0
    assert "already recorded" in again.output
    assert len(events(app)) == 1


def test_bounces_receive_takes_auto_replies_and_keeps_junk(app, tmp_path):
    [reply, junk] = corpus("auto_reply.eml", "junk.eml")
    result = receive(app, reply)
    assert result.exit_code == 0 and "not a bounce" in result.output
    result = receive(app, junk)
    assert result.exit_code == 0
    [kept] = (tmp_path / "instance" / "unparseable-bounces").iterdir()
    assert kept.read_bytes() == junk
    with services_of(app).database.read() as session:
        assert session.scalar(select(func.count()).select_from(FeedbackEvent)) == 0


def test_bounces_receive_asks_postfix_to_retry_when_the_database_is_down(make_app, tmp_path):
    app = make_app(DATABASE_URL=f"sqlite:///{tmp_path / 'never-migrated.db'}")
    [raw] = corpus("dsn_hard.eml")
    result = receive(app, raw)
    assert result.exit_code == 75
    assert "try again later" in result.output


@pytest.mark.slow
def test_bounces_poll_reads_the_mailbox_with_a_private_ca(make_app, readers, dovecot, account):
    dovecot.append(*account, corpus("dsn_soft.eml"))
    app = make_app(
        BOUNCE_MAILBOX_URL=dovecot.url("imaps", *account) + f"?cafile={dovecot.cafile()}",
        BOUNCE_MAILBOX_AFTER="delete",
    )
    result = app.test_cli_runner().invoke(args=["bounces", "poll"])
    assert result.exit_code == 0, result.output
    assert "read 1, recorded 1" in result.output
    [event] = events(app)
    assert event.outbox_id == 2
