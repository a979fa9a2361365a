"""The pages on a phone (375 x 667 CSS pixels) in a real Chromium: no page scrolls
sideways, the admin bar keeps its links inside it, and the landing page's first screen
holds the headline, the promise and a button that leads to the form.

One app with data and one phone browser serve the whole module, as in
test_accessibility.py.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.browser import sign_in, wait_for_focus
from tests.test_accessibility import (
    ADMIN,
    PUBLIC,
    Site,
    assert_no_violations,
    browser_page,
    served_site,
)

pytestmark = pytest.mark.browser

PHONE = {"width": 375, "height": 667}


@pytest.fixture(scope="module")
def site(sqlite_template, tmp_path_factory) -> Iterator[Site]:
    with served_site(sqlite_template, tmp_path_factory.mktemp("phone")) as served:
        yield served


@pytest.fixture(scope="module")
def phone(browser):
    """A phone-sized page nobody signed in with."""
    with browser_page(browser, viewport=PHONE) as page:
        yield page


@pytest.fixture(scope="module")
def owners_phone(browser, site):
    """A phone-sized page signed in as the owner."""
    with browser_page(browser, viewport=PHONE) as page:
        sign_in(page, site.base)
        yield page


def page_width(page) -> int:
    return page.evaluate("document.documentElement.scrollWidth")


def inside(inner: dict, outer: dict) -> bool:
    return (
        inner["x"] >= outer["x"]
        and inner["y"] >= outer["y"]
        and inner["x"] + inner["width"] <= outer["x"] + outer["width"] + 0.5
        and inner["y"] + inner["height"] <= outer["y"] + outer["height"] + 0.5
    )


@pytest.mark.parametrize("name", ADMIN)
def test_admin_pages_fit_a_phone_with_the_links_inside_the_bar(site, owners_phone, name):
    page = owners_phone
    page.goto(site.base + site.admin[name])
    assert page_width(page) <= PHONE["width"]
    bar = page.locator(".admin-bar").bounding_box()
    items = page.locator(".admin-bar a, .admin-bar button, .admin-bar .muted")
    assert items.count() >= 6
    for n in range(items.count()):
        assert inside(items.nth(n).bounding_box(), bar), items.nth(n).inner_text()
    # Wide tables scroll inside their own box instead of widening the page.
    for table in page.locator("main table").all():
        assert table.bounding_box()["x"] + table.bounding_box()["width"] <= PHONE["width"]


def test_tables_that_scroll_on_a_phone_are_reached_with_the_keyboard(site, owners_phone):
    """axe-core's rule: a region that scrolls must take the focus, so arrow keys scroll it."""
    page = owners_phone
    for name in ("dashboard", "subscriber"):
        page.goto(site.base + site.admin[name])
        scrolling = page.locator("main table[tabindex='0']")
        assert scrolling.count() >= 2
        for table in scrolling.all():
            assert table.evaluate("t => t.scrollWidth > t.clientWidth")
        assert_no_violations(page)


@pytest.mark.parametrize("name", PUBLIC)
def test_public_pages_fit_a_phone(site, phone, name):
    phone.goto(site.base + site.public[name])
    assert page_width(phone) <= PHONE["width"]


@pytest.mark.parametrize("name", ["landing", "magnet glute-guide", "magnet foam-rolling-planner"])
def test_the_landing_pages_first_screen_has_a_button_to_the_form(site, phone, name):
    phone.problems.clear()
    phone.goto(site.base + site.public[name])
    for part in ("h1", ".lede", ".to-form a"):
        box = phone.locator(part).bounding_box()
        assert box["y"] >= 0 and box["y"] + box["height"] <= PHONE["height"], part
    button = phone.locator(".to-form a")
    assert button.inner_text().startswith("Get the free")
    assert phone.locator("#first_name").bounding_box()["y"] > PHONE["height"]

    button.click()
    assert phone.url.endswith("#signup")
    wait_for_focus(phone, "first_name")
    field = phone.locator("#first_name").bounding_box()
    assert field["y"] >= 0 and field["y"] + field["height"] <= PHONE["height"]
    assert phone.problems == []


def test_the_landing_button_reaches_the_form_without_javascript(site, browser):
    with browser_page(browser, viewport=PHONE, java_script_enabled=False) as page:
        page.goto(site.base + "/")
        page.click(".to-form a")
        assert page.url.endswith("#signup")
        form = page.locator("#signup").bounding_box()
        assert 0 <= form["y"] < PHONE["height"] / 2


def test_the_landing_page_on_a_desktop_leaves_the_button_out(site, browser):
    """Side by side with the text, the form is on the first screen already."""
    with browser_page(browser, viewport={"width": 1280, "height": 800}) as page:
        page.goto(site.base + "/")
        assert not page.locator(".to-form a").is_visible()
        assert page.locator("#email").bounding_box()["y"] < 800
