"""The owner's first run in a real browser: the setup link `make run` prints creates the
account and signs the owner in."""

from __future__ import annotations

import re

import pytest

from tests.browser import OWNER_EMAIL, OWNER_PASSWORD, axe_violations

pytestmark = pytest.mark.browser


def test_the_owner_creates_their_account_from_the_printed_link(live_app, page, browser):
    app, base = live_app
    banner = app.test_cli_runner().invoke(args=["admin", "hint", "--banner"]).output
    link = re.search(re.escape(base) + r"/admin/setup/\S+", banner).group(0)

    page.goto(base + "/admin/")
    assert page.inner_text("h1") == "There is no admin account yet"
    assert axe_violations(page) == []
    # On a phone too: the commands wrap inside their card, nothing hides past its edge.
    page.set_viewport_size({"width": 375, "height": 667})
    assert page.evaluate("document.documentElement.scrollWidth") <= 375
    assert page.eval_on_selector_all("pre", "els => els.every(e => e.scrollWidth <= e.clientWidth)")
    assert axe_violations(page) == []
    page.set_viewport_size({"width": 1280, "height": 800})

    page.goto(link)
    assert page.inner_text("h1") == "Create your admin account"
    assert axe_violations(page) == []
    page.fill("#email", OWNER_EMAIL)
    page.fill("#password", OWNER_PASSWORD)
    page.fill("#password_again", OWNER_PASSWORD)
    page.click("button:has-text('Create the account')")
    page.wait_for_url(base + "/admin/")
    assert page.inner_text("h1") == "Dashboard"
    assert OWNER_EMAIL in page.inner_text(".admin-bar")
    assert "Your account is ready" in page.inner_text(".flash")
    assert page.problems == []

    # The link again, in another browser: it has done its work.
    other = browser.new_context().new_page()
    other.goto(link)
    assert other.inner_text("h1") == "This setup link has been used"
    assert axe_violations(other) == []
    other.context.close()
