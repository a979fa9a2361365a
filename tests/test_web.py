"""The reader's pages and the JSON API, through the Flask test client, on both databases."""

from __future__ import annotations

import email
import email.policy
from pathlib import Path

import pytest
from sqlalchemy import func, select

from service.models import ConsentRecord, Enrollment, Event, OutboxStatus, SubscriberStatus
from service.tokens import Purpose
from tests.helpers import get_subscriber, link_path, outbox, run_pass, services_of, sign_up


def delivered(app) -> list[email.message.EmailMessage]:
    """Messages the file mail backend wrote, oldest first."""
    directory = Path(services_of(app).settings.MAIL_URL.removeprefix("file://"))
    return [
        email.message_from_bytes(p.read_bytes(), policy=email.policy.default)
        for p in sorted(directory.glob("*.eml"), key=lambda p: p.stat().st_mtime_ns)
    ]


def text_of(message) -> str:
    return message.get_body(preferencelist=("plain",)).get_content()


def confirm_path(app, client, address: str) -> str:
    sign_up(client, address)
    run_pass(app)
    return link_path(text_of(delivered(app)[-1]), "/confirm/")


def test_landing_page_explains_the_guide_and_has_the_form(client):
    page = client.get("/").get_data(as_text=True)
    assert "Glute-Strengthening Guide" in page
    assert 'action="/subscribe"' in page
    assert 'name="email"' in page and 'name="first_name"' in page
    assert 'name="website"' in page  # the honeypot
    assert 'data-fill="time-zone"' in page
    assert "privacy promise" in page.lower()
    assert "Consult your physician" in page


def test_signup_redirects_to_check_your_inbox_and_queues_a_confirmation(app, client, clock):
    response = sign_up(client, "reader@example.com", first_name="Ann", time_zone="Europe/Berlin")
    assert response.status_code == 303
    assert response.headers["Location"] == "/check-your-inbox"
    assert "Check your inbox" in client.get("/check-your-inbox").get_data(as_text=True)

    subscriber = get_subscriber(app, "reader@example.com")
    assert subscriber.status is SubscriberStatus.PENDING
    assert subscriber.first_name == "Ann"
    assert subscriber.time_zone == "Europe/Berlin"
    assert subscriber.source == "form"
    assert [(m.kind, m.status) for m in outbox(app)] == [("confirm", OutboxStatus.QUEUED)]


def test_unknown_time_zone_falls_back_to_the_owners_default(app, client):
    sign_up(client, "tz@example.com", time_zone="Mars/Olympus_Mons")
    assert get_subscriber(app, "tz@example.com").time_zone == "America/New_York"


def test_invalid_form_shows_errors_and_keeps_what_was_typed(app, client):
    response = sign_up(client, "not-an-address", first_name="Ann")
    assert response.status_code == 422
    page = response.get_data(as_text=True)
    assert "Please check the form" in page
    assert 'value="not-an-address"' in page
    assert 'value="Ann"' in page
    assert outbox(app) == []


def test_honeypot_pretends_success_and_stores_nothing(app, client):
    response = sign_up(client, "bot@example.com", website="http://spam.example")
    assert response.status_code == 303
    assert get_subscriber(app, "bot@example.com") is None
    assert outbox(app) == []


def test_confirmation_email_links_confirm_with_get_then_post(app, client):
    path = confirm_path(app, client, "reader@example.com")

    page = client.get(path)
    assert page.status_code == 200
    assert "Yes, send me the guide" in page.get_data(as_text=True)
    # A link scanner fetching the URL changes nothing.
    assert get_subscriber(app, "reader@example.com").status is SubscriberStatus.PENDING

    response = client.post(path, headers={"User-Agent": "TestBrowser/1.0"})
    assert response.status_code == 303
    assert response.headers["Location"].startswith("/confirmed/")
    youre_in = client.get(response.headers["Location"]).get_data(as_text=True)
    assert "You're in" in youre_in
    assert "/download/" in youre_in

    subscriber = get_subscriber(app, "reader@example.com")
    assert subscriber.status is SubscriberStatus.CONFIRMED
    with services_of(app).database.read() as session:
        consents = session.scalars(
            select(ConsentRecord).where(ConsentRecord.subscriber_id == subscriber.id)
        ).all()
        enrolled = session.scalar(select(func.count()).select_from(Enrollment))
    assert [c.action for c in consents] == ["signup", "confirm"]
    confirm_record = consents[1]
    assert confirm_record.user_agent == "TestBrowser/1.0"
    assert confirm_record.ip == "127.0.0.1"
    assert confirm_record.source == "form"
    assert "Glute-Strengthening Guide" in confirm_record.text
    assert len(confirm_record.text_version) == 12
    assert enrolled == 1
    assert [m.kind for m in outbox(app)] == ["confirm", "welcome"]


def test_confirming_twice_is_harmless(app, client):
    path = confirm_path(app, client, "twice@example.com")
    first = client.post(path)
    second = client.post(path)
    assert first.status_code == second.status_code == 303
    assert [m.kind for m in outbox(app)] == ["confirm", "welcome"]
    with services_of(app).database.read() as session:
        confirms = session.scalar(
            select(func.count()).select_from(ConsentRecord).where(ConsentRecord.action == "confirm")
        )
    assert confirms == 1


def test_repeat_signup_within_the_hour_sends_no_second_email(app, client, clock):
    sign_up(client, "bombed@example.com")
    clock.advance(minutes=59)
    sign_up(client, "bombed@example.com")
    assert len(outbox(app)) == 1
    clock.advance(minutes=2)
    sign_up(client, "bombed@example.com")
    assert [m.kind for m in outbox(app)] == ["confirm", "confirm"]


def test_addresses_differing_only_in_case_are_one_subscriber(app, client, clock):
    sign_up(client, "Reader@Example.COM")
    clock.advance(hours=2)
    sign_up(client, "reader@example.com")
    clock.advance(hours=2)
    sign_up(client, "READER@EXAMPLE.COM")
    with services_of(app).database.read() as session:
        from service.models import Subscriber

        assert session.scalar(select(func.count()).select_from(Subscriber)) == 1
    assert get_subscriber(app, "reader@example.com").email == "Reader@example.com"


def test_internationalized_address_is_stored_with_an_ascii_domain(app, client):
    response = client.post("/api/v1/subscribers", json={"email": "josé@bücher.example"})
    assert response.status_code == 202
    subscriber = get_subscriber(app, "josé@xn--bcher-kva.example")
    assert subscriber is not None
    assert subscriber.email == "josé@xn--bcher-kva.example"


@pytest.mark.slow
def test_download_serves_the_pdf_and_counts(app, client):
    path = confirm_path(app, client, "reader@example.com")
    client.post(path)
    run_pass(app)
    welcome = delivered(app)[-1]
    assert welcome["Subject"] == "Your Glute-Strengthening Guide is here"
    download = link_path(text_of(welcome), "/download/")

    for _ in range(2):
        response = client.get(download)
        assert response.status_code == 200
        assert response.mimetype == "application/pdf"
        assert response.data.startswith(b"%PDF-")
        assert "glute-strengthening-guide.pdf" in response.headers["Content-Disposition"]
    with services_of(app).database.read() as session:
        downloads = session.scalar(
            select(func.count()).select_from(Event).where(Event.kind == "downloaded")
        )
    assert downloads == 2


def test_owner_can_point_the_guide_at_their_own_file(make_app, tmp_path, clock):
    own = tmp_path / "my-guide.pdf"
    own.write_bytes(b"%PDF-1.4 the owner's own guide")
    app = make_app(GUIDE_PATH=str(own), GUIDE_DOWNLOAD_NAME="my-guide.pdf")
    services = services_of(app)
    token = services.tokens.make(Purpose.DOWNLOAD, 1, now=clock())
    client = app.test_client()
    sign_up(client, "reader@example.com")
    response = client.get(f"/download/{token}")
    assert response.data == own.read_bytes()
    assert "my-guide.pdf" in response.headers["Content-Disposition"]


def test_missing_custom_guide_is_a_friendly_503(make_app, tmp_path, clock):
    app = make_app(GUIDE_PATH=str(tmp_path / "nowhere.pdf"))
    client = app.test_client()
    sign_up(client, "reader@example.com")
    token = services_of(app).tokens.make(Purpose.DOWNLOAD, 1, now=clock())
    response = client.get(f"/download/{token}")
    assert response.status_code == 503
    assert "not available right now" in response.get_data(as_text=True)


def test_unsubscribe_page_then_post_stops_everything_queued(app, client, clock):
    sign_up(client, "leaver@example.com")
    run_pass(app)
    unsubscribe = link_path(text_of(delivered(app)[-1]), "/unsubscribe/")
    clock.advance(hours=2)
    sign_up(client, "leaver@example.com")  # a second confirmation is now queued
    assert outbox(app)[-1].status is OutboxStatus.QUEUED

    page = client.get(unsubscribe)
    assert "Unsubscribe me" in page.get_data(as_text=True)
    assert get_subscriber(app, "leaver@example.com").status is SubscriberStatus.PENDING

    response = client.post(unsubscribe)
    assert response.status_code == 200
    assert "You are unsubscribed" in response.get_data(as_text=True)
    assert get_subscriber(app, "leaver@example.com").status is SubscriberStatus.UNSUBSCRIBED
    assert outbox(app)[-1].status is OutboxStatus.CANCELLED
    assert run_pass(app).sent == 0


def test_one_click_unsubscribe_needs_no_cookie_or_csrf(app, client):
    sign_up(client, "oneclick@example.com")
    run_pass(app)
    message = delivered(app)[-1]
    assert message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    url = message["List-Unsubscribe"].strip("<>")
    assert url.startswith("http://newsletter.test/unsubscribe/")
    mailbox_provider = app.test_client()  # no cookies, no CSRF token
    response = mailbox_provider.post(
        url.removeprefix("http://newsletter.test"),
        data="List-Unsubscribe=One-Click",
        content_type="application/x-www-form-urlencoded",
    )
    assert response.status_code == 200
    assert response.get_data(as_text=True) == "Unsubscribed.\n"
    assert get_subscriber(app, "oneclick@example.com").status is SubscriberStatus.UNSUBSCRIBED


def test_tokens_cannot_be_used_for_another_purpose(app, client, clock):
    services = services_of(app)
    sign_up(client, "reader@example.com")
    unsubscribe_token = services.tokens.make(Purpose.UNSUBSCRIBE, 1, now=clock())
    download_token = services.tokens.make(Purpose.DOWNLOAD, 1, now=clock())
    assert client.post(f"/confirm/{unsubscribe_token}").status_code == 404
    assert client.get(f"/download/{unsubscribe_token}").status_code == 404
    assert client.post(f"/unsubscribe/{download_token}").status_code == 404
    assert get_subscriber(app, "reader@example.com").status is SubscriberStatus.PENDING


@pytest.mark.slow
@pytest.mark.parametrize("path", ["/confirm/", "/download/", "/unsubscribe/", "/confirmed/"])
@pytest.mark.parametrize("token", ["garbage", "1.1795552192.forged-signature", "a" * 500])
def test_forged_tokens_get_a_friendly_page_not_a_500(client, path, token):
    response = client.get(path + token)
    assert response.status_code == 404
    assert "This link does not work" in response.get_data(as_text=True)


def test_expired_confirmation_link_offers_a_new_one(app, client, clock):
    path = confirm_path(app, client, "late@example.com")
    clock.advance(days=8)
    page = client.get(path)
    assert page.status_code == 410
    assert "Email me a new link" in page.get_data(as_text=True)
    assert client.post(path).status_code == 410
    assert get_subscriber(app, "late@example.com").status is SubscriberStatus.PENDING

    resend = "/resend/confirm/" + path.removeprefix("/confirm/")
    assert client.post(resend).headers["Location"] == "/check-your-inbox"
    assert [m.kind for m in outbox(app)] == ["confirm", "confirm"]
    run_pass(app)
    assert client.post(link_path(text_of(delivered(app)[-1]), "/confirm/")).status_code == 303
    assert get_subscriber(app, "late@example.com").status is SubscriberStatus.CONFIRMED


@pytest.mark.slow
def test_expired_download_link_offers_a_fresh_one(app, client, clock):
    path = confirm_path(app, client, "reader@example.com")
    client.post(path)
    run_pass(app)
    download = link_path(text_of(delivered(app)[-1]), "/download/")
    clock.advance(days=366)
    page = client.get(download)
    assert page.status_code == 410
    client.post("/resend/download/" + download.removeprefix("/download/"))
    assert [m.kind for m in outbox(app)][-1] == "guide"
    run_pass(app)
    fresh = link_path(text_of(delivered(app)[-1]), "/download/")
    assert client.get(fresh).status_code == 200


def test_old_confirmation_link_cannot_resubscribe_after_unsubscribing(app, client, clock):
    path = confirm_path(app, client, "gone@example.com")
    client.post(path)
    with services_of(app).database.begin() as session:
        from service.subscriptions import unsubscribe

        clock.advance(minutes=5)
        unsubscribe(session, 1, via="test", now=clock())
    response = client.post(path)
    assert response.status_code == 410
    assert "before you unsubscribed" in response.get_data(as_text=True)
    assert get_subscriber(app, "gone@example.com").status is SubscriberStatus.UNSUBSCRIBED


def test_unsubscribed_reader_can_sign_up_again_with_a_new_confirmation(app, client, clock):
    path = confirm_path(app, client, "back@example.com")
    client.post(path)
    clock.advance(minutes=5)
    with services_of(app).database.begin() as session:
        from service.subscriptions import unsubscribe

        unsubscribe(session, 1, via="test", now=clock())
    clock.advance(hours=2)
    sign_up(client, "back@example.com")
    run_pass(app)
    new_path = link_path(text_of(delivered(app)[-1]), "/confirm/")
    assert client.post(new_path).status_code == 303
    subscriber = get_subscriber(app, "back@example.com")
    assert subscriber.status is SubscriberStatus.CONFIRMED
    assert subscriber.unsubscribed_at is None
    # The welcome email went out once; coming back does not send it again.
    assert [m.kind for m in outbox(app)].count("welcome") == 1


def test_confirmed_reader_signing_up_again_gets_the_guide_link(app, client, clock):
    client.post(confirm_path(app, client, "again@example.com"))
    clock.advance(hours=2)
    sign_up(client, "again@example.com")
    assert [m.kind for m in outbox(app)] == ["confirm", "welcome", "guide"]


# --- the JSON API ---------------------------------------------------------------------


@pytest.mark.slow
def test_api_answers_the_same_for_every_kind_of_address(app, client, clock):
    def post(address: str):
        return client.post("/api/v1/subscribers", json={"email": address, "source": "api-test"})

    new = post("new@example.com")
    client.post(confirm_path(app, client, "confirmed@example.com"))
    sign_up(client, "pending@example.com")
    client.post(confirm_path(app, client, "left@example.com"))
    with services_of(app).database.begin() as session:
        from service.subscriptions import unsubscribe

        unsubscribe(session, get_subscriber(app, "left@example.com").id, via="test", now=clock())
    clock.advance(hours=2)
    answers = [
        post(a) for a in ("confirmed@example.com", "pending@example.com", "left@example.com")
    ]
    for answer in [new, *answers]:
        assert answer.status_code == 202
        assert answer.get_json() == new.get_json()
    assert get_subscriber(app, "new@example.com").source == "api-test"


def test_api_rejects_invalid_fields_with_per_field_errors(app, client):
    response = client.post(
        "/api/v1/subscribers",
        json={"email": "nope", "first_name": "Ann\r\nBcc: victim@example.com", "source": "<x>"},
    )
    assert response.status_code == 422
    errors = response.get_json()["errors"]
    assert set(errors) == {"email", "first_name", "source"}
    assert outbox(app) == []


def test_api_rejects_non_string_fields(client):
    response = client.post(
        "/api/v1/subscribers", json={"email": ["a@example.com"], "first_name": 7}
    )
    assert response.status_code == 422
    assert set(response.get_json()["errors"]) == {"email", "first_name"}


def test_api_wants_json(client):
    form = client.post("/api/v1/subscribers", data={"email": "a@example.com"})
    assert form.status_code == 415
    assert "JSON" in form.get_json()["error"]
    broken = client.post("/api/v1/subscribers", data="{not json", content_type="application/json")
    assert broken.status_code == 400
    array = client.post("/api/v1/subscribers", json=["a@example.com"])
    assert array.status_code == 400


def test_oversized_request_is_refused(client):
    response = client.post(
        "/subscribe", data={"email": "a@example.com", "first_name": "x" * 100_000}
    )
    assert response.status_code == 413


@pytest.mark.parametrize("field", ["email", "first_name", "source"])
def test_ten_kilobyte_fields_get_a_clear_error(app, client, field):
    data = {"email": "big@example.com", field: "x" * 10_000}
    response = client.post("/api/v1/subscribers", json=data)
    assert response.status_code == 422
    assert field in response.get_json()["errors"]
    assert outbox(app) == []


# --- rate limit, health, headers ------------------------------------------------------


def test_signup_rate_limit_per_ip(make_app):
    app = make_app(SIGNUP_RATE_LIMIT="3 per minute")
    client = app.test_client()
    codes = [sign_up(client, f"r{i}@example.com").status_code for i in range(4)]
    assert codes == [303, 303, 303, 429]
    assert "Too many requests" in sign_up(client, "r9@example.com").get_data(as_text=True)
    api = client.post("/api/v1/subscribers", json={"email": "r5@example.com"})
    assert api.status_code == 429 and "error" in api.get_json()
    other_ip = client.post(
        "/subscribe", data={"email": "x@example.com"}, environ_base={"REMOTE_ADDR": "10.0.0.2"}
    )
    assert other_ip.status_code == 303


def test_trusted_proxy_sets_the_client_address(make_app):
    app = make_app(SIGNUP_RATE_LIMIT="1 per minute", TRUSTED_PROXIES=1)
    client = app.test_client()
    headers = {"X-Forwarded-For": "203.0.113.7"}
    assert (
        client.post("/subscribe", data={"email": "a@example.com"}, headers=headers).status_code
        == 303
    )
    assert (
        client.post("/subscribe", data={"email": "b@example.com"}, headers=headers).status_code
        == 429
    )
    other = {"X-Forwarded-For": "203.0.113.8"}
    assert (
        client.post("/subscribe", data={"email": "c@example.com"}, headers=other).status_code == 303
    )
    subscriber = get_subscriber(app, "a@example.com")
    with services_of(app).database.read() as session:
        record = session.scalar(
            select(ConsentRecord).where(ConsentRecord.subscriber_id == subscriber.id)
        )
    assert record.ip == "203.0.113.7"


def test_healthz_reports_database_and_scheduler(app, client, clock):
    from scheduler.__main__ import tick

    body = client.get("/healthz").get_json()
    assert body["database"] == "ok"
    assert body["scheduler"] == {"last_tick_at": None, "seconds_since_tick": None, "late": True}

    import threading

    services = services_of(app)
    tick(
        services,
        services.make_dispatcher("w1"),
        started_at=clock(),
        clock=clock,
        stop=threading.Event(),
    )
    clock.advance(seconds=30)
    body = client.get("/healthz").get_json()
    assert body["scheduler"]["seconds_since_tick"] == 30.0
    assert body["scheduler"]["late"] is False
    clock.advance(minutes=10)
    assert client.get("/healthz").get_json()["scheduler"]["late"] is True


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_healthz_is_503_when_the_database_is_down(make_app, tmp_path, backend):
    from tests.smtp_server import free_port

    if backend == "sqlite":
        broken = tmp_path / "broken.db"
        broken.write_bytes(b"this is not a database" * 100)
        url = f"sqlite:///{broken}"
    else:
        url = f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/test?connect_timeout=2"
    app = make_app(DATABASE_URL=url)
    response = app.test_client().get("/healthz")
    assert response.status_code == 503
    assert response.get_json()["database"] == "unavailable"


def test_every_page_carries_security_headers(client):
    for path in ["/", "/check-your-inbox", "/healthz", "/nope"]:
        headers = client.get(path).headers
        assert "default-src 'none'" in headers["Content-Security-Policy"]
        assert headers["Referrer-Policy"] == "no-referrer"
        assert headers["X-Content-Type-Options"] == "nosniff"
        assert headers["X-Frame-Options"] == "DENY"
    assert "Set-Cookie" not in client.get("/").headers


@pytest.mark.parametrize("environment", ["testing", "production"])
def test_only_base_urls_host_is_served(make_app, environment):
    """A request for another Host is refused before anything is built from it: the probe's
    `Host: evil.example` on /admin got a redirect to http://evil.example/admin/."""
    production = {
        "APP_ENV": "production",
        "BASE_URL": "https://newsletter.test",
        "MAIL_URL": "smtp://user:secret@smtp.example.com:587",
    }
    app = make_app(**(production if environment == "production" else {}))
    client = app.test_client()
    base = app.extensions["newsletter"].settings.BASE_URL
    for path in ("/admin", "/", "/healthz", "/unsubscribe/x"):
        response = client.get(path, headers={"Host": "evil.example"})
        assert response.status_code == 400, path
        assert "evil.example" not in response.headers.get("Location", "")
        assert f"answers at {base} only" in response.get_data(as_text=True)
    # The host of BASE_URL, with or without its port, is served; redirects name it.
    response = client.get("/admin", headers={"Host": "newsletter.test"})
    assert response.status_code == 308
    assert response.headers["Location"].endswith("newsletter.test/admin/")
    assert client.get("/", headers={"Host": "newsletter.test:443"}).status_code == 200


def test_refused_hosts_are_logged_at_most_once_a_minute(client, caplog):
    """A proxy that does not pass the Host on shows in the log; a scanner does not flood it."""
    for _ in range(3):
        assert client.get("/", headers={"Host": "127.0.0.1:8000"}).status_code == 400
    said = [r.message for r in caplog.records if "for another host" in r.message]
    assert len(said) == 1 and "'127.0.0.1:8000'" in said[0]
    assert "proxy_set_header Host $host" in said[0]


def test_unknown_page_is_a_friendly_404(client):
    response = client.get("/no-such-page")
    assert response.status_code == 404
    assert "Page not found" in response.get_data(as_text=True)


def test_errors_inside_views_are_a_friendly_500(app, client, monkeypatch):
    from service import subscriptions

    def broken(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(subscriptions, "subscribe", broken)
    response = sign_up(client, "a@example.com")
    assert response.status_code == 500
    assert "Something went wrong" in response.get_data(as_text=True)
    assert "boom" not in response.get_data(as_text=True)


def test_hostile_name_is_escaped_on_the_form_when_redisplayed(client):
    response = sign_up(client, "bad", first_name='"><script>alert(1)</script>')
    page = response.get_data(as_text=True)
    assert "<script>alert(1)</script>" not in page
    assert "&lt;script&gt;" in page or "&#34;&gt;&lt;script" in page


def test_confirmation_needs_nothing_from_the_signup_session(app, client):
    """A reader may confirm in another browser than the one they signed up in."""
    path = confirm_path(app, client, "elsewhere@example.com")
    other_browser = app.test_client()
    assert other_browser.post(path).status_code == 303
    assert get_subscriber(app, "elsewhere@example.com").status is SubscriberStatus.CONFIRMED


def test_confirm_page_expiry_follows_the_setting(make_app, clock):
    app = make_app(CONFIRM_TOKEN_MAX_AGE_DAYS=1)
    client = app.test_client()
    path = confirm_path(app, client, "quick@example.com")
    clock.advance(days=1, seconds=1)
    assert client.get(path).status_code == 410


SIGNUP_IN_A_PROCESS = """
import sys
from service import create_app
from tests.conftest import settings_for
from pathlib import Path

database_url, storage, address, email, tmp = sys.argv[1:]
app = create_app(settings_for(
    database_url, Path(tmp), SIGNUP_RATE_LIMIT="1 per minute", RATELIMIT_STORAGE_URI=storage
))
response = app.test_client().post(
    "/subscribe", data={"email": email}, environ_base={"REMOTE_ADDR": address}
)
print(response.status_code)
"""


@pytest.mark.slow
@pytest.mark.parametrize(
    "database_url,storage",
    [
        ("sqlite", "database"),
        ("postgresql", "database"),
        ("sqlite", "redis"),
        ("sqlite", "memory"),
    ],
    indirect=["database_url"],
)
def test_signup_limit_is_shared_between_processes_unless_counted_in_memory(
    database_url, tmp_path, storage
):
    """Two processes (as two gunicorn workers) count one address's signups together when
    the counters live in the database (the default) or Redis, and separately when they
    live in each process's memory."""
    import os
    import secrets
    import subprocess
    import sys

    import redis

    from service.config import PROJECT_ROOT

    url = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379")
    if storage == "redis":
        try:
            redis.Redis.from_url(url, socket_timeout=2).ping()
        except redis.RedisError as exc:
            from tests.conftest import missing

            missing("Redis", "REQUIRE_REDIS", f"{url}: {exc}")
    uri = {"database": "", "redis": url, "memory": "memory://"}[storage]
    address = f"10.{secrets.randbelow(250)}.{secrets.randbelow(250)}.{secrets.randbelow(250)}"
    codes = [
        subprocess.run(
            [
                sys.executable,
                "-c",
                SIGNUP_IN_A_PROCESS,
                database_url,
                uri,
                address,
                f"r{n}@example.com",
                str(tmp_path),
            ],
            cwd=PROJECT_ROOT,
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        ).stdout.strip()
        for n in range(2)
    ]
    assert codes == (["303", "303"] if storage == "memory" else ["303", "429"])
