"""Bounces and complaints: the one outcome function every source calls (service.feedback),
on both databases."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import func, select

from service import broadcasts, erasure, outbox
from service.feedback import Report
from service.feedback.outcomes import Outcome
from service.feedback.retention import forget_payloads
from service.models import (
    Broadcast,
    BroadcastStatus,
    FeedbackEvent,
    FeedbackType,
    OutboxMessage,
    OutboxStatus,
    Subscriber,
    SubscriberStatus,
)
from tests.helpers import make_subscriber

HARD, SOFT, COMPLAINT = FeedbackType.HARD, FeedbackType.SOFT, FeedbackType.COMPLAINT


def reader(services, email="reader@example.com", **fields):
    with services.database.begin() as session:
        return make_subscriber(
            session,
            email,
            now=services.clock(),
            status=fields.pop("status", SubscriberStatus.CONFIRMED),
            **fields,
        ).id


def sent_email(services, subscriber_id, *, at=None, kind="sequence", **fields):
    """An outbox row that went out at `at` (default: now)."""
    at = at or services.clock()
    with services.database.begin() as session:
        email = session.get(Subscriber, subscriber_id).email if subscriber_id else "x@example.com"
        row = OutboxMessage(
            subscriber_id=subscriber_id,
            to_address=email,
            kind=kind,
            template=fields.pop("template", "sequence/day1"),
            context=fields.pop("context", {"sequence": "back-pain-tips"}),
            sequence_step=fields.pop("sequence_step", "day1" if kind == "sequence" else None),
            status=OutboxStatus.SENT,
            due_at=at,
            created_at=at - timedelta(seconds=1),
            sent_at=at,
            **fields,
        )
        session.add(row)
        session.flush()
        return row.id, services.message_ids.message_id(row.id, row.created_at)


def queued_email(services, subscriber_id):
    with services.database.begin() as session:
        row = OutboxMessage(
            subscriber_id=subscriber_id,
            to_address="reader@example.com",
            kind="sequence",
            template="sequence/day2",
            context={"sequence": "back-pain-tips"},
            sequence_step="day2",
            status=OutboxStatus.QUEUED,
            due_at=services.clock() + timedelta(days=1),
            created_at=services.clock(),
        )
        session.add(row)
        session.flush()
        return row.id


def record(services, report):
    with services.database.begin() as session:
        return services.feedback.record(session, report, now=services.clock())


def report(key, type_, *, email="reader@example.com", **fields):
    return Report(source="bounce", event_key=key, type=type_, email=email, **fields)


def status_of(services, subscriber_id):
    with services.database.read() as session:
        return session.get(Subscriber, subscriber_id).status


def events(services):
    with services.database.read() as session:
        return list(session.scalars(select(FeedbackEvent).order_by(FeedbackEvent.id)))


def test_a_hard_bounce_marks_the_address_bounced_and_cancels_its_queued_mail(services):
    subscriber = reader(services)
    row_id, message_id = sent_email(services, subscriber)
    waiting = queued_email(services, subscriber)

    done = record(
        services,
        report(
            "b1", HARD, reference=message_id, reason="550 5.1.1 no such user", diagnostic="5.1.1"
        ),
    )

    assert done.outcome is Outcome.BOUNCED
    assert status_of(services, subscriber) is SubscriberStatus.BOUNCED
    with services.database.read() as session:
        assert session.get(OutboxMessage, waiting).status is OutboxStatus.CANCELLED
    (event,) = events(services)
    assert (event.outbox_id, event.kind, event.sequence, event.sequence_step) == (
        row_id,
        "sequence",
        "back-pain-tips",
        "day1",
    )
    assert (event.diagnostic, event.outcome, event.subscriber_id) == (
        "5.1.1",
        "bounced",
        subscriber,
    )


def test_the_same_event_twice_is_recorded_and_acted_on_once(services):
    subscriber = reader(services)
    first = record(services, report("same", COMPLAINT))
    again = record(services, report("same", COMPLAINT))

    assert (first.outcome, again.outcome) == (Outcome.UNSUBSCRIBED, Outcome.DUPLICATE)
    assert len(events(services)) == 1
    assert status_of(services, subscriber) is SubscriberStatus.UNSUBSCRIBED


def test_a_complaint_unsubscribes_and_no_import_brings_the_address_back(services):
    subscriber = reader(services, "Moaner@Example.com")

    done = record(services, report("c1", COMPLAINT, email="moaner@example.com"))

    assert done.outcome is Outcome.UNSUBSCRIBED
    assert status_of(services, subscriber) is SubscriberStatus.UNSUBSCRIBED
    with services.database.read() as session:
        assert erasure.is_suppressed(session, "MOANER@example.com")


def test_a_complaint_from_an_address_not_on_the_list_still_suppresses_it(services):
    done = record(services, report("c2", COMPLAINT, email="stranger@example.com"))

    assert done.outcome is Outcome.SUPPRESSED
    with services.database.read() as session:
        assert erasure.is_suppressed(session, "stranger@example.com")


def test_a_bounce_for_an_address_not_on_the_list_is_kept_and_changes_nothing(services):
    done = record(services, report("u1", HARD, email="nobody@example.com"))

    assert done.outcome is Outcome.UNKNOWN
    (event,) = events(services)
    assert (event.email, event.subscriber_id) == ("nobody@example.com", None)


def test_soft_bounces_count_as_hard_at_the_limit(services, clock):
    subscriber = reader(services)
    outcomes = []
    for n in range(3):
        _, message_id = sent_email(services, subscriber)
        clock.advance(hours=1)
        outcomes.append(record(services, report(f"s{n}", SOFT, reference=message_id)).outcome)
        clock.advance(days=1)

    assert outcomes == [Outcome.SOFT_COUNTED, Outcome.SOFT_COUNTED, Outcome.SOFT_LIMIT]
    assert status_of(services, subscriber) is SubscriberStatus.BOUNCED


def test_an_email_delivered_between_soft_bounces_starts_the_count_again(services, clock):
    subscriber = reader(services)
    for n in range(2):
        _, message_id = sent_email(services, subscriber)
        clock.advance(hours=1)
        record(services, report(f"s{n}", SOFT, reference=message_id))
        clock.advance(days=1)
    sent_email(services, subscriber)  # nothing came back for this one: it got through
    clock.advance(days=1)
    _, message_id = sent_email(services, subscriber)
    clock.advance(hours=1)

    done = record(services, report("s2", SOFT, reference=message_id))

    assert done.outcome is Outcome.SOFT_COUNTED
    assert status_of(services, subscriber) is SubscriberStatus.CONFIRMED


def test_soft_bounces_older_than_the_window_do_not_count(services, clock):
    subscriber = reader(services)
    record(services, report("old1", SOFT))
    record(services, report("old2", SOFT))
    clock.advance(days=16)

    done = record(services, report("new", SOFT))

    assert done.outcome is Outcome.SOFT_COUNTED
    assert status_of(services, subscriber) is SubscriberStatus.CONFIRMED


def test_a_reference_with_a_forged_tag_or_from_another_database_is_not_believed(services):
    subscriber = reader(services)
    row_id, message_id = sent_email(services, subscriber)
    tag = message_id.split(".")[2].split("@")[0]
    forged = message_id.replace(tag, "0" * len(tag))
    elsewhere = services.message_ids.message_id(row_id, datetime(2020, 1, 1, tzinfo=UTC))

    for key, reference in (("f1", forged), ("f2", elsewhere)):
        record(services, report(key, SOFT, email=None, reference=reference))

    assert [event.outbox_id for event in events(services)] == [None, None]
    assert status_of(services, subscriber) is SubscriberStatus.CONFIRMED


def test_a_report_naming_no_email_is_put_down_to_the_last_one_sent(services, clock):
    subscriber = reader(services)
    sent_email(services, subscriber, at=clock() - timedelta(days=2))
    latest, _ = sent_email(services, subscriber, at=clock() - timedelta(hours=3))

    record(services, report("n1", HARD))

    assert events(services)[0].outbox_id == latest


def test_the_smtp_servers_refusal_is_a_feedback_event(smtp_app, smtp):
    from tests.helpers import run_pass, services_of

    services = services_of(smtp_app)
    subscriber = reader(services, "gone@example.com", status=SubscriberStatus.PENDING)
    with services.database.begin() as session:
        outbox.enqueue(
            session, session.get(Subscriber, subscriber), "confirm", now=services.clock()
        )
    smtp.faults.rcpt["gone@example.com"] = "550 5.1.1 No such user here"

    run_pass(smtp_app)

    (event,) = events(services)
    assert (event.source, event.type, event.diagnostic, event.kind) == (
        "smtp",
        HARD,
        "550",
        "confirm",
    )
    assert status_of(services, subscriber) is SubscriberStatus.BOUNCED


def newsletter(services, *, recipients, sent):
    """A sending newsletter with `sent` emails out, to no one on the list."""
    now = services.clock()
    with services.database.begin() as session:
        broadcast = Broadcast(
            subject="News",
            body="Hello",
            status=BroadcastStatus.SENDING,
            created_at=now,
            updated_at=now,
            started_at=now,
            recipients=recipients,
        )
        session.add(broadcast)
        session.flush()
        rows = [
            OutboxMessage(
                subscriber_id=None,
                to_address=f"n{n}@example.com",
                kind="broadcast",
                template="broadcast",
                context={"broadcast_id": broadcast.id},
                status=OutboxStatus.SENT,
                due_at=now,
                created_at=now,
                sent_at=now + timedelta(seconds=n),
                broadcast_id=broadcast.id,
            )
            for n in range(sent)
        ]
        session.add_all(rows)
        session.flush()
        return broadcast.id, [(row.id, row.to_address) for row in rows]


def bounce_all(services, rows, type_=HARD):
    results = [
        record(
            services,
            Report(source="smtp", event_key=f"k{id_}", type=type_, email=to, outbox_id=id_),
        )
        for id_, to in rows
    ]
    return [result.paused_broadcast for result in results]


def broadcast_of(services, broadcast_id):
    with services.database.read() as session:
        return session.get(Broadcast, broadcast_id)


@pytest.mark.slow
def test_the_circuit_breaker_pauses_a_newsletter_just_past_the_bounce_rate(services):
    # 2,000 readers: judged on the first 200 sends (10 %); 5 % of them is 10.
    broadcast_id, rows = newsletter(services, recipients=2000, sent=200)

    paused = bounce_all(services, rows[:10])
    assert paused == [None] * 10
    assert broadcast_of(services, broadcast_id).status is BroadcastStatus.SENDING

    assert bounce_all(services, rows[10:11]) == [broadcast_id]
    broadcast = broadcast_of(services, broadcast_id)
    assert broadcast.status is BroadcastStatus.PAUSED
    assert "11 of its first 200 emails bounced" in broadcast.pause_reason


def test_the_circuit_breaker_pauses_on_complaints(services):
    # 200 readers: judged on the first 20; one complaint is 5 %, over 0.5 %.
    broadcast_id, rows = newsletter(services, recipients=200, sent=20)

    assert bounce_all(services, rows[:1], COMPLAINT) == [broadcast_id]
    assert "reported it as spam" in broadcast_of(services, broadcast_id).pause_reason


def test_bounces_after_the_first_sends_do_not_trip_the_breaker(services):
    broadcast_id, rows = newsletter(services, recipients=100, sent=40)  # judged on 10

    assert bounce_all(services, rows[10:]) == [None] * 30
    assert broadcast_of(services, broadcast_id).status is BroadcastStatus.SENDING


def test_a_newsletter_the_owner_resumed_is_left_alone_by_the_breaker(services):
    broadcast_id, rows = newsletter(services, recipients=200, sent=20)
    bounce_all(services, rows[:2])
    with services.database.begin() as session:
        assert broadcasts.resume(session, broadcast_id, now=services.clock())

    assert bounce_all(services, rows[2:5]) == [None] * 3
    broadcast = broadcast_of(services, broadcast_id)
    assert (broadcast.status, broadcast.pause_reason) == (BroadcastStatus.SENDING, None)


def test_raw_payloads_are_forgotten_after_their_days(services, clock):
    reader(services)
    record(services, report("p1", SOFT, payload={"raw": "old"}))
    clock.advance(days=29)
    record(services, report("p2", SOFT, payload={"raw": "new"}))
    clock.advance(days=2)

    with services.database.begin() as session:
        assert forget_payloads(session, now=clock(), days=30) == 1
    assert [event.payload for event in events(services)] == [None, {"raw": "new"}]
    with services.database.read() as session:
        assert session.scalar(select(func.count()).select_from(FeedbackEvent)) == 2


def test_an_import_skips_an_address_that_complained_and_says_why(app):
    from service import importer
    from tests.helpers import services_of

    services = services_of(app)
    record(services, report("c3", COMPLAINT, email="spam.clicker@example.com"))

    with services.database.begin() as session:
        plan = importer.read_plan(
            session,
            b"email\nspam.clicker@example.com\nfriend@example.com\n",
            default_time_zone="UTC",
        )

    assert [(row.email, row.outcome) for row in plan.rows] == [
        ("spam.clicker@example.com", importer.Outcome.SKIPPED),
        ("friend@example.com", importer.Outcome.NEW),
    ]
    assert "reported an email as spam" in plan.rows[0].reason


@pytest.mark.slow
def test_the_owner_sees_events_rates_and_why_a_newsletter_paused(app, services):
    from tests.test_admin import create_admin, sign_in

    subscriber = reader(services, "bouncy@example.com")
    _, message_id = sent_email(services, subscriber)
    record(
        services,
        report(
            "h1",
            HARD,
            email="bouncy@example.com",
            reference=message_id,
            reason="550 5.1.1 gone",
            payload={"bounce": "as it came"},
        ),
    )
    broadcast_id, rows = newsletter(services, recipients=100, sent=10)  # judged on 10
    bounce_all(services, rows[:1], COMPLAINT)
    with services.database.begin() as session:
        session.add(
            OutboxMessage(
                subscriber_id=subscriber,
                to_address="bouncy@example.com",
                kind="confirm",
                template="confirm",
                context={},
                status=OutboxStatus.FAILED,
                due_at=services.clock(),
                created_at=services.clock(),
                last_error="the mail server does not accept international addresses "
                "(no SMTPUTF8): jos\u00e9@example.com",
            )
        )
    create_admin(app)
    client = app.test_client()
    sign_in(client)

    page = client.get(f"/admin/subscribers/{subscriber}").get_data(as_text=True)
    assert "hard bounce" in page and "550 5.1.1 gone" in page and "as it came" in page
    data = client.get(f"/admin/subscribers/{subscriber}/data.json").get_json()
    assert [(e["type"], e["source"], e["outcome"]) for e in data["bounces_and_complaints"]] == [
        ("hard", "bounce", "bounced")
    ]
    dashboard = client.get("/admin/").get_data(as_text=True)
    assert "Spam complaints are over 0.3 %" in dashboard  # 1 complaint in 11 emails sent
    assert "Newsletter " + str(broadcast_id) in dashboard
    assert "1 email in the last 30 days could not go: the mail server does not accept" in dashboard
    newsletter_page = client.get(f"/admin/newsletters/{broadcast_id}").get_data(as_text=True)
    assert "Paused by itself: 1 of its first 10 readers reported it as spam" in newsletter_page


@pytest.mark.slow
def test_a_quiet_month_raises_no_warning(services, clock):
    from service.feedback import rates

    subscriber = reader(services)
    for _ in range(100):
        sent_email(services, subscriber)
    record(services, report("one", HARD))
    with services.database.read() as session:
        month = rates.recent(session, now=clock(), days=30)
    assert (month.sent, month.hard, month.hard_level, month.level) == (100, 1, "ok", "ok")
    record(services, report("two", SOFT))
    for key in ("three", "four"):
        record(
            services, Report(source="bounce", event_key=key, type=HARD, email=f"{key}@example.com")
        )
    with services.database.read() as session:
        month = rates.recent(session, now=clock(), days=30)
    assert (month.hard, month.soft, month.hard_level) == (3, 1, "warn")  # 3 %, over 2 %


def test_erasure_keeps_the_count_and_forgets_the_person(services):
    subscriber = reader(services, "forget.me@example.com")
    record(
        services,
        report(
            "e1",
            SOFT,
            email="forget.me@example.com",
            reason="mailbox of forget.me full",
            payload={"x": 1},
        ),
    )
    record(
        services, Report(source="bounce", event_key="e2", type=SOFT, email="FORGET.ME@example.com")
    )
    with services.database.begin() as session:
        erasure.erase(session, subscriber, now=services.clock())

    assert [(e.type, e.email, e.subscriber_id, e.reason, e.payload) for e in events(services)] == [
        (SOFT, None, None, "", None),
        (SOFT, None, None, "", None),
    ]


def test_the_schedulers_housekeeping_forgets_old_reports(services, clock):
    import os
    import threading

    from scheduler.__main__ import keep_house
    from service.feedback.retention import unparseable_folder

    reader(services)
    record(services, report("old", SOFT, payload={"raw": "old"}))
    folder = unparseable_folder(services.settings.INSTANCE_DIR)
    folder.mkdir(parents=True)
    old, new = folder / "old.eml", folder / "new.eml"
    for path, age in ((old, 31), (new, 29)):
        path.write_bytes(b"junk")
        moment = (clock() - timedelta(days=age)).timestamp()
        os.utime(path, (moment, moment))

    keep_house(services, clock=clock, stop=threading.Event())
    clock.advance(days=31)
    keep_house(services, clock=clock, stop=threading.Event())

    assert [event.payload for event in events(services)] == [None]
    assert not old.exists() and not new.exists()


def test_retries_of_one_email_reported_one_by_one_count_once(services, clock):
    subscriber = reader(services)
    _, message_id = sent_email(services, subscriber)
    for n in range(4):
        clock.advance(hours=1)
        done = record(services, report(f"retry{n}", SOFT, reference=message_id))

    assert done.outcome is Outcome.SOFT_COUNTED
    assert status_of(services, subscriber) is SubscriberStatus.CONFIRMED


def test_a_report_from_the_mailbox_without_our_mark_changes_nothing(services):
    # Anyone can mail the bounce address: a hand-made complaint naming a reader.
    subscriber = reader(services, "victim@example.com")
    _, message_id = sent_email(services, subscriber)
    forged = Report(
        source="mailbox",
        event_key="mailbox:forged",
        type=COMPLAINT,
        email="victim@example.com",
        reference="no mark of ours here",
        authenticated=False,
    )
    genuine = Report(
        source="mailbox",
        event_key="mailbox:genuine",
        type=HARD,
        email="victim@example.com",
        reference=f"Message-ID: {message_id}",
        authenticated=False,
    )

    assert record(services, forged).outcome is Outcome.UNVERIFIED
    assert status_of(services, subscriber) is SubscriberStatus.CONFIRMED
    with services.database.read() as session:
        assert not erasure.is_suppressed(session, "victim@example.com")
    assert record(services, genuine).outcome is Outcome.BOUNCED


def test_a_complaint_tied_to_our_email_suppresses_the_address_we_sent_to(services):
    # Feedback loops often redact the recipient; our mark still names the email.
    subscriber = reader(services, "real.reader@example.com")
    _, message_id = sent_email(services, subscriber)

    record(services, report("r1", COMPLAINT, email="redacted@example.com", reference=message_id))

    with services.database.read() as session:
        assert erasure.is_suppressed(session, "real.reader@example.com")
        assert not erasure.is_suppressed(session, "redacted@example.com")
    assert events(services)[0].email == "real.reader@example.com"


def test_one_bounce_heard_from_two_sources_counts_once_in_the_rates(services, clock):
    from service.feedback import rates

    subscriber = reader(services)
    _, message_id = sent_email(services, subscriber)
    record(services, report("ses:1", HARD, reference=message_id))
    record(
        services,
        Report(
            source="mailbox",
            event_key="mailbox:1",
            type=HARD,
            reference=message_id,
            authenticated=False,
        ),
    )

    with services.database.read() as session:
        month = rates.recent(session, now=clock(), days=30)
    assert (month.sent, month.hard) == (1, 1)


def test_a_long_event_key_is_hashed_not_cut(services):
    reader(services)
    stem = "mailbox:" + "m" * 190
    record(services, report(stem + ":a@example.com", SOFT))
    record(services, report(stem + ":b@example.com", SOFT))

    assert len(events(services)) == 2
