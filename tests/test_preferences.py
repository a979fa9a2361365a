"""The reader's preference centre: the domain (service.preferences) through real scheduler
ticks, and the pages at /preferences/<token>, on both databases."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select

from service import outbox, preferences, sequences
from service.models import (
    Enrollment,
    EnrollmentStatus,
    Event,
    OutboxMessage,
    OutboxStatus,
    Subscriber,
    SubscriberStatus,
)
from service.tokens import Purpose
from tests.helpers import make_subscriber, services_of
from tests.test_admin import create_admin, sign_in
from tests.test_sequences import confirm_reader, run_tick, run_until, sent_steps, steps_toml

PAUSED_AT = datetime(2026, 11, 26, 15, 0, tzinfo=UTC)


@pytest.fixture
def prefs_app(make_app, tmp_path):
    """An app whose drip sequence ('tips', send hour 8) the test writes."""
    content = tmp_path / "content"
    (content / "emails").mkdir(parents=True)

    def build(*steps):
        (content / "emails" / "sequence.toml").write_text(steps_toml(*steps))
        return make_app(CONTENT_DIR=str(content))

    return build


THREE_STEPS = (("a", "1 day"), ("b", "2 days"), ("c", "2 days"))


def enrollment_of(app, subscriber_id: int, sequence: str = "tips") -> Enrollment:
    with services_of(app).database.read() as session:
        return session.scalar(
            select(Enrollment).where(
                Enrollment.subscriber_id == subscriber_id, Enrollment.sequence == sequence
            )
        )


def subscriber_of(app, subscriber_id: int) -> Subscriber:
    with services_of(app).database.read() as session:
        return session.get(Subscriber, subscriber_id)


def events_of(app, subscriber_id: int) -> list[tuple[str, dict | None]]:
    with services_of(app).database.read() as session:
        rows = session.execute(
            select(Event.kind, Event.detail)
            .where(Event.subscriber_id == subscriber_id)
            .order_by(Event.id)
        ).all()
    return [(kind, detail) for kind, detail in rows]


def queue_due_steps(app, clock) -> None:
    """Queue whatever step is due now, without sending it (the engine alone)."""
    services = services_of(app)
    with services.database.begin() as session:
        sequences.advance_due(
            session,
            services.default_sequence,
            now=clock(),
            default_zone=services.settings.default_zone,
        )


def queue_newsletter(app, subscriber_id: int, clock) -> None:
    services = services_of(app)
    with services.database.begin() as session:
        subscriber = session.get(Subscriber, subscriber_id)
        outbox.enqueue(session, subscriber, "broadcast", template="welcome", now=clock())


def change(app, function, *args, **kwargs):
    services = services_of(app)
    with services.database.begin() as session:
        return function(session, *args, now=services.clock(), **kwargs)


# --- pausing ---------------------------------------------------------------------------


def test_a_pause_takes_back_a_queued_step_and_holds_the_sequence(prefs_app, clock):
    app = prefs_app(*THREE_STEPS)
    reader = confirm_reader(app, "reader@example.com")
    clock.now = datetime(2026, 11, 25, 8, 0, tzinfo=UTC)
    queue_due_steps(app, clock)  # step a waits in the outbox
    queue_newsletter(app, reader, clock)
    assert enrollment_of(app, reader).steps_passed == ["a"]

    change(app, preferences.pause_all, reader, 2)

    until = clock() + timedelta(weeks=2)
    held = enrollment_of(app, reader)
    assert held.status is EnrollmentStatus.ACTIVE
    assert held.steps_passed == []  # a comes again after the pause
    assert (held.held_until, held.next_due_at, held.next_step) == (until, until, None)
    assert subscriber_of(app, reader).paused_until == until
    with services_of(app).database.read() as session:
        rows = session.scalars(
            select(OutboxMessage).where(OutboxMessage.kind.in_(["sequence", "broadcast"]))
        )
        taken_back = {(r.kind, r.status, r.last_error, r.day_slot) for r in rows}
    assert taken_back == {
        ("sequence", OutboxStatus.CANCELLED, "paused by the reader", None),
        ("broadcast", OutboxStatus.CANCELLED, "paused by the reader", None),
    }
    assert events_of(app, reader)[-1] == (
        "paused_email",
        {"weeks": 2, "until": until.isoformat(), "via": "preferences"},
    )


def test_nothing_is_sent_during_the_pause_and_the_next_step_comes_the_morning_after(
    prefs_app, clock
):
    app = prefs_app(*THREE_STEPS)
    reader = confirm_reader(app, "reader@example.com")
    run_until(app, clock, PAUSED_AT)  # a went out on 25 November at 08:00
    change(app, preferences.pause_all, reader, 2)
    until = PAUSED_AT + timedelta(weeks=2)  # 10 December, 15:00 UTC

    run_until(app, clock, until - timedelta(seconds=1))
    assert [s for s, _ in sent_steps(app, reader)] == ["a"]
    with services_of(app).database.read() as session:
        queued_during = session.scalars(
            select(OutboxMessage.id).where(
                OutboxMessage.kind == "sequence", OutboxMessage.created_at > PAUSED_AT
            )
        ).all()
    assert queued_during == []

    run_until(app, clock, datetime(2026, 12, 20, tzinfo=UTC))
    assert sent_steps(app, reader) == [
        ("a", datetime(2026, 11, 25, 8, 0, tzinfo=UTC)),
        ("b", datetime(2026, 12, 11, 8, 0, tzinfo=UTC)),  # the morning after the pause
        ("c", datetime(2026, 12, 13, 8, 0, tzinfo=UTC)),  # timed from b, as usual
    ]
    assert enrollment_of(app, reader).held_until is None


def test_pauses_are_two_or_four_weeks_and_only_for_readers_who_get_mail(prefs_app, clock):
    app = prefs_app(*THREE_STEPS)
    reader = confirm_reader(app, "reader@example.com")
    with pytest.raises(preferences.PreferenceError):
        change(app, preferences.pause_all, reader, 3)
    services = services_of(app)
    with services.database.begin() as session:
        pending = make_subscriber(session, "pending@example.com", now=clock()).id
    with pytest.raises(preferences.PreferenceError):
        change(app, preferences.pause_all, pending, 2)
    assert subscriber_of(app, reader).paused_until is None
    assert subscriber_of(app, pending).paused_until is None


def test_resuming_early_carries_on_from_the_next_morning(prefs_app, clock):
    app = prefs_app(*THREE_STEPS)
    reader = confirm_reader(app, "reader@example.com")
    run_until(app, clock, PAUSED_AT)
    change(app, preferences.pause_all, reader, 4)
    clock.now = datetime(2026, 11, 30, 15, 0, tzinfo=UTC)
    change(app, preferences.resume_now, reader)

    held = enrollment_of(app, reader)
    assert (held.held_until, held.next_due_at) == (clock(), clock())
    assert subscriber_of(app, reader).paused_until is None
    assert events_of(app, reader)[-1] == ("resumed_email", {"via": "preferences"})
    run_until(app, clock, datetime(2026, 12, 5, tzinfo=UTC))
    assert [s for s, _ in sent_steps(app, reader)] == ["a", "b", "c"]
    assert sent_steps(app, reader)[1][1] == datetime(2026, 12, 1, 8, 0, tzinfo=UTC)


# --- leaving, newsletters, details -------------------------------------------------------


@pytest.mark.slow
def test_leaving_a_sequence_stops_only_that_one(prefs_app, clock):
    app = prefs_app(*THREE_STEPS)
    reader = confirm_reader(app, "reader@example.com")
    services = services_of(app)
    with services.database.begin() as session:
        sequences.enroll(session, session.get(Subscriber, reader), now=clock(), sequence="other")
    clock.now = datetime(2026, 11, 25, 8, 0, tzinfo=UTC)
    queue_due_steps(app, clock)

    change(app, preferences.leave_sequence, reader, "tips")

    left = enrollment_of(app, reader)
    assert (left.status, left.stopped_at, left.next_due_at) == (
        EnrollmentStatus.STOPPED,
        clock(),
        None,
    )
    assert enrollment_of(app, reader, "other").status is EnrollmentStatus.ACTIVE
    subscriber = subscriber_of(app, reader)
    assert subscriber.status is SubscriberStatus.CONFIRMED and subscriber.wants_newsletters
    with services.database.read() as session:
        step = session.scalar(select(OutboxMessage).where(OutboxMessage.kind == "sequence"))
    assert step.status is OutboxStatus.CANCELLED
    assert events_of(app, reader)[-1] == (
        "left_sequence",
        {"sequence": "tips", "via": "preferences"},
    )
    for _ in range(20):  # ticks over the days the steps would have come
        clock.advance(hours=12)
        run_tick(app)
    assert sent_steps(app, reader) == []
    with pytest.raises(preferences.PreferenceError):
        change(app, preferences.leave_sequence, reader, "tips")


def test_newsletters_off_keeps_the_sequence_going(prefs_app, clock):
    app = prefs_app(*THREE_STEPS)
    reader = confirm_reader(app, "reader@example.com")
    queue_newsletter(app, reader, clock)
    change(app, preferences.set_newsletters, reader, False)

    assert subscriber_of(app, reader).wants_newsletters is False
    with services_of(app).database.read() as session:
        newsletter = session.scalar(select(OutboxMessage).where(OutboxMessage.kind == "broadcast"))
    assert newsletter.status is OutboxStatus.CANCELLED
    run_until(app, clock, datetime(2026, 12, 10, tzinfo=UTC))
    assert [s for s, _ in sent_steps(app, reader)] == ["a", "b", "c"]
    change(app, preferences.set_newsletters, reader, True)
    assert subscriber_of(app, reader).wants_newsletters is True
    kinds = [kind for kind, _ in events_of(app, reader)]
    assert kinds[-2:] == ["newsletters_off", "newsletters_on"]


def test_a_new_time_zone_replans_the_next_step_in_it(prefs_app, clock):
    app = prefs_app(*THREE_STEPS)
    reader = confirm_reader(app, "reader@example.com", first_name="Ann")
    run_until(app, clock, PAUSED_AT)  # a sent; b planned for 27 November 08:00 UTC
    change(app, preferences.change_details, reader, "Annie", "America/Vancouver")

    subscriber = subscriber_of(app, reader)
    assert (subscriber.first_name, subscriber.time_zone) == ("Annie", "America/Vancouver")
    planned = enrollment_of(app, reader)
    assert (planned.next_step, planned.next_due_at) == (None, clock())
    # The name is not copied into the history; the new zone is.
    assert events_of(app, reader)[-1] == (
        "details_changed",
        {
            "fields": ["first_name", "time_zone"],
            "via": "preferences",
            "time_zone": "America/Vancouver",
        },
    )
    run_until(app, clock, datetime(2026, 11, 29, tzinfo=UTC))
    assert sent_steps(app, reader)[1] == ("b", datetime(2026, 11, 27, 16, 0, tzinfo=UTC))


@pytest.mark.parametrize(
    "first_name,time_zone,field",
    [
        ("Ann", "Mars/Olympus_Mons", "time_zone"),
        ("Ann", "", "time_zone"),
        ("visit www.example.com", "Europe/Berlin", "first_name"),
        ("Ann\u202e", "Europe/Berlin", "first_name"),
    ],
)
def test_bad_details_are_refused_and_nothing_changes(
    prefs_app, clock, first_name, time_zone, field
):
    app = prefs_app(*THREE_STEPS)
    reader = confirm_reader(app, "reader@example.com", first_name="Ann", zone="UTC")
    with pytest.raises(preferences.PreferenceError) as refused:
        change(app, preferences.change_details, reader, first_name, time_zone)
    assert list(refused.value.errors) == [field]
    subscriber = subscriber_of(app, reader)
    assert (subscriber.first_name, subscriber.time_zone) == ("Ann", "UTC")
    assert "details_changed" not in [kind for kind, _ in events_of(app, reader)]


# --- the pages ---------------------------------------------------------------------------


def token_for(app, subscriber_id: int, purpose: Purpose = Purpose.PREFERENCES) -> str:
    services = services_of(app)
    return services.tokens.make(purpose, subscriber_id, now=services.clock())


def form_token(page: str) -> str:
    return re.search(r'name="csrf_token" value="([^"]+)"', page)[1]


def post(client, path: str, **data: str):
    """POST one of the page's forms, as a reader who loaded the page does."""
    page = client.get(path.rsplit("/", 1)[0]).get_data(as_text=True)
    return client.post(path, data={"csrf_token": form_token(page), **data})


def test_the_page_shows_the_readers_choices(prefs_app, client, clock):
    app = prefs_app(*THREE_STEPS)
    client = app.test_client()
    reader = confirm_reader(app, "reader@example.com", zone="Europe/Berlin")
    response = client.get(f"/preferences/{token_for(app, reader)}")
    assert response.status_code == 200
    assert response.headers["Cache-Control"] == "no-store"
    page = response.get_data(as_text=True)
    assert "reader@example.com" in page
    assert "<legend>Pause all email</legend>" in page
    # The sequence is shown by its magnet's title.
    assert "Glute-Strengthening Guide" in page and "Leave this series" in page
    assert "Stop sending me newsletters" in page
    assert 'value="Europe/Berlin"' in page
    # No inline script: only our own files (static/forms.js), which the CSP allows.
    assert all(" src=" in tag for tag in re.findall(r"<script[^>]*>", page))


def test_pausing_from_the_page_says_until_when_in_the_readers_zone(prefs_app, clock):
    app = prefs_app(*THREE_STEPS)
    client = app.test_client()
    reader = confirm_reader(app, "reader@example.com", zone="Pacific/Auckland")
    clock.now = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)  # 1 December in Auckland
    path = f"/preferences/{token_for(app, reader)}"
    response = post(client, f"{path}/pause", weeks="2")
    assert response.status_code == 303 and response.headers["Location"] == path
    page = client.get(path).get_data(as_text=True)
    assert "Done: your email is paused until 15 December 2026." in page
    assert "Paused until 15 December 2026." in page
    assert subscriber_of(app, reader).paused_until == clock() + timedelta(weeks=2)


def test_the_page_leaves_a_sequence_and_turns_newsletters_off(prefs_app, clock):
    app = prefs_app(*THREE_STEPS)
    client = app.test_client()
    reader = confirm_reader(app, "reader@example.com")
    path = f"/preferences/{token_for(app, reader)}"
    post(client, f"{path}/leave", sequence="tips")
    page = client.get(path).get_data(as_text=True)
    assert (
        "Done: you will get no more emails from the series The Glute-Strengthening Guide." in page
    )
    assert "you left this series" in page
    post(client, f"{path}/newsletters", wanted="no")
    assert subscriber_of(app, reader).wants_newsletters is False
    assert "Send me newsletters again" in client.get(path).get_data(as_text=True)
    assert enrollment_of(app, reader).status is EnrollmentStatus.STOPPED


def test_bad_details_on_the_page_are_shown_and_nothing_changes(prefs_app, clock):
    app = prefs_app(*THREE_STEPS)
    client = app.test_client()
    reader = confirm_reader(app, "reader@example.com", first_name="Ann")
    path = f"/preferences/{token_for(app, reader)}"
    response = post(client, f"{path}/details", first_name="Bo", time_zone="Nowhere/Land")
    assert response.status_code == 422
    page = response.get_data(as_text=True)
    assert "Please choose your time zone from the list" in page
    assert 'value="Nowhere/Land"' in page and 'aria-invalid="true"' in page
    assert subscriber_of(app, reader).first_name == "Ann"
    post(client, f"{path}/details", first_name="Bo", time_zone="Asia/Tokyo")
    subscriber = subscriber_of(app, reader)
    assert (subscriber.first_name, subscriber.time_zone) == ("Bo", "Asia/Tokyo")


def test_a_form_without_the_pages_csrf_token_is_refused(prefs_app, clock):
    app = prefs_app(*THREE_STEPS)
    client = app.test_client()
    reader = confirm_reader(app, "reader@example.com")
    response = client.post(f"/preferences/{token_for(app, reader)}/pause", data={"weeks": "2"})
    assert response.status_code == 400
    assert subscriber_of(app, reader).paused_until is None


def test_readers_not_getting_mail_are_told_so_and_offered_no_pause(prefs_app, clock):
    app = prefs_app(*THREE_STEPS)
    client = app.test_client()
    with services_of(app).database.begin() as session:
        pending = make_subscriber(session, "pending@example.com", now=clock()).id
    path = f"/preferences/{token_for(app, pending)}"
    page = client.get(path).get_data(as_text=True)
    assert "You have not confirmed your subscription yet" in page
    assert "Pause all email" not in page and "Your details" in page
    assert post(client, f"{path}/pause", weeks="2").status_code == 422


def test_unsubscribing_from_the_page(prefs_app, clock):
    app = prefs_app(*THREE_STEPS)
    client = app.test_client()
    reader = confirm_reader(app, "reader@example.com")
    path = f"/preferences/{token_for(app, reader)}"
    response = post(client, f"{path}/unsubscribe")
    assert response.status_code == 200
    assert subscriber_of(app, reader).status is SubscriberStatus.UNSUBSCRIBED
    assert events_of(app, reader)[-1] == ("unsubscribed", {"via": "preferences"})
    assert "You are unsubscribed" in client.get(path).get_data(as_text=True)


@pytest.mark.parametrize("purpose", [Purpose.UNSUBSCRIBE, Purpose.CONFIRM, Purpose.DOWNLOAD])
def test_a_token_for_another_purpose_gets_the_friendly_page(prefs_app, clock, purpose):
    app = prefs_app(*THREE_STEPS)
    client = app.test_client()
    reader = confirm_reader(app, "reader@example.com")
    response = client.get(f"/preferences/{token_for(app, reader, purpose)}")
    assert response.status_code == 404
    assert "This link does not work" in response.get_data(as_text=True)
    # ... and a preferences token is no unsubscribe link either.
    other = client.get(f"/unsubscribe/{token_for(app, reader)}")
    assert other.status_code == 404


@pytest.mark.parametrize("suffix", ["", "/pause"])
def test_forged_and_erased_readers_tokens_get_the_friendly_page(prefs_app, clock, suffix):
    app = prefs_app(*THREE_STEPS)
    client = app.test_client()
    reader = confirm_reader(app, "reader@example.com")
    token = token_for(app, reader)
    forged = token[:-3] + ("aaa" if not token.endswith("aaa") else "bbb")
    for path in (f"/preferences/{forged}", f"/preferences/{token_for(app, 999)}"):
        page = client.get(f"/preferences/{token}").get_data(as_text=True)
        response = client.post(path + suffix, data={"csrf_token": form_token(page), "weeks": "2"})
        if not suffix:
            response = client.get(path)
        assert response.status_code == 404
        assert "This link does not work" in response.get_data(as_text=True)


def test_one_click_unsubscribe_is_unchanged(prefs_app, clock):
    app = prefs_app(*THREE_STEPS)
    client = app.test_client()
    reader = confirm_reader(app, "reader@example.com")
    response = client.post(
        f"/unsubscribe/{token_for(app, reader, Purpose.UNSUBSCRIBE)}",
        data={"List-Unsubscribe": "One-Click"},
    )
    assert response.status_code == 200
    assert response.get_data(as_text=True) == "Unsubscribed.\n"
    assert events_of(app, reader)[-1] == ("unsubscribed", {"via": "one-click"})


def test_the_owner_sees_the_readers_choices(prefs_app, clock):
    app = prefs_app(*THREE_STEPS)
    reader = confirm_reader(app, "reader@example.com", zone="Europe/Berlin")
    change(app, preferences.pause_all, reader, 2)
    change(app, preferences.set_newsletters, reader, False)
    create_admin(app)
    client = app.test_client()
    sign_in(client)
    page = client.get(f"/admin/subscribers/{reader}").get_data(as_text=True)
    assert "Paused by the reader until 2026-12-08 10:00 America/New_York" in page
    assert "Newsletters: off (reader's choice)" in page
    assert "paused email" in page and "newsletters off" in page


def test_the_forms_work_over_https_without_a_referer(make_app, clock):
    """The public pages send no Referer (their URLs carry tokens); the CSRF token is enough."""
    app = make_app(BASE_URL="https://newsletter.test")
    client = app.test_client()
    reader = confirm_reader(app, "reader@example.com")
    path = f"/preferences/{token_for(app, reader)}"
    page = client.get(path, base_url="https://newsletter.test").get_data(as_text=True)
    response = client.post(
        f"{path}/newsletters",
        data={"csrf_token": form_token(page), "wanted": "no"},
        base_url="https://newsletter.test",
    )
    assert response.status_code == 303
    assert subscriber_of(app, reader).wants_newsletters is False


@pytest.mark.parametrize("field, value", [("sequence", "tips\x00"), ("sequence", "a" * 300)])
def test_leaving_a_series_that_cannot_exist_is_a_clear_refusal(prefs_app, field, value):
    app = prefs_app(*THREE_STEPS)
    reader = confirm_reader(app, "nul@example.com")
    client = app.test_client()
    token = token_for(app, reader)
    page = client.get(f"/preferences/{token}").get_data(as_text=True)
    response = client.post(
        f"/preferences/{token}/leave", data={field: value, "csrf_token": form_token(page)}
    )
    assert response.status_code == 422
    assert enrollment_of(app, reader).status is EnrollmentStatus.ACTIVE


def test_a_newsletter_choice_that_says_neither_yes_nor_no_changes_nothing(prefs_app):
    app = prefs_app(*THREE_STEPS)
    reader = confirm_reader(app, "half@example.com")
    client = app.test_client()
    token = token_for(app, reader)
    page = client.get(f"/preferences/{token}").get_data(as_text=True)
    response = client.post(
        f"/preferences/{token}/newsletters", data={"csrf_token": form_token(page)}
    )
    assert response.status_code == 422
    assert subscriber_of(app, reader).wants_newsletters is True
