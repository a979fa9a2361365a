"""The drip sequence: the file, the timing in each reader's zone, and the engine through
real scheduler ticks on both databases. Time moves through the test clock only."""

from __future__ import annotations

import re
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import select

from scheduler.__main__ import tick
from service import journal, outbox, sequences, signup_input, subscriptions
from service.emails import SHIPPED_EMAILS
from service.models import (
    Enrollment,
    EnrollmentStatus,
    OutboxMessage,
    OutboxStatus,
    SubscriberStatus,
)
from service.sequences import Delay, SequenceError, Step, due_time
from tests.helpers import run_pass, services_of

BERLIN = ZoneInfo("Europe/Berlin")
VANCOUVER = ZoneInfo("America/Vancouver")
UTC_ZONE = ZoneInfo("UTC")
ORIGIN = journal.Origin(ip="192.0.2.1", user_agent="pytest")


def step(delay: str, weekdays: frozenset[int] = sequences.EVERY_DAY) -> Step:
    return Step("s", "sequence/01_why_glutes", Delay.parse(delay), weekdays)


# --- the file -------------------------------------------------------------------------


def test_the_shipped_sequence_loads():
    sequence = sequences.load(SHIPPED_EMAILS / "sequence.toml")
    assert sequence.name == "back-pain-tips"
    assert sequence.send_hour == 8
    assert [s.id for s in sequence.steps] == [
        "why-glutes",
        "foam-rolling",
        "piriformis-stretch",
        "weekly-plan",
        "strengthen",
        "foam-roller",
        "course",
        "see-a-professional",
    ]
    assert sequence.step("course").requires == ("course_url",)
    assert sequence.step("course").weekdays == frozenset({1, 2, 3})


SEQUENCE_HEAD = 'name = "tips"\nsend_hour = 8\nlatest_hour = 20\n[links]\ncourse_url = ""\n'


def steps_toml(*steps: tuple[str, str] | tuple[str, str, str]) -> str:
    """TOML for steps given as (id, delay[, extra lines])."""
    parts = [SEQUENCE_HEAD]
    templates = sorted(p.stem for p in (SHIPPED_EMAILS / "sequence").glob("*.txt"))
    for index, (step_id, delay, *extra) in enumerate(steps):
        template = templates[index % len(templates)]
        parts.append(
            f'[[steps]]\nid = "{step_id}"\ntemplate = "sequence/{template}"\n'
            f'delay = "{delay}"\n{extra[0] if extra else ""}\n'
        )
    return "".join(parts)


@pytest.mark.parametrize(
    "body,message",
    [
        (
            "name = 'x'\n[[steps]]\nid = 'a'\ntemplate = 'sequence/01_why_glutes'\ndelay = '1 day'\n"
            "[[steps]]\nid = 'a'\ntemplate = 'sequence/01_why_glutes'\ndelay = '1 day'\n",
            "used twice",
        ),
        (
            "name = 'x'\n[[steps]]\nid = 'a'\ntemplate = 'nope'\ndelay = '1 day'\n",
            "no email template nope",
        ),
        (
            "name = 'x'\n[[steps]]\nid = 'a'\ntemplate = 'sequence/01_why_glutes'\ndelay = 'soon'\n",
            "delay",
        ),
        (
            "name = 'x'\n[[steps]]\nid = 'a'\ntemplate = 'sequence/01_why_glutes'\ndelay = '1 day'\n"
            "weekdays = ['funday']\n",
            "unknown weekday",
        ),
        (
            "name = 'x'\n[[steps]]\nid = 'a'\ntemplate = 'sequence/01_why_glutes'\ndelay = '1 day'\n"
            "requires = 'video_url'\n",
            "unknown link",
        ),
        (
            "name = 'x'\n[[steps]]\nid = 'a'\ntemplate = 'sequence/01_why_glutes'\ndelay = '1 day'\n"
            "[[steps]]\nid = 'b'\ntemplate = 'sequence/01_why_glutes'\ndelay = '0 hours'\n",
            "at least 1 hour",
        ),
        ("name = 'x'\n", "has no"),
        (
            "name = 'x'\nsend_hour = 25\n[[steps]]\nid = 'a'\ntemplate = 't'\ndelay = '1 day'\n",
            "send_hour",
        ),
        ("this is not toml", "Expected"),
    ],
)
def test_a_broken_sequence_file_names_its_problem(tmp_path, body, message):
    from service.emails import EmailRenderer, email_directories

    renderer = EmailRenderer(email_directories(""), {})
    path = tmp_path / "sequence.toml"
    path.write_text(body)
    with pytest.raises(SequenceError, match=message) as error:
        sequences.load(path, template_exists=renderer.has_template)
    assert str(path) in str(error.value)


def test_a_broken_sequence_file_stops_the_service_starting(make_app, tmp_path):
    from service.config import ConfigError

    (tmp_path / "content" / "emails").mkdir(parents=True)
    (tmp_path / "content" / "emails" / "sequence.toml").write_text("name = 'x'\n")
    with pytest.raises(ConfigError, match="the drip sequence"):
        make_app(CONTENT_DIR=str(tmp_path / "content"))


# --- timing ---------------------------------------------------------------------------


def test_day_delays_land_at_the_send_hour_in_the_readers_zone():
    confirmed = datetime(2026, 11, 24, 15, 0, tzinfo=UTC)  # 16:00 in Berlin, 07:00 in Vancouver
    berlin = due_time(step("2 days"), base=confirmed, zone=BERLIN, send_hour=8)
    vancouver = due_time(step("2 days"), base=confirmed, zone=VANCOUVER, send_hour=8)
    assert berlin == datetime(2026, 11, 26, 7, 0, tzinfo=UTC)
    assert vancouver == datetime(2026, 11, 26, 16, 0, tzinfo=UTC)
    assert berlin.astimezone(BERLIN).hour == vancouver.astimezone(VANCOUVER).hour == 8


def test_zero_days_is_today_if_the_hour_is_still_ahead_else_tomorrow():
    early = datetime(2026, 11, 24, 6, 0, tzinfo=UTC)
    late = datetime(2026, 11, 24, 9, 0, tzinfo=UTC)
    assert due_time(step("0 days"), base=early, zone=UTC_ZONE, send_hour=8).day == 24
    assert due_time(step("0 days"), base=late, zone=UTC_ZONE, send_hour=8).day == 25


def test_two_steps_never_share_a_local_day():
    previous = datetime(2026, 11, 24, 8, 0, tzinfo=UTC)
    due = due_time(step("0 days"), base=previous, zone=UTC_ZONE, send_hour=8, previous=previous)
    assert due == datetime(2026, 11, 25, 8, 0, tzinfo=UTC)


def test_weekday_restrictions_move_the_step_to_the_next_allowed_day():
    tuesday_only = step("1 day", frozenset({1}))
    thursday = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)
    due = due_time(tuesday_only, base=thursday, zone=UTC_ZONE, send_hour=8)
    assert due == datetime(2026, 12, 1, 8, 0, tzinfo=UTC)
    assert due.weekday() == 1


def test_hour_delays_ignore_the_send_hour_but_respect_weekdays():
    base = datetime(2026, 11, 24, 15, 30, tzinfo=UTC)  # a Tuesday
    assert due_time(step("3 hours"), base=base, zone=BERLIN, send_hour=8) == base + timedelta(
        hours=3
    )
    weekends = step("3 hours", frozenset({5, 6}))
    assert due_time(weekends, base=base, zone=UTC_ZONE, send_hour=8) == datetime(
        2026, 11, 28, 8, 0, tzinfo=UTC
    )


@pytest.mark.parametrize(
    "zone,confirmed,expected_utc",
    [
        # Berlin leaves summer time on 25 October 2026: 08:00 is 06:00 UTC before, 07:00 after.
        (BERLIN, datetime(2026, 10, 23, 12, tzinfo=UTC), datetime(2026, 10, 26, 7, tzinfo=UTC)),
        (BERLIN, datetime(2026, 10, 21, 12, tzinfo=UTC), datetime(2026, 10, 24, 6, tzinfo=UTC)),
        # Vancouver leaves summer time on 1 November 2026.
        (VANCOUVER, datetime(2026, 10, 30, 20, tzinfo=UTC), datetime(2026, 11, 2, 16, tzinfo=UTC)),
        # And both enter it again in March 2027.
        (BERLIN, datetime(2027, 3, 26, 12, tzinfo=UTC), datetime(2027, 3, 29, 6, tzinfo=UTC)),
        (VANCOUVER, datetime(2027, 3, 12, 20, tzinfo=UTC), datetime(2027, 3, 15, 15, tzinfo=UTC)),
    ],
)
def test_the_send_hour_holds_across_daylight_saving_changes(zone, confirmed, expected_utc):
    due = due_time(step("3 days"), base=confirmed, zone=zone, send_hour=8)
    assert due == expected_utc
    assert due.astimezone(zone).hour == 8


def test_a_send_hour_that_daylight_saving_skips_still_gives_a_real_instant():
    new_york = ZoneInfo("America/New_York")  # 02:00-03:00 does not exist on 14 March 2027
    due = due_time(
        step("1 day"), base=datetime(2027, 3, 13, 12, tzinfo=UTC), zone=new_york, send_hour=2
    )
    assert due.astimezone(new_york).date().day == 14
    assert due.astimezone(new_york).hour == 3


def test_a_late_step_waits_for_a_sensible_hour():
    sequence = sequences.DripSequence("x", 8, 20, (step("1 day"),))
    at_night = datetime(2026, 11, 25, 2, 30, tzinfo=UTC)
    in_the_afternoon = datetime(2026, 11, 25, 15, 0, tzinfo=UTC)
    opens = sequences.sending_window_opens(
        step("1 day"), now=at_night, zone=UTC_ZONE, sequence=sequence
    )
    assert opens == datetime(2026, 11, 25, 8, 0, tzinfo=UTC)
    assert (
        sequences.sending_window_opens(
            step("1 day"), now=in_the_afternoon, zone=UTC_ZONE, sequence=sequence
        )
        is None
    )


# --- the engine ----------------------------------------------------------------------


@pytest.fixture
def seq_app(make_app, smtp, tmp_path):
    """An app whose sequence file the test writes (and may rewrite, then 'restart')."""
    content = tmp_path / "content"
    (content / "emails").mkdir(parents=True)

    def build(toml: str | None = None, **settings):
        if toml is not None:
            (content / "emails" / "sequence.toml").write_text(toml)
        return make_app(MAIL_URL=smtp.url, CONTENT_DIR=str(content), **settings)

    return build


HOURLY_RETRIES = {"SEND_RETRY_BASE_SECONDS": 3600}


def confirm_reader(app, email: str, *, zone: str = "UTC", first_name: str | None = None) -> int:
    services = services_of(app)
    signup = signup_input.Signup(email=email, first_name=first_name, time_zone=zone, source="test")
    with services.database.begin() as session:
        subscriber_id, _ = subscriptions.subscribe(
            session, signup, ORIGIN, consent_text="yes", cooldown=timedelta(0), now=services.clock()
        )
        subscriptions.confirm(
            session,
            subscriber_id,
            ORIGIN,
            token_issued_at=services.clock(),
            consent_text="yes",
            magnet=services.default_magnet,
            now=services.clock(),
        )
    return subscriber_id


def run_tick(app):
    services = services_of(app)
    return tick(
        services,
        services.make_dispatcher("test"),
        started_at=services.clock(),
        clock=services.clock,
        stop=threading.Event(),
    )


def next_due(app) -> datetime | None:
    with services_of(app).database.read() as session:
        times = [
            session.scalar(
                select(Enrollment.next_due_at)
                .where(Enrollment.status == EnrollmentStatus.ACTIVE)
                .order_by(Enrollment.next_due_at)
                .limit(1)
            ),
            session.scalar(
                select(OutboxMessage.due_at)
                .where(OutboxMessage.status == OutboxStatus.QUEUED)
                .order_by(OutboxMessage.due_at)
                .limit(1)
            ),
        ]
    times = [t for t in times if t is not None]
    return min(times) if times else None


def run_until(app, clock, until: datetime) -> None:
    """Tick at every moment something falls due, up to `until` (a punctual scheduler)."""
    run_tick(app)
    while (due := next_due(app)) is not None and due <= until:
        clock.now = max(clock.now, due)
        run_tick(app)
    clock.now = max(clock.now, until)


def sent_steps(app, subscriber_id: int) -> list[tuple[str, datetime]]:
    with services_of(app).database.read() as session:
        rows = session.execute(
            select(OutboxMessage.sequence_step, OutboxMessage.sent_at)
            .where(
                OutboxMessage.subscriber_id == subscriber_id,
                OutboxMessage.kind == "sequence",
                OutboxMessage.status == OutboxStatus.SENT,
            )
            .order_by(OutboxMessage.sent_at)
        ).all()
    return [(r[0], r[1]) for r in rows]


def enrollment(app, subscriber_id: int) -> Enrollment:
    with services_of(app).database.read() as session:
        return session.scalar(select(Enrollment).where(Enrollment.subscriber_id == subscriber_id))


@pytest.mark.slow
def test_vancouver_and_berlin_each_get_their_steps_at_eight_their_time(make_app, smtp, clock):
    app = make_app(MAIL_URL=smtp.url)  # the shipped sequence
    clock.now = datetime(2026, 11, 24, 15, 0, tzinfo=UTC)
    berlin = confirm_reader(app, "berlin@example.com", zone="Europe/Berlin")
    vancouver = confirm_reader(app, "vancouver@example.com", zone="America/Vancouver")
    run_until(app, clock, datetime(2026, 12, 1, 0, 0, tzinfo=UTC))
    assert sent_steps(app, berlin) == [
        ("why-glutes", datetime(2026, 11, 26, 7, 0, tzinfo=UTC)),
        ("foam-rolling", datetime(2026, 11, 29, 7, 0, tzinfo=UTC)),
    ]
    assert sent_steps(app, vancouver) == [
        ("why-glutes", datetime(2026, 11, 26, 16, 0, tzinfo=UTC)),
        ("foam-rolling", datetime(2026, 11, 29, 16, 0, tzinfo=UTC)),
    ]
    subjects = [r.message["Subject"] for r in smtp.received if r.rcpt_tos == ["berlin@example.com"]]
    assert subjects[1:] == [
        "Why your glutes have a say in your back pain",
        "How to foam roll your glutes (and why only three times a week)",
    ]


@pytest.mark.slow
def test_the_whole_shipped_sequence_arrives_once_in_order_then_stops(make_app, smtp, clock):
    app = make_app(MAIL_URL=smtp.url)
    reader = confirm_reader(app, "reader@example.com", zone="Europe/Berlin", first_name="Ann")
    run_until(app, clock, clock() + timedelta(days=60))
    steps = sent_steps(app, reader)
    # The course step needs a course link the owner has not set: it is skipped.
    assert [s for s, _ in steps] == [
        "why-glutes",
        "foam-rolling",
        "piriformis-stretch",
        "weekly-plan",
        "strengthen",
        "foam-roller",
        "see-a-professional",
    ]
    assert all(sent.astimezone(BERLIN).hour == 8 for _, sent in steps)
    local_days = [sent.astimezone(BERLIN).date() for _, sent in steps]
    assert len(set(local_days)) == len(local_days)
    assert enrollment(app, reader).status is EnrollmentStatus.FINISHED
    assert len(smtp.received) == 8  # the welcome email and seven steps
    run_until(app, clock, clock() + timedelta(days=60))
    assert len(smtp.received) == 8


@pytest.mark.slow
def test_the_course_is_offered_once_when_the_owner_sets_its_link(seq_app, smtp, clock):
    toml = (
        (SHIPPED_EMAILS / "sequence.toml")
        .read_text()
        .replace('course_url = ""', 'course_url = "https://course.example.com/back"')
    )
    app = seq_app(toml)
    reader = confirm_reader(app, "reader@example.com")
    run_until(app, clock, clock() + timedelta(days=60))
    steps = [s for s, _ in sent_steps(app, reader)]
    assert steps.count("course") == 1
    course = next(
        r for r in smtp.received if r.message["Subject"] == "If you would like to go further"
    )
    assert "https://course.example.com/back" in course.part("plain")
    sent_on = dict(sent_steps(app, reader))["course"]
    assert sent_on.weekday() in (1, 2, 3)


@pytest.mark.slow
def test_the_affiliate_link_is_disclosed(seq_app, smtp, clock):
    toml = (
        (SHIPPED_EMAILS / "sequence.toml")
        .read_text()
        .replace(
            'foam_roller_url = ""', 'foam_roller_url = "https://shop.example.com/roller?ref=owner"'
        )
    )
    app = seq_app(toml)
    confirm_reader(app, "reader@example.com")
    run_until(app, clock, clock() + timedelta(days=60))
    roller = next(r for r in smtp.received if r.message["Subject"].startswith("Which foam roller"))
    for part in (roller.part("plain"), roller.part("html")):
        assert "affiliate link" in part
    assert "https://shop.example.com/roller?ref=owner" in roller.part("plain")
    # In the HTML the link goes through the click counter, which leads to the shop.
    (tracked,) = set(re.findall(r'href="http://newsletter\.test(/l/[^"]+)"', roller.part("html")))
    assert app.test_client().get(tracked).headers["Location"] == (
        "https://shop.example.com/roller?ref=owner"
    )


@pytest.mark.slow
def test_weekday_restrictions_hold_in_the_engine(seq_app, clock):
    app = seq_app(steps_toml(("a", "1 day"), ("b", "1 day", 'weekdays = ["sat"]')))
    clock.now = datetime(2026, 11, 24, 15, 0, tzinfo=UTC)  # a Tuesday
    reader = confirm_reader(app, "reader@example.com")
    run_until(app, clock, datetime(2026, 12, 10, tzinfo=UTC))
    assert sent_steps(app, reader) == [
        ("a", datetime(2026, 11, 25, 8, 0, tzinfo=UTC)),
        ("b", datetime(2026, 11, 28, 8, 0, tzinfo=UTC)),
    ]


@pytest.mark.slow
def test_after_a_day_of_downtime_catching_up_sends_one_step_a_day(seq_app, clock):
    app = seq_app(steps_toml(("a", "1 day"), ("b", "1 day"), ("c", "1 day")))
    clock.now = datetime(2026, 11, 24, 15, 0, tzinfo=UTC)
    reader = confirm_reader(app, "reader@example.com")
    run_tick(app)  # plans step a for 25 Nov 08:00
    # The scheduler is down until 28 Nov 14:00; a, b and c would all be due by then.
    clock.now = datetime(2026, 11, 28, 14, 0, tzinfo=UTC)
    for _ in range(12):  # a tick every five minutes for an hour
        run_tick(app)
        clock.advance(minutes=5)
    assert [s for s, _ in sent_steps(app, reader)] == ["a"]
    run_until(app, clock, datetime(2026, 12, 5, tzinfo=UTC))
    assert sent_steps(app, reader) == [
        ("a", datetime(2026, 11, 28, 14, 0, tzinfo=UTC)),
        ("b", datetime(2026, 11, 29, 8, 0, tzinfo=UTC)),
        ("c", datetime(2026, 11, 30, 8, 0, tzinfo=UTC)),
    ]


@pytest.mark.slow
def test_after_the_mail_server_was_down_for_days_steps_resume_a_day_apart(seq_app, clock, smtp):
    app = seq_app(steps_toml(("a", "1 day"), ("b", "1 day"), ("c", "1 day")), **HOURLY_RETRIES)
    clock.now = datetime(2026, 11, 24, 15, 0, tzinfo=UTC)
    reader = confirm_reader(app, "reader@example.com")
    run_tick(app)  # the welcome email
    smtp.faults.mail = "421 4.3.2 Service not available"
    run_until(app, clock, datetime(2026, 11, 28, 12, 0, tzinfo=UTC))
    assert sent_steps(app, reader) == []
    with services_of(app).database.read() as session:  # only a is waiting, b and c are not
        waiting = session.scalars(
            select(OutboxMessage.sequence_step).where(OutboxMessage.kind == "sequence")
        ).all()
    assert waiting == ["a"]
    smtp.faults.mail = None
    run_until(app, clock, datetime(2026, 12, 5, tzinfo=UTC))
    steps = sent_steps(app, reader)
    assert [s for s, _ in steps] == ["a", "b", "c"]
    days = [sent.date() for _, sent in steps]
    assert days == sorted(set(days))  # one a day, never two
    assert steps[1][1] == datetime(2026, 11, 29, 8, 0, tzinfo=UTC)  # a day after a went out


@pytest.mark.slow
def test_a_step_due_while_the_scheduler_was_down_waits_for_the_morning(seq_app, clock):
    app = seq_app(steps_toml(("a", "1 day")))
    clock.now = datetime(2026, 11, 24, 15, 0, tzinfo=UTC)
    reader = confirm_reader(app, "reader@example.com", zone="Europe/Berlin")
    run_tick(app)
    clock.now = datetime(2026, 11, 27, 2, 0, tzinfo=UTC)  # back at 03:00 in Berlin
    run_tick(app)
    assert sent_steps(app, reader) == []
    run_until(app, clock, datetime(2026, 11, 28, tzinfo=UTC))
    assert sent_steps(app, reader) == [("a", datetime(2026, 11, 27, 7, 0, tzinfo=UTC))]


# --- editing the sequence -------------------------------------------------------------


def advance_past_first_step(app, clock, reader: int) -> None:
    """Confirmed at 15:00: step a ('1 day') goes out at 08:00 tomorrow; stop at 11:00."""
    run_until(app, clock, clock() + timedelta(hours=20))
    assert [s for s, _ in sent_steps(app, reader)] == ["a"]


@pytest.mark.slow
def test_a_step_added_after_where_a_reader_stands_reaches_them(seq_app, clock):
    app = seq_app(steps_toml(("a", "1 day"), ("b", "3 days")))
    reader = confirm_reader(app, "reader@example.com")
    advance_past_first_step(app, clock, reader)
    app = seq_app(steps_toml(("a", "1 day"), ("new", "1 day"), ("b", "3 days")))  # restart
    run_until(app, clock, clock() + timedelta(days=30))
    assert [s for s, _ in sent_steps(app, reader)] == ["a", "new", "b"]


@pytest.mark.slow
def test_a_step_inserted_before_where_a_reader_stands_does_not(seq_app, clock):
    app = seq_app(steps_toml(("a", "1 day"), ("b", "3 days")))
    reader = confirm_reader(app, "reader@example.com")
    advance_past_first_step(app, clock, reader)
    app = seq_app(steps_toml(("intro", "1 day"), ("a", "1 day"), ("b", "3 days")))
    run_until(app, clock, clock() + timedelta(days=30))
    assert [s for s, _ in sent_steps(app, reader)] == ["a", "b"]


@pytest.mark.slow
def test_readers_who_finished_get_no_new_steps(seq_app, clock):
    app = seq_app(steps_toml(("a", "1 day")))
    reader = confirm_reader(app, "reader@example.com")
    advance_past_first_step(app, clock, reader)
    assert enrollment(app, reader).status is EnrollmentStatus.FINISHED
    app = seq_app(steps_toml(("a", "1 day"), ("later", "1 day")))
    late_comer = confirm_reader(app, "late@example.com")
    run_until(app, clock, clock() + timedelta(days=30))
    assert [s for s, _ in sent_steps(app, reader)] == ["a"]
    assert [s for s, _ in sent_steps(app, late_comer)] == ["a", "later"]


@pytest.mark.slow
def test_a_removed_step_is_skipped_and_never_breaks_a_tick(seq_app, clock, smtp):
    app = seq_app(steps_toml(("a", "1 day"), ("b", "1 day"), ("c", "1 day")), **HOURLY_RETRIES)
    reader = confirm_reader(app, "reader@example.com")
    other = confirm_reader(app, "other@example.com")
    advance_past_first_step(app, clock, reader)
    # b is queued for both but the mail server is down when it falls due...
    smtp.faults.mail = "421 try later"
    run_until(app, clock, clock() + timedelta(days=1))
    assert [s for s, _ in sent_steps(app, reader)] == ["a"]
    assert [s for s, _ in sent_steps(app, other)] == ["a"]
    # ... and then the owner removes b and restarts.
    app = seq_app(steps_toml(("a", "1 day"), ("c", "1 day")), **HOURLY_RETRIES)
    smtp.faults.mail = None
    run_until(app, clock, clock() + timedelta(days=10))
    assert [s for s, _ in sent_steps(app, reader)] == ["a", "c"]
    assert [s for s, _ in sent_steps(app, other)] == ["a", "c"]
    with services_of(app).database.read() as session:
        removed = session.scalars(
            select(OutboxMessage).where(OutboxMessage.sequence_step == "b")
        ).all()
    assert [r.status for r in removed] == [OutboxStatus.CANCELLED] * 2
    assert all("no longer in the sequence" in r.last_error for r in removed)


# --- pause, resume, stop --------------------------------------------------------------


@pytest.mark.slow
def test_pause_then_resume_carries_on_from_the_resume_time_without_a_burst(seq_app, clock):
    app = seq_app(steps_toml(("a", "1 day"), ("b", "2 days"), ("c", "2 days")))
    clock.now = datetime(2026, 11, 24, 15, 0, tzinfo=UTC)
    reader = confirm_reader(app, "reader@example.com")
    run_until(app, clock, datetime(2026, 11, 26, tzinfo=UTC))
    services = services_of(app)
    with services.database.begin() as session:
        assert sequences.pause(session, reader, sequence="tips", now=clock())
    run_until(app, clock, datetime(2026, 12, 20, tzinfo=UTC))  # b and c would both be due
    assert [s for s, _ in sent_steps(app, reader)] == ["a"]
    with services.database.begin() as session:
        assert sequences.resume(session, reader, sequence="tips", now=clock())
    run_until(app, clock, datetime(2027, 1, 10, tzinfo=UTC))
    assert sent_steps(app, reader) == [
        ("a", datetime(2026, 11, 25, 8, 0, tzinfo=UTC)),
        ("b", datetime(2026, 12, 22, 8, 0, tzinfo=UTC)),  # two days after resuming
        ("c", datetime(2026, 12, 24, 8, 0, tzinfo=UTC)),
    ]


@pytest.mark.slow
def test_pausing_takes_back_a_queued_step_and_resuming_sends_it_once(seq_app, clock, smtp):
    app = seq_app(steps_toml(("a", "1 day"), ("b", "1 day")), **HOURLY_RETRIES)
    reader = confirm_reader(app, "reader@example.com")
    smtp.faults.mail = "421 try later"  # a is queued but cannot go out
    run_until(app, clock, clock() + timedelta(days=1, hours=18))
    services = services_of(app)
    with services.database.begin() as session:
        sequences.pause(session, reader, sequence="tips", now=clock())
    with services.database.read() as session:
        row = session.scalar(select(OutboxMessage).where(OutboxMessage.sequence_step == "a"))
    assert row.status is OutboxStatus.CANCELLED
    smtp.faults.mail = None
    with services.database.begin() as session:
        sequences.resume(session, reader, sequence="tips", now=clock())
    run_until(app, clock, clock() + timedelta(days=10))
    assert [s for s, _ in sent_steps(app, reader)] == ["a", "b"]
    with services.database.read() as session:
        rows = session.scalars(
            select(OutboxMessage).where(OutboxMessage.sequence_step == "a")
        ).all()
    assert len(rows) == 1  # the same row, revived


@pytest.mark.slow
@pytest.mark.parametrize("how", ["unsubscribe", "bounce"])
def test_unsubscribing_or_bouncing_stops_the_sequence_at_once(seq_app, clock, smtp, how):
    app = seq_app(steps_toml(("a", "1 day"), ("b", "1 day")), **HOURLY_RETRIES)
    reader = confirm_reader(app, "reader@example.com")
    smtp.faults.mail = "421 try later"
    run_until(app, clock, clock() + timedelta(days=1, hours=18))  # a queued, not sent
    services = services_of(app)
    with services.database.begin() as session:
        if how == "unsubscribe":
            subscriptions.unsubscribe(session, reader, via="test", now=clock())
        else:
            subscriptions.mark_bounced(session, reader, reason="550", now=clock())
    smtp.faults.mail = None
    run_until(app, clock, clock() + timedelta(days=10))
    assert sent_steps(app, reader) == []
    assert enrollment(app, reader).status is EnrollmentStatus.STOPPED


def test_a_bounce_on_a_step_stops_the_rest(seq_app, clock, smtp):
    app = seq_app(steps_toml(("a", "1 day"), ("b", "1 day")))
    reader = confirm_reader(app, "reader@example.com")
    run_tick(app)  # the welcome email goes out; the address disappears after that
    smtp.faults.rcpt["reader@example.com"] = "550 5.1.1 No such user"
    run_until(app, clock, clock() + timedelta(days=10))
    assert enrollment(app, reader).status is EnrollmentStatus.STOPPED
    with services_of(app).database.read() as session:
        statuses = session.scalars(
            select(OutboxMessage.status).where(OutboxMessage.kind == "sequence")
        ).all()
    assert statuses == [OutboxStatus.FAILED]


@pytest.mark.slow
def test_a_returning_reader_carries_on_where_they_left(seq_app, clock):
    app = seq_app(steps_toml(("a", "1 day"), ("b", "1 day"), ("c", "1 day")))
    reader = confirm_reader(app, "reader@example.com")
    advance_past_first_step(app, clock, reader)
    services = services_of(app)
    with services.database.begin() as session:
        subscriptions.unsubscribe(session, reader, via="test", now=clock())
    clock.advance(days=5)
    confirm_reader(app, "reader@example.com")  # signs up and confirms again
    run_until(app, clock, clock() + timedelta(days=10))
    assert [s for s, _ in sent_steps(app, reader)] == ["a", "b", "c"]


def test_only_confirmed_readers_get_steps(seq_app, clock):
    app = seq_app(steps_toml(("a", "1 day")))
    reader = confirm_reader(app, "reader@example.com")
    services = services_of(app)
    with services.database.begin() as session:  # an inconsistent row, as if edited by hand
        session.get(subscriptions.Subscriber, reader).status = SubscriberStatus.PENDING
    run_until(app, clock, clock() + timedelta(days=5))
    assert sent_steps(app, reader) == []
    assert enrollment(app, reader).status is EnrollmentStatus.STOPPED


def test_a_tick_with_nothing_due_touches_nothing(seq_app, clock):
    app = seq_app(steps_toml(("a", "3 days")))
    confirm_reader(app, "reader@example.com")
    run_tick(app)  # plans the step
    before = enrollment(app, 1)
    clock.advance(hours=1)
    services = services_of(app)
    with services.database.begin() as session:
        report = sequences.advance_due(
            session, services.default_sequence, now=clock(), default_zone=UTC_ZONE
        )
    assert report.total == 0
    after = enrollment(app, 1)
    assert (after.next_step, after.next_due_at) == (before.next_step, before.next_due_at)


def test_sequence_templates_exist_for_every_step():
    for path in (SHIPPED_EMAILS / "sequence").glob("*.txt"):
        assert Path(str(path)[:-4] + ".html").exists()


@pytest.mark.slow
def test_smtp_faults_in_the_middle_of_a_batch_of_steps(seq_app, clock, smtp):
    """One batch meets a dropped connection after DATA, a 451 and a 550 at RCPT, then a
    421 at MAIL: in the end every reader but the bounced one has each step exactly once."""
    app = seq_app(steps_toml(("a", "1 day"), ("b", "1 day")))
    clock.now = datetime(2026, 11, 24, 15, 0, tzinfo=UTC)
    readers = [confirm_reader(app, f"r{n}@example.com") for n in range(5)]
    run_tick(app)  # welcome emails and the plans
    smtp.faults.drop_at_data = True
    smtp.faults.times = 1  # the first step email of the batch loses its connection
    smtp.faults.rcpt["r2@example.com"] = "451 4.2.0 Mailbox busy"
    smtp.faults.rcpt["r3@example.com"] = "550 5.1.1 No such user"
    clock.now = datetime(2026, 11, 25, 8, 0, tzinfo=UTC)
    report = run_tick(app)
    assert (report.sent, report.retried, report.bounced) == (2, 2, 1)
    del smtp.faults.rcpt["r2@example.com"]
    smtp.faults.mail = "421 4.3.2 Try later"
    smtp.faults.times = 1
    clock.advance(minutes=1)
    assert run_tick(app).stopped.startswith("server busy")
    run_until(app, clock, datetime(2026, 12, 1, tzinfo=UTC))
    for reader in readers:
        steps = [s for s, _ in sent_steps(app, reader)]
        assert steps == ([] if reader == readers[3] else ["a", "b"])
    assert enrollment(app, readers[3]).status is EnrollmentStatus.STOPPED
    per_reader: dict[str, int] = {}
    for received in smtp.received:
        if not received.message["Subject"].startswith("Your Glute"):
            per_reader[received.rcpt_tos[0]] = per_reader.get(received.rcpt_tos[0], 0) + 1
    assert per_reader == {f"r{n}@example.com": 2 for n in (0, 1, 2, 4)}


def wait_until_a_backend_waits_for_a_lock(app) -> None:
    """Watch PostgreSQL until some session of this database waits for a row lock."""
    import time

    deadline = time.monotonic() + 30
    with services_of(app).database.engine.connect() as watcher:
        while time.monotonic() < deadline:
            waiting = watcher.exec_driver_sql(
                "SELECT count(*) FROM pg_stat_activity "
                "WHERE datname = current_database() AND wait_event_type = 'Lock'"
            ).scalar()
            watcher.rollback()
            if waiting:
                return
    raise AssertionError("no session ever waited for a lock")


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_an_unsubscribe_during_a_tick_waits_for_it_then_cancels_the_step(seq_app, clock):
    """The tick holds the reader's enrollment while it queues a step; the unsubscribe must
    neither deadlock with it nor let that step out."""
    app = seq_app(steps_toml(("a", "1 day"), ("b", "1 day")))
    clock.now = datetime(2026, 11, 24, 15, 0, tzinfo=UTC)
    reader = confirm_reader(app, "reader@example.com")
    run_tick(app)
    clock.now = datetime(2026, 11, 25, 8, 0, tzinfo=UTC)
    services = services_of(app)
    outcome: dict[str, object] = {}

    def unsubscribe() -> None:
        try:
            with services.database.begin() as session:
                subscriptions.unsubscribe(session, reader, via="test", now=clock())
            outcome["unsubscribe"] = "done"
        except Exception as exc:  # a deadlock would land here
            outcome["unsubscribe"] = exc

    with services.database.begin() as session:
        assert sequences.due_enrollments(session, services.default_sequence, now=clock(), limit=10)
        thread = threading.Thread(target=unsubscribe)
        thread.start()
        wait_until_a_backend_waits_for_a_lock(app)
        report = sequences.advance_due(
            session, services.default_sequence, now=clock(), default_zone=UTC_ZONE
        )
        assert report.queued == 1
    thread.join(timeout=30)
    assert outcome == {"unsubscribe": "done"}
    with services.database.read() as session:
        step_rows = session.scalars(
            select(OutboxMessage.status).where(OutboxMessage.kind == "sequence")
        ).all()
    assert step_rows == [OutboxStatus.CANCELLED]
    run_until(app, clock, clock() + timedelta(days=5))
    assert sent_steps(app, reader) == []


@pytest.mark.slow
def test_a_step_queued_when_the_reader_left_comes_when_they_return(seq_app, clock):
    app = seq_app(steps_toml(("a", "1 day"), ("b", "1 day"), ("c", "1 day")))
    clock.now = datetime(2026, 11, 24, 15, 0, tzinfo=UTC)
    reader = confirm_reader(app, "reader@example.com")
    run_tick(app)
    clock.now = datetime(2026, 11, 25, 8, 0, tzinfo=UTC)
    services = services_of(app)
    with services.database.begin() as session:  # step a is queued, not yet sent ...
        sequences.advance_due(
            session, services.default_sequence, now=clock(), default_zone=UTC_ZONE
        )
    with services.database.begin() as session:  # ... when the reader leaves
        subscriptions.unsubscribe(session, reader, via="test", now=clock())
    assert enrollment(app, reader).steps_passed == []
    clock.advance(days=3)
    confirm_reader(app, "reader@example.com")
    run_until(app, clock, clock() + timedelta(days=10))
    assert [s for s, _ in sent_steps(app, reader)] == ["a", "b", "c"]


@pytest.mark.slow
def test_an_unsubscribe_stops_a_step_already_claimed_for_sending(seq_app, clock, smtp):
    from tests.test_dispatch import RecordingMailer

    app = seq_app(steps_toml(("a", "1 day"), ("b", "1 day")))
    clock.now = datetime(2026, 11, 24, 15, 0, tzinfo=UTC)
    readers = {
        "one@example.com": confirm_reader(app, "one@example.com"),
        "two@example.com": confirm_reader(app, "two@example.com"),
    }
    run_tick(app)
    clock.now = datetime(2026, 11, 25, 8, 0, tzinfo=UTC)
    services = services_of(app)
    with services.database.begin() as session:
        sequences.advance_due(
            session, services.default_sequence, now=clock(), default_zone=UTC_ZONE
        )
    # Both steps are due at the same moment, so either may go first: whoever gets the
    # first email stays, and the other leaves before theirs goes out.
    order: list[str] = []

    def leave_after_the_first(message):
        order.append(message.to)
        if len(order) == 1:
            (other,) = set(readers) - {message.to}
            with services.database.begin() as session:
                subscriptions.unsubscribe(session, readers[other], via="test", now=clock())

    mailer = RecordingMailer(services.make_mailer(), leave_after_the_first)
    report = services.make_dispatcher("w").drain(mailer, clock=services.clock)
    mailer.close()
    stays = readers[order[0]]
    (leaves,) = set(readers.values()) - {stays}
    assert report.claimed == 2 and report.sent == 1  # both were claimed in one batch
    assert [s for s, _ in sent_steps(app, stays)] == ["a"]
    assert sent_steps(app, leaves) == []
    assert enrollment(app, leaves).status is EnrollmentStatus.STOPPED
    assert enrollment(app, leaves).steps_passed == []


@pytest.mark.slow
def test_a_step_held_back_by_a_mail_outage_still_arrives_in_the_morning(seq_app, clock, smtp):
    app = seq_app(steps_toml(("a", "1 day")), **HOURLY_RETRIES)
    clock.now = datetime(2026, 11, 24, 15, 0, tzinfo=UTC)
    reader = confirm_reader(app, "reader@example.com", zone="Europe/Berlin")
    run_tick(app)
    smtp.faults.mail = "421 4.3.2 Down for maintenance"
    run_until(app, clock, datetime(2026, 11, 26, 0, 30, tzinfo=UTC))  # 01:30 in Berlin
    assert sent_steps(app, reader) == []
    smtp.faults.mail = None  # back at 01:30 Berlin time: the step must wait for 08:00
    run_until(app, clock, datetime(2026, 11, 27, tzinfo=UTC))
    assert sent_steps(app, reader) == [("a", datetime(2026, 11, 26, 7, 0, tzinfo=UTC))]


@pytest.mark.slow
def test_readers_whose_steps_all_left_the_file_wait_instead_of_finishing(seq_app, clock, caplog):
    app = seq_app(steps_toml(("a", "1 day"), ("b", "1 day")))
    reader = confirm_reader(app, "reader@example.com")
    advance_past_first_step(app, clock, reader)
    app = seq_app(steps_toml(("a-renamed", "1 day"), ("b", "1 day")))  # a typo in an id
    with caplog.at_level("WARNING", logger="service.sequences"):
        run_until(app, clock, clock() + timedelta(days=3))
    assert "none of which is in the sequence" in caplog.text
    assert enrollment(app, reader).status is EnrollmentStatus.ACTIVE
    assert [s for s, _ in sent_steps(app, reader)] == ["a"]
    app = seq_app(steps_toml(("a", "1 day"), ("b", "1 day")))  # the owner puts it right
    run_until(app, clock, clock() + timedelta(days=5))
    assert [s for s, _ in sent_steps(app, reader)] == ["a", "b"]


@pytest.mark.slow
def test_a_step_whose_row_names_no_loaded_sequence_goes_with_the_only_one(seq_app, clock, smtp):
    """Each step's row names its sequence. One that names none loaded (a row from before a
    rename) goes with the only sequence there is, as when there was only ever one."""
    app = seq_app(steps_toml(("a", "1 day"), ("b", "3 days")))
    reader = confirm_reader(app, "ann@example.com")
    run_pass(app)  # the confirmation and the welcome
    smtp.handler.received.clear()
    services = services_of(app)
    clock.now = datetime(2026, 11, 25, 8, 0, tzinfo=UTC)  # the reader's sending hour
    template = services.default_sequence.step("a").template
    with services.database.begin() as session:
        row = outbox.step_row(
            reader,
            "ann@example.com",
            template=template,
            sequence="an-earlier-name",
            step="a",
            dedupe_key="sequence:an-earlier-name:1:a",
            now=clock(),
        )
        outbox.enqueue_steps(session, [row], now=clock())
    assert run_pass(app).sent == 1
    (step,) = smtp.handler.wait_for(1)
    assert step.rcpt_tos == ["ann@example.com"]
