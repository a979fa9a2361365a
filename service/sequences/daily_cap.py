"""The daily cap: no reader gets more than `max_per_day` sequence emails on a local day,
however many sequences they are in.

Each step's outbox row takes a day slot, `<subscriber>:<local day>:<n>`, unique in the
outbox. A batch's slots are read in one query (`allot`); the step that has waited longest
takes a free one first, also against a step of the same reader outside the batch that is
due later today, and a step that finds none waits for the next allowed morning
(`next_morning`). The unique index settles a race between two schedulers: the rows that
lost their slot are reported back (`enqueue`) and wait too.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import select
from sqlalchemy.orm import Session

from .. import outbox
from ..models import Enrollment, EnrollmentStatus, OutboxMessage, OutboxStatus
from .definition import Step
from .timing import first_morning


@dataclass(frozen=True)
class Wanted:
    """A step about to be queued, as the cap sees it."""

    enrollment_id: int
    subscriber_id: int
    zone: ZoneInfo
    waiting_since: datetime  # earlier goes first


def day_slot(subscriber_id: int, day: date, number: int) -> str:
    """The outbox's key for a reader's `number`-th sequence email of a local day."""
    return f"{subscriber_id}:{day.isoformat()}:{number}"


def allot(
    session: Session, wanted: Iterable[Wanted], *, now: datetime, max_per_day: int
) -> dict[int, str | None]:
    """A free slot of its reader's local day for each step (by enrollment id), the one
    that has waited longest first; None for a step that finds none.

    A slot is also kept for a step of the same reader that waited for the cap before and
    is due again later today (another sequence's later send hour, or the next batch), so
    that it goes first, as it would in the same batch. Two queries."""
    wanted = sorted(wanted, key=lambda w: w.waiting_since)
    if not wanted:
        return {}
    days = {w.enrollment_id: now.astimezone(w.zone).date() for w in wanted}
    choices = {
        w.enrollment_id: [
            day_slot(w.subscriber_id, days[w.enrollment_id], n) for n in range(max_per_day)
        ]
        for w in wanted
    }
    every_slot = [slot for slots in choices.values() for slot in slots]
    taken = set(
        session.scalars(
            select(OutboxMessage.day_slot).where(OutboxMessage.day_slot.in_(every_slot))
        )
    )
    waiting = _waiting_elsewhere(session, wanted)
    allotted: dict[int, str | None] = {}
    for w in wanted:
        # Steps of this reader that have waited longer, due later today, outside this batch.
        ahead = sum(
            1
            for since, due in waiting.get(w.subscriber_id, ())
            if since < w.waiting_since and due.astimezone(w.zone).date() <= days[w.enrollment_id]
        )
        free = [slot for slot in choices[w.enrollment_id] if slot not in taken]
        slot = free[ahead] if ahead < len(free) else None
        if slot is not None:
            taken.add(slot)
        allotted[w.enrollment_id] = slot
    return allotted


def _waiting_elsewhere(
    session: Session, wanted: list[Wanted]
) -> dict[int, list[tuple[datetime, datetime]]]:
    """For each reader, their other running steps that waited for the cap before:
    (waiting since, due again at). Only readers in this batch; through the subscriber
    index."""
    in_batch = {w.enrollment_id for w in wanted}
    found: dict[int, list[tuple[datetime, datetime]]] = {}
    rows = session.execute(
        select(
            Enrollment.id,
            Enrollment.subscriber_id,
            Enrollment.deferred_since,
            Enrollment.next_due_at,
        ).where(
            Enrollment.subscriber_id.in_({w.subscriber_id for w in wanted}),
            Enrollment.status == EnrollmentStatus.ACTIVE,
            Enrollment.deferred_since.is_not(None),
            Enrollment.next_due_at.is_not(None),
        )
    )
    for enrollment_id, subscriber_id, since, due in rows:
        if enrollment_id not in in_batch:
            found.setdefault(subscriber_id, []).append((since, due))
    return found


def next_morning(step: Step, *, now: datetime, zone: ZoneInfo, send_hour: int) -> datetime:
    """When a step that found its reader's day full goes: the next allowed morning."""
    tomorrow = now.astimezone(zone).date() + timedelta(days=1)
    return first_morning(step, tomorrow, zone=zone, send_hour=send_hour)


def enqueue(session: Session, rows: list[dict[str, Any]], *, now: datetime) -> set[str]:
    """Queue the steps; the dedupe keys of those that lost their day slot to another
    scheduler (none were written for them)."""
    if not rows:
        return set()
    written = outbox.enqueue_steps(session, rows, now=now)
    missing = [row["dedupe_key"] for row in rows if row["dedupe_key"] not in written]
    if not missing:
        return set()
    # A row there already counts (one sent is never sent again); one still cancelled was
    # not revived, having lost its day slot like a row not inserted.
    present = set(
        session.scalars(
            select(OutboxMessage.dedupe_key).where(
                OutboxMessage.dedupe_key.in_(missing),
                OutboxMessage.status != OutboxStatus.CANCELLED,
            )
        )
    )
    return set(missing) - present
