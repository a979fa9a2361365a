"""The owner sends a newsletter in a real browser: the question before it goes, then its
progress refreshing itself while the scheduler's tick delivers to a real SMTP server on
loopback. Skipped where Chromium or Playwright is missing (see tests/browser.py)."""

from __future__ import annotations

import threading

import pytest

from scheduler.__main__ import tick
from service.models import SubscriberStatus
from tests.browser import axe_violations, make_owner, served, sign_in
from tests.helpers import make_subscriber

pytestmark = pytest.mark.browser


@pytest.fixture
def mailing_app(make_app, smtp):
    """The app over HTTP on loopback, mailing to the loopback SMTP server."""
    with served(make_app, MAIL_URL=smtp.url) as app_and_base:
        yield app_and_base


def test_the_owner_confirms_the_send_and_watches_it_go(mailing_app, page, smtp):
    from playwright.sync_api import expect

    app, base = mailing_app
    services = app.extensions["newsletter"]
    make_owner(app)
    with services.database.begin() as session:
        for n in range(3):
            make_subscriber(
                session,
                f"reader{n}@example.com",
                now=services.clock(),
                first_name=f"Reader{n}",
                status=SubscriberStatus.CONFIRMED,
            )
    sign_in(page, base)
    page.goto(base + "/admin/newsletters/new")
    page.fill("#subject", "Rolling, week three")
    page.fill("#body", "Roll **gently**.\n\n## Then\n\n- [stretch](https://example.com/s)")
    expect(page.locator("#greeting")).to_be_checked()
    page.click("button:has-text('Save draft')")
    page.wait_for_url(base + "/admin/newsletters/1")
    expect(page.locator("#preview-text")).to_contain_text("Hi Alex,")
    # The greeting is a choice the preview follows as it is made.
    page.uncheck("#greeting")
    expect(page.locator("#preview-text")).not_to_contain_text("Hi Alex,")
    expect(page.frame_locator("#preview-frame").locator("body")).not_to_contain_text("Hi Alex")
    page.check("#greeting")
    expect(page.locator("#preview-text")).to_contain_text("Hi Alex,")
    assert axe_violations(page) == []

    page.click("#send-button")
    expect(page.locator("h1")).to_have_text("Send to 3 confirmed readers now?")
    assert axe_violations(page) == []
    assert smtp.handler.received == []
    page.click("#confirm-send-button")
    page.wait_for_url(base + "/admin/newsletters/1")
    expect(page.locator("#progress-state")).to_contain_text("Sending now")
    expect(page.locator("#progress [data-figure=recipients_shown] dd")).to_have_text("counting…")
    assert axe_violations(page) == []

    # A mark on this page's window: gone if the page were reloaded.
    page.evaluate("window.notReloaded = true")
    tick(
        services,
        services.make_dispatcher("browser-test"),
        started_at=services.clock(),
        clock=services.clock,
        stop=threading.Event(),
    )
    received = smtp.handler.wait_for(3)
    assert {r.rcpt_tos[0] for r in received} == {f"reader{n}@example.com" for n in range(3)}
    assert "Roll gently." in received[0].part("plain") and "**" not in received[0].part("plain")
    expect(page.locator("#progress [data-figure=sent] dd")).to_have_text("3", timeout=15_000)
    expect(page.locator("#progress [data-figure=recipients_shown] dd")).to_have_text("3")
    expect(page.locator("#progress [data-figure=remaining] dd")).to_have_text("0")
    expect(page.locator("#progress-state")).to_contain_text("Sent")
    expect(page.locator("#newsletter-status")).to_have_text("sent")
    expect(page.locator("#cancel-rest")).to_be_hidden()
    assert page.evaluate("window.notReloaded") is True
    assert axe_violations(page) == []
    assert page.problems == []


def test_the_progress_says_so_when_the_session_ends(live_app, page):
    """Signed out elsewhere while watching: the page says so and stops asking, instead of
    polling the sign-in page in silence."""
    from playwright.sync_api import expect

    from service import broadcasts

    app, base = live_app
    services = app.extensions["newsletter"]
    make_owner(app)
    with services.database.begin() as session:
        draft = broadcasts.save_draft(
            session, None, subject="Week four", body="Roll.", now=services.clock()
        )
        broadcasts.schedule(session, draft.id, at=services.clock(), now=services.clock())
    sign_in(page, base)
    page.goto(f"{base}/admin/newsletters/{draft.id}")
    expect(page.locator("#progress-state")).to_contain_text("Sending now", timeout=15_000)
    page.context.clear_cookies()
    expect(page.locator("#progress-state")).to_contain_text("Signed out", timeout=15_000)
    assert page.problems == []
