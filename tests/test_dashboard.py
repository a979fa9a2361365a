"""The dashboard's figures: days in the owner's zone, signups through the forms told apart
from imports (and agreeing with the funnel), and a choice of 30, 90 or 365 days."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from service import dashboard, journal
from tests.conftest import START
from tests.helpers import make_subscriber, services_of
from tests.test_admin import admin_client  # noqa: F401 (a fixture)


def add_people(app, kind: str, count: int, *, at: datetime, start: int = 0) -> None:
    """`count` subscribers, each with one `kind` event ("signed_up" or "imported") at `at`."""
    services = services_of(app)
    with services.database.begin() as session:
        for n in range(start, start + count):
            reader = make_subscriber(session, f"{kind}{n}@example.com", now=at)
            journal.record_event(session, reader.id, kind, now=at)


def counts_by_day(app, zone: str, *, now: datetime, days: int = 90) -> dict[str, int]:
    with services_of(app).database.read() as session:
        found = dashboard.daily_counts(session, now=now, zone=ZoneInfo(zone), days=days)
    return {d.day.isoformat(): d.counts["signed_up"] for d in found if d.counts["signed_up"]}


def test_a_signup_at_two_in_the_morning_utc_is_the_day_before_in_new_york(app):
    add_people(app, "signed_up", 1, at=datetime(2026, 11, 24, 2, 0, tzinfo=UTC))
    assert counts_by_day(app, "America/New_York", now=START) == {"2026-11-23": 1}
    assert counts_by_day(app, "UTC", now=START) == {"2026-11-24": 1}


def test_the_last_instant_of_a_local_day_stays_on_that_day(app):
    """23:59:59.9995 in New York is still the 23rd (SQLite's date() would round it up)."""
    add_people(app, "signed_up", 1, at=datetime(2026, 11, 24, 4, 59, 59, 999_500, tzinfo=UTC))
    assert counts_by_day(app, "America/New_York", now=START) == {"2026-11-23": 1}


def test_days_follow_summer_time_and_half_hour_zones(app):
    # Berlin leaves summer time (UTC+2 -> UTC+1) at 01:00 UTC on 25 October 2026.
    add_people(app, "signed_up", 1, at=datetime(2026, 10, 24, 22, 30, tzinfo=UTC))  # 00:30 +2
    add_people(app, "signed_up", 1, at=datetime(2026, 10, 25, 23, 30, tzinfo=UTC), start=1)
    add_people(app, "signed_up", 1, at=datetime(2026, 11, 23, 18, 45, tzinfo=UTC), start=2)
    assert counts_by_day(app, "Europe/Berlin", now=START) == {
        "2026-10-25": 1,
        "2026-10-26": 1,
        "2026-11-23": 1,
    }
    # India is UTC+5:30 all year: 18:45 UTC is a quarter past midnight the next day.
    assert counts_by_day(app, "Asia/Kolkata", now=START) == {
        "2026-10-25": 1,
        "2026-10-26": 1,
        "2026-11-24": 1,
    }


def test_the_days_asked_for_are_counted_and_no_more(app):
    add_people(app, "signed_up", 1, at=START - timedelta(days=40))
    add_people(app, "signed_up", 1, at=START - timedelta(days=200), start=1)
    assert sum(counts_by_day(app, "UTC", now=START, days=30).values()) == 0
    assert sum(counts_by_day(app, "UTC", now=START, days=90).values()) == 1
    assert sum(counts_by_day(app, "UTC", now=START, days=365).values()) == 2
    with services_of(app).database.read() as session:
        year = dashboard.daily_counts(session, now=START, zone=ZoneInfo("UTC"), days=365)
    assert len(year) == 365 and year[-1].day.isoformat() == "2026-11-24"


def text_of(html: str) -> str:
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", html))


@pytest.mark.slow
def test_the_legend_and_the_funnel_count_form_signups_and_imports_alike(app, admin_client):  # noqa: F811
    add_people(app, "signed_up", 9, at=START - timedelta(days=3))
    add_people(app, "imported", 30, at=START - timedelta(days=2))
    page = admin_client.get("/admin/").get_data(as_text=True)
    legend = text_of(re.search(r'<ul class="legend">(.*?)</ul>', page, re.S).group(1))
    assert "Signed up through your forms: 9" in legend and "Imported: 30" in legend
    ways = text_of(re.search(r'<p id="funnel-ways">(.*?)</p>', page, re.S).group(1))
    assert "Signed up through your forms: 9; imported: 30 (39 in all" in ways


@pytest.mark.slow
def test_the_owner_picks_30_90_or_365_days(app, admin_client):  # noqa: F811
    add_people(app, "imported", 1, at=START - timedelta(days=200))
    default = admin_client.get("/admin/").get_data(as_text=True)
    assert "The last 90 days (America/New_York)" in default
    assert '<strong aria-current="page">90 days</strong>' in default
    month = admin_client.get("/admin/?days=30").get_data(as_text=True)
    assert "The last 30 days" in month and "Imported: 0" in month
    assert len(re.findall(r'<text class="tick[^"]*" x="[\d.]+%"', month)) == 6  # every 5th day
    year = admin_client.get("/admin/?days=365").get_data(as_text=True)
    assert "The last 365 days" in year and "Imported: 1" in year
    # A label on the first of each month: 12 of them in a year.
    assert len(re.findall(r'<text class="tick[^"]*" x="[\d.]+%"', year)) == 12
    assert "The last 90 days" in admin_client.get("/admin/?days=7").get_data(as_text=True)
