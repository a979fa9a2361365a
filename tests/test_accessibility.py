"""Every page, public and admin, with and without form errors, checked by axe-core in a
real Chromium; the skip link, the focus ring and the signup form's errors with the keyboard.

One app with realistic data and one signed-in browser serve the whole module (building
them per test would take most of the time); the markup does not depend on the database,
so it runs on SQLite alone.
"""

from __future__ import annotations

import io
import shutil
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta

import pytest
from werkzeug.serving import make_server

from service import create_app, tags
from service.models import Broadcast, Import, OutboxMessage, SubscriberStatus
from service.tokens import Purpose
from tests.browser import (
    OWNER_EMAIL,
    OWNER_PASSWORD,
    axe_violations,
    make_owner,
    sign_in,
    wait_for_focus,
)
from tests.conftest import Clock, settings_for
from tests.helpers import get_subscriber, run_pass, services_of, sign_up
from tests.smtp_server import free_port
from tests.test_admin import csrf_token
from tests.test_admin import sign_in as sign_in_client
from tests.test_archive import sent
from tests.test_broadcasts import draft, readers, send_now

pytestmark = pytest.mark.browser

# A row the importer refuses, so the preview lists an issue.
CSV_WITH_ERRORS = b"email,first_name\nnew@example.com,New\nnot-an-address,Bad\n"


@dataclass
class Site:
    """The app over HTTP, and the paths of its pages that need an id or a token."""

    app: object
    base: str
    public: dict[str, str]
    admin: dict[str, str]


def token(app, purpose: Purpose, email: str, *, age: timedelta = timedelta(0)) -> str:
    """A link's token for the reader, made `age` ago."""
    services = services_of(app)
    subscriber_id = get_subscriber(app, email).id
    return services.tokens.make(purpose, subscriber_id, now=services.clock() - age)


def fill_with_data(app) -> tuple[dict[str, str], dict[str, str]]:
    """The owner, readers who signed up through the form (one confirmed, with a tag), an
    import's preview, a draft and a sent newsletter in the archive; the pages to visit."""
    services = services_of(app)
    make_owner(app)
    client = app.test_client()
    sign_up(client, "ann@example.com", first_name="Ann", time_zone="Europe/Berlin")
    sign_up(client, "bo@example.com", magnet="foam-rolling-planner")
    client.post(f"/confirm/{token(app, Purpose.CONFIRM, 'ann@example.com')}")
    ann = get_subscriber(app, "ann@example.com").id
    with services.database.begin() as session:
        tags.add_by_owner(session, ann, "topic:hips", now=services.clock())
    run_pass(app)
    readers(app)
    slug = sent(app, "Foam rolling, week two")
    draft_id = draft(app, "Stretching at your desk")
    sending_id = draft(app, "Going out now")
    send_now(app, sending_id)
    admin = app.test_client()
    sign_in_client(admin, OWNER_EMAIL, OWNER_PASSWORD)
    admin.post(
        "/admin/subscribers/import",
        data={
            "csrf_token": csrf_token(admin, "/admin/subscribers/import"),
            "file": (io.BytesIO(CSV_WITH_ERRORS), "old.csv"),
        },
    )
    with services.database.read() as session:
        email_id = session.query(OutboxMessage.id).filter_by(subscriber_id=ann).first()[0]
        sent_id = session.query(Broadcast.id).filter_by(slug=slug).scalar()
        import_id = session.query(Import.id).scalar()

    public = {
        "landing": "/",
        **{f"magnet {m}": f"/free/{m}" for m in services.magnets},
        "check your inbox": "/check-your-inbox",
        "confirm": f"/confirm/{token(app, Purpose.CONFIRM, 'bo@example.com')}",
        "confirmed": f"/confirmed/{token(app, Purpose.DOWNLOAD, 'ann@example.com')}",
        "link expired": "/confirm/"
        + token(app, Purpose.CONFIRM, "bo@example.com", age=timedelta(days=400)),
        "link invalid": "/confirm/1.1795532400.forged-signature",
        "unsubscribe": f"/unsubscribe/{token(app, Purpose.UNSUBSCRIBE, 'ann@example.com')}",
        "preferences": f"/preferences/{token(app, Purpose.PREFERENCES, 'ann@example.com')}",
        "archive": "/archive",
        "archive entry": f"/archive/{slug}",
        "not found": "/no-such-page",
        "sign in": "/admin/login",
    }
    admin_pages = {
        "dashboard": "/admin/",
        "subscribers": "/admin/subscribers",
        "subscribers filtered": "/admin/subscribers?q=ann&status=confirmed&tag=topic%3Ahips",
        "subscriber": f"/admin/subscribers/{ann}",
        "import": "/admin/subscribers/import",
        "import preview": f"/admin/imports/{import_id}",
        "newsletters": "/admin/newsletters",
        "new newsletter": "/admin/newsletters/new",
        "newsletter draft": f"/admin/newsletters/{draft_id}",
        "newsletter sent": f"/admin/newsletters/{sent_id}",
        "account": "/admin/account",
        "outbox": "/admin/outbox",
        "outbox email": f"/admin/outbox/{email_id}",
        "dashboard, a year": "/admin/?days=365",
        "send question": f"/admin/newsletters/{draft_id}/confirm-send",
        "newsletter sending": f"/admin/newsletters/{sending_id}",
        "cancel question": f"/admin/newsletters/{sending_id}/cancel/confirm",
        "delete question": f"/admin/newsletters/{draft_id}/delete/confirm",
        "unsubscribe question": f"/admin/subscribers/{ann}/unsubscribe/confirm",
        "erase question": f"/admin/subscribers/{ann}/erase/confirm",
        "import cancel question": f"/admin/imports/{import_id}/cancel/confirm",
    }
    assert get_subscriber(app, "ann@example.com").status is SubscriberStatus.CONFIRMED
    assert (list(public), list(admin_pages)) == (PUBLIC, ADMIN)  # the tests' names
    return public, admin_pages


@contextmanager
def served_site(sqlite_template, folder) -> Iterator[Site]:
    """An app on a copy of the migrated SQLite file, filled with data, over HTTP."""
    database = folder / "site.db"
    shutil.copyfile(sqlite_template, database)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    app = create_app(settings_for(f"sqlite:///{database}", folder, BASE_URL=base))
    services_of(app).clock = Clock()
    public, admin = fill_with_data(app)
    server = make_server("127.0.0.1", port, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield Site(app, base, public, admin)
    finally:
        server.shutdown()
        thread.join(timeout=10)
        services_of(app).database.dispose()


@pytest.fixture(scope="module")
def site(sqlite_template, tmp_path_factory) -> Iterator[Site]:
    with served_site(sqlite_template, tmp_path_factory.mktemp("a11y")) as served:
        yield served


@contextmanager
def browser_page(browser, **options) -> Iterator:
    """A page in a browser context of its own; script errors and Content-Security-Policy
    violations land in page.problems."""
    context = browser.new_context(**options)
    page = context.new_page()
    page.problems = []
    page.on("console", lambda m: page.problems.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: page.problems.append(str(e)))
    try:
        yield page
    finally:
        context.close()


def assert_no_violations(page) -> None:
    """Nothing for axe-core to report, and no script error (Chromium's note of a 4xx
    status the page meant to send is not one)."""
    violations = axe_violations(page)
    assert violations == [], "\n".join(violations)
    assert [p for p in page.problems if "the server responded with a status of 4" not in p] == []


@pytest.fixture(scope="module")
def owner(browser, site):
    """A page in a browser signed in as the owner, kept for the whole module."""
    with browser_page(browser) as page:
        sign_in(page, site.base)
        yield page


@pytest.fixture(scope="module")
def reader(browser):
    """A page in a browser nobody signed in with."""
    with browser_page(browser) as page:
        yield page


PUBLIC = [
    "landing",
    "magnet glute-guide",
    "magnet foam-rolling-planner",
    "check your inbox",
    "confirm",
    "confirmed",
    "link expired",
    "link invalid",
    "unsubscribe",
    "preferences",
    "archive",
    "archive entry",
    "not found",
    "sign in",
]
ADMIN = [
    "dashboard",
    "subscribers",
    "subscribers filtered",
    "subscriber",
    "import",
    "import preview",
    "newsletters",
    "new newsletter",
    "newsletter draft",
    "newsletter sent",
    "account",
    "outbox",
    "outbox email",
    "dashboard, a year",
    "send question",
    "newsletter sending",
    "cancel question",
    "delete question",
    "unsubscribe question",
    "erase question",
    "import cancel question",
]


@pytest.mark.parametrize("name", PUBLIC)
def test_public_pages_have_no_axe_violations(site, reader, name):
    reader.goto(site.base + site.public[name])
    assert_no_violations(reader)


@pytest.mark.parametrize("name", ADMIN)
def test_admin_pages_have_no_axe_violations(site, owner, name):
    response = owner.goto(site.base + site.admin[name])
    assert response.status == 200
    assert_no_violations(owner)


def test_forms_shown_again_with_errors_have_no_axe_violations(site, reader, owner):
    reader.goto(site.base + "/")
    reader.fill("#email", "ann@@example")
    reader.click("form.signup button[type=submit]")
    reader.wait_for_selector(".form-errors")
    assert_no_violations(reader)

    reader.goto(site.base + site.public["preferences"])
    reader.fill("#time_zone", "Atlantis/Capital")
    reader.click("button:has-text('Save my details')")
    reader.wait_for_selector(".form-errors")
    assert_no_violations(reader)

    reader.goto(site.base + "/admin/login")
    reader.fill("#email", OWNER_EMAIL)
    reader.fill("#password", "not the password")
    reader.click("button:has-text('Sign in')")
    reader.wait_for_selector(".field-error")
    assert_no_violations(reader)

    owner.goto(site.base + "/admin/account")
    owner.fill("#current_password", "not the password")
    owner.fill("#new_password", "a new long enough password")
    owner.click("button:has-text('Change password')")
    owner.wait_for_selector(".field-error")
    assert_no_violations(owner)

    owner.goto(site.base + "/admin/subscribers/import")
    owner.set_input_files(
        "#file", {"name": "old.csv", "mimeType": "text/csv", "buffer": CSV_WITH_ERRORS}
    )
    owner.click("button:has-text('Check the file')")
    owner.wait_for_selector("#import-issues")
    assert_no_violations(owner)

    owner.goto(site.base + "/admin/subscribers/import")
    owner.set_input_files(
        "#file", {"name": "broken.csv", "mimeType": "text/csv", "buffer": b"email\n\xff\xfe\n"}
    )
    owner.click("button:has-text('Check the file')")
    owner.wait_for_selector("#file-error")
    wait_for_focus(owner, "file")
    assert owner.get_attribute("#file", "aria-describedby") == "file-error"
    assert_no_violations(owner)


def test_the_pages_after_a_button_have_no_axe_violations(site, reader):
    """The unsubscribed page, and the confirmed page reached by confirming."""
    reader.goto(
        site.base + f"/unsubscribe/{token(site.app, Purpose.UNSUBSCRIBE, 'r2@example.com')}"
    )
    reader.click("button:has-text('Unsubscribe me')")
    reader.wait_for_selector("h1:has-text('You are unsubscribed')")
    assert_no_violations(reader)

    reader.goto(site.base + site.public["confirm"])
    reader.click("button:has-text('Yes, send me the guide')")
    reader.wait_for_url(site.base + "/confirmed/*")
    assert_no_violations(reader)


def focus_by_tab(page, selector: str) -> None:
    """Press Tab until the element is focused, as a keyboard user gets there."""
    for _ in range(60):
        page.keyboard.press("Tab")
        if page.evaluate("s => document.activeElement.matches(s)", selector):
            return
    raise AssertionError(f"Tab never reaches {selector}")


@pytest.mark.parametrize(
    ("who", "name"),
    [
        ("reader", "landing"),
        ("reader", "preferences"),
        ("reader", "sign in"),
        ("owner", "dashboard"),
        ("owner", "subscribers"),
        ("owner", "newsletter draft"),
    ],
)
def test_the_skip_link_is_the_first_tab_stop_and_moves_focus_to_main(
    site, reader, owner, who, name
):
    page = reader if who == "reader" else owner
    page.goto(site.base + (site.public | site.admin)[name])
    page.keyboard.press("Tab")
    link = page.locator(":focus")
    assert link.inner_text() == "Skip to content"
    assert link.get_attribute("href") == "#main"
    box = link.bounding_box()
    assert box["y"] >= 0 and box["height"] > 0  # in sight once focused
    page.keyboard.press("Enter")
    assert page.evaluate("document.activeElement.id") == "main"
    assert page.evaluate("document.activeElement.tagName") == "MAIN"


# The ring's colour against the background it is drawn on: the nearest ancestor with one.
RING = """el => {
  const rgb = c => c.match(/[\\d.]+/g).map(Number);
  const channel = v => (v /= 255) <= 0.03928 ? v / 12.92 : ((v + 0.055) / 1.055) ** 2.4;
  const lum = ([r, g, b]) => 0.2126 * channel(r) + 0.7152 * channel(g) + 0.0722 * channel(b);
  let node = el.parentElement, behind = [255, 255, 255];
  for (; node; node = node.parentElement) {
    const c = rgb(getComputedStyle(node).backgroundColor);
    if (c.length < 4 || c[3] > 0) { behind = c; break; }
  }
  const style = getComputedStyle(el);
  const [a, b] = [lum(rgb(style.outlineColor)), lum(behind)].sort((x, y) => y - x);
  return {
    shown: el.matches(":focus-visible") && style.outlineStyle !== "none",
    width: parseFloat(style.outlineWidth),
    contrast: (a + 0.05) / (b + 0.05),
  };
}"""


@pytest.mark.parametrize(
    ("who", "name", "selector"),
    [
        ("reader", "landing", "a.skip-link"),
        ("reader", "landing", "form.signup button[type=submit]"),
        ("reader", "archive", "#archive-list a"),
        ("reader", "preferences", "#pause button"),
        ("owner", "dashboard", ".admin-bar nav a"),
        ("owner", "dashboard", ".admin-bar .link-button"),
        ("owner", "account", "form.stacked button"),
        ("owner", "subscribers", "#subscriber-list a"),
    ],
)
def test_the_focus_ring_stands_out_on_light_and_dark_backgrounds(
    site, reader, owner, who, name, selector
):
    page = reader if who == "reader" else owner
    page.goto(site.base + (site.public | site.admin)[name])
    focus_by_tab(page, selector)
    ring = page.evaluate(RING, page.locator(":focus").element_handle())
    assert ring["shown"] and ring["width"] >= 2
    assert ring["contrast"] >= 3, ring


def described_by(page) -> str:
    """The text of the element the focused field's aria-describedby names."""
    return page.evaluate(
        "document.getElementById(document.activeElement.getAttribute('aria-describedby'))"
        ".textContent"
    )


def test_signup_errors_are_tied_to_their_field_which_gets_the_focus(site, reader):
    reader.goto(site.base + "/")
    reader.fill("#first_name", "Ann")
    reader.fill("#email", "ann@@example")
    reader.click("form.signup button[type=submit]")
    reader.wait_for_selector(".form-errors")
    wait_for_focus(reader, "email")
    assert reader.get_attribute("#email", "aria-invalid") == "true"
    assert "@" in described_by(reader) and described_by(reader).strip()
    assert reader.get_attribute("#first_name", "aria-invalid") is None
    # The error shows beside its field, not only in the summary at the top.
    error = reader.locator("#email-error")
    assert (
        error.is_visible()
        and error.bounding_box()["y"] > reader.locator("#email").bounding_box()["y"]
    )

    reader.goto(site.base + site.public["preferences"])
    reader.fill("#time_zone", "Atlantis/Capital")
    reader.click("button:has-text('Save my details')")
    reader.wait_for_selector(".form-errors")
    wait_for_focus(reader, "time_zone")
    assert "Please choose your time zone from the list" in described_by(reader)


def test_admin_form_errors_are_tied_to_their_field_which_gets_the_focus(site, reader, owner):
    reader.goto(site.base + "/admin/login")
    reader.fill("#email", OWNER_EMAIL)
    reader.fill("#password", "not the password")
    reader.click("button:has-text('Sign in')")
    reader.wait_for_selector(".field-error")
    wait_for_focus(reader, "password")
    assert described_by(reader) == "That email and password do not match."

    owner.goto(site.base + "/admin/account")
    owner.fill("#current_password", OWNER_PASSWORD)
    owner.fill("#new_password", "password1234")
    owner.click("button:has-text('Change password')")
    owner.wait_for_selector(".field-error")
    wait_for_focus(owner, "new_password")
    assert owner.get_attribute("#current_password", "aria-invalid") is None
    assert described_by(owner).strip()


def test_newsletter_errors_are_tied_to_their_field_which_gets_the_focus(site, owner):
    owner.goto(site.base + "/admin/newsletters/new")
    owner.fill("#subject", "   ")
    owner.fill("#body", "Roll gently.")
    owner.evaluate("document.getElementById('subject').removeAttribute('required')")
    owner.click("button:has-text('Save draft')")
    owner.wait_for_selector("#subject-error")
    wait_for_focus(owner, "subject")
    assert described_by(owner) == "Give the newsletter a subject."
    assert owner.get_attribute("#body", "aria-invalid") is None
    assert_no_violations(owner)
