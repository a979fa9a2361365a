"""Liveness: scheduler heartbeats, and what /healthz reports."""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from .models import SchedulerHeartbeat

HEARTBEAT_RETENTION = timedelta(days=7)


def record_tick(session: Session, worker: str, *, started_at: datetime, now: datetime) -> None:
    """Note that `worker` ticked at `now`, and forget schedulers silent for a week."""
    heartbeat = session.get(SchedulerHeartbeat, worker)
    if heartbeat is None:
        session.add(SchedulerHeartbeat(worker=worker, started_at=started_at, last_tick_at=now))
    else:
        heartbeat.last_tick_at = now
    session.execute(
        delete(SchedulerHeartbeat).where(
            SchedulerHeartbeat.last_tick_at < now - HEARTBEAT_RETENTION
        )
    )


def last_tick(session: Session) -> datetime | None:
    """When any scheduler last ticked."""
    return session.scalar(select(func.max(SchedulerHeartbeat.last_tick_at)))
