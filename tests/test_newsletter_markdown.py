"""A newsletter's three faces: the archive's HTML, the email's HTML (links in the house
colour) and the plain text made from it, with no Markdown mark left; and the greeting the
owner chooses, in both parts of the email."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from service import broadcasts, kinds
from service.newsletter_markdown import LINK_COLOUR, for_email, to_html, to_text
from tests.helpers import services_of
from tests.test_broadcasts import MARKDOWN_PIECES

BODY = """Start with **three habits** and *one* stretch.

## More

- roll [slowly](https://example.com/slow)
- breathe

1. first
2. second

![A foam roller](https://example.com/roller.png)

Write to <owner@example.com> or see <https://example.com/faq>."""


def test_the_plain_text_has_no_markdown_left():
    text = to_text(BODY)
    for mark in ("**", "##", "](", "![", "* one"):
        assert mark not in text, (mark, text)
    assert "Start with three habits and one stretch." in text
    assert "\nMore\n" in text  # the heading on a line of its own
    assert "* roll slowly (https://example.com/slow)" in text
    assert "* breathe" in text
    assert "1. first" in text and "2. second" in text
    assert "A foam roller (https://example.com/roller.png)" in text
    # An autolink shows its address once, not twice.
    assert "owner@example.com or see https://example.com/faq." in text
    assert text.count("https://example.com/faq") == 1


def test_typed_html_stays_text_and_unsafe_targets_are_not_written_out():
    text = to_text("<b>raw</b> & [x](javascript:alert(1)) ![y](data:image/png,AA)")
    assert text == "<b>raw</b> & x y"


def test_the_emails_links_are_in_the_house_colour_and_the_archives_are_not():
    html = to_html(BODY)
    email_html = for_email(html)
    assert "style" not in html  # the archive's page allows no inline style
    links = re.findall(r"<a [^>]*>", email_html)
    assert len(links) == 3
    assert all(f'style="color:{LINK_COLOUR};"' in link for link in links)
    assert LINK_COLOUR == "#2f6f5e"
    assert for_email(to_html("A typed <a href=x> tag.")).count("style=") == 0


def test_a_sent_newsletter_tracks_its_coloured_links(smtp_app):
    from tests.test_compose import composed

    services = services_of(smtp_app)
    with services.database.begin() as session:
        broadcast_id = broadcasts.save_draft(
            session, None, subject="Week two", body=BODY, now=services.clock()
        ).id
    message = composed(
        smtp_app, kinds.NEWSLETTER, template="broadcast", context={"broadcast_id": broadcast_id}
    )
    tracked = re.findall(r'<a style="color:#2f6f5e;" href="([^"]+)"', message.html)
    assert len(tracked) == 3  # the two web links go through the redirect; mailto: does not
    assert sum(href.startswith("http://newsletter.test/l/") for href in tracked) == 2
    assert "Start with three habits" in message.text and "**" not in message.text
    # The plain text shows where each link goes.
    assert "roll slowly (https://example.com/slow)" in message.text


def _test_copy(app, *, greeting: bool, first_name: str | None = "Alex"):
    services = services_of(app)
    with services.database.begin() as session:
        broadcast_id = broadcasts.save_draft(
            session,
            None,
            subject="Week two",
            body="Hi all, **roll** today.",
            greeting=greeting,
            now=services.clock(),
        ).id
    return services.composer.sample(
        kinds.NEWSLETTER_TEST,
        "broadcast",
        to="owner@example.com",
        first_name=first_name,
        now=services.clock(),
        context={"broadcast_id": broadcast_id, "test": True},
    )


def test_the_greeting_is_there_when_chosen(app):
    message = _test_copy(app, greeting=True)
    assert "Hi Alex," in message.html
    assert "\n\nHi Alex,\n\nHi all, roll today.\n" in message.text
    assert "Hi there," in _test_copy(app, greeting=True, first_name=None).text


def test_without_the_greeting_the_owners_own_comes_first(app):
    message = _test_copy(app, greeting=False)
    assert "Hi Alex" not in message.html and "Hi Alex" not in message.text
    assert message.text.startswith("Low Back Relief\n\nHi all, roll today.\n")
    assert "Hi all" in message.html


@pytest.mark.slow
@given(st.lists(MARKDOWN_PIECES, max_size=25).map("".join))
@settings(max_examples=1000, deadline=None)
def test_the_plain_text_never_shows_a_placeholder(body):
    """Whatever the owner types, the text comes out, without Markdown's stand-ins."""
    text = to_text(body)
    assert "klzzwxh" not in text and "\x02" not in text and "\x03" not in text
