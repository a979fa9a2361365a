"""Every email template: both parts, the owner's address, unsubscribe, disclaimer, and
a hostile first name that stays inert."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from service import broadcasts, sequences
from service.emails import (
    PERSONAL_FIELDS,
    SHIPPED_EMAILS,
    EmailRenderer,
    TemplateProblem,
    email_directories,
)

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
    "preferences_url": "https://news.example.com/preferences/T",
}
EMAILS = sorted(
    str(p.relative_to(SHIPPED_EMAILS).with_suffix(""))
    for p in SHIPPED_EMAILS.rglob("*.txt")
    if not p.stem.startswith(("_", "layout"))
)
SEQUENCE = sequences.load(SHIPPED_EMAILS / "sequence.toml")
# What a sequence email sees besides the reader's own fields, with every owner link set.
SEQUENCE_CONTEXT = {
    "links": {
        "course_url": "https://course.example.com/?a=1&b=2",
        "foam_roller_url": "https://shop.example.com/roller?ref=x&y=<z>",
        "foam_roller_is_affiliate": "yes",
    },
    "videos": {
        "foam_rolling": {
            "url": "https://video.example.com/1",
            "thumbnail": "https://img.example.com/1.jpg",
        },
        "piriformis_stretch": {"url": "https://video.example.com/2", "thumbnail": ""},
    },
}


def context_for(name: str, **overrides):
    context = {**CONTEXT, **overrides}
    if name.startswith("sequence/"):
        context.update(SEQUENCE_CONTEXT)
    if name == "broadcast":
        context["broadcast"] = broadcasts.content_of(
            "Rolling, week two", "Three times a week, **not more**. <b>raw</b>"
        )
    return context


@pytest.fixture(scope="module")
def renderer() -> EmailRenderer:
    return EmailRenderer(email_directories(""), SITE)


def test_every_shipped_email_is_checked():
    assert set(EMAILS) >= {"confirm", "welcome", "guide_again"}
    assert {f"sequence/{s.template.split('/')[-1]}" for s in SEQUENCE.steps} <= set(EMAILS)


@pytest.mark.parametrize("name", EMAILS)
def test_email_has_everything_the_law_and_the_reader_need(renderer, name):
    email = renderer.render(name, context_for(name))
    assert email.subject and "\n" not in email.subject
    for part in (email.text, email.html):
        assert "12 Test Lane, Testville" in part
        assert "https://news.example.com/unsubscribe/T" in part
        assert "Consult your physician before beginning any exercise program" in part
        assert "stop any exercise that hurts" in part
    assert "Unsubscribe" in email.html and "Unsubscribe" in email.text


@pytest.mark.parametrize("name", EMAILS)
def test_hostile_first_name_is_escaped_in_html(renderer, name):
    email = renderer.render(name, context_for(name))
    assert "<script>" not in email.html
    if name != "confirm":
        assert "&lt;script&gt;" in email.html
    # Owner links with & and < stay intact in text and escaped in HTML.
    if name == "sequence/06_choosing_a_roller":
        assert "ref=x&y=<z>" in email.text
        assert "ref=x&amp;y=&lt;z&gt;" in email.html


@pytest.mark.parametrize("name", EMAILS)
def test_every_email_reads_well_without_a_first_name(renderer, name):
    email = renderer.render(name, context_for(name, first_name=None))
    assert "Hi None" not in email.text + email.html
    if name != "confirm":
        assert "Hi there," in email.text


NAMES = st.one_of(
    st.none(),
    st.text(st.characters(blacklist_categories=("Cs", "Cc")), min_size=1, max_size=40),
    st.sampled_from(["<b>Ann</b>", "Zoë & Co", '"quoted"', "O'Brien", "\x1bfirst_name\x1b"]),
)


@pytest.mark.parametrize("name", EMAILS)
@given(first_name=NAMES)
@settings(max_examples=25, deadline=None)
def test_rendering_once_for_everyone_gives_each_reader_the_same_email(renderer, name, first_name):
    """The skeleton filled in with a reader's values equals a full render for that reader."""
    context = context_for(name, first_name=first_name)
    shared = {k: v for k, v in context.items() if k not in PERSONAL_FIELDS}
    skeleton = renderer.skeleton(name, shared, has_first_name=bool(first_name))
    assert skeleton is not None, f"{name} cannot be rendered once for everyone"
    personal = {k: context[k] for k in skeleton.fields}
    assert skeleton.fill(personal) == renderer.render(name, context)


def test_a_template_that_changes_a_personal_field_is_rendered_per_reader(tmp_path: Path):
    (tmp_path / "emails").mkdir()
    (tmp_path / "emails" / "shout.txt").write_text(
        '{% extends "layout.txt" %}{% block subject %}Hi{% endblock %}'
        "{% block body %}HELLO {{ first_name|upper }}{% endblock %}"
    )
    (tmp_path / "emails" / "shout.html").write_text(
        '{% extends "layout.html" %}{% block body %}{{ first_name|length }} letters{% endblock %}'
    )
    renderer = EmailRenderer(email_directories(str(tmp_path)), SITE)
    assert renderer.skeleton("shout", {}, has_first_name=True) is None
    assert renderer.skeleton("confirm", {}, has_first_name=True) is not None


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


def test_an_edited_template_is_compiled_afresh_for_the_next_renderer(tmp_path: Path):
    """Templates compiled once per process are keyed by their source: an app started after
    an edit renders the edited email."""
    emails = tmp_path / "emails"
    emails.mkdir()

    def write(subject: str) -> None:
        (emails / "note.txt").write_text(
            f'{{% extends "layout.txt" %}}{{% block subject %}}{subject}{{% endblock %}}'
        )
        (emails / "note.html").write_text('{% extends "layout.html" %}')

    write("First subject")
    first = EmailRenderer(email_directories(str(tmp_path)), site=SITE)
    assert first.render("note", CONTEXT).subject == "First subject"
    write("Second subject, longer")
    second = EmailRenderer(email_directories(str(tmp_path)), site=SITE)
    assert second.render("note", CONTEXT).subject == "Second subject, longer"
