"""The owner's desk in Chromium: the dashboard's chart on a phone, the subscriber list and
page, the confirmation of a destructive action, and the import page with its upload."""

from __future__ import annotations

from datetime import timedelta
from itertools import pairwise

import pytest

from service import journal
from service.models import SubscriberStatus
from tests.browser import axe_violations, make_owner, sign_in
from tests.conftest import START
from tests.helpers import get_subscriber, make_subscriber, services_of

pytestmark = pytest.mark.browser

PHONE = {"width": 375, "height": 800}
DESKTOP = {"width": 1280, "height": 900}
CSV = "email,first_name\n" + "".join(f"r{n}@example.com,Reader {n}\n" for n in range(20))


def clean(page) -> None:
    """No accessibility violation and no console error on the page as it is now."""
    assert axe_violations(page) == []
    assert page.problems == []


def readers(app, count: int) -> int:
    """`count` confirmed readers who signed up over the last weeks; the last one's id."""
    services = services_of(app)
    with services.database.begin() as session:
        for n in range(count):
            at = START - timedelta(days=n * 3)
            reader = make_subscriber(
                session, f"ann{n}@example.com", now=at, status=SubscriberStatus.CONFIRMED
            )
            journal.record_event(session, reader.id, "signed_up", now=at)
        return reader.id


def test_the_chart_keeps_readable_labels_on_a_phone(live_app, page):
    app, base = live_app
    make_owner(app)
    readers(app, 12)
    sign_in(page, base)
    for days in (90, 365, 30):
        page.set_viewport_size(PHONE)
        page.goto(f"{base}/admin/?days={days}")
        boxes = page.eval_on_selector_all(
            "svg.chart text.tick",
            "els => els.map(e => e.getBoundingClientRect())"
            ".filter(r => r.width > 0).map(r => [r.left, r.right, r.height])",
        )
        assert len(boxes) >= 4, days
        assert min(height for _, _, height in boxes) >= 10, (days, boxes)
        dates = sorted(boxes[1:])  # the first is the peak's label, at the top
        assert all(a[1] <= b[0] for a, b in pairwise(dates)), dates
        legend = page.eval_on_selector(".legend li", "e => e.getBoundingClientRect().height")
        assert legend >= 11
        assert page.eval_on_selector("svg.chart", "e => e.getBoundingClientRect().right") <= 375
    clean(page)
    page.set_viewport_size(DESKTOP)
    page.goto(f"{base}/admin/")
    assert "Signed up through your forms: 12" in page.inner_text(".legend")
    clean(page)


def test_unsubscribing_in_the_browser_goes_through_its_confirmation(live_app, page):
    app, base = live_app
    make_owner(app)
    reader_id = readers(app, 1)
    sign_in(page, base)
    page.goto(f"{base}/admin/subscribers")
    assert "1 subscriber matches" in page.inner_text("#match-count")
    clean(page)
    page.click("text=ann0@example.com")
    page.wait_for_url(f"{base}/admin/subscribers/{reader_id}")
    clean(page)
    page.click("#erase")
    assert "Erase ann0@example.com?" in page.inner_text("h1")
    clean(page)
    page.go_back()
    page.click("#unsubscribe")
    page.wait_for_url(f"{base}/admin/subscribers/{reader_id}/unsubscribe/confirm")
    assert "Unsubscribe ann0@example.com?" in page.inner_text("h1")
    color = page.eval_on_selector(
        "#confirm-action button", "e => getComputedStyle(e).backgroundColor"
    )
    assert color not in ("rgba(0, 0, 0, 0)", "rgb(47, 111, 94)")  # not the safe green
    clean(page)
    assert get_subscriber(app, "ann0@example.com").status is SubscriberStatus.CONFIRMED
    page.click("#confirm-action button")
    page.wait_for_url(f"{base}/admin/subscribers/{reader_id}")
    assert "Unsubscribed." in page.inner_text(".flash")
    assert get_subscriber(app, "ann0@example.com").status is SubscriberStatus.UNSUBSCRIBED
    clean(page)


CHOICE_BESIDE_LABEL = """
inputs => inputs.map(input => {
  const range = document.createRange();
  const text = [...input.parentElement.childNodes].find(n => n.nodeType === 3 && n.textContent.trim());
  range.selectNodeContents(text);
  const line = range.getClientRects()[0];
  const box = input.getBoundingClientRect();
  const middle = (box.top + box.bottom) / 2;
  return {gap: line.left - box.right, sameLine: middle >= line.top && middle <= line.bottom,
          width: box.width};
})
"""


def test_the_import_page_uploads_with_progress_and_keeps_choices_by_their_labels(
    live_app, page, tmp_path
):
    app, base = live_app
    make_owner(app)
    sign_in(page, base)
    page.goto(f"{base}/admin/subscribers/import")
    clean(page)
    held = []
    page.route("**/admin/subscribers/import", lambda route: held.append(route))
    path = tmp_path / "list.csv"
    path.write_text(CSV)
    page.set_input_files("#file", str(path))
    page.click("text=Check the file")
    page.wait_for_selector("#upload-progress progress", state="visible")
    assert page.is_disabled("#upload-form button[type=submit]")
    held[0].continue_()  # the upload goes on
    page.unroute("**/admin/subscribers/import")
    page.wait_for_url(f"{base}/admin/imports/*")
    assert "What importing list.csv would do" in page.inner_text("main")
    for size in (PHONE, DESKTOP):
        page.set_viewport_size(size)
        for choice in page.eval_on_selector_all("label.choice input", CHOICE_BESIDE_LABEL):
            assert choice["sameLine"] and 0 <= choice["gap"] <= 12, (size, choice)
            assert choice["width"] < 30, (size, choice)
        assert len(page.query_selector_all("label.choice input")) == 3
    clean(page)
    page.click("text=Cancel this import")
    assert "Cancel the import of list.csv?" in page.inner_text("h1")
    clean(page)


def test_a_large_files_check_is_followed_in_place_without_a_reload(
    live_app, page, tmp_path, monkeypatch
):
    """The checking page follows the scheduler's work by script, not by reloading itself
    (axe-core's meta-refresh rule: a reload every 2 s moves a keyboard back to the top)."""
    from service import imports
    from tests.test_imports import scheduler_pass

    monkeypatch.setattr(imports, "INLINE_BYTES", 100)  # this file counts as large
    app, base = live_app
    make_owner(app)
    sign_in(page, base)
    page.goto(f"{base}/admin/subscribers/import")
    path = tmp_path / "big.csv"
    path.write_text(CSV)
    page.set_input_files("#file", str(path))
    page.click("text=Check the file")
    page.wait_for_url(f"{base}/admin/imports/*")
    assert "Checking big.csv" in page.inner_text("#import-progress")
    clean(page)
    page.evaluate("window.stayed = true")  # gone if the page reloads
    assert scheduler_pass(app) == 1
    page.wait_for_selector("text=What importing big.csv would do", timeout=10_000)
    assert page.evaluate("window.stayed") is True
    clean(page)
