"""The owner's first run: /admin with no account, the setup link, `admin set-password`,
and a `make run` terminal that shows what matters (emails, errors, work done)."""

from __future__ import annotations

import io
import logging
import re
import subprocess
import threading
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from apscheduler.events import EVENT_JOB_ERROR, EVENT_JOB_EXECUTED
from sqlalchemy import select
from werkzeug.serving import make_server

from scheduler.__main__ import StopSignals, make_scheduler
from service import admins
from service.mail.console import ConsoleMailer
from service.mail.message import Message
from service.models import AdminUser
from service.tokens import Purpose
from tests.conftest import START
from tests.helpers import add_pending, services_of
from tests.smtp_server import free_port
from tests.test_admin import PASSWORD, create_admin, csrf_token, sign_in

NEW_PASSWORD = "purple elephants juggle quietly"


def setup_path(app) -> str:
    """The setup link `admin hint` prints, as a path."""
    output = app.test_cli_runner().invoke(args=["admin", "hint"]).output
    match = re.search(r"http://newsletter\.test(/admin/setup/\S+)", output)
    assert match, output
    return match.group(1)


def set_up(client, path: str, email: str = "owner@example.com", **fields: str):
    data = {"email": email, "password": PASSWORD, "password_again": PASSWORD, **fields}
    return client.post(path, data={"csrf_token": csrf_token(client, path), **data})


def accounts(app) -> int:
    with services_of(app).database.read() as session:
        return admins.count(session)


def test_without_an_account_admin_says_how_to_make_one(client):
    response = client.get("/admin/", follow_redirects=True)
    page = response.get_data(as_text=True)
    assert response.status_code == 200
    assert "There is no admin account yet" in page
    assert "admin create you@example.com" in page
    assert "admin hint" in page
    assert 'name="password"' not in page  # no form that can only fail


@pytest.mark.slow
def test_the_sign_in_form_is_back_once_an_account_exists(app, client):
    create_admin(app)
    page = client.get("/admin/login").get_data(as_text=True)
    assert 'name="password"' in page and "no admin account" not in page


@pytest.mark.slow
def test_the_setup_link_creates_the_first_account_and_signs_in(app, client):
    path = setup_path(app)
    form = client.get(path)
    assert form.status_code == 200
    assert "script-src 'self'" in form.headers["Content-Security-Policy"]
    assert 'name="password_again"' in form.get_data(as_text=True)
    no_csrf = client.post(path, data={"email": "owner@example.com", "password": PASSWORD})
    assert no_csrf.status_code == 400
    differ = set_up(client, path, password_again=PASSWORD + "!")
    assert differ.status_code == 422 and "not the same" in differ.get_data(as_text=True)
    weak = set_up(client, path, password="short", password_again="short")
    assert weak.status_code == 422 and "at least 12" in weak.get_data(as_text=True)
    assert accounts(app) == 0
    done = set_up(client, path, email="Owner@Example.com")
    assert done.status_code == 303 and done.headers["Location"] == "/admin/"
    dashboard = client.get("/admin/")
    assert dashboard.status_code == 200
    page = dashboard.get_data(as_text=True)
    assert "Owner@example.com" in page and "Your account is ready" in page
    assert accounts(app) == 1
    assert app.test_cli_runner().invoke(args=["admin", "hint"]).output == ""


def test_a_setup_link_works_for_an_hour(app, client, clock):
    path = setup_path(app)
    clock.advance(minutes=59)
    token = csrf_token(client, path)
    clock.advance(minutes=1, seconds=1)
    expired = client.get(path)
    page = expired.get_data(as_text=True)
    assert expired.status_code == 410
    assert "expired" in page and "flask --app wsgi admin hint" in page
    fields = {"password": PASSWORD, "password_again": PASSWORD, "csrf_token": token}
    posted = client.post(path, data={"email": "owner@example.com", **fields})
    assert posted.status_code == 410 and accounts(app) == 0


@pytest.mark.slow
def test_a_setup_link_stops_working_once_an_account_exists(app, client):
    path = setup_path(app)
    token = csrf_token(client, path)
    create_admin(app)
    used = client.get(path)
    page = used.get_data(as_text=True)
    assert used.status_code == 410
    assert "has been used" in page and "admin set-password" in page
    fields = {"password": PASSWORD, "password_again": PASSWORD, "csrf_token": token}
    posted = client.post(path, data={"email": "two@example.com", **fields})
    assert posted.status_code == 410 and accounts(app) == 1


@pytest.mark.slow
def test_a_setup_form_sent_twice_makes_one_account(app):
    """Two tabs open on the same link: the second finds the link used."""
    path = setup_path(app)
    first, second = app.test_client(), app.test_client()
    fields = {"password": PASSWORD, "password_again": PASSWORD}
    forms = [(browser, csrf_token(browser, path)) for browser in (first, second)]
    answers = [
        browser.post(path, data={"email": f"{n}@example.com", "csrf_token": token, **fields})
        for n, (browser, token) in enumerate(forms)
    ]
    assert [answer.status_code for answer in answers] == [303, 410]
    assert accounts(app) == 1


@pytest.mark.slow
def test_setup_forms_sent_at_the_same_moment_make_one_account(app):
    """Posts of one link at the same instant, with different addresses and with the same
    one (a double click): one account, and the others find the link used."""
    path = setup_path(app)
    browsers = [app.test_client() for _ in range(4)]
    forms = [(browser, csrf_token(browser, path)) for browser in browsers]
    addresses = ["a@example.com", "b@example.com", "owner@example.com", "owner@example.com"]
    fields = {"password": PASSWORD, "password_again": PASSWORD}
    start_line = threading.Barrier(len(forms))
    answers: list[int] = []

    def send(browser, token: str, address: str) -> None:
        start_line.wait()
        answer = browser.post(path, data={"email": address, "csrf_token": token, **fields})
        answers.append(answer.status_code)

    threads = [
        threading.Thread(target=send, args=(browser, token, address))
        for (browser, token), address in zip(forms, addresses, strict=True)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(answers) == [303, 410, 410, 410]
    assert accounts(app) == 1


def test_a_forged_setup_link_is_refused(app, client):
    services = services_of(app)
    genuine = setup_path(app).rsplit("/", 1)[1]
    stamp, signature = genuine.split(".")[1:]
    other_purpose = services.tokens.make(Purpose.CONFIRM, 0, now=services.clock())
    for token in [
        f"0.{int(stamp) + 3600}.{signature}",  # a later time, the old signature
        genuine[:-3],
        other_purpose,
        "nonsense",
        "0.0.x",
    ]:
        response = client.get(f"/admin/setup/{token}")
        page = response.get_data(as_text=True)
        assert response.status_code == 404, token
        assert "does not work" in page and "admin hint" in page


def test_setup_posts_are_counted_like_sign_ins(make_app):
    app = make_app(ADMIN_LOGIN_RATE_LIMIT="2 per minute")
    client = app.test_client()
    path = setup_path(app)
    answers = [set_up(client, path, password_again="different").status_code for _ in range(3)]
    assert answers == [422, 422, 429]


def test_the_banner_names_the_outbox_with_development_mail(make_app, smtp):
    banner = make_app().test_cli_runner().invoke(args=["admin", "hint", "--banner"]).output
    assert "http://newsletter.test/admin/outbox" in banner
    assert "/admin/setup/" in banner
    real = make_app(MAIL_URL=smtp.url).test_cli_runner().invoke(args=["admin", "hint", "--banner"])
    assert "/admin/outbox" not in real.output
    assert "sent through the server MAIL_URL names" in real.output


@pytest.mark.slow
def test_set_password_changes_it_and_ends_every_session(app, clock, monkeypatch):
    create_admin(app)
    browsers = [app.test_client(), app.test_client()]
    for browser in browsers:
        assert sign_in(browser).status_code == 303
    clock.advance(minutes=5)
    monkeypatch.setenv("ADMIN_PASSWORD", NEW_PASSWORD)
    result = app.test_cli_runner().invoke(args=["admin", "set-password", "OWNER@example.com"])
    assert result.exit_code == 0, result.output
    assert "2 session(s) signed out" in result.output
    for browser in browsers:
        assert browser.get("/admin/").status_code == 302
    with services_of(app).database.read() as session:
        # Device cookies made before this no longer count (service.web.devices).
        assert admins.sessions_reset_at(session, "owner@example.com") == clock.now
    fresh = app.test_client()
    assert sign_in(fresh).status_code == 401
    assert sign_in(fresh, password=NEW_PASSWORD).status_code == 303


@pytest.mark.slow
def test_set_password_lifts_the_lockout_of_wrong_guesses(make_app, monkeypatch):
    """Someone guessed at the account until it was locked: the reset password works at
    once, from a browser the service has never seen."""
    app = make_app(ADMIN_LOGIN_RATE_LIMIT="3 per hour")
    create_admin(app)
    for n in range(4):
        guess = sign_in(
            app.test_client(), password="wrong", environ_base={"REMOTE_ADDR": f"10.0.0.{n}"}
        )
        assert guess.status_code == (429 if n == 3 else 401)
    monkeypatch.setenv("ADMIN_PASSWORD", NEW_PASSWORD)
    result = app.test_cli_runner().invoke(args=["admin", "set-password", "owner@example.com"])
    assert result.exit_code == 0, result.output
    owner = sign_in(
        app.test_client(), password=NEW_PASSWORD, environ_base={"REMOTE_ADDR": "10.0.1.1"}
    )
    assert owner.status_code == 303


def test_set_password_asks_twice_when_no_password_is_set(app, monkeypatch):
    create_admin(app)
    monkeypatch.delenv("ADMIN_PASSWORD", raising=False)
    result = app.test_cli_runner().invoke(
        args=["admin", "set-password", "owner@example.com"],
        input=f"{NEW_PASSWORD}\n{NEW_PASSWORD}\n",
    )
    assert result.exit_code == 0, result.output
    assert "Repeat for confirmation" in result.output


def test_set_password_of_an_unknown_address_fails(app, monkeypatch):
    create_admin(app)
    monkeypatch.delenv("ADMIN_PASSWORD", raising=False)
    result = app.test_cli_runner().invoke(args=["admin", "set-password", "nobody@example.com"])
    assert result.exit_code != 0
    assert "There is no admin account for nobody@example.com" in result.output
    assert "Password" not in result.output  # said before asking


@pytest.mark.slow
def test_set_password_refuses_a_weak_one(app, monkeypatch):
    create_admin(app)
    with services_of(app).database.read() as session:
        before = session.scalar(select(AdminUser.password_hash))
    for weak in ("short", "password12345"):
        monkeypatch.setenv("ADMIN_PASSWORD", weak)
        result = app.test_cli_runner().invoke(args=["admin", "set-password", "owner@example.com"])
        assert result.exit_code != 0
        assert "at least 12" in result.output or "first an attacker" in result.output
    with services_of(app).database.read() as session:
        assert session.scalar(select(AdminUser.password_hash)) == before


def run_scheduler_once(app) -> None:
    """Start the real scheduler, let its dispatch job run once, and stop it."""
    services = services_of(app)
    signals = StopSignals()
    scheduler = make_scheduler(
        services, services.make_dispatcher("test-worker"), interval=3600, signals=signals
    )
    ran = threading.Event()

    def note(event) -> None:
        if event.job_id == "dispatch":
            ran.set()

    scheduler.add_listener(note, EVENT_JOB_EXECUTED | EVENT_JOB_ERROR)
    thread = threading.Thread(target=scheduler.start, daemon=True)
    thread.start()
    assert ran.wait(timeout=20)
    signals.stop.set()
    thread.join(timeout=20)
    assert not thread.is_alive()


def said(caplog) -> list[str]:
    return [f"{r.name}: {r.getMessage()}" for r in caplog.records if r.levelno >= logging.INFO]


@pytest.mark.slow
def test_an_idle_tick_logs_nothing(app, caplog):
    caplog.set_level(logging.INFO)
    run_scheduler_once(app)
    assert said(caplog) == []


@pytest.mark.slow
def test_a_tick_that_sends_says_so(app, caplog):
    add_pending(app, 2)
    caplog.set_level(logging.INFO)
    run_scheduler_once(app)
    [line] = said(caplog)
    assert line.startswith("scheduler: pass: claimed 2, sent 2")


def test_the_console_mailer_marks_each_email_and_keeps_links_whole():
    link = "https://newsletter.test/confirm/" + "x" * 300 + "?a=1&b=2"
    message = Message(
        sender="Low Back Relief <hello@newsletter.test>",
        to="reader@example.com",
        subject="Please confirm — it takes one click",
        text=f"Hello,\n\nConfirm here:\n\n{link}\n",
        html="<p>Hello</p>",
        date=START,
        message_id="<1@newsletter.test>",
    )
    stream = io.StringIO()
    ConsoleMailer(stream).send(message)
    lines = stream.getvalue().splitlines()
    about = 'email to reader@example.com: "Please confirm — it takes one click" ====='
    assert lines[0] == f"===== {about}"
    assert lines[-1] == f"===== end of {about}"
    assert link in lines
    assert "Subject: Please confirm — it takes one click" in lines


@pytest.fixture
def development_server(make_app):
    """The app in development, served by werkzeug's server as `flask run` serves it."""
    werkzeug_log = logging.getLogger("werkzeug")
    filters = list(werkzeug_log.filters)
    port = free_port()
    app = make_app(APP_ENV="development", BASE_URL=f"http://127.0.0.1:{port}")
    server = make_server("127.0.0.1", port, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{port}"
    server.shutdown()
    thread.join(timeout=10)
    werkzeug_log.filters[:] = filters


def fetch(url: str) -> int:
    try:
        with urllib.request.urlopen(url) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code


@pytest.mark.slow  # the server takes half a second to stop
def test_the_development_server_logs_only_failed_requests(development_server, caplog):
    caplog.set_level(logging.INFO)
    statuses = [
        fetch(development_server + path) for path in ("/static/site.css", "/admin/", "/nope")
    ]
    assert statuses == [200, 200, 404]  # /admin/ after its redirect to the sign-in page
    lines = [r.getMessage() for r in caplog.records if r.name == "werkzeug"]
    assert len(lines) == 1 and "GET /nope HTTP/1.1" in lines[0], lines
    assert lines[0].endswith(" 404 -")


@pytest.mark.parametrize(
    ("arguments", "base_url"),
    [
        ((), None),
        (("PORT=8080",), "http://127.0.0.1:8080"),
        (("HOST=0.0.0.0",), "http://0.0.0.0:5000"),
    ],
)
def test_make_run_on_another_port_puts_it_in_the_links(arguments, base_url):
    """`make run PORT=8080`: the banner's links and the emails' follow the port, unless
    BASE_URL is set (make -n prints the commands without running them)."""
    root = Path(__file__).resolve().parent.parent
    commands = subprocess.run(
        ["make", "-n", "-C", str(root), "run", *arguments],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    started = [line for line in commands.splitlines() if "honcho" in line or "hint" in line]
    assert len(started) == 2
    for line in started:
        if base_url is None:
            assert "BASE_URL" not in line
        else:
            assert line.startswith(f"BASE_URL=${{BASE_URL:-{base_url}}} ")
