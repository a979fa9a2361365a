"""Reading the bounce mailbox: N delivery reports in a real Dovecot's INBOX, handled by one
poll (fetch, parse, record, move), measured against fetching them alone.

    .venv/bin/python bench/bounce_mailbox.py [--messages 1000] [--database sqlite|postgresql|both]

Dovecot (Debian packages dovecot-imapd, dovecot-pop3d) is started on loopback with a
throwaway configuration, as the tests do (tests/imap_server.py). Each of N readers was
sent one email; each gets a hard-bounce DSN (half name the email by its Message-ID in the
returned headers, half by the VERP return path they come back to), appended to INBOX
before the clock starts. Prints, per database:
- fetch/s: the same messages fetched over IMAPS with imaplib alone (the floor of a poll);
- parse/s: service.feedback.reports.parse alone, in memory;
- poll/s: one BounceMailbox.poll, moving each message to Processed once recorded;
and checks every reader ended up bounced, each event tied to its outbox row, INBOX empty.
`run()` is what bench/feedback.py calls.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import sqlalchemy as sa

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from common import fresh_database  # noqa: E402

from service import outbox as outbox_module  # noqa: E402
from service.config import load_settings  # noqa: E402
from service.feedback.mailbox import BounceMailbox  # noqa: E402
from service.feedback.reports import parse  # noqa: E402
from service.models import (  # noqa: E402
    FeedbackEvent,
    OutboxMessage,
    OutboxStatus,
    Subscriber,
    SubscriberStatus,
)
from service.services import Services  # noqa: E402
from tests.imap_server import DovecotServer, dovecot_available  # noqa: E402

SENT = datetime(2026, 11, 24, 15, 0, tzinfo=UTC)
POLLED = datetime(2026, 11, 24, 18, 0, tzinfo=UTC)

DSN = """\
Return-Path: <>
Delivered-To: {to}
Date: Tue, 24 Nov 2026 16:00:01 +0000
From: MAILER-DAEMON@mx.example.com (Mail Delivery System)
Subject: Undelivered Mail Returned to Sender
To: {to}
Auto-Submitted: auto-replied
MIME-Version: 1.0
Content-Type: multipart/report; report-type=delivery-status; boundary="b{n}"
Message-Id: <bounce-{n}@mx.example.com>

--b{n}
Content-Type: text/plain; charset=us-ascii

This is the mail system at host mx.example.com.

I'm sorry to have to inform you that your message could not
be delivered to one or more recipients.

<{address}>: host mailstore.example.com[198.51.100.7] said: 550 5.1.1
    <{address}>: Recipient address rejected: User unknown

--b{n}
Content-Type: message/delivery-status

Reporting-MTA: dns; mx.example.com

Final-Recipient: rfc822; {address}
Action: failed
Status: 5.1.1
Diagnostic-Code: smtp; 550 5.1.1 <{address}>: Recipient address rejected: User unknown

--b{n}
Content-Type: text/rfc822-headers

From: Low Back Relief <hello@news.example.com>
To: {address}
Subject: Day 2: the bridge
Date: Tue, 24 Nov 2026 15:00:00 +0000
{message_id_line}
--b{n}--
"""


def readers(services: Services, count: int) -> list[bytes]:
    """`count` readers, each sent one email; the DSN each email comes back as."""
    with services.database.begin() as session:
        subscribers = [
            Subscriber(
                email=f"r{n}@example.com",
                email_key=f"r{n}@example.com",
                status=SubscriberStatus.CONFIRMED,
                time_zone="UTC",
                source="bench",
                created_at=SENT,
            )
            for n in range(count)
        ]
        session.add_all(subscribers)
        session.flush()
        for subscriber in subscribers:
            outbox_module.enqueue(session, subscriber, "confirm", template="confirm", now=SENT)
        session.execute(sa.update(OutboxMessage).values(status=OutboxStatus.SENT, sent_at=SENT))
    with services.database.read() as session:
        rows = session.execute(
            sa.select(OutboxMessage.id, OutboxMessage.to_address, OutboxMessage.created_at)
        ).all()
    ids, messages = services.message_ids, []
    for n, (row_id, address, created_at) in enumerate(rows):
        by_verp = n % 2 == 1
        to = (
            ids.return_path("bounces+{token}@news.example.com", row_id, created_at)
            if by_verp
            else "hello@news.example.com"
        )
        line = "" if by_verp else f"Message-ID: {ids.message_id(row_id, created_at)}\n"
        messages.append(DSN.format(n=n, to=to, address=address, message_id_line=line).encode())
    return messages


def fetch_alone(server: DovecotServer, account: tuple[str, str]) -> float:
    """Messages/s for fetching INBOX with imaplib alone, read-only."""
    client = server.imap(*account)
    started = time.perf_counter()
    client.select("INBOX", readonly=True)
    _, data = client.uid("SEARCH", "ALL")
    uids = data[0].split()
    for start in range(0, len(uids), 100):
        client.uid("FETCH", b",".join(uids[start : start + 100]), "(UID BODY.PEEK[])")
    elapsed = time.perf_counter() - started
    client.logout()
    return len(uids) / elapsed


def run(database: str, count: int, server: DovecotServer, workdir: Path) -> dict[str, object]:
    """One measurement: the figures and the check, for bench/feedback.py too."""
    url = fresh_database(database, workdir, "newsletter_bench_mailbox")
    services = Services.from_settings(
        load_settings(
            {
                "APP_ENV": "testing",
                "SECRET_KEY": "bench-secret-key-long-enough-1234",
                "DATABASE_URL": url,
                "INSTANCE_DIR": str(workdir / "instance"),
                "BASE_URL": "https://news.example.com",
                "MAIL_FROM": "Low Back Relief <hello@news.example.com>",
                "LOG_LEVEL": "WARNING",
            },
            environ={},
        )
    )
    try:
        messages = readers(services, count)
        account = server.add_user()
        server.append(*account, messages)
        fetch_rate = fetch_alone(server, account)

        started = time.perf_counter()
        for raw in messages:
            parse(raw)
        parse_rate = count / (time.perf_counter() - started)

        mailbox = BounceMailbox.from_settings(
            server.url("imaps", *account), "move:Processed", ssl_context=server.ssl_context()
        )
        started = time.perf_counter()
        report = mailbox.poll(services.database, services.feedback, now=POLLED)
        poll_rate = count / (time.perf_counter() - started)

        with services.database.read() as session:
            bounced = session.scalar(
                sa.select(sa.func.count())
                .select_from(Subscriber)
                .where(Subscriber.status == SubscriberStatus.BOUNCED)
            )
            tied = session.scalar(
                sa.select(sa.func.count(sa.distinct(FeedbackEvent.outbox_id))).where(
                    FeedbackEvent.outbox_id.is_not(None)
                )
            )
        left = len(server.folder(*account))
        ok = (report.recorded, bounced, tied, left) == (count, count, count, 0)
        check = (
            "all bounced, each tied to its email"
            if ok
            else f"recorded {report.recorded}, bounced {bounced}, tied {tied}, left {left}"
        )
        return {
            "messages": count,
            "fetch_per_second": fetch_rate,
            "parse_per_second": parse_rate,
            "poll_per_second": poll_rate,
            "ok": ok,
            "check": check,
        }
    finally:
        services.database.dispose()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--messages", type=int, default=1000)
    parser.add_argument("--database", choices=["sqlite", "postgresql", "both"], default="both")
    args = parser.parse_args()
    databases = ["sqlite", "postgresql"] if args.database == "both" else [args.database]
    return report(databases, args.messages)


def report(databases: list[str], messages: int) -> int:
    """Run the poll benchmark on each database and print its figures; the exit status."""
    why = dovecot_available()
    if why:
        print(f"Dovecot is needed: {why}")
        return 2
    print(f"{messages} delivery reports in INBOX; {os.cpu_count()} CPUs\n")
    print(f"{'database':<12}{'fetch/s':>10}{'parse/s':>10}{'poll/s':>10}  check")
    workdir = Path(tempfile.mkdtemp(prefix="mailbox-bench-"))
    failed = False
    try:
        with DovecotServer() as server:
            for database in databases:
                run_dir = workdir / database
                run_dir.mkdir()
                figures = run(database, messages, server, run_dir)
                failed = failed or not figures["ok"]
                print(
                    f"{database:<12}{figures['fetch_per_second']:>10.0f}"
                    f"{figures['parse_per_second']:>10.0f}{figures['poll_per_second']:>10.0f}"
                    f"  {figures['check']}"
                )
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
