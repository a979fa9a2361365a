"""Many funnels: lead magnets as folders, a page and form each, joining a second funnel,
several sequences under one daily cap, `then` and `exclude`, finishing tags."""

from __future__ import annotations

import json
import threading
from collections import Counter, defaultdict
from datetime import timedelta
from zoneinfo import ZoneInfo

import pytest
import sqlalchemy as sa
from sqlalchemy import select

from service import sequences, tags
from service.config import ConfigError
from service.emails import SHIPPED_EMAILS
from service.models import (
    ConsentRecord,
    Enrollment,
    EnrollmentStatus,
    Event,
    MagnetRequest,
    OutboxMessage,
    OutboxStatus,
)
from service.tokens import Purpose
from tests.helpers import get_subscriber, link_path, run_pass, services_of, sign_up
from tests.test_sequences import run_tick, run_until

PLANNER = "foam-rolling-planner"
GUIDE = "glute-guide"


def confirm_by_email(app, client, smtp, email: str, count: int) -> None:
    """Follow the confirmation link in the `count`-th email that arrived."""
    received = smtp.handler.wait_for(count)[count - 1]
    assert received.rcpt_tos == [email]
    path = link_path(received.part("plain"), "/confirm/")
    assert client.post(path).status_code == 303


def sent_to(app, email: str) -> list[OutboxMessage]:
    with services_of(app).database.read() as session:
        return list(
            session.scalars(
                select(OutboxMessage)
                .where(OutboxMessage.to_address == email)
                .order_by(OutboxMessage.id)
            )
        )


def enrollments_of(app, subscriber_id: int) -> dict[str, EnrollmentStatus]:
    with services_of(app).database.read() as session:
        rows = session.execute(
            select(Enrollment.sequence, Enrollment.status).where(
                Enrollment.subscriber_id == subscriber_id
            )
        )
        return dict(rows.all())


# --- magnets as data -----------------------------------------------------------------


def test_the_shipped_content_has_two_magnets_each_with_its_sequence(app):
    services = services_of(app)
    assert list(services.magnets) == [GUIDE, PLANNER]
    assert services.magnets[GUIDE].sequence == "back-pain-tips"
    assert services.magnets[PLANNER].sequence == "planner-week"
    assert services.magnets[PLANNER].all_tags == (f"magnet:{PLANNER}", "topic:foam-rolling")
    assert "planner-week" in services.sequences


@pytest.mark.parametrize(
    "toml, message",
    [
        ('title = "X"\nurl = "ftp://x"\nincentive_template = "welcome"', "'url' must be"),
        ('title = "X"\nfile = "nope.pdf"\nincentive_template = "welcome"', "not a file"),
        ('title = "X"\nurl = "https://x.example"\nincentive_template = "nope"', "nope.txt"),
        (
            'title = "X"\nurl = "https://x.example"\nincentive_template = "welcome"\n'
            'sequence = "missing"',
            "no sequence called 'missing'",
        ),
        ('url = "https://x.example"\nincentive_template = "welcome"', "'title'"),
    ],
)
def test_a_broken_magnet_stops_the_service_naming_it(make_app, tmp_path, toml, message):
    folder = tmp_path / "content" / "magnets" / "broken-one"
    folder.mkdir(parents=True)
    landing = '\n[landing]\npage_title="p"\nheading="h"\nlede="l"\nform_heading="f"\nbutton="b"\n'
    (folder / "magnet.toml").write_text(toml + landing)
    with pytest.raises(ConfigError) as raised:
        make_app(CONTENT_DIR=str(tmp_path / "content"))
    assert "broken-one" in str(raised.value) and message in str(raised.value)


def test_an_owners_magnet_is_served_from_content_dir(make_app, tmp_path):
    folder = tmp_path / "content" / "magnets" / "video-course"
    folder.mkdir(parents=True)
    (folder / "magnet.toml").write_text(
        'title = "The Back Course"\nurl = "https://videos.example.com/course"\n'
        'incentive_template = "welcome"\n[landing]\npage_title = "Course"\n'
        'heading = "Watch the course"\nlede = "Free videos."\nform_heading = "Get it"\n'
        'button = "Send me the course"\n'
    )
    app = make_app(CONTENT_DIR=str(tmp_path / "content"))
    page = app.test_client().get("/free/video-course").get_data(as_text=True)
    assert "Watch the course" in page and 'value="video-course"' in page
    assert "Send me the course" in page


@pytest.mark.slow
def test_magnets_commands_list_and_check_every_magnet(app):
    runner = app.test_cli_runner()
    listed = runner.invoke(args=["magnets", "list"])
    assert listed.exit_code == 0, listed.output
    assert f"{PLANNER}: The One-Week" in listed.output and "/free/glute-guide" in listed.output
    checked = runner.invoke(args=["magnets", "check"])
    assert checked.exit_code == 0, checked.output
    assert "2 magnets, all fine" in checked.output


def test_embed_snippet_prints_the_magnets_form(app):
    runner = app.test_cli_runner()
    result = runner.invoke(args=["embed-snippet", "--magnet", PLANNER])
    assert result.exit_code == 0, result.output
    assert f'name="magnet" value="{PLANNER}"' in result.output
    assert "Send me the free planner" in result.output
    unknown = runner.invoke(args=["embed-snippet", "--magnet", "nope"])
    assert unknown.exit_code != 0 and "no magnet 'nope'" in unknown.output


# --- pages and the API ---------------------------------------------------------------


def test_each_magnet_has_its_landing_page(client):
    home = client.get("/").get_data(as_text=True)
    assert "Ease your low back" in home and f'value="{GUIDE}"' in home
    page = client.get(f"/free/{PLANNER}")
    assert page.status_code == 200
    text = page.get_data(as_text=True)
    assert "Get the free planner" in text and f'value="{PLANNER}"' in text
    assert "Foam Rolling and Stretching Planner" in text
    assert client.get("/free/nope").status_code == 404


def test_an_unknown_magnet_is_a_422_on_the_form_and_the_api(app, client):
    form = client.post("/subscribe", data={"email": "a@example.com", "magnet": "nope"})
    assert form.status_code == 422
    api = client.post("/api/v1/subscribers", json={"email": "a@example.com", "magnet": "nope"})
    assert api.status_code == 422 and "magnet" in api.get_json()["errors"]
    assert get_subscriber(app, "a@example.com") is None


def test_the_api_answers_the_same_whatever_state_the_reader_is_in(app, client, smtp):
    first = client.post("/api/v1/subscribers", json={"email": "b@example.com", "magnet": GUIDE})
    again = client.post("/api/v1/subscribers", json={"email": "b@example.com", "magnet": PLANNER})
    assert first.status_code == again.status_code == 202
    assert first.get_json() == again.get_json()


def test_the_public_signup_cannot_tag_a_reader(app, client):
    client.post(
        "/api/v1/subscribers",
        json={"email": "c@example.com", "magnet": GUIDE, "tags": ["vip"], "tag": "vip"},
    )
    sign_up(client, "d@example.com", tags="vip", tag="vip")
    with services_of(app).database.read() as session:
        for email in ("c@example.com", "d@example.com"):
            assert tags.of(session, get_subscriber(app, email).id) == []


# --- joining a second funnel ---------------------------------------------------------


@pytest.fixture
def funnel_app(make_app, smtp):
    return make_app(MAIL_URL=smtp.url)


@pytest.mark.slow
def test_two_magnets_end_to_end(funnel_app, smtp):
    app, client = funnel_app, funnel_app.test_client()
    email = "ann@example.com"
    sign_up(client, email, magnet=GUIDE)
    run_pass(app)
    confirm_by_email(app, client, smtp, email, 1)
    run_pass(app)
    welcome = smtp.handler.wait_for(2)[1]
    assert welcome.message["Subject"] == "Your Glute-Strengthening Guide is here"

    services_of(app).clock.advance(minutes=2)
    sign_up(client, email, magnet=PLANNER)
    run_pass(app)
    received = smtp.handler.wait_for(3)
    assert len(received) == 3  # the planner; no second confirmation
    planner = received[2]
    assert "planner" in planner.message["Subject"].lower()
    assert "confirm" not in planner.message["Subject"].lower()
    download = client.get(link_path(planner.part("plain"), "/download/"))
    assert download.status_code == 200
    assert download.headers["Content-Disposition"].endswith(
        "foam-rolling-and-stretching-planner.pdf"
    )
    assert download.data.startswith(b"%PDF")
    guide_download = client.get(link_path(welcome.part("plain"), "/download/"))
    assert "glute-strengthening-guide.pdf" in guide_download.headers["Content-Disposition"]

    reader = get_subscriber(app, email)
    assert enrollments_of(app, reader.id) == {
        "back-pain-tips": EnrollmentStatus.ACTIVE,
        "planner-week": EnrollmentStatus.ACTIVE,
    }
    with services_of(app).database.read() as session:
        assert tags.of(session, reader.id) == [
            f"magnet:{PLANNER}",
            f"magnet:{GUIDE}",
            "topic:foam-rolling",
        ]
        consents = session.scalars(
            select(ConsentRecord.action).where(ConsentRecord.subscriber_id == reader.id)
        ).all()
        assert consents == ["signup", "confirm", "request"]
        downloads = session.scalars(
            select(Event.detail).where(Event.subscriber_id == reader.id, Event.kind == "downloaded")
        ).all()
        assert sorted(d["magnet"] for d in downloads) == sorted([GUIDE, PLANNER])


def test_a_pending_reader_who_asks_for_two_magnets_confirms_once_and_gets_both(funnel_app, smtp):
    app, client = funnel_app, funnel_app.test_client()
    email = "bo@example.com"
    sign_up(client, email, magnet=PLANNER)
    sign_up(client, email, magnet=GUIDE)  # inside the cooldown: no second confirmation
    run_pass(app)
    assert len(smtp.handler.wait_for(1)) == 1
    assert "foam rolling planner" in smtp.handler.received[0].message["Subject"]
    confirm_by_email(app, client, smtp, email, 1)
    run_pass(app)
    subjects = sorted(r.message["Subject"] for r in smtp.handler.wait_for(3)[1:])
    assert subjects[0] == "Your Glute-Strengthening Guide is here"
    assert "planner" in subjects[1].lower()
    assert set(enrollments_of(app, get_subscriber(app, email).id)) == {
        "back-pain-tips",
        "planner-week",
    }
    with services_of(app).database.read() as session:
        delivered = session.scalars(
            select(MagnetRequest.delivered_at).where(
                MagnetRequest.subscriber_id == get_subscriber(app, email).id
            )
        ).all()
        assert len(delivered) == 2 and all(delivered)


def test_asking_again_for_the_same_magnet_sends_its_link_again_within_the_cooldown(
    funnel_app, smtp, clock
):
    app, client = funnel_app, funnel_app.test_client()
    email = "cy@example.com"
    sign_up(client, email, magnet=PLANNER)
    run_pass(app)
    confirm_by_email(app, client, smtp, email, 1)
    run_pass(app)
    clock.advance(hours=2)
    sign_up(client, email, magnet=PLANNER)
    sign_up(client, email, magnet=PLANNER)  # inside the cooldown: nothing
    run_pass(app)
    received = smtp.handler.wait_for(3)
    assert len(received) == 3
    assert "planner" in received[2].message["Subject"].lower()
    assert "again" in received[2].message["Subject"].lower()
    assert (
        client.get(link_path(received[2].part("plain"), "/download/"))
        .headers["Content-Disposition"]
        .endswith("foam-rolling-and-stretching-planner.pdf")
    )


# --- several sequences, one calm inbox -----------------------------------------------


def confirm_for(app, client, email: str, zone: str, *magnets: str) -> int:
    """A reader who asked for `magnets` and confirmed (through the pages)."""
    for magnet in magnets:
        client.post("/subscribe", data={"email": email, "magnet": magnet, "time_zone": zone})
    reader = get_subscriber(app, email)
    token = services_of(app).tokens.make(Purpose.CONFIRM, reader.id, now=services_of(app).clock())
    assert client.post(f"/confirm/{token}").status_code == 303
    return reader.id


@pytest.mark.slow
def test_the_daily_cap_holds_across_sequences_for_sixty_days_in_two_zones(funnel_app, clock):
    app, client = funnel_app, funnel_app.test_client()
    zones = {"east@example.com": "Asia/Tokyo", "west@example.com": "America/Los_Angeles"}
    for email, zone in zones.items():
        confirm_for(app, client, email, zone, GUIDE, PLANNER)
    run_until(app, clock, clock() + timedelta(days=60))
    services = services_of(app)
    expected = {
        name: len(services.sequences[name].steps) - (1 if name == "back-pain-tips" else 0)
        for name in ("back-pain-tips", "planner-week")
    }  # the course step is skipped while its link is empty
    for email, zone in zones.items():
        steps = [m for m in sent_to(app, email) if m.kind == "sequence"]
        assert all(m.status is OutboxStatus.SENT for m in steps)
        days = Counter(m.sent_at.astimezone(ZoneInfo(zone)).date() for m in steps)
        assert max(days.values()) == 1, f"{email} got two sequence emails on one day"
        per_sequence = Counter(m.context["sequence"] for m in steps)
        assert per_sequence == expected
        assert len({m.dedupe_key for m in steps}) == len(steps)  # nothing twice
        hours = {m.sent_at.astimezone(ZoneInfo(zone)).hour for m in steps}
        assert hours == {8}
    with services.database.read() as session:
        assert {e.status for e in session.scalars(select(Enrollment))} == {
            EnrollmentStatus.FINISHED
        }


FIRST_STEPS = (("planner-week", "planner-day-one"), ("back-pain-tips", "why-glutes"))


def first_steps_due(session, reader: int, morning, *, planner_earlier_by=timedelta(0)) -> None:
    """The reader's first step of each sequence planned for `morning` (the planner's
    `planner_earlier_by` before it)."""
    for name, step in FIRST_STEPS:
        due = morning - planner_earlier_by if name == "planner-week" else morning
        session.execute(
            Enrollment.__table__.update()
            .where(Enrollment.subscriber_id == reader, Enrollment.sequence == name)
            .values(
                next_step=step,
                next_due_at=due,
                last_step_at=morning - timedelta(days=5),
                steps_passed=[],
            )
        )


def test_when_two_steps_fall_due_the_same_day_the_earlier_goes_and_the_other_waits(
    funnel_app, clock
):
    app, client = funnel_app, funnel_app.test_client()
    reader = confirm_for(app, client, "dee@example.com", "UTC", GUIDE, PLANNER)
    services = services_of(app)
    morning = clock().replace(hour=8, minute=0, second=0, microsecond=0) + timedelta(days=3)
    clock.now = morning
    with services.database.begin() as session:
        # Both are planned for this morning; the planner's was due first.
        first_steps_due(session, reader, morning, planner_earlier_by=timedelta(minutes=5))
        report = sequences.advance_due(
            session, services.sequences, now=morning, default_zone=ZoneInfo("UTC")
        )
    assert (report.queued, report.deferred) == (1, 1)
    steps = [m for m in sent_to(app, "dee@example.com") if m.kind == "sequence"]
    assert [m.context["sequence"] for m in steps] == ["planner-week"]
    assert steps[0].day_slot == f"{reader}:{morning.date().isoformat()}:0"
    with services.database.read() as session:
        waiting = session.scalar(
            select(Enrollment).where(
                Enrollment.subscriber_id == reader, Enrollment.sequence == "back-pain-tips"
            )
        )
        assert waiting.next_step == "why-glutes"
        assert waiting.next_due_at == morning + timedelta(days=1)
        assert waiting.steps_passed == []


def test_a_higher_cap_lets_that_many_through(make_app, smtp, clock):
    app = make_app(MAIL_URL=smtp.url, MAX_SEQUENCE_EMAILS_PER_DAY=2)
    client = app.test_client()
    reader = confirm_for(app, client, "eve@example.com", "UTC", GUIDE, PLANNER)
    services = services_of(app)
    morning = clock().replace(hour=9, minute=0, second=0, microsecond=0) + timedelta(days=3)
    with services.database.begin() as session:
        first_steps_due(session, reader, morning)
    clock.now = morning
    run_tick(app)
    steps = [m for m in sent_to(app, "eve@example.com") if m.kind == "sequence"]
    assert len(steps) == 2


# --- then, exclude, finishing tags ---------------------------------------------------


def write_sequences(content, **bodies: str) -> None:
    folder = content / "emails" / "sequences"
    folder.mkdir(parents=True, exist_ok=True)
    for name, extra in bodies.items():
        (folder / f"{name}.toml").write_text(
            f'name = "{name}"\nsend_hour = 8\nlatest_hour = 20\n{extra}\n'
            '[[steps]]\nid = "one"\ntemplate = "planner/01_first_session"\ndelay = "1 day"\n'
        )


@pytest.mark.slow
def test_finishing_a_sequence_tags_the_reader_and_starts_then(make_app, smtp, clock, tmp_path):
    content = tmp_path / "content"
    write_sequences(content, **{"planner-week": 'then = "after-planner"', "after-planner": ""})
    app = make_app(MAIL_URL=smtp.url, CONTENT_DIR=str(content))
    reader = confirm_for(app, app.test_client(), "fay@example.com", "UTC", PLANNER)
    assert enrollments_of(app, reader)["planner-week"] is EnrollmentStatus.ACTIVE
    run_until(app, clock, clock() + timedelta(days=10))
    assert enrollments_of(app, reader) == {
        "planner-week": EnrollmentStatus.FINISHED,
        "after-planner": EnrollmentStatus.FINISHED,
    }
    with services_of(app).database.read() as session:
        reader_tags = tags.of(session, reader)
    assert "finished:planner-week" in reader_tags and "finished:after-planner" in reader_tags
    steps = [m.context["sequence"] for m in sent_to(app, "fay@example.com") if m.kind == "sequence"]
    assert steps == ["planner-week", "after-planner"]


def test_a_sequence_may_leave_out_readers_of_another(make_app, smtp, clock, tmp_path):
    content = tmp_path / "content"
    write_sequences(content, **{"planner-week": 'exclude = ["back-pain-tips"]'})
    app = make_app(MAIL_URL=smtp.url, CONTENT_DIR=str(content))
    client = app.test_client()
    both = confirm_for(app, client, "gus@example.com", "UTC", GUIDE, PLANNER)
    only = confirm_for(app, client, "hal@example.com", "UTC", PLANNER)
    assert set(enrollments_of(app, both)) == {"back-pain-tips"}
    assert set(enrollments_of(app, only)) == {"planner-week"}


@pytest.mark.parametrize(
    "extra, message",
    [
        ('then = "nowhere"', "no sequence called 'nowhere'"),
        ('exclude = ["nowhere"]', "no sequence called 'nowhere'"),
        ('then = "planner-week"', "cannot name the sequence itself"),
    ],
)
def test_a_then_or_exclude_that_names_nothing_stops_the_service(make_app, tmp_path, extra, message):
    content = tmp_path / "content"
    write_sequences(content, **{"planner-week": extra})
    with pytest.raises(ConfigError, match=message):
        make_app(CONTENT_DIR=str(content))


def test_a_then_loop_stops_the_service(make_app, tmp_path):
    content = tmp_path / "content"
    write_sequences(content, **{"planner-week": 'then = "other"', "other": 'then = "planner-week"'})
    with pytest.raises(ConfigError, match="leads back"):
        make_app(CONTENT_DIR=str(content))


# --- two schedulers on PostgreSQL ----------------------------------------------------


def two_schedulers_at_once(app, first: str, second: str, *, at) -> tuple:
    """Scheduler one moves sequence `first` and holds its transaction open; scheduler two
    moves `second` meanwhile (waiting on one's day slot); then one commits. Their reports."""
    services = services_of(app)
    zone = ZoneInfo("UTC")
    reports = {}
    one = services.database.begin()
    session = one.__enter__()
    reports["one"] = sequences.advance_due(
        session, services.sequences[first], now=at, default_zone=zone
    )

    def other_scheduler() -> None:
        with services.database.begin() as other:
            reports["two"] = sequences.advance_due(
                other, services.sequences[second], now=at, default_zone=zone
            )

    thread = threading.Thread(target=other_scheduler)
    thread.start()
    thread.join(timeout=1)  # it waits on one's uncommitted day slot
    waited = thread.is_alive()
    one.__exit__(None, None, None)
    thread.join(timeout=30)
    assert waited, "the second scheduler did not wait for the first's day slot"
    return reports["one"], reports["two"]


# Two writers at once: PostgreSQL only (SQLite's writers take turns).
@pytest.mark.slow
@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_two_schedulers_at_once_keep_the_daily_cap(funnel_app, clock):
    """Each scheduler moves a different sequence of the same reader at the same moment:
    the unique day slot lets one step through, the other waits for the next morning."""
    app, client = funnel_app, funnel_app.test_client()
    reader = confirm_for(app, client, "ike@example.com", "UTC", GUIDE, PLANNER)
    services = services_of(app)
    morning = clock().replace(hour=9, minute=0, second=0, microsecond=0) + timedelta(days=3)
    with services.database.begin() as session:
        first_steps_due(session, reader, morning)
    one, two = two_schedulers_at_once(app, "planner-week", "back-pain-tips", at=morning)
    assert (one.queued, two.queued, two.deferred) == (1, 0, 1)
    steps = [m for m in sent_to(app, "ike@example.com") if m.kind == "sequence"]
    assert [m.context["sequence"] for m in steps] == ["planner-week"]
    by_day = defaultdict(list)
    for m in steps:
        by_day[m.day_slot.rsplit(":", 1)[0]].append(m)
    assert all(len(v) == 1 for v in by_day.values())


# --- existing installations ----------------------------------------------------------


@pytest.mark.slow
def test_a_database_of_the_previous_revision_migrates_with_nothing_sent_twice_or_skipped(
    tmp_path, clock, smtp
):
    """Readers at every place in the sequence (and paused, finished, stopped, pending) on a
    database made by revision 0013 carry on after the upgrade exactly where they stood."""
    from service import migrate
    from service.__init__ import create_app
    from tests.conftest import settings_for

    url = f"sqlite:///{tmp_path / 'old.db'}"
    migrate.upgrade(url, "0013")
    engine = sa.create_engine(url)
    steps = [step.id for step in sequences.load(SHIPPED_EMAILS / "sequence.toml").steps]
    now = clock()
    stamp = now.replace(tzinfo=None) - timedelta(days=1)
    readers = {}  # email -> (status, steps passed)
    for n in range(len(steps) + 1):
        readers[f"at{n}@example.com"] = ("active", steps[:n])
    readers["paused@example.com"] = ("paused", steps[:2])
    readers["finished@example.com"] = ("finished", steps)
    readers["stopped@example.com"] = ("stopped", steps[:3])
    with engine.begin() as connection:
        for email, (status, passed) in readers.items():
            subscriber_status = "unsubscribed" if status == "stopped" else "confirmed"
            subscriber_id = connection.execute(
                sa.text(
                    "INSERT INTO subscribers (email, email_key, mailbox_key, status, time_zone,"
                    " source, created_at, confirmed_at) VALUES (:e, :e, :e, :s, 'UTC', 'form',"
                    " :t, :t) RETURNING id"
                ),
                {"e": email, "s": subscriber_status, "t": stamp},
            ).scalar_one()
            connection.execute(
                sa.text(
                    "INSERT INTO enrollments (subscriber_id, sequence, status, enrolled_at,"
                    " steps_passed, next_step, next_due_at, last_step_at) VALUES (:i,"
                    " 'back-pain-tips', :s, :t, :p, NULL, :due, :t)"
                ),
                {
                    "i": subscriber_id,
                    "s": status,
                    "t": stamp,
                    "p": json.dumps(passed),
                    "due": stamp if status == "active" else None,
                },
            )
            sent = [("welcome", f"welcome:glute-guide:{subscriber_id}", None)] + [
                ("sequence", f"sequence:back-pain-tips:{subscriber_id}:{step}", step)
                for step in passed
            ]
            for kind, key, step in sent:
                connection.execute(
                    sa.text(
                        "INSERT INTO outbox (subscriber_id, to_address, kind, template, context,"
                        " sequence_step, dedupe_key, status, attempts, due_at, created_at,"
                        " sent_at) VALUES (:i, :e, :k, 'x', :c, :st, :key, 'sent', 1, :t, :t, :t)"
                    ),
                    {
                        "i": subscriber_id,
                        "e": email,
                        "k": kind,
                        "c": json.dumps({"sequence": "back-pain-tips", "step": step}),
                        "st": step,
                        "key": key,
                        "t": stamp,
                    },
                )
        connection.execute(
            sa.text(
                "INSERT INTO subscribers (email, email_key, mailbox_key, status, time_zone,"
                " source, created_at) VALUES ('pending@example.com', 'pending@example.com',"
                " 'pending@example.com', 'pending', 'UTC', 'form', :t)"
            ),
            {"t": stamp},
        )
    engine.dispose()

    migrate.upgrade(url)
    app = create_app(settings_for(url, tmp_path, MAIL_URL=smtp.url))
    app.extensions["newsletter"].clock = clock
    run_until(app, clock, clock() + timedelta(days=120))

    course = services_of(app).sequences["back-pain-tips"].step("course")
    assert course is not None and course.requires  # skipped: the course link is empty
    for email, (status, passed) in readers.items():
        rows = sent_to(app, email)
        assert not any(
            m.kind == "welcome"
            and m.status is OutboxStatus.SENT
            and m.sent_at > stamp.replace(tzinfo=now.tzinfo)
            for m in rows
        ), f"{email} got the guide again"
        got = [m.sequence_step for m in rows if m.kind == "sequence"]
        assert len(got) == len(set(got)), f"{email} got a step twice"
        later = [s for s in steps[len(passed) :] if s != "course"]
        if status == "active":
            assert got == passed + later, f"{email} skipped a step or got one out of order"
        else:
            assert got == passed, f"{email} ({status}) got something new"
    with services_of(app).database.read() as session:
        requests = dict(
            session.execute(select(MagnetRequest.subscriber_id, MagnetRequest.magnet)).all()
        )
        assert len(requests) == len(readers) + 1 and set(requests.values()) == {GUIDE}
        finished_id = get_subscriber(app, "finished@example.com").id
        assert "finished:back-pain-tips" in tags.of(session, finished_id)
        assert f"magnet:{GUIDE}" in tags.of(session, finished_id)


# --- the owner's side ----------------------------------------------------------------


def test_sequence_commands_name_the_sequence(app, client):
    reader = confirm_for(app, client, "jo@example.com", "UTC", GUIDE, PLANNER)
    runner = app.test_cli_runner()
    status = runner.invoke(args=["sequence", "status"])
    assert status.exit_code == 0
    assert "sequence 'back-pain-tips'" in status.output
    assert "sequence 'planner-week'" in status.output
    paused = runner.invoke(
        args=["sequence", "pause", "jo@example.com", "--sequence", "planner-week"]
    )
    assert paused.exit_code == 0 and "paused" in paused.output
    assert enrollments_of(app, reader) == {
        "back-pain-tips": EnrollmentStatus.ACTIVE,
        "planner-week": EnrollmentStatus.PAUSED,
    }
    unknown = runner.invoke(args=["sequence", "pause", "jo@example.com", "--sequence", "nope"])
    assert unknown.exit_code != 0 and "no sequence 'nope'" in unknown.output


@pytest.mark.slow
def test_the_subscriber_page_pauses_the_sequence_it_names(app, client):
    from tests.test_admin import create_admin, post, sign_in

    reader = confirm_for(app, client, "kay@example.com", "UTC", GUIDE, PLANNER)
    create_admin(app)
    assert sign_in(client).status_code == 303
    page = client.get(f"/admin/subscribers/{reader}").get_data(as_text=True)
    assert "Pause back-pain-tips" in page and "Pause planner-week" in page
    response = post(client, f"/admin/subscribers/{reader}/pause", sequence="planner-week")
    assert response.status_code == 303
    assert enrollments_of(app, reader) == {
        "back-pain-tips": EnrollmentStatus.ACTIVE,
        "planner-week": EnrollmentStatus.PAUSED,
    }
    assert post(client, f"/admin/subscribers/{reader}/pause", sequence="nope").status_code == 404


@pytest.mark.slow
def test_the_data_export_holds_tags_magnets_and_choices(app, client):
    from tests.test_admin import create_admin, sign_in

    reader = confirm_for(app, client, "lu@example.com", "UTC", GUIDE, PLANNER)
    create_admin(app)
    assert sign_in(client).status_code == 303
    data = client.get(f"/admin/subscribers/{reader}/data.json").get_json()
    assert {t["tag"] for t in data["tags"]} == {
        f"magnet:{GUIDE}",
        f"magnet:{PLANNER}",
        "topic:foam-rolling",
    }
    assert {m["magnet"] for m in data["lead_magnets"]} == {GUIDE, PLANNER}
    assert all(m["delivered_at"] for m in data["lead_magnets"])
    assert data["choices"] == {"paused_until": None, "newsletters": True}


def test_a_sequence_joined_during_the_readers_pause_waits_for_its_end(app, client, clock):
    from service import preferences

    services = services_of(app)
    reader = confirm_for(app, client, "max@example.com", "UTC", GUIDE)
    with services.database.begin() as session:
        subscriber = preferences.pause_all(session, reader, 2, now=clock())
        until = subscriber.paused_until
    clock.advance(hours=2)
    client.post("/subscribe", data={"email": "max@example.com", "magnet": PLANNER})
    with services.database.read() as session:
        planner = session.scalar(
            select(Enrollment).where(
                Enrollment.subscriber_id == reader, Enrollment.sequence == "planner-week"
            )
        )
    assert planner.held_until == until and planner.next_due_at == until
    run_until(app, clock, until - timedelta(minutes=1))
    assert [m for m in sent_to(app, "max@example.com") if m.kind == "sequence"] == []


# --- found by review -------------------------------------------------------------------


def write_sequence(
    content, name: str, delays: list[str], extra: str = "", *, prefix: str = "", send_hour=8
) -> None:
    """A sequence file of steps `<prefix or name>-s<n>`, each with a planner email."""
    folder = content / "emails" / "sequences"
    folder.mkdir(parents=True, exist_ok=True)
    steps = "".join(
        f'[[steps]]\nid = "{prefix or name}-s{n}"\ntemplate = "planner/01_first_session"\n'
        f'delay = "{delay}"\n'
        for n, delay in enumerate(delays)
    )
    (folder / f"{name}.toml").write_text(
        f'name = "{name}"\nsend_hour = {send_hour}\nlatest_hour = 20\n{extra}\n{steps}'
    )


def enroll_in(app, reader: int, *names: str) -> None:
    services = services_of(app)
    with services.database.begin() as session:
        for name in names:
            sequences.enroll(
                session, _Stub(reader, "x@example.com"), now=services.clock(), sequence=name
            )


class _Stub:
    def __init__(self, id: int, email: str) -> None:
        self.id, self.email = id, email


def steps_sent(app, email: str) -> list[tuple[str, str]]:
    return [
        (m.sequence_step, m.sent_at.date().isoformat())
        for m in sent_to(app, email)
        if m.kind == "sequence" and m.status is OutboxStatus.SENT
    ]


@pytest.mark.slow
def test_a_sequence_the_reader_left_is_not_started_again_by_then(make_app, smtp, clock, tmp_path):
    from service import preferences

    content = tmp_path / "content"
    write_sequence(content, "seq-a", ["1 day"], 'then = "seq-b"')
    write_sequence(content, "seq-b", ["1 day", "1 day"])
    app = make_app(MAIL_URL=smtp.url, CONTENT_DIR=str(content))
    reader = confirm_for(app, app.test_client(), "nia@example.com", "UTC", GUIDE)
    enroll_in(app, reader, "seq-a", "seq-b")
    with services_of(app).database.begin() as session:
        preferences.leave_sequence(session, reader, "seq-b", now=clock())
    run_until(app, clock, clock() + timedelta(days=10))
    assert enrollments_of(app, reader)["seq-a"] is EnrollmentStatus.FINISHED
    assert enrollments_of(app, reader)["seq-b"] is EnrollmentStatus.STOPPED
    assert not [s for s, _ in steps_sent(app, "nia@example.com") if s.startswith("seq-b")]


@pytest.mark.slow
def test_a_step_that_waited_for_the_cap_goes_before_one_that_came_due_later(
    make_app, smtp, clock, tmp_path
):
    """Two daily sequences at once: they take turns; neither waits for the other to end."""
    content = tmp_path / "content"
    write_sequence(content, "seq-a", ["1 day"] * 6)
    write_sequence(content, "seq-b", ["1 day"] * 3)
    app = make_app(MAIL_URL=smtp.url, CONTENT_DIR=str(content))
    reader = confirm_for(app, app.test_client(), "ola@example.com", "UTC", GUIDE)
    with services_of(app).database.begin() as session:
        session.execute(Enrollment.__table__.delete().where(Enrollment.subscriber_id == reader))
    enroll_in(app, reader, "seq-a", "seq-b")
    run_until(app, clock, clock() + timedelta(days=20))
    sent = steps_sent(app, "ola@example.com")
    days = [day for _, day in sent]
    assert len(days) == len(set(days)) == 9  # one a day, all of them
    b_steps = [n for n, (step, _) in enumerate(sent) if step.startswith("seq-b")]
    assert b_steps[0] <= 1, sent  # b's first step waited one day at most
    assert b_steps[-1] < 7, sent  # and b was not held back until a ended


@pytest.mark.slow
def test_the_owners_resume_after_the_readers_pause_is_timed_from_the_resume(
    make_app, smtp, clock, tmp_path
):
    from service import preferences

    content = tmp_path / "content"
    write_sequence(content, "seq-a", ["1 day", "7 days"])
    app = make_app(MAIL_URL=smtp.url, CONTENT_DIR=str(content))
    reader = confirm_for(app, app.test_client(), "pia@example.com", "UTC", GUIDE)
    with services_of(app).database.begin() as session:
        session.execute(Enrollment.__table__.delete().where(Enrollment.subscriber_id == reader))
    enroll_in(app, reader, "seq-a")
    run_until(app, clock, clock() + timedelta(days=2))  # the first step went
    services = services_of(app)
    with services.database.begin() as session:
        sequences.pause(session, reader, sequence="seq-a", now=clock())
        preferences.pause_all(session, reader, 2, now=clock())
    clock.advance(days=40)  # long after the reader's pause ended
    with services.database.begin() as session:
        assert sequences.resume(session, reader, sequence="seq-a", now=clock())
    resumed = clock()
    run_until(app, clock, clock() + timedelta(days=10))
    (second,) = [m for m in sent_to(app, "pia@example.com") if m.sequence_step == "seq-a-s1"]
    # Seven days from the resume, at the send hour (not at once, as a stale hold had it).
    assert second.sent_at.date() == resumed.date() + timedelta(days=7)


def test_a_pause_holds_a_finished_sequences_last_step_still_waiting_to_go(app, client, clock):
    from service import preferences

    services = services_of(app)
    reader = confirm_for(app, client, "quin@example.com", "UTC", PLANNER)
    with services.database.begin() as session:
        # Where the planner stands just after its last step was queued, not yet sent.
        session.execute(
            Enrollment.__table__.update()
            .where(Enrollment.subscriber_id == reader)
            .values(
                status=EnrollmentStatus.FINISHED,
                steps_passed=["planner-day-one", "planner-mid-week", "planner-next-week"],
                next_due_at=None,
            )
        )
        from service import outbox as outbox_module

        outbox_module.enqueue_steps(
            session,
            [
                outbox_module.step_row(
                    reader,
                    "quin@example.com",
                    template="planner/03_next_week",
                    sequence="planner-week",
                    step="planner-next-week",
                    dedupe_key=f"sequence:planner-week:{reader}:planner-next-week",
                    now=clock(),
                )
            ],
            now=clock(),
        )
        preferences.pause_all(session, reader, 2, now=clock())
    last = [m for m in sent_to(app, "quin@example.com") if m.kind == "sequence"]
    assert [m.status for m in last] == [OutboxStatus.CANCELLED]
    with services.database.read() as session:
        planner = session.scalar(select(Enrollment).where(Enrollment.subscriber_id == reader))
    assert planner.status is EnrollmentStatus.ACTIVE
    assert planner.steps_passed == ["planner-day-one", "planner-mid-week"]
    assert planner.held_until is not None


def test_the_longest_magnet_id_and_sequence_name_fit_their_tags(make_app, smtp, clock, tmp_path):
    content = tmp_path / "content"
    long_sequence = "s" * 63
    write_sequence(content, long_sequence, ["1 day"], prefix="long")
    long_magnet = "m" * 64
    folder = content / "magnets" / long_magnet
    folder.mkdir(parents=True)
    (folder / "magnet.toml").write_text(
        f'title = "Long"\nurl = "https://x.example/"\nincentive_template = "welcome"\n'
        f'sequence = "{long_sequence}"\n[landing]\npage_title = "p"\nheading = "h"\n'
        'lede = "l"\nform_heading = "f"\nbutton = "b"\n'
    )
    app = make_app(MAIL_URL=smtp.url, CONTENT_DIR=str(content))
    reader = confirm_for(app, app.test_client(), "rex@example.com", "UTC", long_magnet)
    run_until(app, clock, clock() + timedelta(days=3))
    with services_of(app).database.read() as session:
        carried = tags.of(session, reader)
    assert f"magnet:{long_magnet}" in carried and f"finished:{long_sequence}" in carried


@pytest.mark.slow
@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_a_revived_step_that_lost_its_day_slot_waits_for_the_next_morning(funnel_app, clock):
    """A step taken back by a pause and due again is revived, not inserted: when another
    scheduler took the reader's day slot meanwhile, it waits like a step that lost its
    slot on insert, and the other readers of the batch are not held up."""
    app, client = funnel_app, funnel_app.test_client()
    reader = confirm_for(app, client, "sam@example.com", "UTC", GUIDE, PLANNER)
    services = services_of(app)
    morning = clock().replace(hour=9, minute=0, second=0, microsecond=0) + timedelta(days=3)
    key = f"sequence:planner-week:{reader}:planner-day-one"
    with services.database.begin() as session:
        from service import outbox as outbox_module

        outbox_module.enqueue_steps(
            session,
            [
                outbox_module.step_row(
                    reader,
                    "sam@example.com",
                    template="planner/01_first_session",
                    sequence="planner-week",
                    step="planner-day-one",
                    dedupe_key=key,
                    now=clock(),
                )
            ],
            now=clock(),
        )
        session.execute(
            OutboxMessage.__table__.update()
            .where(OutboxMessage.dedupe_key == key)
            .values(status=OutboxStatus.CANCELLED)
        )
        first_steps_due(session, reader, morning)
    one, two = two_schedulers_at_once(app, "back-pain-tips", "planner-week", at=morning)
    assert (one.queued, two.queued, two.deferred) == (1, 0, 1)
    with services.database.read() as session:
        assert (
            session.scalar(select(OutboxMessage.status).where(OutboxMessage.dedupe_key == key))
            is OutboxStatus.CANCELLED
        )
        planner = session.scalar(
            select(Enrollment).where(
                Enrollment.subscriber_id == reader, Enrollment.sequence == "planner-week"
            )
        )
    assert planner.steps_passed == [] and planner.next_step == "planner-day-one"
    assert planner.next_due_at == morning.replace(hour=8) + timedelta(days=1)


@pytest.mark.slow
def test_an_expired_download_link_brings_a_fresh_one_for_its_own_magnet(funnel_app, smtp, clock):
    app, client = funnel_app, funnel_app.test_client()
    reader = confirm_for(app, client, "tia@example.com", "UTC", PLANNER)
    run_pass(app)
    old = services_of(app).tokens.make(Purpose.DOWNLOAD, reader, now=clock(), scope=PLANNER)
    clock.advance(days=400)
    assert client.get(f"/download/{old}").status_code == 410
    assert client.post(f"/resend/download/{old}").status_code == 303
    run_pass(app)
    again = smtp.handler.received[-1]
    assert "planner" in again.message["Subject"].lower()
    fresh = client.get(link_path(again.part("plain"), "/download/"))
    assert fresh.headers["Content-Disposition"].endswith("foam-rolling-and-stretching-planner.pdf")


@pytest.mark.slow
@pytest.mark.parametrize("batch", [500, 1])
def test_a_step_that_waited_goes_first_even_against_an_earlier_send_hour(
    make_app, smtp, clock, tmp_path, batch
):
    """The step that waited for the cap is due again at its own send hour (9:00); a step
    of another sequence at 8:00 (an earlier tick), or in an earlier batch, leaves it the
    day."""
    content = tmp_path / "content"
    write_sequence(content, "seq-a", ["1 day"] * 3, send_hour=9)
    write_sequence(content, "seq-b", ["1 day"] * 4, send_hour=8)
    app = make_app(MAIL_URL=smtp.url, CONTENT_DIR=str(content), SEQUENCE_BATCH_SIZE=batch)
    reader = confirm_for(app, app.test_client(), "uma@example.com", "UTC", GUIDE)
    with services_of(app).database.begin() as session:
        session.execute(Enrollment.__table__.delete().where(Enrollment.subscriber_id == reader))
    enroll_in(app, reader, "seq-a", "seq-b")
    run_until(app, clock, clock() + timedelta(days=12))
    sent = [step for step, _ in steps_sent(app, "uma@example.com")]
    days = [day for _, day in steps_sent(app, "uma@example.com")]
    assert len(days) == len(set(days)) == 7
    # They take turns: a's steps are not all left until b has finished.
    assert sent.index("seq-a-s2") < sent.index("seq-b-s3"), sent


def test_a_failing_sequence_pass_does_not_stop_sending(app, client, monkeypatch, smtp):
    from sqlalchemy.exc import OperationalError

    sign_up(client, "vic@example.com")

    def broken(*args, **kwargs):
        raise OperationalError("SELECT", {}, Exception("the database hiccuped"))

    monkeypatch.setattr(sequences, "advance_due", broken)
    report = run_tick(app)
    assert report.sent == 1  # the confirmation still went
