"""Every email template: both parts, the owner's address, unsubscribe, disclaimer, and
a hostile first name that stays inert."""

from __future__ import annotations

from pathlib import Path

import pytest

from service.emails import SHIPPED_EMAILS, EmailRenderer, TemplateProblem, email_directories

SITE = {
    "name": "Low Back Relief",
    "base_url": "https://news.example.com",
    "postal_address": "12 Test Lane, Testville",
}
HOSTILE = "<script>alert('x')</script> & \"Ann\""
CONTEXT = {
    "first_name": HOSTILE,
    "confirm_url": "https://news.example.com/confirm/T",
    "download_url": "https://news.example.com/download/T",
    "unsubscribe_url": "https://news.example.com/unsubscribe/T",
}
EMAILS = sorted(
    p.stem for p in SHIPPED_EMAILS.glob("*.txt") if not p.stem.startswith(("_", "layout"))
)


@pytest.fixture(scope="module")
def renderer() -> EmailRenderer:
    return EmailRenderer(email_directories(""), SITE)


def test_every_shipped_email_is_checked():
    assert set(EMAILS) >= {"confirm", "welcome", "guide_again"}


@pytest.mark.parametrize("name", EMAILS)
def test_email_has_everything_the_law_and_the_reader_need(renderer, name):
    email = renderer.render(name, CONTEXT)
    assert email.subject and "\n" not in email.subject
    for part in (email.text, email.html):
        assert "12 Test Lane, Testville" in part
        assert "https://news.example.com/unsubscribe/T" in part
        assert "Consult your physician before beginning any exercise program" in part
        assert "stop any exercise that hurts" in part
    assert "Unsubscribe" in email.html and "Unsubscribe" in email.text


@pytest.mark.parametrize("name", EMAILS)
def test_hostile_first_name_is_escaped_in_html(renderer, name):
    email = renderer.render(name, CONTEXT)
    assert "<script>" not in email.html
    if name != "confirm":
        assert "&lt;script&gt;" in email.html


def test_the_confirmation_never_repeats_the_name(renderer):
    email = renderer.render("confirm", {**CONTEXT, "first_name": "BUY PILLS NOW"})
    assert "BUY PILLS" not in email.subject + email.text + email.html


def test_missing_variables_fail_loudly(renderer):
    with pytest.raises(Exception, match="confirm_url"):
        renderer.render("confirm", {k: v for k, v in CONTEXT.items() if k != "confirm_url"})


def test_missing_template_is_a_clear_problem(renderer):
    with pytest.raises(TemplateProblem, match="no_such_email"):
        renderer.render("no_such_email", CONTEXT)


def test_a_template_without_subject_is_refused(tmp_path: Path):
    (tmp_path / "emails").mkdir()
    (tmp_path / "emails" / "odd.txt").write_text("no subject here")
    (tmp_path / "emails" / "odd.html").write_text("<p>hi</p>")
    renderer = EmailRenderer(email_directories(str(tmp_path)), SITE)
    with pytest.raises(TemplateProblem, match="subject"):
        renderer.render("odd", CONTEXT)
