"""The export's file, byte for byte, on both databases: every column of a reader with a
full history, the cells a spreadsheet would run, NULLs, text from anywhere in Unicode,
times stored from other zones, and the order of the rows however the ranges fall."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
import sqlalchemy as sa

from service import audience, export
from service.models import (
    ConsentRecord,
    Enrollment,
    EnrollmentStatus,
    OutboxMessage,
    OutboxStatus,
    Subscriber,
    SubscriberStatus,
    SubscriberTag,
)
from tests.helpers import make_subscriber, services_of

HEADER = (
    "email,first_name,status,source,time_zone,signed_up_utc,confirmed_utc,"
    "unsubscribed_utc,consent_ip,consent_text_version,sequence_step,last_email_sent_utc,tags\r\n"
)
# Stored with microseconds, written to the second (cut, not rounded).
AT = datetime(2026, 3, 29, 0, 59, 59, 999_999, tzinfo=UTC)
# A time given in another zone is stored, and written, in UTC.
BERLIN_SUMMER = timezone(timedelta(hours=2))


def exported(app, *, span: int | None = None, bom: bool = False, **wanted: object) -> bytes:
    services = services_of(app)
    wanted.setdefault("sequence", services.default_sequence.name)
    pieces = export.export_csv(
        services.database.read, audience.SubscriberFilter(**wanted), bom=bom, span=span
    )
    return b"".join(piece.data for piece in pieces)


def consent(subscriber_id: int, *, at: datetime, ip: str | None, version: str) -> ConsentRecord:
    return ConsentRecord(
        subscriber_id=subscriber_id,
        action="confirm",
        at=at,
        ip=ip,
        user_agent="",
        source="form",
        text="Yes.",
        text_version=version,
    )


def sent(subscriber_id: int, *, at: datetime, sent_at: datetime | None) -> OutboxMessage:
    return OutboxMessage(
        subscriber_id=subscriber_id,
        to_address="x@example.com",
        kind="welcome",
        template="welcome",
        context={},
        status=OutboxStatus.SENT if sent_at else OutboxStatus.QUEUED,
        attempts=1 if sent_at else 0,
        due_at=at,
        created_at=at,
        sent_at=sent_at,
    )


def test_every_column_of_a_reader_with_a_history_is_written_as_the_readme_says(app):
    services = services_of(app)
    sequence = services.default_sequence.name
    step = services.default_sequence.steps[1].id
    with services.database.begin() as session:
        reader = make_subscriber(
            session,
            "zoë.ünïcode+tag@exämple.de",
            now=AT,
            status=SubscriberStatus.UNSUBSCRIBED,
            first_name='Zoë "Z", 李 🐈',
            time_zone="Europe/Berlin",
            source="blog; spring",
            confirmed_at=datetime(2026, 3, 29, 3, 0, 0, 500_000, tzinfo=BERLIN_SUMMER),
            unsubscribed_at=datetime(2026, 12, 31, 23, 59, 59, tzinfo=UTC),
        )
        session.add_all(
            [
                consent(reader.id, at=AT, ip="192.0.2.1", version="old"),
                consent(reader.id, at=AT, ip="2001:db8::1", version="3f2a9c1b"),  # the latest
                Enrollment(
                    subscriber_id=reader.id,
                    sequence=sequence,
                    enrolled_at=AT,
                    status=EnrollmentStatus.PAUSED,
                    steps_passed=[],
                    next_step=step,
                ),
                sent(reader.id, at=AT, sent_at=AT + timedelta(days=2)),
                sent(reader.id, at=AT, sent_at=AT + timedelta(days=1)),
                sent(reader.id, at=AT, sent_at=None),  # not sent: not the last email sent
                *(
                    SubscriberTag(subscriber_id=reader.id, tag=tag, added_at=AT, added_by="owner")
                    for tag in ("vip", "bäck", "a-list")
                ),
            ]
        )
    assert exported(app).decode() == HEADER + (
        '"zoë.ünïcode+tag@exämple.de","Zoë ""Z"", 李 🐈",unsubscribed,"blog; spring",'
        '"Europe/Berlin",2026-03-29 00:59:59,2026-03-29 01:00:00,2026-12-31 23:59:59,'
        f'"2001:db8::1","3f2a9c1b","{step} (paused)",2026-03-31 00:59:59,"a-list;bäck;vip"\r\n'
    )


@pytest.mark.parametrize(
    ("status", "shown"),
    [
        (EnrollmentStatus.ACTIVE, "{step}"),
        (EnrollmentStatus.FINISHED, "finished"),
        (EnrollmentStatus.STOPPED, "stopped"),
    ],
)
def test_the_sequence_step_says_where_the_reader_is(app, status, shown):
    services = services_of(app)
    step = services.default_sequence.steps[0].id
    with services.database.begin() as session:
        reader = make_subscriber(session, "a@example.com", now=AT)
        session.add(
            Enrollment(
                subscriber_id=reader.id,
                sequence=services.default_sequence.name,
                enrolled_at=AT,
                status=status,
                steps_passed=[],
                next_step=step if status is EnrollmentStatus.ACTIVE else None,
            )
        )
    (row,) = exported(app).decode().removeprefix(HEADER).splitlines()
    assert row.split(",")[10] == f'"{shown.format(step=step)}"'


def test_formulas_are_defused_in_free_text_and_names_are_quoted_as_they_are(app):
    """A free-text cell starting with = + - @, a tab or a CR gets a leading apostrophe; a
    line break inside a cell stays inside its quotes; NULL is an empty cell, quoted for the
    text columns and bare for the dates."""
    services = services_of(app)
    with services.database.begin() as session:
        first = make_subscriber(
            session, "@a@example.com", now=AT, first_name='=HYPERLINK("x")', source="+1"
        )
        session.add(consent(first.id, at=AT, ip="-1.2.3.4", version="v1"))
        make_subscriber(
            session, "b@example.com", now=AT, first_name="\tTab", source="\rCR", time_zone="=Z"
        )
        make_subscriber(session, "c@example.com", now=AT, first_name="line\nbreak, 'x'")
    assert exported(app, span=1).decode() == HEADER + (
        '"\'@a@example.com","\'=HYPERLINK(""x"")",pending,"\'+1","UTC",'
        '2026-03-29 00:59:59,,,"\'-1.2.3.4","v1","",,""\r\n'
        '"b@example.com","\'\tTab",pending,"\'\rCR","=Z",2026-03-29 00:59:59,,,"","","",,""\r\n'
        '"c@example.com","line\nbreak, \'x\'",pending,"test","UTC",'
        '2026-03-29 00:59:59,,,"","","",,""\r\n'
    )


@pytest.mark.parametrize("span", [1, 2, 5, 1000])
def test_rows_come_in_id_order_whatever_the_ranges(app, span):
    """Ranges of one, several and all the rows, with gaps in the ids (erased readers):
    the same file, oldest first."""
    services = services_of(app)
    with services.database.begin() as session:
        ids = [
            make_subscriber(session, f"r{n:02d}@example.com", now=AT + timedelta(seconds=n)).id
            for n in range(12)
        ]
        session.execute(sa.delete(Subscriber).where(Subscriber.id.in_(ids[3:7])))
    body = exported(app, span=span).decode()
    emails = [line.split(",")[0] for line in body.removeprefix(HEADER).splitlines()]
    assert emails == [f'"r{n:02d}@example.com"' for n in (0, 1, 2, 7, 8, 9, 10, 11)]
    assert body == exported(app, span=1000).decode()


def test_a_filter_matching_nobody_in_some_ranges_keeps_the_order(app):
    """The search filter (on SQLite through the search index, in its own order) and empty
    ranges between the matches."""
    services = services_of(app)
    with services.database.begin() as session:
        for n in range(10):
            name = "Findme" if n in (1, 2, 3, 8) else "Other"
            make_subscriber(session, f"r{n}@example.com", now=AT, first_name=name)
    for span in (1, 3, 100):
        body = exported(app, span=span, query="findme").decode()
        assert [line.split(",")[0] for line in body.removeprefix(HEADER).splitlines()] == [
            '"r1@example.com"',
            '"r2@example.com"',
            '"r3@example.com"',
            '"r8@example.com"',
        ]


def test_an_empty_list_is_the_header_alone_with_or_without_the_byte_order_mark(app):
    assert exported(app) == HEADER.encode()
    assert exported(app, bom=True) == "\ufeff".encode() + HEADER.encode()
    with services_of(app).database.begin() as session:
        make_subscriber(session, "a@example.com", now=AT)
    assert exported(app, status=SubscriberStatus.CONFIRMED) == HEADER.encode()
