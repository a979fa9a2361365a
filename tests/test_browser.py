"""The reader's path in a real browser: Debian's Chromium driven by Playwright.

Skipped where Chromium or Playwright is missing, unless REQUIRE_BROWSER=1 (set by
.ci/run), which makes that a failure.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from werkzeug.serving import make_server

from service.models import SubscriberStatus
from tests.helpers import get_subscriber, link_path, run_pass
from tests.smtp_server import free_port

pytestmark = pytest.mark.browser


def latest_email_text(app) -> str:
    directory = Path(app.extensions["newsletter"].settings.MAIL_URL.removeprefix("file://"))
    import email
    import email.policy

    newest = max(directory.glob("*.eml"), key=lambda p: p.stat().st_mtime_ns)
    message = email.message_from_bytes(newest.read_bytes(), policy=email.policy.default)
    return message.get_body(preferencelist=("plain",)).get_content()


def test_reader_signs_up_confirms_and_downloads_in_chromium(live_app, page, tmp_path):
    app, base = live_app
    page.goto(base + "/")
    assert "Glute-Strengthening Guide" in page.title()
    # The page's own script filled in the browser's time zone.
    assert page.input_value('input[name="time_zone"]') == "America/Vancouver"
    page.fill("#first_name", "Ann")
    page.fill("#email", "ann@example.com")
    page.click("text=Send me the free guide")
    page.wait_for_url(base + "/check-your-inbox")
    assert "Check your inbox" in page.inner_text("h1")

    subscriber = get_subscriber(app, "ann@example.com")
    assert subscriber.status is SubscriberStatus.PENDING
    assert subscriber.time_zone == "America/Vancouver"
    assert subscriber.source == "landing"
    assert subscriber.first_name == "Ann"

    run_pass(app)
    page.goto(base + link_path(latest_email_text(app), "/confirm/"))
    page.click("text=Yes, send me the guide")
    page.wait_for_url(base + "/confirmed/*")
    assert "You're in, Ann!" in page.inner_text("h1")
    with page.expect_download() as download_info:
        page.click("text=Download the Glute-Strengthening Guide")
    download = download_info.value
    assert download.suggested_filename == "glute-strengthening-guide.pdf"
    saved = tmp_path / "downloaded.pdf"
    download.save_as(saved)
    assert saved.read_bytes().startswith(b"%PDF-")
    assert get_subscriber(app, "ann@example.com").status is SubscriberStatus.CONFIRMED
    # The pages satisfy their own Content-Security-Policy: no violations, no script errors.
    assert page.problems == []


def test_form_errors_are_shown_and_the_typed_values_kept(live_app, page):
    app, base = live_app
    page.goto(base + "/")
    page.fill("#first_name", "Ann")
    page.fill("#email", "ann@@example")
    page.click("text=Send me the free guide")
    assert "Please check the form" in page.inner_text(".form-errors")
    assert page.input_value("#email") == "ann@@example"
    assert page.input_value("#first_name") == "Ann"
    assert page.get_attribute("#email", "aria-invalid") == "true"
    assert get_subscriber(app, "ann@example") is None
    # The only console entry is Chromium noting the page's intended 422 status.
    assert [p for p in page.problems if "status of 422" not in p] == []


def test_the_honeypot_is_invisible_to_people(live_app, page):
    _, base = live_app
    page.goto(base + "/")
    assert not page.is_visible("#website") or page.locator("#website").bounding_box()["x"] < 0


def test_embedded_form_on_another_site_signs_up(live_app, page, tmp_path):
    app, base = live_app
    snippet = app.test_cli_runner().invoke(args=["embed-snippet"]).output
    blog = tmp_path / "blog.html"
    blog.write_text(f"<html><body><h1>My blog</h1>{snippet}</body></html>")
    page.goto(blog.as_uri())
    page.fill("#nl-email", "reader@example.com")
    page.click("text=Send me the free guide")
    page.wait_for_url(base + "/check-your-inbox")
    subscriber = get_subscriber(app, "reader@example.com")
    assert subscriber.source == "blog-embed"
    assert subscriber.time_zone == "America/Vancouver"


def test_owner_signs_in_finds_a_reader_and_exports_the_list(live_app, page, tmp_path):
    from service import admins
    from tests.helpers import make_subscriber

    app, base = live_app
    services = app.extensions["newsletter"]
    with services.database.begin() as session:
        admins.create(session, "owner@example.com", "a long enough password", now=services.clock())
        make_subscriber(
            session,
            "zoe@example.com",
            now=services.clock(),
            first_name='<img src=x onerror="window.pwned=1">',
            status=SubscriberStatus.CONFIRMED,
        )
        make_subscriber(session, "other@example.com", now=services.clock(), first_name="Bo")

    page.goto(base + "/admin/subscribers")
    page.wait_for_url(base + "/admin/login**")
    page.fill("#email", "owner@example.com")
    page.fill("#password", "a long enough password")
    page.click("button:has-text('Sign in')")
    page.wait_for_url(base + "/admin/subscribers")

    page.fill('input[name="q"]', "zoe")
    page.click("button:has-text('Filter')")
    page.wait_for_url(base + "/admin/subscribers?q=zoe**")
    rows = page.locator("#subscriber-list tbody tr")
    assert rows.count() == 1
    assert "zoe@example.com" in rows.first.inner_text()
    # The hostile name is shown as text, never run.
    assert '<img src=x onerror="window.pwned=1">' in rows.first.inner_text()
    assert page.evaluate("window.pwned") is None

    with page.expect_download() as download_info:
        page.click("#export-csv")
    saved = tmp_path / "export.csv"
    download_info.value.save_as(saved)
    lines = saved.read_text(encoding="utf-8").splitlines()
    assert lines[0].startswith("email,first_name,status")
    assert len(lines) == 2 and lines[1].startswith('"zoe@example.com",')

    page.click("#subscriber-list a:has-text('zoe@example.com')")
    page.wait_for_url(base + "/admin/subscribers/*")
    assert "History" in page.inner_text("main")

    page.goto(base + "/admin/")
    # Signups through the forms, imports, confirmations, unsubscribes.
    assert page.locator("svg.chart polyline").count() == 4
    assert "Finished the sequence" in page.inner_text("#funnel")
    # The admin pages satisfy the Content-Security-Policy: no violations, no script errors.
    assert page.problems == []


def test_owner_writes_previews_and_sends_a_newsletter(make_app, page, smtp):
    """Compose with the live preview, then send to a real SMTP server on loopback."""
    import threading as _threading

    from scheduler.__main__ import tick
    from service import admins
    from tests.helpers import make_subscriber

    port = free_port()
    base = f"http://127.0.0.1:{port}"
    app = make_app(BASE_URL=base, MAIL_URL=smtp.url)
    server = make_server("127.0.0.1", port, app, threaded=True)
    _threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        services = app.extensions["newsletter"]
        with services.database.begin() as session:
            admins.create(
                session, "owner@example.com", "a long enough password", now=services.clock()
            )
            for n in range(2):
                make_subscriber(
                    session,
                    f"reader{n}@example.com",
                    now=services.clock(),
                    status=SubscriberStatus.CONFIRMED,
                )
        page.goto(base + "/admin/login")
        page.fill("#email", "owner@example.com")
        page.fill("#password", "a long enough password")
        page.click("button:has-text('Sign in')")
        page.wait_for_url(base + "/admin/")
        page.click("text=Newsletters")
        page.click("text=Write a newsletter")
        page.fill("#subject", "Rolling, week two")
        page.fill("#body", "Roll **slowly**.")
        page.click("button:has-text('Save draft')")
        page.wait_for_url(base + "/admin/newsletters/*")
        frame = page.frame_locator("#preview-frame")
        assert frame.locator(".newsletter strong").inner_text() == "slowly"
        # Typing updates the draft and the preview without a click (admin.js).
        page.fill("#body", "Roll **gently**, three times a week.")
        from playwright.sync_api import expect

        expect(page.locator("#preview-text")).to_contain_text("gently")
        expect(frame.locator(".newsletter strong")).to_have_text("gently")
        assert page.inner_text("#recipient-count") == "2"
        page.click("#send-button")
        page.click("#confirm-send-button")
        expect(page.locator(".flash")).to_contain_text("Sending")
        tick(
            services,
            services.make_dispatcher("browser-test"),
            started_at=services.clock(),
            clock=services.clock,
            stop=_threading.Event(),
        )
        received = smtp.handler.wait_for(2)
        assert {r.rcpt_tos[0] for r in received} == {"reader0@example.com", "reader1@example.com"}
        assert "gently" in received[0].part("plain")
        page.reload()
        assert page.inner_text("#progress dl").replace("\n", " ").count("Sent 2") == 1
        assert page.problems == []
    finally:
        server.shutdown()


def test_the_owners_browser_signs_in_while_strangers_are_locked_out(live_app, browser):
    """OWASP's device cookie in a real browser: 30 wrong passwords from 30 addresses lock
    the account for browsers it has never seen, not for the one the owner signed in with."""
    from tests.test_admin import PASSWORD, attempt_from, create_admin

    app, base = live_app
    create_admin(app)

    def sign_in(page) -> None:
        page.goto(base + "/admin/login")
        page.fill("#email", "owner@example.com")
        page.fill("#password", PASSWORD)
        page.click("button:has-text('Sign in')")

    owners = browser.new_context()
    owner = owners.new_page()
    sign_in(owner)
    owner.wait_for_url(base + "/admin/")
    cookies = {c["name"]: c for c in owners.cookies()}
    assert cookies["admin_device"]["httpOnly"] and cookies["admin_device"]["sameSite"] == "Strict"
    owner.click("button:has-text('Sign out')")
    owner.wait_for_url(base + "/admin/login")

    codes = [attempt_from(app, f"198.51.100.{n}") for n in range(1, 31)]
    assert codes.count(401) == 10 and codes[10:] == [429] * 20  # 10 per minute per account

    strangers = browser.new_context()
    stranger = strangers.new_page()
    sign_in(stranger)
    assert "Too many" in stranger.inner_text("body")
    assert stranger.url.startswith(base + "/admin/login")

    sign_in(owner)
    owner.wait_for_url(base + "/admin/")
    assert "Dashboard" in owner.inner_text("nav")
    owners.close()
    strangers.close()


# --- the reader's preference centre -------------------------------------------------------


def open_preferences_from_an_email(app, page, base, email: str, zone: str) -> int:
    """Confirm a reader, send their welcome email, and follow its preferences link."""
    from tests.test_sequences import confirm_reader

    reader = confirm_reader(app, email, zone=zone, first_name="Ann")
    run_pass(app)
    page.goto(base + link_path(latest_email_text(app), "/preferences/"))
    assert "Your email preferences" in page.inner_text("h1")
    return reader


def test_a_two_week_pause_in_chromium_holds_the_sequence_until_the_morning_after(
    live_app, page, clock
):
    from sqlalchemy import select

    from service.models import OutboxMessage
    from tests.test_sequences import run_until, sent_steps

    app, base = live_app
    reader = open_preferences_from_an_email(app, page, base, "ann@example.com", "Europe/Berlin")
    page.check('input[name="weeks"][value="2"]')
    page.click("button:has-text('Pause all email')")
    # 24 November 15:00 UTC and two weeks: 8 December, 16:00 in Berlin.
    assert "Done: your email is paused until 8 December 2026." in page.inner_text(".done")
    assert "Paused until 8 December 2026" in page.inner_text("#pause-state")
    until = datetime(2026, 12, 8, 15, 0, tzinfo=UTC)
    assert get_subscriber(app, "ann@example.com").paused_until == until

    run_until(app, clock, until - timedelta(seconds=1))
    with app.extensions["newsletter"].database.read() as session:
        steps = session.scalars(select(OutboxMessage).where(OutboxMessage.kind == "sequence"))
        assert list(steps) == []
    run_until(app, clock, until + timedelta(days=3))
    # The first step, on the first 08:00 in Berlin after the pause.
    assert sent_steps(app, reader)[0] == ("why-glutes", datetime(2026, 12, 9, 7, 0, tzinfo=UTC))
    assert page.problems == []


def test_leaving_a_series_and_changing_the_time_zone_in_chromium(live_app, page):
    from sqlalchemy import select

    from service.models import Enrollment, EnrollmentStatus

    app, base = live_app
    reader = open_preferences_from_an_email(app, page, base, "bo@example.com", "Europe/Berlin")
    page.click("button:has-text('Leave this series')")
    assert "Done: you will get no more emails from the series" in page.inner_text(".done")
    assert "you left this series" in page.inner_text("#series")
    with app.extensions["newsletter"].database.read() as session:
        enrollment = session.scalar(select(Enrollment).where(Enrollment.subscriber_id == reader))
    assert enrollment.status is EnrollmentStatus.STOPPED

    page.fill("#time_zone", "America/Vancouver")
    page.click("button:has-text('Save my details')")
    assert "Done: your details are saved." in page.inner_text(".done")
    assert page.input_value("#time_zone") == "America/Vancouver"
    subscriber = get_subscriber(app, "bo@example.com")
    assert (subscriber.time_zone, subscriber.first_name) == ("America/Vancouver", "Ann")
    assert subscriber.wants_newsletters and subscriber.status is SubscriberStatus.CONFIRMED

    page.fill("#time_zone", "Atlantis/Capital")
    page.click("button:has-text('Save my details')")
    assert "Please choose your time zone from the list" in page.inner_text(".form-errors")
    assert get_subscriber(app, "bo@example.com").time_zone == "America/Vancouver"
    assert [p for p in page.problems if "status of 422" not in p] == []


def test_a_forged_or_borrowed_preferences_link_gets_the_friendly_page(live_app, page):
    from service.tokens import Purpose

    app, base = live_app
    services = app.extensions["newsletter"]
    unsubscribe_token = services.tokens.make(Purpose.UNSUBSCRIBE, 1, now=services.clock())
    for token in ("1.1795532400.forged-signature", unsubscribe_token):
        response = page.goto(f"{base}/preferences/{token}")
        assert response.status == 404
        assert "This link does not work" in page.inner_text("h1")
