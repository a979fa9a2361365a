"""Scheduler heartbeats."""

from __future__ import annotations

from datetime import timedelta

from service import health
from service.models import SchedulerHeartbeat
from tests.helpers import services_of


def test_the_latest_tick_of_any_scheduler_is_reported(app, clock):
    services = services_of(app)
    with services.database.begin() as session:
        health.record_tick(session, "A", started_at=clock(), now=clock())
        health.record_tick(session, "B", started_at=clock(), now=clock() + timedelta(seconds=3))
        health.record_tick(session, "A", started_at=clock(), now=clock() + timedelta(seconds=1))
    with services.database.read() as session:
        assert health.last_tick(session) == clock() + timedelta(seconds=3)
        assert session.get(SchedulerHeartbeat, "A").last_tick_at == clock() + timedelta(seconds=1)


def test_schedulers_silent_for_a_week_are_forgotten(app, clock):
    services = services_of(app)
    with services.database.begin() as session:
        health.record_tick(session, "old", started_at=clock(), now=clock())
    with services.database.begin() as session:
        later = clock() + timedelta(days=8)
        health.record_tick(session, "new", started_at=later, now=later)
    with services.database.read() as session:
        assert session.get(SchedulerHeartbeat, "old") is None
        assert session.get(SchedulerHeartbeat, "new") is not None


def test_no_tick_yet_is_none(app):
    with services_of(app).database.read() as session:
        assert health.last_tick(session) is None
