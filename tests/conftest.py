"""Fixtures: an app on a fresh database (SQLite and PostgreSQL), a clock, SMTP servers.

Database tests run on both backends through the `database_url` fixture. PostgreSQL is the
server at TEST_POSTGRES_URL (default: the local one); without it those tests skip, unless
REQUIRE_POSTGRES=1 (set by .ci/run), which turns the skip into a failure.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import make_url

from service import create_app, migrate
from service.db import Base
from tests.smtp_server import SMTPServer

# The browser fixtures (Chromium, the app over HTTP, axe-core) for every test module.
pytest_plugins = ("tests.browser",)

# Tests never read a developer's .env file.
os.environ["DOTENV_PATH"] = ""

POSTGRES_ADMIN_URL = os.environ.get(
    "TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
START = datetime(2026, 11, 24, 15, 0, tzinfo=UTC)
TEST_SECRET = "test-secret-key-that-is-long-enough"


def _required(name: str) -> bool:
    return os.environ.get(name, "") not in ("", "0")


def missing(what: str, variable: str, why: str) -> None:
    """Skip for a missing component, or fail when CI says the component is mandatory."""
    message = f"{what} is not available ({why})"
    if _required(variable):
        pytest.fail(f"{message}, and {variable}=1 makes it mandatory", pytrace=False)
    pytest.skip(f"{message}; set {variable}=1 to make this a failure")


class Clock:
    """Time that moves only when a test says so."""

    def __init__(self, start: datetime = START) -> None:
        self.now = start

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **delta: float) -> datetime:
        self.now += timedelta(**delta)
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A migrated SQLite file, copied for each test (migrating once is much faster)."""
    path = tmp_path_factory.mktemp("template") / "template.db"
    migrate.upgrade(f"sqlite:///{path}")
    return path


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A database of our own on the PostgreSQL server, migrated, dropped at the end."""
    admin = sa.create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT")
    name = f"newsletter_test_{os.getpid()}_{uuid.uuid4().hex[:6]}"
    try:
        with admin.connect() as connection:
            connection.exec_driver_sql(f'CREATE DATABASE "{name}"')
    except sa.exc.OperationalError as exc:
        admin.dispose()
        missing("PostgreSQL", "REQUIRE_POSTGRES", f"{POSTGRES_ADMIN_URL}: {exc.orig}")
    url = make_url(POSTGRES_ADMIN_URL).set(database=name).render_as_string(hide_password=False)
    try:
        migrate.upgrade(url)
        yield url
    finally:
        with admin.connect() as connection:
            connection.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.dispose()


def _empty_postgres(url: str) -> None:
    """Every table emptied and every sequence back at its start, as TRUNCATE ... RESTART
    IDENTITY would leave them. DELETE, because a test leaves a few rows: deleting them takes
    milliseconds, where TRUNCATE gives each table and index a new file (150 ms a test)."""
    engine = sa.create_engine(url)
    # Children before parents; rate_limits: the limiter's counters (migration 0009), not one
    # of the models.
    tables = [*(t.name for t in reversed(Base.metadata.sorted_tables)), "rate_limits"]
    with engine.begin() as connection:
        for table in tables:
            connection.exec_driver_sql(f'DELETE FROM "{table}"')
        connection.exec_driver_sql(
            "SELECT setval(format('%%I.%%I', schemaname, sequencename), start_value, false)"
            " FROM pg_sequences WHERE schemaname = current_schema()"
        )
    engine.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """An empty, migrated database on each backend in turn."""
    if request.param == "sqlite":
        path = tmp_path / "test.db"
        shutil.copyfile(request.getfixturevalue("sqlite_template"), path)
        return f"sqlite:///{path}"
    url = request.getfixturevalue("postgres_url")
    _empty_postgres(url)
    return url


@pytest.fixture
def sqlite_url(tmp_path: Path, sqlite_template: Path) -> str:
    """An empty, migrated SQLite database (for tests about SQLite itself)."""
    path = tmp_path / "test.db"
    shutil.copyfile(sqlite_template, path)
    return f"sqlite:///{path}"


def settings_for(database_url: str, tmp_path: Path, **overrides: object) -> dict[str, object]:
    settings: dict[str, object] = {
        "APP_ENV": "testing",
        "SECRET_KEY": TEST_SECRET,
        "DATABASE_URL": database_url,
        "INSTANCE_DIR": str(tmp_path / "instance"),
        "MAIL_URL": f"file://{tmp_path / 'mail'}",
        "BASE_URL": "http://newsletter.test",
        "MAIL_FROM": "Low Back Relief <hello@newsletter.test>",
        "OWNER_POSTAL_ADDRESS": "12 Test Lane, Testville",
        "SIGNUP_RATE_LIMIT": "off",
        "RATELIMIT_STORAGE_URI": "memory://",
        "SEND_RETRY_BASE_SECONDS": 60,
        "LOG_LEVEL": "WARNING",
    }
    settings.update(overrides)
    return settings


@pytest.fixture
def make_app(database_url: str, tmp_path: Path, clock: Clock):
    """Build an app on the test database; keyword arguments override settings."""
    apps = []

    def build(**overrides: object):
        app = create_app(settings_for(database_url, tmp_path, **overrides))
        app.extensions["newsletter"].clock = clock
        apps.append(app)
        return app

    yield build
    for app in apps:
        app.extensions["newsletter"].database.dispose()


@pytest.fixture
def app(make_app):
    return make_app()


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture
def services(app):
    return app.extensions["newsletter"]


@pytest.fixture
def smtp() -> Iterator[SMTPServer]:
    with SMTPServer() as server:
        yield server


@pytest.fixture
def smtp_app(make_app, smtp: SMTPServer):
    """An app whose mail goes to the loopback SMTP server."""
    return make_app(MAIL_URL=smtp.url)
