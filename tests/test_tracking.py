"""Click tracking: links go through our own redirect, clicks count per email and link."""

from __future__ import annotations

import re

import pytest
import sqlalchemy as sa

from service import broadcasts, dashboard
from service.dispatch import Dispatcher
from service.models import Click, SubscriberStatus, TrackedLink
from tests.helpers import make_subscriber, run_pass, services_of
from tests.test_admin import admin_client  # noqa: F401

BODY = "Read [the roller guide](https://shop.example.com/roller?a=1&b=2) today."


@pytest.fixture
def app(smtp_app):
    return smtp_app


def send_newsletter(app, body: str = BODY, readers: int = 2) -> int:
    broadcast_id = queue_newsletter(app, body, readers)
    run_pass(app)
    return broadcast_id


def queue_newsletter(app, body: str = BODY, readers: int = 2) -> int:
    services = services_of(app)
    now = services.clock()
    with services.database.begin() as session:
        for n in range(readers):
            make_subscriber(
                session, f"r{n}@example.com", now=now, status=SubscriberStatus.CONFIRMED
            )
        broadcast = broadcasts.save_draft(session, None, subject="Rolling", body=body, now=now)
        broadcasts.schedule(session, broadcast.id, at=now, now=now)
        broadcasts.start_due(session, now=now, sequence=services.default_sequence.name)
    return broadcast.id


def tracked_links(html: str) -> list[str]:
    return re.findall(r'href="http://newsletter\.test(/l/[^"]+)"', html)


def test_links_in_newsletters_go_through_the_redirect_and_count_per_email(app, smtp, client):
    send_newsletter(app)
    first, second = smtp.handler.wait_for(2)
    (path,) = tracked_links(first.part("html"))
    (other,) = tracked_links(second.part("html"))
    assert path != other  # each email its own, so clicks count per email
    assert "/unsubscribe/" in first.part("html")  # our own links are left alone
    response = client.get(path)
    assert response.status_code == 302
    assert response.headers["Location"] == "https://shop.example.com/roller?a=1&b=2"
    client.get(path)
    client.get(other)
    with services_of(app).database.read() as session:
        clicks = session.execute(sa.select(Click.outbox_id, Click.subscriber_id)).all()
        assert len(clicks) == 3 and len({c.outbox_id for c in clicks}) == 2
        assert all(c.subscriber_id is not None for c in clicks)
        assert session.scalar(sa.select(sa.func.count()).select_from(TrackedLink)) == 1


def test_the_redirect_only_goes_where_our_emails_point(app, smtp, client):
    send_newsletter(app)
    (path,) = tracked_links(smtp.handler.wait_for(2)[0].part("html"))
    link_id = path.split("/")[2]
    # A made-up link id is not found; there is no parameter to put another address in.
    assert client.get("/l/999999/1.abc").status_code == 404
    assert client.get("/l/x/1.abc").status_code == 404
    # A forged email id still reaches the stored target, but counts for no email.
    forged = client.get(f"/l/{link_id}/1.0000000000000000")
    assert forged.headers["Location"] == "https://shop.example.com/roller?a=1&b=2"
    with services_of(app).database.read() as session:
        assert session.scalar(sa.select(Click.outbox_id)) is None


@pytest.mark.slow
def test_clicks_show_on_the_newsletter_and_the_subscriber(app, smtp, client, admin_client):  # noqa: F811
    broadcast_id = send_newsletter(app, readers=1)
    (path,) = tracked_links(smtp.handler.wait_for(1)[0].part("html"))
    client.get(path)
    page = admin_client.get(f"/admin/newsletters/{broadcast_id}").get_data(as_text=True)
    assert "https://shop.example.com/roller?a=1&amp;b=2</td><td>1</td><td>1</td>" in page
    data = admin_client.get("/admin/subscribers/1/data.json").get_json()
    assert data["clicks"][0]["link"] == "https://shop.example.com/roller?a=1&b=2"


def test_tracking_can_be_turned_off(make_app, smtp):
    app = make_app(MAIL_URL=smtp.url, TRACK_LINKS="off")
    send_newsletter(app, readers=1)
    html = smtp.handler.wait_for(1)[0].part("html")
    assert tracked_links(html) == []
    assert 'href="https://shop.example.com/roller?a=1&amp;b=2"' in html


def test_sequence_step_clicks_reach_the_dashboard(make_app, smtp, tmp_path):
    from service.kinds import SEQUENCE_STEP
    from service.models import OutboxMessage
    from tests.test_emails import SHIPPED_EMAILS

    content = tmp_path / "content" / "emails"
    content.mkdir(parents=True)
    (content / "sequence.toml").write_text(
        (SHIPPED_EMAILS / "sequence.toml")
        .read_text()
        .replace('course_url = ""', 'course_url = "https://course.example.com/back"')
    )
    app = make_app(MAIL_URL=smtp.url, CONTENT_DIR=str(tmp_path / "content"))
    services = services_of(app)
    step = services.default_sequence.step("course")
    with services.database.begin() as session:
        reader = make_subscriber(
            session, "r@example.com", now=services.clock(), status=SubscriberStatus.CONFIRMED
        )
        session.add(
            OutboxMessage(
                subscriber_id=reader.id,
                to_address=reader.email,
                kind=SEQUENCE_STEP,
                template=step.template,
                context={"sequence": services.default_sequence.name, "step": step.id},
                sequence_step=step.id,
                status="queued",
                attempts=0,
                due_at=services.clock(),
                created_at=services.clock(),
            )
        )
    run_pass(app)
    links = tracked_links(smtp.handler.wait_for(1)[0].part("html"))
    assert links, "the step's external links are tracked"
    client = app.test_client()
    assert client.get(links[0]).headers["Location"] == "https://course.example.com/back"
    with services.database.read() as session:
        (results,) = [
            r
            for r in dashboard.step_results(session, services.default_sequence)
            if r.step_id == "course"
        ]
    assert (results.sent, results.clicks) == (1, 1)


def test_a_rolled_back_email_leaves_no_link_behind_in_the_caches(app, smtp, client, monkeypatch):
    """Links are stored in the transaction that prepares an email. If it rolls back (the
    database fails), no later email from the same long-lived dispatcher (the scheduler's)
    may point at the link it had stored."""
    services = services_of(app)
    dispatcher = services.make_dispatcher("scheduler")
    prepare = Dispatcher._prepare

    def prepare_then_fail(self, *args, **kwargs):
        prepare(self, *args, **kwargs)
        raise sa.exc.OperationalError("COMMIT", {}, Exception("disk I/O error"))

    queue_newsletter(app, readers=1)
    mailer = services.make_mailer()
    try:
        monkeypatch.setattr(Dispatcher, "_prepare", prepare_then_fail)
        with pytest.raises(sa.exc.OperationalError):
            dispatcher.drain(mailer, clock=services.clock)
        monkeypatch.setattr(Dispatcher, "_prepare", prepare)
        services.clock.advance(hours=1)  # the failed pass's lease runs out
        dispatcher.drain(mailer, clock=services.clock)
    finally:
        mailer.close()
    (message,) = smtp.handler.wait_for(1)
    (path,) = tracked_links(message.part("html"))
    response = client.get(path)
    assert response.status_code == 302
    assert response.headers["Location"] == "https://shop.example.com/roller?a=1&b=2"
