"""The public archive: which newsletters it lists, what its pages leave out, its Atom feed,
the landing page's link and the owner's tick."""

from __future__ import annotations

import re
import xml.etree.ElementTree as etree
from urllib.parse import urlsplit

import feedparser
import pytest

from service import archive, broadcasts
from service.models import Broadcast, BroadcastStatus
from tests.helpers import run_pass, services_of
from tests.test_admin import create_admin, csrf_token, sign_in
from tests.test_broadcasts import draft, finish, readers, send_now, start

ATOM = "{http://www.w3.org/2005/Atom}"


def publish(app, broadcast_id: int, public: bool = True) -> str | None:
    services = services_of(app)
    with services.database.begin() as session:
        return archive.publish(session, broadcast_id, public, now=services.clock()).slug


def sent(app, subject: str = "Foam rolling, week two", *, public: bool = True, **fields) -> str:
    """A newsletter sent to three readers (Reader0..2), shown in the archive: its slug."""
    broadcast_id = draft(app, subject, **fields)
    slug = publish(app, broadcast_id, public)
    assert send_now(app, broadcast_id)
    start(app)
    run_pass(app)
    finish(app)
    services_of(app).clock.advance(days=1)
    return slug or ""


def status_of(app, slug: str) -> BroadcastStatus:
    with services_of(app).database.read() as session:
        return session.query(Broadcast).filter_by(slug=slug).one().status


def listed(client) -> list[str]:
    page = client.get("/archive").get_data(as_text=True)
    return re.findall(r'href="/archive/([a-z0-9-]+)"', page)


def test_slugs_are_ascii_and_unique():
    assert archive.slug_for("Foam rolling, week 2!", ()) == "foam-rolling-week-2"
    assert archive.slug_for("Café déjà vu", ()) == "cafe-deja-vu"
    assert archive.slug_for("¿¡…!?", ()) == "newsletter"
    taken = {"stretch", "stretch-2"}
    assert archive.slug_for("Stretch", taken) == "stretch-3"
    assert len(archive.slug_for("word " * 100, ())) <= archive.MAX_SLUG_BASE


def test_a_ticked_sent_newsletter_is_listed_and_an_unticked_one_is_not(app, client):
    readers(app)
    shown = sent(app, "Shown")
    sent(app, "Not shown", public=False)
    assert status_of(app, shown) is BroadcastStatus.SENT
    assert listed(client) == [shown]
    assert client.get(f"/archive/{shown}").status_code == 200


def test_a_ticked_draft_or_scheduled_newsletter_is_never_listed(app, client, clock):
    readers(app)
    draft_id = draft(app, "Still a draft")
    draft_slug = publish(app, draft_id)
    scheduled_id = draft(app, "Next week")
    scheduled_slug = publish(app, scheduled_id)
    services = services_of(app)
    with services.database.begin() as session:
        broadcasts.schedule(session, scheduled_id, at=clock.now.replace(year=2027), now=clock.now)
    assert listed(client) == []
    for slug in (draft_slug, scheduled_slug):
        assert client.get(f"/archive/{slug}").status_code == 404
    with services.database.read() as session:
        assert not archive.has_entries(session)


def test_a_newsletter_being_sent_is_listed(app, client):
    readers(app)
    broadcast_id = draft(app, "On its way")
    slug = publish(app, broadcast_id)
    send_now(app, broadcast_id)
    start(app)
    assert status_of(app, slug) is BroadcastStatus.SENDING
    assert listed(client) == [slug]


def test_the_list_is_newest_first(app, client):
    readers(app)
    slugs = [sent(app, f"Issue {n}") for n in range(3)]
    assert listed(client) == slugs[::-1]
    page = client.get("/archive").get_data(as_text=True)
    assert "2026-11-24" in page and "2026-11-26" in page  # dates in UTC


def test_the_page_holds_the_newsletter_and_nothing_about_any_reader(app, client):
    readers(app)
    slug = sent(app)
    response = client.get(f"/archive/{slug}")
    page = response.get_data(as_text=True)
    assert response.status_code == 200
    assert "<h1>Foam rolling, week two</h1>" in page
    assert "<strong>slowly</strong>" in page
    assert 'href="https://example.com/course"' in page  # the target as written
    assert "/l/" not in page  # no tracked redirect
    assert "unsubscribe" not in page.lower()
    assert "Reader" not in page and "@example.com" not in page
    assert re.search(r'<a href="/">Sign up</a>', page)


def test_a_script_link_in_the_body_is_not_a_link_on_the_page(app, client):
    readers(app, 1)
    slug = sent(
        app, "Careful", body="Click [x](javascript:alert(1)) and [y](JaVa\tScRiPt:alert(2))"
    )
    page = client.get(f"/archive/{slug}").get_data(as_text=True)
    assert "javascript" not in page.lower().replace("\t", "")  # in no href, at least
    assert not re.search(r"href=\"[^\"]*script", page, re.IGNORECASE)


def test_slugs_stay_unique_and_do_not_change(app, client):
    readers(app, 1)
    first = sent(app, "Same subject")
    second = sent(app, "Same subject")
    assert (first, second) == ("same-subject", "same-subject-2")
    with services_of(app).database.read() as session:
        second_id = session.query(Broadcast).filter_by(slug=second).one().id
    assert publish(app, second_id, False) == second
    assert listed(client) == [first]
    assert client.get(f"/archive/{second}").status_code == 404  # hidden again
    assert publish(app, second_id, True) == second  # the same link as before
    assert listed(client) == [second, first]


def test_an_unknown_slug_is_the_normal_not_found_page(app, client):
    for path in ("/archive/nothing-here", "/archive/" + "x" * 300):
        response = client.get(path)
        assert response.status_code == 404
        assert "Page not found" in response.get_data(as_text=True)


def test_the_atom_feed_is_valid_newest_first_and_its_links_work(app, client):
    readers(app, 1)
    slugs = [sent(app, subject) for subject in ("First <issue> & more", "Second", "Third")]
    sent(app, "Private", public=False)
    response = client.get("/archive.atom")
    assert response.status_code == 200
    assert response.headers["Content-Type"] == "application/atom+xml; charset=utf-8"
    body = response.get_data()

    feed = feedparser.parse(body)
    assert feed.bozo == 0, feed.get("bozo_exception")
    assert feed.version == "atom10"
    assert feed.feed.title == "Low Back Relief"
    assert [e.title for e in feed.entries] == ["Third", "Second", "First <issue> & more"]
    assert [urlsplit(e.link).path for e in feed.entries] == [f"/archive/{s}" for s in slugs[::-1]]
    for item in feed.entries:
        assert item.link.startswith("http://newsletter.test/archive/")
        assert client.get(urlsplit(item.link).path).status_code == 200
        assert "<strong>slowly</strong>" in item.content[0].value
        assert "/l/" not in item.content[0].value
    assert {link.rel: link.href for link in feed.feed.links} == {
        "self": "http://newsletter.test/archive.atom",
        "alternate": "http://newsletter.test/archive",
    }

    # feedparser forgives a lot: check what Atom 1.0 requires, element by element.
    root = etree.fromstring(body)
    assert root.tag == f"{ATOM}feed"
    for name in ("id", "title", "updated"):
        assert root.find(f"{ATOM}{name}").text.strip()
    assert root.find(f"{ATOM}author/{ATOM}name").text == "Low Back Relief"
    entries = root.findall(f"{ATOM}entry")
    assert len(entries) == 3
    ids = set()
    for item in entries:
        for name in ("id", "title", "updated", "published"):
            assert item.find(f"{ATOM}{name}").text.strip(), name
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", item.find(f"{ATOM}updated").text)
        assert item.find(f"{ATOM}link").get("href").startswith("http://newsletter.test/")
        assert item.find(f"{ATOM}content").get("type") == "html"
        ids.add(item.find(f"{ATOM}id").text)
    assert len(ids) == 3
    assert root.find(f"{ATOM}updated").text == max(e.find(f"{ATOM}updated").text for e in entries)


def test_an_empty_feed_is_still_valid(client):
    feed = feedparser.parse(client.get("/archive.atom").get_data())
    assert feed.bozo == 0 and feed.entries == []
    assert "Nothing here yet" in client.get("/archive").get_data(as_text=True)


def test_the_landing_page_links_to_the_archive_only_when_it_lists_something(app, client):
    readers(app, 1)
    sent(app, "Hidden", public=False)
    broadcast_id = draft(app, "Ticked draft")
    publish(app, broadcast_id)
    assert "Read past newsletters" not in client.get("/").get_data(as_text=True)
    sent(app, "Shown")
    page = client.get("/").get_data(as_text=True)
    assert '<a href="/archive">Read past newsletters</a>' in page


@pytest.fixture
def owner(app):
    create_admin(app)
    client = app.test_client()
    sign_in(client)
    return client


@pytest.mark.slow
def test_the_owner_ticks_a_newsletter_into_the_archive(app, owner, client):
    readers(app, 1)
    broadcast_id = draft(app, "From the desk")
    send_now(app, broadcast_id)
    start(app)
    page = f"/admin/newsletters/{broadcast_id}"
    assert "Show in the public archive" in owner.get(page).get_data(as_text=True)
    token = csrf_token(owner, page)
    response = owner.post(f"{page}/archive", data={"public": "on", "csrf_token": token})
    assert response.status_code == 303
    shown = owner.get(page).get_data(as_text=True)
    assert "http://newsletter.test/archive/from-the-desk" in shown
    assert "checked" in shown.split('id="public-archive"')[1]
    assert listed(client) == ["from-the-desk"]
    owner.post(f"{page}/archive", data={"csrf_token": token})  # unticked
    assert listed(client) == []


def test_the_tick_needs_a_signed_in_owner_and_a_csrf_token(app, owner, client):
    broadcast_id = draft(app, "Guarded")
    path = f"/admin/newsletters/{broadcast_id}/archive"
    assert client.post(path, data={"public": "on"}).status_code == 401
    assert owner.post(path, data={"public": "on"}).status_code == 400
    assert (
        owner.post(
            "/admin/newsletters/999/archive",
            data={
                "public": "on",
                "csrf_token": csrf_token(owner, f"/admin/newsletters/{broadcast_id}"),
            },
        ).status_code
        == 404
    )
    with services_of(app).database.read() as session:
        assert session.get(Broadcast, broadcast_id).public is False


@pytest.mark.slow
@pytest.mark.parametrize("slug", ["%00", "a%00b", "UPPER", "x" * 200, "%F0%9F%92%A9"])
def test_a_path_that_cannot_be_a_slug_is_a_404(client, slug):
    assert client.get(f"/archive/{slug}").status_code == 404


def test_characters_xml_forbids_never_reach_the_feed(app, client):
    import xml.etree.ElementTree as ElementTree

    sent(app, "Week \ufffe two\uffff", body="Roll \uffff slowly")
    feed = client.get("/archive.atom").get_data(as_text=True)
    ElementTree.fromstring(feed)  # well-formed
    assert "\ufffe" not in feed and "\uffff" not in feed
