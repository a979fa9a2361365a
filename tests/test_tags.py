"""Tags: where readers get them (import, the owner), what they choose (exports, the
subscriber list, newsletters), and the dashboard's funnel per magnet."""

from __future__ import annotations

import csv
import dataclasses
import io
import re
from datetime import timedelta

import pytest
import sqlalchemy as sa

from service import broadcasts, dashboard, journal, kinds, newsletter_audience, tags
from service.models import (
    Enrollment,
    EnrollmentStatus,
    Event,
    MagnetRequest,
    OutboxMessage,
    Subscriber,
    SubscriberStatus,
)
from tests.helpers import make_subscriber, services_of
from tests.test_admin import create_admin, csrf_token, sign_in


@pytest.fixture
def owner(app):
    create_admin(app)
    client = app.test_client()
    sign_in(client)
    return client


def reader(app, email: str, *tagged: str, status=SubscriberStatus.CONFIRMED, **fields) -> int:
    """A reader carrying `tagged`, added by the owner."""
    services = services_of(app)
    with services.database.begin() as session:
        subscriber = make_subscriber(session, email, now=services.clock(), status=status, **fields)
        tags.add(session, subscriber.id, tagged, added_by="owner", now=services.clock())
        return subscriber.id


def tags_by_address(app) -> dict[str, list[str]]:
    with services_of(app).database.read() as session:
        ids = dict(session.execute(sa.select(Subscriber.email, Subscriber.id)).all())
        return {email: tags.of(session, subscriber_id) for email, subscriber_id in ids.items()}


# --- newsletters to tags -----------------------------------------------------------------


@pytest.fixture
def tagged_readers(app):
    """Five confirmed readers with tags in different combinations, and two who would
    match any choice but are not confirmed."""
    reader(app, "ab@example.com", "a", "b")
    reader(app, "a@example.com", "a")
    reader(app, "b@example.com", "b")
    reader(app, "ac@example.com", "a", "c")
    reader(app, "none@example.com")
    reader(app, "pending@example.com", "a", "b", status=SubscriberStatus.PENDING)
    reader(app, "gone@example.com", "a", "b", status=SubscriberStatus.UNSUBSCRIBED)


def send_to(app, **audience) -> tuple[int, set[str]]:
    """Draft, count, send and start a newsletter; the count shown before sending and the
    addresses of the rows queued."""
    services = services_of(app)
    now = services.clock()
    sequence = services.default_sequence.name
    with services.database.begin() as session:
        broadcast = broadcasts.save_draft(
            session, None, subject="Hello", body="Body", now=now, **audience
        )
        shown = newsletter_audience.size(session, broadcast, sequence=sequence, now=now)
        broadcasts.schedule(session, broadcast.id, at=now, now=now)
    with services.database.begin() as session:
        [(broadcast_id, queued)] = broadcasts.start_due(session, now=now, sequence=sequence)
        assert queued == shown
    with services.database.read() as session:
        addresses = set(
            session.scalars(
                sa.select(Subscriber.email)
                .join(OutboxMessage, OutboxMessage.subscriber_id == Subscriber.id)
                .where(OutboxMessage.kind == kinds.NEWSLETTER)
                .where(OutboxMessage.broadcast_id == broadcast_id)
            )
        )
    assert len(addresses) == shown
    return shown, addresses


@pytest.mark.parametrize(
    ("audience", "expected"),
    [
        ({}, {"ab", "a", "b", "ac", "none"}),
        ({"include_tags": ["a"]}, {"ab", "a", "ac"}),
        ({"include_tags": ["a", "b"]}, {"ab", "a", "b", "ac"}),
        ({"include_tags": ["a", "b"], "tags_match": "all"}, {"ab"}),
        ({"include_tags": ["A ", "c"], "tags_match": "all"}, {"ac"}),
        ({"exclude_tags": ["a"]}, {"b", "none"}),
        ({"include_tags": ["a"], "exclude_tags": ["b", "c"]}, {"a"}),
        ({"include_tags": ["b"], "exclude_tags": ["a"], "tags_match": "all"}, {"b"}),
    ],
)
@pytest.mark.slow
def test_a_newsletter_reaches_exactly_the_readers_of_its_tags(
    app, tagged_readers, audience, expected
):
    shown, addresses = send_to(app, **audience)
    assert addresses == {f"{name}@example.com" for name in expected}
    assert shown == len(expected)


def test_readers_who_turned_newsletters_off_or_paused_get_none(app, clock):
    reader(app, "keen@example.com", "a")
    reader(app, "off@example.com", "a", wants_newsletters=False)
    reader(app, "paused@example.com", "a", paused_until=clock.now + timedelta(days=3))
    reader(app, "back@example.com", "a", paused_until=clock.now - timedelta(minutes=1))
    assert send_to(app)[1] == {"keen@example.com", "back@example.com"}
    assert send_to(app, include_tags=["a"])[1] == {"keen@example.com", "back@example.com"}


@pytest.mark.parametrize(
    ("audience", "error"),
    [
        ({"include_tags": ["nobody-has-it"]}, "No reader carries the tag 'nobody-has-it'"),
        ({"exclude_tags": ["Not a tag!"]}, "'Not a tag!' is not a tag"),
        ({"include_tags": ["a"], "exclude_tags": ["a"]}, "both included and excluded"),
        ({"include_tags": ["a"], "tags_match": "some"}, "any or all"),
    ],
)
def test_a_tag_choice_that_cannot_be_is_refused(app, tagged_readers, audience, error):
    services = services_of(app)
    with pytest.raises(broadcasts.BroadcastError, match=error), services.database.begin() as s:
        broadcasts.save_draft(s, None, subject="S", body="B", now=services.clock(), **audience)


@pytest.mark.slow
def test_the_compose_page_counts_the_tag_choice_and_keeps_a_refused_draft(
    app, owner, tagged_readers
):
    token = csrf_token(owner, "/admin/newsletters/new")
    page = owner.get("/admin/newsletters/new").get_data(as_text=True)
    assert '<option value="a">a (5)</option>' in page  # pending and gone carry it too
    response = owner.post(
        "/admin/newsletters/new",
        data={
            "csrf_token": token,
            "subject": "To a, not c",
            "body": "Hi",
            "include_tags": ["a", "b"],
            "exclude_tags": "c",
        },
    )
    assert response.status_code == 303
    page = owner.get(response.headers["Location"]).get_data(as_text=True)
    assert 'It goes to <strong id="recipient-count">3</strong>' in page
    assert '<option value="a" selected>' in page and '<option value="c" selected>' in page
    refused = owner.post(
        response.headers["Location"],
        data={
            "csrf_token": token,
            "subject": "Changed",
            "body": "Kept in the form",
            "include_tags": "ghost",
        },
    )
    assert refused.status_code == 422
    page = refused.get_data(as_text=True)
    assert "No reader carries the tag &#39;ghost&#39;" in page
    assert "Kept in the form" in page
    with services_of(app).database.read() as session:
        [saved] = session.scalars(sa.select(broadcasts.Broadcast)).all()
        assert (saved.subject, saved.include_tags, saved.exclude_tags) == (
            "To a, not c",
            ["a", "b"],
            ["c"],
        )


# --- import ------------------------------------------------------------------------------

CONSENT = "Signed up at the spring workshop"


def import_file(app, tmp_path, text: str, *options: str):
    path = tmp_path / "readers.csv"
    path.write_text(text)
    return app.test_cli_runner().invoke(
        args=["subscribers", "import", str(path), "--consent", CONSENT, *options]
    )


def test_an_import_adds_the_files_tags_and_the_commands_to_new_and_known_readers(app, tmp_path):
    reader(app, "known@example.com", "vip")
    result = import_file(
        app,
        tmp_path,
        "email,tags\n"
        "new@example.com,Topic:Hips; workshop\n"
        "known@example.com,workshop\n"
        "plain@example.com,\n"
        "bad@example.com,ok;not a tag!\n",
        "--mode",
        "confirmed",
        "--tag",
        "spring-2026",
        "--tag",
        "Workshop",
    )
    assert result.exit_code == 0, result.output
    assert "line 5: invalid: bad@example.com tags: 'not a tag!' is not a tag" in result.output
    assert "imported 2 new" in result.output and "1 already on the list given new tags" in (
        result.output
    )
    assert tags_by_address(app) == {
        "new@example.com": ["spring-2026", "topic:hips", "workshop"],
        "known@example.com": ["spring-2026", "vip", "workshop"],  # vip stays
        "plain@example.com": ["spring-2026", "workshop"],
    }
    with services_of(app).database.read() as session:
        by = dict(
            session.execute(
                sa.select(tags.SubscriberTag.tag, tags.SubscriberTag.added_by).where(
                    tags.SubscriberTag.subscriber_id
                    == sa.select(Subscriber.id)
                    .where(Subscriber.email == "known@example.com")
                    .scalar_subquery()
                )
            ).all()
        )
    assert by == {"vip": "owner", "workshop": "import", "spring-2026": "import"}


def test_an_invalid_tag_option_imports_nothing(app, tmp_path):
    result = import_file(
        app, tmp_path, "email\na@example.com\n", "--mode", "confirmed", "--tag", "no way"
    )
    assert result.exit_code != 0 and "'no way' is not a tag" in result.output
    assert tags_by_address(app) == {}


@pytest.mark.slow
def test_the_admin_import_adds_the_tags_of_its_field(app, owner):
    reader(app, "known@example.com")
    response = owner.post(
        "/admin/subscribers/import",
        data={
            "csrf_token": csrf_token(owner, "/admin/subscribers/import"),
            "file": (
                io.BytesIO(b"email,tags\nnew@example.com,hips\nknown@example.com,\n"),
                "f.csv",
            ),
        },
        content_type="multipart/form-data",
    )
    page = response.get_data(as_text=True)
    assert 'name="tags"' in page
    import_id = re.search(r'name="import_id" value="(\d+)"', page).group(1)
    refused = owner.post(
        "/admin/subscribers/import/apply",
        data={
            "csrf_token": csrf_token(owner, "/admin/subscribers/import"),
            "import_id": import_id,
            "consent": CONSENT,
            "mode": "confirmed",
            "tags": "fine, not fine",
        },
    )
    assert refused.status_code == 303
    assert tags_by_address(app) == {"known@example.com": []}
    done = owner.post(
        "/admin/subscribers/import/apply",
        data={
            "csrf_token": csrf_token(owner, "/admin/subscribers/import"),
            "import_id": import_id,
            "consent": CONSENT,
            "mode": "confirmed",
            "tags": "Webinar; spring,",
        },
    )
    assert done.status_code == 303
    assert tags_by_address(app) == {
        "known@example.com": ["spring", "webinar"],
        "new@example.com": ["hips", "spring", "webinar"],
    }


# --- export ------------------------------------------------------------------------------


def exported(app, *options: str) -> dict[str, str]:
    result = app.test_cli_runner().invoke(args=["subscribers", "export", *options])
    assert result.exit_code == 0, result.output
    return {row["email"]: row["tags"] for row in csv.DictReader(io.StringIO(result.output))}


def test_the_export_has_the_tags_and_exports_by_tag(app, tmp_path):
    reader(app, "ab@example.com", "b", "a")
    reader(app, "c@example.com", "c")
    reader(app, "none@example.com")
    assert exported(app) == {
        "ab@example.com": "a;b",
        "c@example.com": "c",
        "none@example.com": "",
    }
    assert exported(app, "--tag", "a") == {"ab@example.com": "a;b"}
    assert exported(app, "--tag", "B", "--tag", "c") == {
        "ab@example.com": "a;b",
        "c@example.com": "c",
    }
    assert exported(app, "--tag", "nobody") == {}
    result = app.test_cli_runner().invoke(args=["subscribers", "export", "--tag", "a b"])
    assert result.exit_code != 0 and "is not a tag" in result.output
    # The export goes back in with its tags.
    path = tmp_path / "out.csv"
    path.write_text(app.test_cli_runner().invoke(args=["subscribers", "export"]).output)
    with services_of(app).database.begin() as session:
        session.execute(sa.delete(tags.SubscriberTag))
    assert import_file(app, tmp_path, path.read_text(), "--mode", "confirmed").exit_code == 0
    assert tags_by_address(app) == {
        "ab@example.com": ["a", "b"],
        "c@example.com": ["c"],
        "none@example.com": [],
    }


# --- the subscriber list and page --------------------------------------------------------


@pytest.mark.slow
def test_the_subscriber_list_filters_by_tag_and_its_export_follows(app, owner):
    reader(app, "ab@example.com", "a", "b")
    reader(app, "b@example.com", "b", source="blog")
    reader(app, "none@example.com")
    page = owner.get("/admin/subscribers").get_data(as_text=True)
    assert '<option value="b">b (2)</option>' in page
    page = owner.get("/admin/subscribers?tag=b&source=blog").get_data(as_text=True)
    assert "b@example.com" in page and "ab@example.com" not in page
    page = owner.get("/admin/subscribers?tag=b").get_data(as_text=True)
    assert "ab@example.com" in page and "b@example.com" in page
    assert "none@example.com" not in page
    assert 'href="/admin/subscribers/export.csv?tag=b"' in page
    data = owner.get("/admin/subscribers/export.csv?tag=a").get_data(as_text=True)
    assert [row["email"] for row in csv.DictReader(io.StringIO(data))] == ["ab@example.com"]
    assert owner.get("/admin/subscribers?tag=not+a+tag").status_code == 400


@pytest.mark.slow
def test_the_owner_adds_and_removes_tags_on_the_subscriber_page(app, owner):
    subscriber_id = reader(app, "kim@example.com", "magnet:glute-guide")
    path = f"/admin/subscribers/{subscriber_id}"
    token = csrf_token(owner, path)
    assert owner.post(f"{path}/tags", data={"csrf_token": token, "tag": " VIP "}).status_code == 303
    owner.post(f"{path}/tags", data={"csrf_token": token, "tag": "vip"})  # again: no change
    refused = owner.post(
        f"{path}/tags", data={"csrf_token": token, "tag": "no good"}, follow_redirects=True
    )
    assert "Not tagged: &#39;no good&#39; is not a tag" in refused.get_data(as_text=True)
    assert owner.post(f"{path}/tags", data={"tag": "x"}).status_code == 400  # no CSRF token
    assert tags_by_address(app) == {"kim@example.com": ["magnet:glute-guide", "vip"]}
    page = owner.get(path).get_data(as_text=True)
    assert "<td>vip</td><td>owner</td>" in page
    assert "<td>magnet:glute-guide</td><td>owner</td>" in page
    owner.post(f"{path}/tags/remove", data={"csrf_token": token, "tag": "magnet:glute-guide"})
    owner.post(f"{path}/tags/remove", data={"csrf_token": token, "tag": "magnet:glute-guide"})
    assert tags_by_address(app) == {"kim@example.com": ["vip"]}
    with services_of(app).database.read() as session:
        events = session.execute(
            sa.select(Event.kind, Event.detail)
            .where(Event.subscriber_id == subscriber_id)
            .order_by(Event.id)
        ).all()
    assert [tuple(event) for event in events] == [
        ("tag_added", {"tag": "vip", "by": "owner"}),
        ("tag_removed", {"tag": "magnet:glute-guide", "by": "owner"}),
    ]


def test_the_subscriber_page_shows_the_magnets_asked_for(app, owner, clock):
    subscriber_id = reader(app, "kim@example.com")
    with services_of(app).database.begin() as session:
        session.add_all(
            [
                MagnetRequest(
                    subscriber_id=subscriber_id,
                    magnet="glute-guide",
                    requested_at=clock.now,
                    delivered_at=clock.now,
                    source="form",
                ),
                MagnetRequest(
                    subscriber_id=subscriber_id,
                    magnet="foam-rolling-planner",
                    requested_at=clock.now,
                    source="form",
                ),
            ]
        )
    page = owner.get(f"/admin/subscribers/{subscriber_id}").get_data(as_text=True)
    assert (
        "<td>glute-guide</td><td>2026-11-24 10:00 America/New_York</td><td>2026-11-24 10:00 America/New_York</td>"
        in page
    )
    assert (
        "<td>foam-rolling-planner</td><td>2026-11-24 10:00 America/New_York</td><td>not yet</td>"
        in page
    )


# --- the dashboard's funnel per magnet ---------------------------------------------------


@pytest.mark.slow
def test_the_dashboard_counts_each_magnets_funnel(app, owner, clock):
    services = services_of(app)
    guide = services.magnets["glute-guide"]
    planner = dataclasses.replace(
        guide, id="foam-rolling-planner", title="Foam rolling planner", sequence="planner-week"
    )
    no_sequence = dataclasses.replace(guide, id="cheat-sheet", title="Cheat sheet", sequence=None)
    ids = [reader(app, f"r{n}@example.com") for n in range(5)]
    now = clock.now
    with services.database.begin() as session:
        for subscriber_id, magnet, delivered in [
            (ids[0], "glute-guide", True),
            (ids[1], "glute-guide", True),
            (ids[2], "glute-guide", False),
            (ids[0], "foam-rolling-planner", True),
            (ids[3], "foam-rolling-planner", False),
        ]:
            session.add(
                MagnetRequest(
                    subscriber_id=subscriber_id,
                    magnet=magnet,
                    requested_at=now,
                    delivered_at=now if delivered else None,
                    source="form",
                )
            )
        for subscriber_id, detail in [
            (ids[0], None),  # before there were several magnets: the guide
            (ids[0], {"magnet": "glute-guide"}),  # the same reader again
            (ids[1], {"magnet": "glute-guide"}),
            (ids[0], {"magnet": "foam-rolling-planner"}),
        ]:
            journal.record_event(session, subscriber_id, "downloaded", now=now, detail=detail)
        journal.record_event(session, ids[4], "confirmed", now=now)
        for subscriber_id, sequence, status in [
            (ids[0], guide.sequence, EnrollmentStatus.FINISHED),
            (ids[1], guide.sequence, EnrollmentStatus.ACTIVE),
            (ids[2], guide.sequence, EnrollmentStatus.PAUSED),
            (ids[3], guide.sequence, EnrollmentStatus.STOPPED),
            (ids[0], "planner-week", EnrollmentStatus.ACTIVE),
        ]:
            session.add(
                Enrollment(
                    subscriber_id=subscriber_id, sequence=sequence, status=status, enrolled_at=now
                )
            )
    with services.database.read() as session:
        funnels = dashboard.magnet_funnels(
            session, {m.id: m for m in (guide, planner, no_sequence)}
        )
    assert [
        (f.magnet, f.asked, f.delivered, f.downloaded, f.in_sequence, f.finished) for f in funnels
    ] == [
        ("glute-guide", 3, 2, 2, 2, 1),
        ("foam-rolling-planner", 2, 1, 1, 1, 0),
        ("cheat-sheet", 0, 0, 0, None, None),
    ]
    page = owner.get("/admin/").get_data(as_text=True)
    assert (
        f'<tr id="magnet-glute-guide"><td>{guide.title}</td><td>3</td><td>2</td><td>2</td>'
        "<td>2</td><td>1</td></tr>"
    ) in page


def test_a_drafts_tag_that_lost_its_last_reader_stays_on_the_draft(app, tagged_readers):
    """Saving the draft again (the page saves as the owner types) must not drop the tag
    and silently widen the newsletter to everyone."""
    services = services_of(app)
    now = services.clock()
    with services.database.begin() as session:
        draft = broadcasts.save_draft(
            session, None, subject="Hi", body="Body", include_tags=["c"], now=now
        )
        table = tags.SubscriberTag.__table__
        session.execute(table.delete().where(table.c.tag == "c"))
    with services.database.begin() as session:
        again = broadcasts.save_draft(
            session, draft.id, subject="Hi", body="Body", include_tags=["c"], now=now
        )
        assert again.include_tags == ["c"]
        with pytest.raises(broadcasts.BroadcastError, match="No reader carries"):
            broadcasts.save_draft(
                session, draft.id, subject="Hi", body="Body", include_tags=["c", "zzz"], now=now
            )
