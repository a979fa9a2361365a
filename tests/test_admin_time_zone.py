"""Every time on the admin pages in the owner's zone, named: DEFAULT_TIME_ZONE until the
owner picks one on the Account page."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa

from service.models import AdminUser, Broadcast, BroadcastStatus, SubscriberStatus
from tests.conftest import START
from tests.helpers import make_subscriber, services_of
from tests.test_admin import admin_client, post  # noqa: F401 (a fixture)

pytestmark = pytest.mark.slow  # every test signs in (scrypt)


def test_times_are_shown_in_the_default_zone_and_named(app, admin_client):  # noqa: F811
    services = services_of(app)
    with services.database.begin() as session:
        reader = make_subscriber(session, "ann@example.com", now=START)
        reader_id = reader.id
    # START is 15:00 UTC on 24 November: 10:00 in New York (the default zone).
    page = admin_client.get(f"/admin/subscribers/{reader_id}").get_data(as_text=True)
    assert "2026-11-24 10:00 America/New_York" in page
    assert "15:00 UTC" not in page
    listing = admin_client.get("/admin/subscribers").get_data(as_text=True)
    assert "Signed up (America/New_York)" in listing
    assert "2026-11-24 10:00" in listing


def test_the_owner_picks_a_zone_on_the_account_page(app, admin_client):  # noqa: F811
    services = services_of(app)
    with services.database.begin() as session:
        reader_id = make_subscriber(session, "ann@example.com", now=START).id
    response = post(admin_client, "/admin/account/time-zone", time_zone="Europe/Berlin")
    assert response.status_code == 303
    page = admin_client.get(f"/admin/subscribers/{reader_id}").get_data(as_text=True)
    assert "2026-11-24 16:00 Europe/Berlin" in page
    account = admin_client.get("/admin/account").get_data(as_text=True)
    assert "<option selected>Europe/Berlin</option>" in account
    # Back to the service's default.
    post(admin_client, "/admin/account/time-zone", time_zone="")
    page = admin_client.get(f"/admin/subscribers/{reader_id}").get_data(as_text=True)
    assert "2026-11-24 10:00 America/New_York" in page


def test_an_unknown_zone_is_refused_and_changes_nothing(app, admin_client):  # noqa: F811
    post(admin_client, "/admin/account/time-zone", time_zone="Europe/Berlin")
    response = post(admin_client, "/admin/account/time-zone", time_zone="Mars/Base")
    assert response.status_code == 422
    page = response.get_data(as_text=True)
    assert 'aria-invalid="true" aria-describedby="time_zone-error"' in page
    assert '<p class="field-error" id="time_zone-error">Pick a time zone from the list.</p>' in page
    assert "now Europe/Berlin" in admin_client.get("/admin/account").get_data(as_text=True)


def test_a_newsletter_set_for_later_is_read_in_the_owners_zone(app, admin_client):  # noqa: F811
    post(admin_client, "/admin/account/time-zone", time_zone="Asia/Tokyo")
    post(admin_client, "/admin/newsletters/new", subject="Hello", body="Roll, then stretch.")
    response = post(
        admin_client, "/admin/newsletters/1/send", when="later", send_at="2026-11-26T09:00"
    )
    assert response.status_code == 303
    with services_of(app).database.read() as session:
        broadcast = session.get(Broadcast, 1)
        assert broadcast.status is BroadcastStatus.SCHEDULED
        assert broadcast.scheduled_at == datetime(2026, 11, 26, 0, 0, tzinfo=UTC)
    page = admin_client.get("/admin/newsletters/1").get_data(as_text=True)
    assert "Scheduled for 2026-11-26 09:00 Asia/Tokyo." in page


def test_the_lists_dates_are_the_owners_days(app, admin_client):  # noqa: F811
    """21:00 on the 24th in New York is 02:00 on the 25th in UTC: the list's "signed up"
    dates are the days its table shows, the owner's."""
    services = services_of(app)
    with services.database.begin() as session:
        make_subscriber(session, "late@example.com", now=START + timedelta(hours=11))

    def listed(query: str) -> bool:
        page = admin_client.get("/admin/subscribers?" + query).get_data(as_text=True)
        return "late@example.com" in page

    assert listed("from=2026-11-24&to=2026-11-24")
    assert not listed("from=2026-11-25")
    # The export link of that filter carries the same days.
    export = admin_client.get("/admin/subscribers/export.csv?from=2026-11-24&to=2026-11-24")
    assert "late@example.com" in export.get_data(as_text=True)


def test_a_zone_this_machine_no_longer_knows_falls_back_to_the_default(app, admin_client):  # noqa: F811
    """A database moved to a machine whose zone database lacks the owner's zone: the pages
    still open, in DEFAULT_TIME_ZONE, and the Account page offers the zone again."""
    with services_of(app).database.begin() as session:
        session.execute(sa.update(AdminUser).values(time_zone="Gone/Zone"))
    page = admin_client.get("/admin/account")
    assert page.status_code == 200
    assert "now America/New_York" in page.get_data(as_text=True)
    assert post(admin_client, "/admin/account/time-zone", time_zone="Factory").status_code == 422


def test_a_time_in_a_history_entry_is_in_the_owners_zone(app, admin_client):  # noqa: F811
    from service import preferences

    services = services_of(app)
    with services.database.begin() as session:
        reader_id = make_subscriber(
            session, "ann@example.com", now=START, status=SubscriberStatus.CONFIRMED
        ).id
        preferences.pause_all(session, reader_id, 2, now=START)
    page = admin_client.get(f"/admin/subscribers/{reader_id}").get_data(as_text=True)
    assert "until: 2026-12-08 10:00 America/New_York" in page
    assert "+00:00" not in page
