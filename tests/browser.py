"""Fixtures for tests in a real browser: Debian's Chromium driven by Playwright, the app
served over HTTP on loopback, an owner signed in, and axe-core's accessibility check.

Loaded for every test module by tests/conftest.py. Where Chromium or Playwright is
missing the tests that use them skip, unless REQUIRE_BROWSER=1 (set by .ci/run), which
makes that a failure.
"""

from __future__ import annotations

import contextlib
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from werkzeug.serving import make_server

from tests.conftest import missing
from tests.smtp_server import free_port

OWNER_EMAIL = "owner@example.com"
OWNER_PASSWORD = "a long enough password"

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).exists() and not shutil.which("chromium"):
        missing("Chromium", "REQUIRE_BROWSER", f"{CHROMIUM} not found; apt-get install chromium")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        missing("Playwright", "REQUIRE_BROWSER", "pip install -r requirements-dev.txt")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@contextlib.contextmanager
def served(make_app, **settings) -> Iterator[tuple[object, str]]:
    """An app made with `settings`, served over real HTTP on loopback: (app, base URL)."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    app = make_app(BASE_URL=base, **settings)
    server = make_server("127.0.0.1", port, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield app, base
    finally:
        server.shutdown()
        thread.join(timeout=10)


@pytest.fixture
def live_app(make_app) -> Iterator[tuple[object, str]]:
    """The app served over real HTTP on loopback."""
    with served(make_app) as app_and_base:
        yield app_and_base


@pytest.fixture
def page(browser):
    context = browser.new_context(timezone_id="America/Vancouver", accept_downloads=True)
    page = context.new_page()
    problems: list[str] = []
    page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: problems.append(str(e)))
    page.problems = problems
    yield page
    context.close()


def sign_in(page, base: str, email: str = OWNER_EMAIL, password: str = OWNER_PASSWORD) -> None:
    """Sign in through the admin's form; the browser ends on the dashboard."""
    page.goto(base + "/admin/login")
    page.fill("#email", email)
    page.fill("#password", password)
    page.click("button:has-text('Sign in')")
    page.wait_for_url(base + "/admin/")


def make_owner(app, email: str = OWNER_EMAIL, password: str = OWNER_PASSWORD) -> None:
    """The owner's admin account."""
    from service import admins

    services = app.extensions["newsletter"]
    with services.database.begin() as session:
        admins.create(session, email, password, now=services.clock())


def axe_violations(page) -> list[str]:
    """axe-core's violations on the page as it is now, one line each (rule, impact, the
    first offending elements): an empty list means none."""
    from axe_playwright_python.sync_playwright import Axe

    results = Axe().run(page)
    return [
        f"{v['id']} ({v['impact']}): {v['help']} at "
        + ", ".join(str(node["target"]) for node in v["nodes"][:3])
        for v in results.response["violations"]
    ]


def wait_for_focus(page, element_id: str) -> None:
    """Wait until the element with `element_id` has the focus (a page's script moves it as
    the page loads); fails after five seconds."""
    page.wait_for_function(
        "id => document.activeElement && document.activeElement.id === id",
        arg=element_id,
        timeout=5_000,
    )
