"""Rate limits hold across gunicorn's workers: real gunicorn, several worker processes, the
default counters (a table every process shares), on both databases; and that storage on
its own."""

from __future__ import annotations

import http.client
import os
import re
import subprocess
import sys
import urllib.parse
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from service.config import PROJECT_ROOT
from tests.conftest import TEST_SECRET
from tests.smtp_server import free_port
from tests.test_admin import PASSWORD, create_admin

WORKERS = 4
GUNICORN = str(Path(sys.executable).parent / "gunicorn")


def gunicorn_env(database_url: str, tmp_path: Path, port: int, **extra: str) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if key in ("PATH", "HOME", "LANG")}
    env.update(
        APP_ENV="testing",
        DOTENV_PATH="",
        SECRET_KEY=TEST_SECRET,
        DATABASE_URL=database_url,
        INSTANCE_DIR=str(tmp_path / "instance"),
        MAIL_URL=f"file://{tmp_path / 'mail'}",
        BASE_URL=f"http://127.0.0.1:{port}",
        OWNER_POSTAL_ADDRESS="12 Test Lane, Testville",
        LOG_LEVEL="WARNING",
        **extra,
    )
    return env


def start_gunicorn(env: dict[str, str], port: int, workers: int = WORKERS) -> subprocess.Popen:
    return subprocess.Popen(
        [
            GUNICORN,
            "--config",
            str(PROJECT_ROOT / "gunicorn.conf.py"),
            "--bind",
            f"127.0.0.1:{port}",
            "--workers",
            str(workers),
            "--access-logfile",
            "/dev/null",
            "wsgi:app",
        ],
        cwd=PROJECT_ROOT,
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.fixture
def server(make_app, database_url, tmp_path) -> Iterator[str]:
    """gunicorn with several workers on the test database, with the shipped limits."""
    create_admin(make_app())
    port = free_port()
    process = start_gunicorn(gunicorn_env(database_url, tmp_path, port), port)
    booted = 0
    while booted < WORKERS:  # each worker says so on stderr as it starts
        line = process.stderr.readline()
        assert line, f"gunicorn stopped: exit {process.wait()}"
        booted += "Booting worker" in line
    try:
        yield f"127.0.0.1:{port}"
    finally:
        process.terminate()
        process.communicate(timeout=30)


def request(host: str, method: str, path: str, body: dict | None = None, cookie: str = ""):
    """One request on a connection of its own (sync workers take one connection each)."""
    connection = http.client.HTTPConnection(host, timeout=30)
    headers = {"Cookie": cookie} if cookie else {}
    data = None
    if body is not None:
        data = urllib.parse.urlencode(body)
        headers["Content-Type"] = "application/x-www-form-urlencoded"
    connection.request(method, path, body=data, headers=headers)
    response = connection.getresponse()
    text = response.read().decode()
    connection.close()
    return response.status, response.getheader("Set-Cookie") or "", text


def concurrently(calls: int, call) -> Counter:
    with ThreadPoolExecutor(8) as pool:
        return Counter(pool.map(call, range(calls)))


@pytest.mark.slow
def test_the_signup_limit_holds_across_workers(server):
    """SIGNUP_RATE_LIMIT is 5 a minute per client: with 4 workers counting in memory, the
    probe got 40 of 80 through."""
    codes = concurrently(
        40, lambda n: request(server, "POST", "/subscribe", {"email": f"r{n}@example.com"})[0]
    )
    assert codes == {303: 5, 429: 35}


@pytest.mark.slow
def test_the_sign_in_limit_holds_across_workers(server):
    """ADMIN_LOGIN_RATE_LIMIT is 10 a minute: the probe had 66 of 80 passwords checked.

    An attempt takes a place in two buckets (the client address and the account), one
    after the other: in a burst, one attempt may get the address's tenth place and
    another the account's, so both are refused and fewer than ten are checked. Never
    more."""
    status, cookie, page = request(server, "GET", "/admin/login")
    assert status == 200
    token = re.search(r'name="csrf_token" value="([^"]+)"', page)[1]
    session = cookie.split(";")[0]
    form = {"email": "owner@example.com", "password": "wrong password guess", "csrf_token": token}
    codes = concurrently(
        40, lambda _n: request(server, "POST", "/admin/login", form, cookie=session)[0]
    )
    assert set(codes) == {401, 429}
    assert 5 <= codes[401] <= 10
    right = {**form, "password": PASSWORD}
    assert request(server, "POST", "/admin/login", right, cookie=session)[0] == 429


@pytest.mark.slow
@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_gunicorn_refuses_several_workers_counting_on_their_own(database_url, tmp_path):
    port = free_port()
    env = gunicorn_env(database_url, tmp_path, port, RATELIMIT_STORAGE_URI="memory://")
    process = start_gunicorn(env, port)
    _, errors = process.communicate(timeout=60)
    assert process.returncode != 0
    assert "RATELIMIT_STORAGE_URI=memory:// counts in each of the 4 workers" in errors
    # One worker counting in its own memory counts everything: that may start.
    single = start_gunicorn(env, port, workers=1)
    line = single.stderr.readline()
    while line and "Booting worker" not in line:
        line = single.stderr.readline()
    assert "Booting worker" in line
    single.terminate()
    single.communicate(timeout=30)


@pytest.fixture
def storage(database_url, tmp_path):
    """The default storage over the test database (SQLite: a file of its own)."""
    from service.db import Database
    from service.web import rate_limits

    if database_url.startswith("sqlite"):
        database = Database.connect(f"sqlite:///{tmp_path / rate_limits.SQLITE_FILE}")
        rate_limits.create_sqlite_table(database)
    else:
        database = Database.connect(database_url)
    yield rate_limits.DatabaseStorage(database=database)
    database.dispose()


def test_a_window_counts_then_starts_again(storage, monkeypatch):
    from service.web import rate_limits

    now = [1_000_000.0]
    monkeypatch.setattr(rate_limits.time, "time", lambda: now[0])
    assert [storage.incr("k", 60) for _ in range(3)] == [1, 2, 3]
    assert (storage.get("k"), storage.get_expiry("k")) == (3, 1_000_060.0)
    now[0] += 61
    assert storage.get("k") == 0
    assert storage.incr("k", 60) == 1


def test_a_refund_never_goes_below_nothing(storage, monkeypatch):
    """An attempt given back after its window ended must not give a free attempt."""
    from service.web import rate_limits

    now = [1_000_000.0]
    monkeypatch.setattr(rate_limits.time, "time", lambda: now[0])
    storage.incr("k", 60)
    assert storage.incr("k", 60, amount=-1) == 0
    assert storage.incr("k", 60, amount=-1) == 0
    now[0] += 61
    assert storage.incr("k", 60, amount=-1) == 0
    assert storage.incr("k", 60) == 1


@pytest.mark.parametrize("key", ["a\x00b", "\udcff", "é" * 10, "x" * 5000])
def test_any_key_a_client_can_make_is_stored(storage, key):
    """A key carries what the sign-in form was given: PostgreSQL refuses a NUL."""
    assert storage.incr(key, 60) == 1
    assert storage.incr(key, 60) == 2
    assert storage.get(key) == 2
    storage.clear(key)
    assert storage.get(key) == 0
