"""The owner's desk at /admin: sign-in, sessions, CSRF, the dashboard and subscribers."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import re
from datetime import timedelta

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from werkzeug.routing import IntegerConverter

from service import admins, audience, erasure, export, journal, subscriptions
from service.models import (
    Base,
    Broadcast,
    ConsentRecord,
    Enrollment,
    EnrollmentStatus,
    Event,
    OutboxMessage,
    Subscriber,
    SubscriberStatus,
    Suppression,
)
from service.web.admin import OPEN_ENDPOINTS
from tests.helpers import get_subscriber, make_subscriber, services_of, sign_up

PASSWORD = "correct horse battery staple"
HOSTILE_NAME = '<script>alert("x")</script><img src=x onerror=alert(1)>'


def create_admin(app, email: str = "owner@example.com", password: str = PASSWORD) -> None:
    services = services_of(app)
    with services.database.begin() as session:
        admins.create(session, email, password, now=services.clock())


def csrf_token(client, path: str = "/admin/login") -> str:
    page = client.get(path).get_data(as_text=True)
    match = re.search(r'name="csrf_token" value="([^"]+)"', page)
    assert match, f"no CSRF token on {path}"
    return match.group(1)


def sign_in(client, email: str = "owner@example.com", password: str = PASSWORD, **request):
    return client.post(
        "/admin/login",
        data={"email": email, "password": password, "csrf_token": csrf_token(client)},
        **request,
    )


@pytest.fixture
def admin_client(app, client):
    create_admin(app)
    response = sign_in(client)
    assert response.status_code == 303
    return client


def post(client, path: str, **data: str):
    """A form post from a signed-in page, with that page's CSRF token."""
    return client.post(path, data={"csrf_token": csrf_token(client, "/admin/account"), **data})


def _sample_url(rule) -> str:
    values = {}
    for name, converter in rule._converters.items():
        if hasattr(converter, "items"):  # any(...): its first choice
            values[name] = sorted(converter.items)[0] if converter.items else "x"
        elif isinstance(converter, IntegerConverter):
            values[name] = 1
        else:
            values[name] = "x"
    return rule.build(values)[1]


@pytest.mark.slow
def test_every_admin_page_is_behind_sign_in(app, client):
    """Walk the URL map: nothing under admin answers without a session."""
    rules = [
        rule
        for rule in app.url_map.iter_rules()
        if rule.endpoint.startswith("admin.") and rule.endpoint not in OPEN_ENDPOINTS
    ]
    assert len(rules) >= 9  # the walk covers the real pages, not an empty list
    for rule in rules:
        url = _sample_url(rule)
        for method in sorted(rule.methods - {"HEAD", "OPTIONS"}):
            response = client.open(url, method=method)
            if method == "GET":
                assert response.status_code == 302, (method, url)
                assert response.headers["Location"].startswith("/admin/login"), url
            else:
                assert response.status_code == 401, (method, url)


@pytest.mark.slow
def test_sign_in_shows_the_dashboard_and_sign_out_ends_it(app, client):
    create_admin(app)
    response = sign_in(client)
    assert response.status_code == 303
    assert client.get("/admin/").status_code == 200
    assert post(client, "/admin/logout").status_code == 303
    assert client.get("/admin/").status_code == 302


@pytest.mark.slow
def test_a_wrong_password_and_an_unknown_account_get_the_same_answer(app, client):
    create_admin(app)
    wrong = sign_in(client, password="not the password at all")
    unknown = sign_in(client, email="nobody@example.com")
    assert wrong.status_code == unknown.status_code == 401
    assert "do not match" in wrong.get_data(as_text=True)
    assert "do not match" in unknown.get_data(as_text=True)
    assert client.get("/admin/").status_code == 302


def set_cookie(response, name: str) -> str:
    """The Set-Cookie header of the cookie called `name`."""
    (cookie,) = [c for c in response.headers.getlist("Set-Cookie") if c.startswith(f"{name}=")]
    return cookie


@pytest.mark.slow
def test_the_session_cookie_is_httponly_and_samesite(app, client):
    create_admin(app)
    response = sign_in(client)
    cookie = set_cookie(response, "session")
    assert "HttpOnly" in cookie and "SameSite=Lax" in cookie


@pytest.mark.slow
def test_the_session_cookie_is_secure_behind_https(make_app):
    app = make_app(BASE_URL="https://news.example.com")
    create_admin(app)
    response = sign_in(app.test_client())
    assert "Secure" in set_cookie(response, "session")
    assert "Secure" in set_cookie(response, "admin_device")


@pytest.mark.slow
def test_passwords_are_stored_hashed_with_scrypt(app):
    create_admin(app)
    with services_of(app).database.read() as session:
        stored = session.scalar(sa.text("SELECT password_hash FROM admin_users"))
    assert stored.startswith("scrypt:") and PASSWORD not in stored


@pytest.mark.slow
def test_forms_without_a_csrf_token_are_refused(app, admin_client):
    with services_of(app).database.begin() as session:
        subscriber = make_subscriber(
            session,
            "r@example.com",
            now=services_of(app).clock(),
            status=SubscriberStatus.CONFIRMED,
        )
    response = admin_client.post(f"/admin/subscribers/{subscriber.id}/unsubscribe")
    assert response.status_code == 400
    assert get_subscriber(app, "r@example.com").status is SubscriberStatus.CONFIRMED
    # The same form with its token works.
    assert post(admin_client, f"/admin/subscribers/{subscriber.id}/unsubscribe").status_code == 303
    assert get_subscriber(app, "r@example.com").status is SubscriberStatus.UNSUBSCRIBED


def test_sign_in_itself_needs_the_csrf_token(app, client):
    create_admin(app)
    response = client.post(
        "/admin/login", data={"email": "owner@example.com", "password": PASSWORD}
    )
    assert response.status_code == 400
    assert client.get("/admin/").status_code == 302


@pytest.mark.slow
def test_sign_in_attempts_are_rate_limited(make_app):
    app = make_app(ADMIN_LOGIN_RATE_LIMIT="3 per minute")
    create_admin(app)
    client = app.test_client()
    codes = [sign_in(client, password="wrong password guess").status_code for _ in range(4)]
    assert codes == [401, 401, 401, 429]
    assert "wrong password" in sign_in(client).get_data(as_text=True)
    # Reading the page stays possible; only attempts count.
    assert client.get("/admin/login").status_code == 200


@pytest.mark.slow
def test_the_account_budget_holds_whatever_the_spelling_of_the_address(make_app):
    """Full-width letters fold to the same account (IDNA): they share one budget."""
    app = make_app(ADMIN_LOGIN_RATE_LIMIT="3 per minute")
    create_admin(app)
    full_width = "owner@\uff45xample.com"
    codes = []
    for n, email in enumerate(["owner@example.com", "OWNER@Example.COM", full_width, full_width]):
        # A new client address for each: only the per-account limit can stop them.
        client = app.test_client()
        client.environ_base["REMOTE_ADDR"] = f"198.51.100.{n + 1}"
        codes.append(sign_in(client, email=email, password="wrong password guess").status_code)
    assert codes == [401, 401, 401, 429]


@pytest.mark.slow
def test_signing_in_does_not_use_up_the_budget(make_app):
    app = make_app(ADMIN_LOGIN_RATE_LIMIT="2 per minute")
    create_admin(app)
    for _ in range(4):
        client = app.test_client()
        assert sign_in(client).status_code == 303


@pytest.mark.slow
def test_guessing_the_current_password_is_rate_limited(make_app):
    app = make_app(ADMIN_LOGIN_RATE_LIMIT="2 per minute")
    create_admin(app)
    client = app.test_client()
    sign_in(client)
    codes = [
        post(
            client, "/admin/account", current_password="guess " * 3, new_password="x" * 20
        ).status_code
        for _ in range(3)
    ]
    assert codes == [422, 422, 429]


@pytest.mark.slow
def test_admin_forms_work_over_https_with_a_same_origin_referer(make_app):
    """Flask-WTF wants a same-origin Referer on https; admin pages let the browser send it."""
    app = make_app(BASE_URL="https://newsletter.test")
    create_admin(app)
    client = app.test_client()
    base = "https://newsletter.test"
    page = client.get("/admin/login", base_url=base)
    assert page.headers["Referrer-Policy"] == "same-origin"
    assert 'name="referrer"' not in page.get_data(as_text=True)
    token = re.search(r'name="csrf_token" value="([^"]+)"', page.get_data(as_text=True))[1]
    form = {"email": "owner@example.com", "password": PASSWORD, "csrf_token": token}
    assert client.post("/admin/login", data=form, base_url=base).status_code == 400
    response = client.post(
        "/admin/login", data=form, base_url=base, headers={"Referer": base + "/admin/login"}
    )
    assert response.status_code == 303


@pytest.mark.slow
def test_changing_the_password_ends_every_other_session(app):
    create_admin(app)
    here, elsewhere = app.test_client(), app.test_client()
    sign_in(here)
    sign_in(elsewhere)
    assert elsewhere.get("/admin/").status_code == 200
    response = post(
        here,
        "/admin/account",
        current_password=PASSWORD,
        new_password="a brand new long passphrase",
    )
    assert response.status_code == 303
    assert here.get("/admin/").status_code == 200
    assert elsewhere.get("/admin/").status_code == 302
    assert sign_in(elsewhere).status_code == 401
    assert sign_in(elsewhere, password="a brand new long passphrase").status_code == 303


@pytest.mark.slow
def test_signing_out_everywhere_ends_every_session(app):
    create_admin(app)
    here, elsewhere = app.test_client(), app.test_client()
    sign_in(here)
    sign_in(elsewhere)
    assert post(here, "/admin/sign-out-everywhere").status_code == 303
    assert here.get("/admin/").status_code == 302
    assert elsewhere.get("/admin/").status_code == 302
    assert sign_in(elsewhere).status_code == 303  # the password still works


@pytest.mark.slow
def test_a_weak_new_password_is_refused_with_the_reason(app, admin_client):
    response = post(admin_client, "/admin/account", current_password=PASSWORD, new_password="short")
    assert response.status_code == 422
    assert "at least 12 characters" in response.get_data(as_text=True)


@pytest.mark.slow
@pytest.mark.parametrize(
    "password",
    ["password1234", "Password123!", "qwertyuiopasdf", "iloveyou12345", "aaaaaaaaaaaaaaaa"],
)
def test_the_passwords_tried_first_are_refused(app, admin_client, password):
    response = post(
        admin_client, "/admin/account", current_password=PASSWORD, new_password=password
    )
    assert response.status_code == 422
    assert "among the first an attacker would try" in response.get_data(as_text=True)
    services = services_of(app)
    with (
        pytest.raises(admins.AdminError, match="first an attacker would try"),
        services.database.begin() as session,
    ):
        admins.create(session, "two@example.com", password, now=services.clock())


def test_a_password_made_of_the_address_is_refused():
    assert admins.password_problem("zebrafinch.owner@example.com") is None
    problem = admins.password_problem(
        "zebrafinch.owner@example.com", user_inputs=("zebrafinch.owner@example.com",)
    )
    assert problem and "first an attacker would try" in problem


def test_a_long_password_is_judged_quickly_by_its_start():
    """zxcvbn refuses more than 72 characters; past that the start is judged."""
    assert admins.password_problem("correct horse battery staple " * 30) is None
    assert admins.password_problem("a" * 900) is not None


# --- sessions held on the server, device cookies -----------------------------------------


def session_cookie(client) -> str:
    return client.get_cookie("session", domain="newsletter.test").value


def with_cookie(app, value: str):
    client = app.test_client()
    client.set_cookie("session", value, domain="newsletter.test")
    return client


@pytest.mark.slow
def test_signing_out_ends_the_session_for_every_copy_of_its_cookie(app):
    """The probe's finding: a cookie saved before sign-out kept working for 12 hours."""
    create_admin(app)
    owner = app.test_client()
    sign_in(owner)
    copy = with_cookie(app, session_cookie(owner))
    assert copy.get("/admin/").status_code == 200  # a copy works while the session lives
    assert post(owner, "/admin/logout").status_code == 303
    assert copy.get("/admin/").status_code == 302
    assert copy.get("/admin/subscribers").headers["Location"].startswith("/admin/login")
    services = services_of(app)
    with services.database.read() as session:
        assert admins.sessions_of(session, 1, idle=timedelta(hours=12), now=services.clock()) == 0


@pytest.mark.slow
def test_a_session_lives_while_used_and_ends_when_left_idle(app, clock):
    create_admin(app)
    client = app.test_client()
    sign_in(client)
    for _ in range(3):  # 33 hours in all, never 12 without a visit
        clock.advance(hours=11)
        assert client.get("/admin/").status_code == 200
    copy = with_cookie(app, session_cookie(client))
    clock.advance(hours=12, minutes=1)
    assert copy.get("/admin/").status_code == 302
    assert client.get("/admin/").status_code == 302


@pytest.mark.slow
def test_the_account_page_counts_the_open_sessions(app):
    create_admin(app)
    here, elsewhere = app.test_client(), app.test_client()
    sign_in(here)
    sign_in(elsewhere)
    assert "signed in on 2 browsers" in here.get("/admin/account").get_data(as_text=True)
    post(elsewhere, "/admin/logout")
    assert "signed in on 1 browser." in here.get("/admin/account").get_data(as_text=True)


def attempt_from(app, address: str, password: str = "wrong password guess") -> int:
    """A sign-in attempt from a new browser at a client address of its own."""
    client = app.test_client()
    client.environ_base["REMOTE_ADDR"] = address
    return sign_in(client, password=password).status_code


@pytest.mark.slow
def test_a_known_device_is_not_locked_out_by_failures_from_elsewhere(make_app):
    app = make_app(ADMIN_LOGIN_RATE_LIMIT="3 per minute")
    create_admin(app)
    owner = app.test_client()
    response = sign_in(owner)
    assert response.status_code == 303
    device = set_cookie(response, "admin_device")
    assert "HttpOnly" in device and "SameSite=Strict" in device and "Path=/admin/login" in device
    post(owner, "/admin/logout")
    codes = [attempt_from(app, f"198.51.100.{n}") for n in range(1, 6)]
    assert codes == [401, 401, 401, 429, 429]
    # A browser that never signed in is throttled with the account, the right password too;
    assert attempt_from(app, "203.0.113.9", password=PASSWORD) == 429
    # the owner's browser is not.
    assert sign_in(owner).status_code == 303


@pytest.mark.slow
def test_a_known_device_has_a_budget_of_its_own(make_app):
    app = make_app(ADMIN_LOGIN_RATE_LIMIT="3 per minute")
    create_admin(app)
    owner = app.test_client()
    sign_in(owner)
    post(owner, "/admin/logout")
    codes = [sign_in(owner, password="typo in the password").status_code for _ in range(4)]
    assert codes == [401, 401, 401, 429]
    # Its failures did not use up the account's budget for other browsers.
    assert attempt_from(app, "198.51.100.1", password=PASSWORD) == 303


@pytest.mark.slow
def test_ending_every_session_also_ends_the_other_browsers_device_cookies(make_app, clock):
    app = make_app(ADMIN_LOGIN_RATE_LIMIT="3 per minute")
    create_admin(app)
    lost_laptop, desk = app.test_client(), app.test_client()
    sign_in(lost_laptop)
    clock.advance(seconds=2)
    sign_in(desk)
    post(desk, "/admin/sign-out-everywhere")
    clock.advance(seconds=2)
    sign_in(desk)  # the desk signs in again: known from now on
    post(desk, "/admin/logout")
    assert [attempt_from(app, f"198.51.100.{n}") for n in range(1, 5)] == [401, 401, 401, 429]
    assert sign_in(desk).status_code == 303
    # The lost laptop's device cookie went with its session: it is a stranger now.
    assert sign_in(lost_laptop).status_code == 429


@pytest.mark.slow
def test_a_device_cookie_from_just_before_the_end_of_every_session_is_void(make_app, clock):
    """In the same second, but before: whole seconds would have let it through."""
    app = make_app(ADMIN_LOGIN_RATE_LIMIT="3 per minute")
    create_admin(app)
    clock.now = clock.now.replace(microsecond=100_000)
    lost_laptop, desk = app.test_client(), app.test_client()
    sign_in(lost_laptop)
    clock.advance(seconds=0.5)
    sign_in(desk)
    post(desk, "/admin/sign-out-everywhere")
    assert [attempt_from(app, f"198.51.100.{n}") for n in range(1, 5)] == [401, 401, 401, 429]
    assert sign_in(lost_laptop).status_code == 429


@pytest.mark.slow
def test_a_nul_in_an_admin_field_is_dropped_or_refused_never_a_500(app, admin_client):
    """PostgreSQL neither stores nor compares a NUL: filters drop control characters, as
    the search does; text that is kept (a subject, a consent statement) loses them."""
    response = post(admin_client, "/admin/newsletters/new", subject="Hi\x00 there", body="x")
    assert response.status_code == 303
    with services_of(app).database.read() as session:
        (subject,) = session.scalars(sa.select(Broadcast.subject)).all()
    assert subject == "Hi there"
    for query in ("source=a%00b", "step=x%00y", "q=a%00b"):
        assert admin_client.get(f"/admin/subscribers?{query}").status_code == 200, query
        assert admin_client.get(f"/admin/subscribers/export.csv?{query}").status_code == 200
    assert admin_client.get("/admin/subscribers?status=a%00b").status_code == 400  # no status


@pytest.mark.slow
def test_the_browser_that_changes_the_password_stays_known(make_app, clock):
    app = make_app(ADMIN_LOGIN_RATE_LIMIT="3 per minute")
    create_admin(app)
    desk = app.test_client()
    sign_in(desk)
    clock.advance(seconds=2)
    new = "a brand new long passphrase"
    assert (
        post(desk, "/admin/account", current_password=PASSWORD, new_password=new).status_code == 303
    )
    post(desk, "/admin/logout")
    assert [attempt_from(app, f"198.51.100.{n}") for n in range(1, 5)] == [401, 401, 401, 429]
    assert sign_in(desk, password=new).status_code == 303


@pytest.mark.slow
def test_a_device_cookie_counts_only_for_its_own_account_and_only_if_ours(make_app):
    app = make_app(ADMIN_LOGIN_RATE_LIMIT="2 per minute")
    create_admin(app)
    create_admin(app, "other@example.com", "another long passphrase here")
    browser = app.test_client()
    sign_in(browser, email="other@example.com", password="another long passphrase here")
    device = browser.get_cookie("admin_device", domain="newsletter.test", path="/admin/login")
    forged = device.value[:-3] + ("AAA" if not device.value.endswith("AAA") else "BBB")
    for value in (device.value, forged):  # a cookie for "other", and a mangled one
        client = app.test_client()
        client.set_cookie("admin_device", value, domain="newsletter.test", path="/admin/login")
        client.environ_base["REMOTE_ADDR"] = f"198.51.100.{len(value) % 200}"
        sign_in(client, password="wrong password guess")
    # Both attempts were counted with the owner's account: it is now locked for strangers.
    assert attempt_from(app, "203.0.113.9", password=PASSWORD) == 429


@pytest.mark.slow
@pytest.mark.parametrize(
    "target",
    [
        "//evil.example/admin",
        "https://evil.example/admin",
        "/\\evil.example",
        "/public",
        "/admin%0d%0aSet-Cookie:x=1",
        "/admin%09x",
    ],
)
def test_after_sign_in_only_admin_paths_are_followed(app, client, target):
    create_admin(app)
    token = csrf_token(client)
    response = client.post(
        "/admin/login?next=" + target,
        data={"email": "owner@example.com", "password": PASSWORD, "csrf_token": token},
    )
    assert response.headers["Location"] == "/admin/"


@pytest.mark.slow
def test_the_page_asked_for_opens_after_sign_in(app, client):
    create_admin(app)
    response = client.get("/admin/subscribers?status=confirmed")
    assert response.status_code == 302
    login = response.headers["Location"]
    token = csrf_token(client, login)
    response = client.post(
        login, data={"email": "owner@example.com", "password": PASSWORD, "csrf_token": token}
    )
    assert response.headers["Location"] == "/admin/subscribers?status=confirmed"


@pytest.mark.slow
def test_admin_pages_are_never_cached_and_carry_the_csp(admin_client):
    response = admin_client.get("/admin/")
    assert response.headers["Cache-Control"] == "no-store"
    assert "script-src 'self'" in response.headers["Content-Security-Policy"]


@pytest.mark.slow
def test_cli_creates_the_first_account(app, monkeypatch):
    runner = app.test_cli_runner()
    assert "admin create" in runner.invoke(args=["admin", "hint"]).output
    monkeypatch.setenv("ADMIN_PASSWORD", PASSWORD)
    result = runner.invoke(args=["admin", "create", "Owner@Example.com"])
    assert result.exit_code == 0, result.output
    assert runner.invoke(args=["admin", "hint"]).output == ""
    again = runner.invoke(args=["admin", "create", "owner@example.com"])
    assert again.exit_code != 0 and "already" in again.output
    monkeypatch.setenv("ADMIN_PASSWORD", "short")
    weak = runner.invoke(args=["admin", "create", "two@example.com"])
    assert weak.exit_code != 0 and "at least 12" in weak.output
    client = app.test_client()
    assert sign_in(client).status_code == 303


def test_cli_asks_for_the_password_when_none_is_set(app, monkeypatch):
    monkeypatch.delenv("ADMIN_PASSWORD", raising=False)
    result = app.test_cli_runner().invoke(
        args=["admin", "create", "owner@example.com"], input=f"{PASSWORD}\n{PASSWORD}\n"
    )
    assert result.exit_code == 0, result.output
    assert PASSWORD not in result.output


# --- subscribers ------------------------------------------------------------------------


def add_subscribers(app, count: int, **fields) -> list[int]:
    services = services_of(app)
    ids = []
    with services.database.begin() as session:
        for n in range(count):
            subscriber = make_subscriber(
                session,
                f"reader{n:04d}@example.com",
                now=services.clock(),
                first_name=f"Reader{n:04d}",
                **fields,
            )
            ids.append(subscriber.id)
    return ids


def listed_emails(html: str) -> list[str]:
    return re.findall(r'/admin/subscribers/\d+">([^<]+)</a>', html)


@pytest.mark.slow
def test_the_list_pages_by_keyset_newest_first(app, admin_client):
    add_subscribers(app, 120)
    first = admin_client.get("/admin/subscribers").get_data(as_text=True)
    emails = listed_emails(first)
    assert emails[0] == "reader0119@example.com" and len(emails) == 50
    seen = list(emails)
    page = first
    while (match := re.search(r'rel="next" href="([^"]+)"', page)) is not None:
        page = admin_client.get(match.group(1).replace("&amp;", "&")).get_data(as_text=True)
        seen += listed_emails(page)
    assert seen == [f"reader{n:04d}@example.com" for n in reversed(range(120))]


@pytest.mark.slow
def test_search_and_filters_narrow_the_list(app, admin_client):
    add_subscribers(app, 5, source="blog")
    services = services_of(app)
    with services.database.begin() as session:
        make_subscriber(
            session,
            "zoe@example.org",
            now=services.clock(),
            first_name="Zoë",
            source="import",
            status=SubscriberStatus.CONFIRMED,
        )
        make_subscriber(session, "emile@example.net", now=services.clock(), first_name="Émile")

    def emails(query: str) -> list[str]:
        response = admin_client.get("/admin/subscribers?" + query)
        assert response.status_code == 200
        return listed_emails(response.get_data(as_text=True))

    assert emails("q=ZOË") == ["zoe@example.org"]  # by name, any case, accents too
    assert emails("q=zoë") == ["zoe@example.org"]
    assert emails("q=émile") == ["emile@example.net"]
    assert emails("q=example.org") == ["zoe@example.org"]  # by address
    assert emails("q=reader0003") == ["reader0003@example.com"]
    assert emails("q=%25") == []  # LIKE wildcards are searched for, not used
    assert emails("status=confirmed") == ["zoe@example.org"]
    assert len(emails("source=blog")) == 5
    assert emails("step=none&status=confirmed") == ["zoe@example.org"]
    assert len(emails("from=2026-11-24&to=2026-11-24")) == 7
    assert emails("from=2026-11-25") == []
    for bad in ("from=yesterday", "to=9999-12-31", "before=99999999999999999999999", "status=x"):
        assert admin_client.get("/admin/subscribers?" + bad).status_code == 400, bad


@pytest.mark.slow
def test_a_hostile_name_stays_inert_in_the_admin_pages(app, admin_client):
    services = services_of(app)
    with services.database.begin() as session:
        subscriber = make_subscriber(
            session, "x@example.com", now=services.clock(), first_name=HOSTILE_NAME
        )
        journal.record_event(
            session, subscriber.id, "bounced", now=services.clock(), detail={"reason": HOSTILE_NAME}
        )
    for path in ("/admin/subscribers", f"/admin/subscribers/{subscriber.id}"):
        html = admin_client.get(path).get_data(as_text=True)
        assert "<script>alert" not in html and "<img src=x" not in html
        assert "&lt;script&gt;alert" in html


def confirmed_reader(app, client, email: str = "reader@example.com", name: str = "Ann") -> int:
    """A reader who signed up through the form and confirmed (enrolled in the sequence)."""
    sign_up(client, email, first_name=name)
    services = services_of(app)
    subscriber = get_subscriber(app, email)
    with services.database.begin() as session:
        subscriptions.confirm(
            session,
            subscriber.id,
            journal.Origin(ip="203.0.113.9", user_agent="test"),
            token_issued_at=services.clock(),
            consent_text="Yes, send me the guide.",
            magnet=services.default_magnet,
            now=services.clock(),
        )
    return subscriber.id


@pytest.mark.slow
def test_the_subscriber_page_shows_the_history_and_pauses_the_sequence(app, client, admin_client):
    subscriber_id = confirmed_reader(app, client)
    page = admin_client.get(f"/admin/subscribers/{subscriber_id}").get_data(as_text=True)
    assert "signed up" in page and "confirmed" in page
    assert "203.0.113.9" in page  # the consent record
    assert "welcome" in page  # the email queued on confirming
    assert post(admin_client, f"/admin/subscribers/{subscriber_id}/pause").status_code == 303
    with services_of(app).database.read() as session:
        enrollment = session.scalar(sa.select(Enrollment))
        assert enrollment.status is EnrollmentStatus.PAUSED
    assert post(admin_client, f"/admin/subscribers/{subscriber_id}/resume").status_code == 303
    with services_of(app).database.read() as session:
        assert session.scalar(sa.select(Enrollment.status)) is EnrollmentStatus.ACTIVE


@pytest.mark.slow
def test_the_subscribers_data_export_holds_everything_about_them(app, client, admin_client):
    subscriber_id = confirmed_reader(app, client)
    response = admin_client.get(f"/admin/subscribers/{subscriber_id}/data.json")
    assert response.status_code == 200
    assert "attachment" in response.headers["Content-Disposition"]
    data = json.loads(response.get_data(as_text=True))
    assert data["subscriber"]["email"] == "reader@example.com"
    assert data["subscriber"]["first_name"] == "Ann"
    assert [c["action"] for c in data["consents"]] == ["signup", "confirm"]
    assert {"signed_up", "confirmed"} <= {e["kind"] for e in data["events"]}
    assert {"confirm", "welcome"} <= {e["kind"] for e in data["emails"]}
    assert data["sequences"][0]["status"] == "active"


@pytest.mark.slow
def test_erasing_removes_personal_data_from_every_table(app, client, admin_client):
    subscriber_id = confirmed_reader(app, client, email="Erase.Me@Example.com", name="Eraseme")
    refused = post(admin_client, f"/admin/subscribers/{subscriber_id}/erase", confirm_email="no")
    assert refused.status_code == 303
    assert get_subscriber(app, "erase.me@example.com") is not None
    response = post(
        admin_client,
        f"/admin/subscribers/{subscriber_id}/erase",
        confirm_email="erase.me@example.com",
    )
    assert response.status_code == 303
    services = services_of(app)
    with services.database.read() as session:
        for table in Base.metadata.sorted_tables:
            for row in session.execute(sa.select(table)):
                text = " ".join(str(value) for value in row).lower()
                assert "erase.me" not in text and "eraseme" not in text, table.name
                assert "203.0.113.9" not in text, table.name
        assert session.scalar(sa.select(sa.func.count()).select_from(Suppression)) == 1
        assert erasure.is_suppressed(session, "ERASE.ME@example.com")
        # The counts survive without saying whose they were.
        kinds = session.scalars(sa.select(Event.kind)).all()
        assert {"signed_up", "confirmed", "erased"} <= set(kinds)
        assert session.scalar(sa.select(sa.func.count()).select_from(OutboxMessage)) == 2
        # Nothing ties the remaining rows to one another (dedupe keys held the id).
        assert set(session.scalars(sa.select(OutboxMessage.dedupe_key))) == {None}
    assert admin_client.get(f"/admin/subscribers/{subscriber_id}").status_code == 404


# --- export -----------------------------------------------------------------------------


HOSTILE_CELLS = ['=HYPERLINK("http://x")', "+1+1", "-2", "@SUM(A1)", "\tTab", "\rCR"]


def read_csv(text: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(text)))


@pytest.mark.slow
def test_the_csv_export_streams_the_filtered_list_and_defuses_formulas(app, admin_client):
    services = services_of(app)
    with services.database.begin() as session:
        for n, name in enumerate(HOSTILE_CELLS):
            make_subscriber(
                session,
                f"h{n}@example.com",
                now=services.clock(),
                first_name=name,
                status=SubscriberStatus.CONFIRMED,
            )
        make_subscriber(session, "=cmd@example.com", now=services.clock(), first_name="Öla")
    response = admin_client.get("/admin/subscribers/export.csv?status=confirmed")
    assert response.status_code == 200
    assert response.is_streamed
    assert response.mimetype == "text/csv"
    assert "attachment" in response.headers["Content-Disposition"]
    rows = read_csv(response.get_data(as_text=True))
    assert [row["email"] for row in rows] == [f"h{n}@example.com" for n in range(6)]
    assert [row["first_name"] for row in rows] == ["'" + cell for cell in HOSTILE_CELLS]
    assert rows[0]["signed_up_utc"] == "2026-11-24 15:00:00"
    everyone = read_csv(admin_client.get("/admin/subscribers/export.csv").get_data(as_text=True))
    assert everyone[-1]["email"] == "'=cmd@example.com" and everyone[-1]["first_name"] == "Öla"


@pytest.mark.slow
def test_the_excel_export_starts_with_a_byte_order_mark(app, admin_client):
    add_subscribers(app, 1)
    body = admin_client.get("/admin/subscribers/export.csv?bom=1").get_data()
    assert body.startswith(b"\xef\xbb\xbfemail,first_name,")
    plain = admin_client.get("/admin/subscribers/export.csv").get_data()
    assert plain.startswith(b"email,first_name,")


@pytest.mark.slow
def test_the_export_has_every_column_the_owner_needs(app, client, admin_client):
    confirmed_reader(app, client)
    (row,) = read_csv(admin_client.get("/admin/subscribers/export.csv").get_data(as_text=True))
    assert row["email"] == "reader@example.com"
    assert row["status"] == "confirmed"
    assert row["source"] == "form"
    assert row["confirmed_utc"] == "2026-11-24 15:00:00"
    assert row["consent_ip"] == "203.0.113.9"
    assert len(row["consent_text_version"]) > 4
    assert row["sequence_step"]  # enrolled: planning its first step
    assert row["last_email_sent_utc"] == ""  # nothing has gone out yet


@pytest.mark.slow
def test_the_cli_export_writes_the_same_rows_in_chunks(app, admin_client, tmp_path, monkeypatch):
    monkeypatch.setattr(export, "EXPORT_SPAN", 7)  # many chunks, to test the walk
    add_subscribers(app, 30)
    target = tmp_path / "out.csv"
    result = app.test_cli_runner().invoke(args=["subscribers", "export", "-o", str(target)])
    assert result.exit_code == 0, result.output
    assert "30 subscribers" in result.output
    from_cli = target.read_bytes().decode("utf-8")
    from_web = admin_client.get("/admin/subscribers/export.csv").get_data(as_text=True)
    assert from_cli == from_web
    assert len(read_csv(from_cli)) == 30
    assert not (tmp_path / "out.csv.partial").exists()


def test_the_cli_export_filters_and_refuses_bad_dates(app):
    add_subscribers(app, 3)
    runner = app.test_cli_runner()
    result = runner.invoke(args=["subscribers", "export", "--status", "confirmed"])
    assert result.exit_code == 0
    assert result.output.strip().splitlines() == [",".join(export.EXPORT_COLUMNS)]
    bad = runner.invoke(args=["subscribers", "export", "--since", "last week"])
    assert bad.exit_code != 0 and "YYYY-MM-DD" in bad.output


# --- dashboard --------------------------------------------------------------------------


@pytest.mark.slow
def test_the_dashboard_counts_the_funnel_and_warns_of_a_silent_scheduler(app, client, admin_client):
    confirmed_reader(app, client, "a@example.com")
    sign_up(client, "b@example.com")
    sign_up(client, "c@example.com")
    page = admin_client.get("/admin/").get_data(as_text=True)
    funnel = re.search(r'<table id="funnel">(.*?)</table>', page, re.S).group(1)
    cells = [re.sub(r"\s+", " ", c).strip() for c in re.findall(r"<td>(.*?)</td>", funnel, re.S)]
    assert cells[:2] == ["Signed up", "3"]
    assert cells[4:8] == ["Confirmed", "1", "33.3%", "33.3%"]
    assert "Signed up through your forms: 3" in page and "Confirmations: 1" in page
    assert "<polyline" in page
    assert "never run" in page  # no heartbeat yet
    assert "<title>Dashboard | Low Back Relief</title>" in page


# --- the development outbox -------------------------------------------------------------


@pytest.mark.slow
def test_the_dev_outbox_shows_each_email_as_its_reader_gets_it(app, client, admin_client):
    sign_up(client, "reader@example.com", first_name="Ann")
    listing = admin_client.get("/admin/outbox").get_data(as_text=True)
    assert "reader@example.com" in listing
    (message_id,) = re.findall(r"/admin/outbox/(\d+)", listing)
    page = admin_client.get(f"/admin/outbox/{message_id}")
    html = page.get_data(as_text=True)
    assert "Confirm" in html and "List-Unsubscribe" in html
    assert "/confirm/" in html  # the plain-text part, with the reader's own link
    assert "frame-src 'self'" in page.headers["Content-Security-Policy"]
    frame = admin_client.get(f"/admin/outbox/{message_id}/html")
    assert frame.mimetype == "text/html" and "<html" in frame.get_data(as_text=True).lower()
    policy = frame.headers["Content-Security-Policy"]
    assert "default-src 'none'" in policy and "script" not in policy
    assert frame.headers["X-Frame-Options"] == "SAMEORIGIN"


@pytest.mark.slow
def test_the_dev_outbox_is_not_there_with_a_real_mail_server(make_app):
    app = make_app(MAIL_URL="smtp://127.0.0.1:2525")
    create_admin(app)
    client = app.test_client()
    sign_in(client)
    assert client.get("/admin/outbox").status_code == 404
    assert "/admin/outbox" not in client.get("/admin/").get_data(as_text=True)


def quoted(cell: str) -> str:
    return '"' + cell.replace('"', '""') + '"'


@pytest.mark.slow
@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    name=st.none() | st.text(alphabet=st.sampled_from("=+-@\t\r\n 'a,é\"%w\\"), max_size=6),
    ip=st.none() | st.text(alphabet=st.sampled_from('=-@\r\n1.:,"'), max_size=4),
)
def test_the_database_writes_each_row_as_python_would(app, name, ip):
    """The CSV the database writes (SQLite's printf, PostgreSQL's COPY) is, byte for byte,
    the line Python would write: formulas defused, quotes doubled, line breaks inside
    quotes, CRLF at the end of each row."""
    services = services_of(app)
    with services.database.begin() as session:
        session.execute(sa.delete(Subscriber))
        first = make_subscriber(session, "a@example.com", now=services.clock(), first_name=name)
        session.add(
            ConsentRecord(
                subscriber_id=first.id,
                action="confirm",
                at=services.clock(),
                ip=ip,
                user_agent="",
                source="form",
                text="Yes.",
                text_version="v1",
            )
        )
        make_subscriber(session, "-b@example.com", now=services.clock(), source="=blog")
    pieces = export.export_csv(services.database.read, audience.SubscriberFilter(), span=1)
    data = b"".join(piece.data for piece in pieces).decode()
    assert data.split("\r\n", 1)[1] == (
        f"{quoted('a@example.com')},{quoted(export.neutralize(name or ''))},pending,"
        f'"test","UTC",2026-11-24 15:00:00,,,{quoted(export.neutralize(ip or ""))},"v1","",,""\r\n'
        f'{quoted(export.neutralize("-b@example.com"))},"",pending,'
        f'"\'=blog","UTC",2026-11-24 15:00:00,,,"","","",,""\r\n'
    )


@pytest.mark.slow
def test_a_long_export_reports_in_to_the_server_after_every_chunk(app, admin_client, monkeypatch):
    """Under gunicorn a response longer than the worker timeout would get its worker
    killed; the export tells the arbiter it is alive (gunicorn.conf.py) chunk by chunk."""
    monkeypatch.setattr(export, "EXPORT_SPAN", 7)
    add_subscribers(app, 30)
    beats = []
    app.config["WORKER_HEARTBEAT"] = lambda: beats.append(1)
    rows = read_csv(admin_client.get("/admin/subscribers/export.csv").get_data(as_text=True))
    assert len(rows) == 30
    assert len(beats) == 6  # the header, then 7 + 7 + 7 + 7 + 2


def counted_reads(app, *, failing: int = 0):
    """Database.read for an export, counting the sessions it opens; session number
    `failing` (from 1) cannot reach the database."""
    database = services_of(app).database
    opened = []

    @contextlib.contextmanager
    def read():
        opened.append(1)
        if len(opened) == failing:
            raise sa.exc.OperationalError("SELECT", {}, Exception("the database went away"))
        with database.read() as session:
            yield session

    return read, opened


def test_an_export_left_halfway_reads_no_further(app):
    """A browser that goes away mid-download closes the stream: the ranges being read are
    finished, the rest are never read."""
    add_subscribers(app, 30)
    read, opened = counted_reads(app)
    pieces = export.export_csv(read, audience.SubscriberFilter(), span=1)
    taken = [next(pieces) for _ in range(4)]  # the header and three rows
    pieces.close()
    assert sum(piece.rows for piece in taken) == 3
    # One session to find the last id, then two per range (its bounds, its rows): for the
    # three taken and at most those read ahead.
    assert 1 + 2 * 3 <= len(opened) <= 1 + 2 * (3 + export.EXPORT_READERS)


def test_an_export_that_fails_says_so_instead_of_ending_early(app):
    """A range that cannot be read ends the export with the error, not with a file that
    merely looks shorter."""
    add_subscribers(app, 5)
    read, _ = counted_reads(app, failing=4)
    pieces = export.export_csv(read, audience.SubscriberFilter(), span=1)
    with pytest.raises(sa.exc.OperationalError):
        list(pieces)


@pytest.mark.slow
def test_the_export_filters_by_sequence_step(app, admin_client):
    """A step id, 'finished' and 'none' each select the subscribers at that place."""
    services = services_of(app)
    first, second = (step.id for step in services.default_sequence.steps[:2])
    ids = add_subscribers(app, 4, status=SubscriberStatus.CONFIRMED)
    with services.database.begin() as session:
        for subscriber_id, status, step in (
            (ids[0], EnrollmentStatus.ACTIVE, first),
            (ids[1], EnrollmentStatus.PAUSED, first),
            (ids[2], EnrollmentStatus.ACTIVE, second),
        ):
            session.add(
                Enrollment(
                    subscriber_id=subscriber_id,
                    sequence=services.default_sequence.name,
                    enrolled_at=services.clock(),
                    status=status,
                    steps_passed=[],
                    next_step=step,
                )
            )

    def exported(step: str) -> list[tuple[str, str]]:
        body = admin_client.get(f"/admin/subscribers/export.csv?step={step}")
        return [(r["email"], r["sequence_step"]) for r in read_csv(body.get_data(as_text=True))]

    assert exported(first) == [
        ("reader0000@example.com", first),
        ("reader0001@example.com", f"{first} (paused)"),
    ]
    assert exported(second) == [("reader0002@example.com", second)]
    assert exported("none") == [("reader0003@example.com", "")]
    assert exported("finished") == []
    result = app.test_cli_runner().invoke(args=["subscribers", "export", "--step", second])
    assert result.exit_code == 0, result.output
    assert "reader0002@example.com" in result.output
    assert "reader0000@example.com" not in result.output


@pytest.mark.slow
def test_the_export_is_utf8_whatever_the_connection_speaks(app, admin_client, monkeypatch):
    """PostgreSQL's COPY writes in the connection's client encoding; a server or role set
    to LATIN1 must not turn the file into Latin-1 (or fail on a character it lacks)."""
    services = services_of(app)
    add_subscribers(app, 1, source="blog")
    with services.database.begin() as session:
        session.execute(sa.update(Subscriber).values(first_name="Émile ☃"))
    monkeypatch.setenv("PGCLIENTENCODING", "LATIN1")  # read by libpq on connecting
    services.database.dispose()
    body = admin_client.get("/admin/subscribers/export.csv").get_data()
    assert '"Émile ☃"'.encode() in body


def test_the_export_walks_the_ids_there_are_not_the_gaps_between(app):
    """Erasures and skipped sequence numbers leave gaps in the ids: each range holds `span`
    subscribers however far apart their ids are."""
    services = services_of(app)
    with services.database.begin() as session:
        for number in (1, 2, 3, 500, 100_000):
            make_subscriber(session, f"r{number}@example.com", now=services.clock(), id=number)
    read = services.database.read
    assert list(export._id_ranges(read, 100_000, 2)) == [(0, 2), (2, 500), (500, 100_000)]
    assert list(export._id_ranges(read, 3, 2)) == [(0, 2), (2, 3)]  # up to the last id only
    pieces = export.export_csv(read, audience.SubscriberFilter(), span=2)
    assert [piece.rows for piece in pieces] == [0, 2, 2, 1]


def searched(app, query: str, **filters) -> list[str]:
    """The addresses a search of the admin list finds, newest first, every page."""
    services = services_of(app)
    wanted = audience.SubscriberFilter(
        query=query, sequence=services.default_sequence.name, **filters
    )
    found, before = [], None
    with services.database.read() as session:
        while True:
            page = audience.find(session, wanted, before=before, size=2)
            found += [row.email for row in page.rows]
            if page.next_cursor is None:
                return found
            before = page.next_cursor


def test_the_search_index_follows_every_change_to_the_list(app):
    """On SQLite the search reads an index that triggers keep in step with the table: new
    people, new names, new addresses and erasures show at once."""
    services = services_of(app)
    with services.database.begin() as session:
        zelda = make_subscriber(
            session, "zelda@example.com", now=services.clock(), first_name="Zelda"
        )
        make_subscriber(session, "link@example.com", now=services.clock(), first_name="Link")
    assert searched(app, "zeld") == ["zelda@example.com"]
    with services.database.begin() as session:
        session.execute(
            sa.update(Subscriber)
            .where(Subscriber.id == zelda.id)
            .values(first_name="Impa", email="impa@example.org", email_key="impa@example.org")
        )
    assert searched(app, "zeld") == []
    assert searched(app, "impa") == ["impa@example.org"]
    assert searched(app, "example.org") == ["impa@example.org"]
    with services.database.begin() as session:
        erasure.erase(session, zelda.id, now=services.clock())
    assert searched(app, "impa") == []
    assert searched(app, "example") == ["link@example.com"]


@pytest.mark.slow
@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    names=st.lists(st.text(alphabet=st.sampled_from("aAbéÉ \"'%_-."), max_size=6), max_size=5),
    query=st.text(alphabet=st.sampled_from("aAbéÉ \"'%_-.@x"), min_size=1, max_size=5),
)
def test_a_search_finds_what_a_substring_test_finds(app, names, query):
    """Index or not, a search finds exactly the subscribers whose address or first name
    holds the text, in any case, newest first, across pages."""
    services = services_of(app)
    with services.database.begin() as session:
        session.execute(sa.delete(Subscriber))
        for n, name in enumerate(names):
            make_subscriber(
                session,
                f"x{n}.{'ab'[n % 2]}@example.com",
                now=services.clock(),
                first_name=name or None,
            )
    needle = " ".join(query.split())  # as SubscriberFilter.parse leaves it
    if not needle:
        return
    expected = [
        f"x{n}.{'ab'[n % 2]}@example.com"
        for n, name in reversed(list(enumerate(names)))
        if needle.lower() in f"x{n}.{'ab'[n % 2]}@example.com" or needle.lower() in name.lower()
    ]
    assert searched(app, needle) == expected
    wanted = audience.SubscriberFilter(query=needle, sequence=services.default_sequence.name)
    exported = b"".join(p.data for p in export.export_csv(services.database.read, wanted))
    assert [row["email"] for row in read_csv(exported.decode())] == expected[::-1]


def test_the_search_pages_and_filters_through_the_index(app):
    add_subscribers(app, 7)
    with services_of(app).database.begin() as session:
        session.execute(
            sa.update(Subscriber)
            .where(Subscriber.email.in_(["reader0002@example.com", "reader0005@example.com"]))
            .values(status=SubscriberStatus.CONFIRMED)
        )
    everyone = [f"reader{n:04d}@example.com" for n in reversed(range(7))]
    assert searched(app, "reader") == everyone  # four pages of two
    assert searched(app, "reader", status=SubscriberStatus.CONFIRMED) == [
        "reader0005@example.com",
        "reader0002@example.com",
    ]
    assert searched(app, "der000") == everyone
    assert searched(app, "0004@") == ["reader0004@example.com"]
    assert searched(app, "re") == everyone  # under three characters: no index, same answer


@pytest.mark.slow
def test_a_search_with_control_characters_is_answered(app, admin_client):
    """A NUL would end the search index's query string (SQLite) or be refused by the
    driver (PostgreSQL); control characters are no part of an address or name anyway."""
    add_subscribers(app, 2)
    for query in ("read%00er0001", "reader%000001", "re%00", "%07reader0001%0D"):
        response = admin_client.get(f"/admin/subscribers?q={query}")
        assert response.status_code == 200, query
    assert listed_emails(
        admin_client.get("/admin/subscribers?q=read%00er0001").get_data(as_text=True)
    ) == ["reader0001@example.com"]
    export = admin_client.get("/admin/subscribers/export.csv?q=read%00er0001").get_data(
        as_text=True
    )
    assert [row["email"] for row in read_csv(export)] == ["reader0001@example.com"]


@pytest.mark.slow
def test_the_export_holds_what_the_list_shows_for_any_script(app, admin_client):
    """Case folding differs between databases for a few letters (final sigma, dotted I);
    on each database the export and the list agree."""
    services = services_of(app)
    with services.database.begin() as session:
        for n, name in enumerate(["Οδυσσέας", "ΟΔΥΣΣΕΥΣ", "İpek", "ᲒᲘᲝ", "Straße"]):
            make_subscriber(session, f"p{n}@example.com", now=services.clock(), first_name=name)
    for query in ("ΟΔΥΣ", "ευσ", "İpe", "გიო", "STRASSE", "straße", "ipek"):
        listed = listed_emails(
            admin_client.get(f"/admin/subscribers?q={query}").get_data(as_text=True)
        )
        export = admin_client.get(f"/admin/subscribers/export.csv?q={query}").get_data(as_text=True)
        assert [row["email"] for row in read_csv(export)] == listed[::-1], query
