"""A scheduler tick's work on a sequence: finding the enrollments that are due and moving
each one step on.

A tick turns due enrollments into outbox rows (one per subscriber and step, unique) in the
same transaction that moves the enrollment on, so the work of a tick is proportional to
what is due, found through an index on the due time.
"""

from __future__ import annotations

import enum
import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import select, text, update
from sqlalchemy.orm import Session

from .. import outbox
from ..models import (
    ENROLLMENT_DUE_STATES,
    Enrollment,
    EnrollmentStatus,
    OutboxMessage,
    OutboxStatus,
    Subscriber,
    SubscriberStatus,
)
from .definition import DripSequence
from .enrollments import dedupe_key
from .timing import due_time, sending_window_opens, zone_of

logger = logging.getLogger(__name__)


class Outcome(enum.StrEnum):
    """What a tick did with one due enrollment."""

    QUEUED = "queued"  # an email for the step is in the outbox
    PLANNED = "planned"  # the next step's time was (re)calculated; nothing sent yet
    SKIPPED = "skipped"  # the step needs a link the owner has not set
    FINISHED = "finished"
    STOPPED = "stopped"  # the subscriber may no longer receive mail


@dataclass
class TickReport:
    """What one pass over due enrollments did."""

    queued: int = 0
    planned: int = 0
    skipped: int = 0
    finished: int = 0
    stopped: int = 0

    def add(self, outcome: Outcome) -> None:
        setattr(self, outcome.value, getattr(self, outcome.value) + 1)

    @property
    def total(self) -> int:
        return self.queued + self.planned + self.skipped + self.finished + self.stopped

    def __str__(self) -> str:
        return ", ".join(
            f"{k} {getattr(self, k)}"
            for k in ("queued", "planned", "skipped", "finished", "stopped")
        )


@dataclass
class _Due:
    enrollment_id: int
    subscriber_id: int
    email: str
    subscriber_status: SubscriberStatus
    time_zone: str
    enrolled_at: datetime
    last_step_at: datetime | None
    next_step: str | None
    passed: list[str]


def due_enrollments(
    session: Session, sequence: DripSequence, *, now: datetime, limit: int
) -> list[_Due]:
    """Enrollments whose next step is due, earliest first (an index range scan).

    On PostgreSQL the rows are locked, skipping rows another scheduler holds.
    """
    statement = (
        select(
            Enrollment.id,
            Subscriber.id,
            Subscriber.email,
            Subscriber.status,
            Subscriber.time_zone,
            Enrollment.enrolled_at,
            Enrollment.last_step_at,
            Enrollment.next_step,
            Enrollment.steps_passed,
        )
        .join(Subscriber, Subscriber.id == Enrollment.subscriber_id)
        .where(
            # The index's own terms, with the table named (the query joins subscribers).
            text(f"enrollments.{ENROLLMENT_DUE_STATES}"),
            Enrollment.next_due_at <= now,
            Enrollment.sequence == sequence.name,
        )
        .order_by(Enrollment.next_due_at)
        .limit(limit)
    )
    if session.get_bind().dialect.name == "postgresql":
        statement = statement.with_for_update(skip_locked=True, of=Enrollment)
    return [_Due(*row[:8], passed=list(row[8] or [])) for row in session.execute(statement)]


def advance_due(
    session: Session,
    sequence: DripSequence,
    *,
    now: datetime,
    default_zone: ZoneInfo,
    limit: int = 500,
) -> TickReport:
    """Move every due enrollment (up to `limit`) one step on, in this transaction.

    Each gets at most one step per call, and never while its previous step is still
    waiting in the outbox: a step is timed from when the previous one actually went out.
    So a scheduler or mail server that was down catches up without sending anyone two
    steps at once.
    """
    report = TickReport()
    due = due_enrollments(session, sequence, now=now, limit=limit)
    previous = _previous_emails(session, sequence, due)
    outbox_rows: list[dict[str, Any]] = []
    updates: list[dict[str, Any]] = []
    for entry in due:
        outcome, changes, email = _advance_one(
            entry,
            sequence,
            previous.get(entry.subscriber_id),
            now=now,
            default_zone=default_zone,
        )
        report.add(outcome)
        updates.append({"id": entry.enrollment_id, **changes})
        if email is not None:
            outbox_rows.append(email)
    outbox.enqueue_steps(session, outbox_rows, now=now)
    if updates:
        session.execute(update(Enrollment), updates)
    return report


def _previous_emails(
    session: Session, sequence: DripSequence, due: list[_Due]
) -> dict[int, tuple[OutboxStatus, datetime | None]]:
    """The outbox state of each subscriber's last step (one query, by unique key)."""
    keys = {
        dedupe_key(sequence.name, d.subscriber_id, d.passed[-1]): d.subscriber_id
        for d in due
        if d.passed
    }
    if not keys:
        return {}
    rows = session.execute(
        select(OutboxMessage.dedupe_key, OutboxMessage.status, OutboxMessage.sent_at).where(
            OutboxMessage.dedupe_key.in_(list(keys))
        )
    )
    return {keys[key]: (state, sent_at) for key, state, sent_at in rows}


# How soon to look again at a subscriber whose previous step has not gone out yet.
PREVIOUS_PENDING_RECHECK = timedelta(hours=1)
# ... and at one whose steps are all gone from the file.
LOST_RECHECK = timedelta(days=1)


def _advance_one(
    due: _Due,
    sequence: DripSequence,
    previous_email: tuple[OutboxStatus, datetime | None] | None,
    *,
    now: datetime,
    default_zone: ZoneInfo,
) -> tuple[Outcome, dict[str, Any], dict[str, Any] | None]:
    """Decide what happens to one due enrollment: (outcome, enrollment changes, outbox row)."""
    if due.subscriber_status is not SubscriberStatus.CONFIRMED:
        return (
            Outcome.STOPPED,
            {"status": EnrollmentStatus.STOPPED, "stopped_at": now, "next_due_at": None},
            None,
        )
    if previous_email is not None and previous_email[0] in (
        OutboxStatus.QUEUED,
        OutboxStatus.SENDING,
    ):
        return Outcome.PLANNED, {"next_due_at": now + PREVIOUS_PENDING_RECHECK}, None
    zone = zone_of(due.time_zone, default_zone)
    if sequence.lost(due.passed):
        # Sending nothing beats starting them from the top; look again tomorrow, in case
        # the file is put right.
        logger.warning(
            "subscriber %d passed steps %s, none of which is in the sequence now",
            due.subscriber_id,
            ", ".join(due.passed),
        )
        return Outcome.PLANNED, {"next_step": None, "next_due_at": now + LOST_RECHECK}, None
    step = sequence.next_step(due.passed)
    if step is None:
        return Outcome.FINISHED, _finished(now), None

    # Timed from the later of: the previous step being queued (or a resume), and its
    # actual sending. Recomputed every time, so edits to the file and late sends count.
    sent_at = previous_email[1] if previous_email is not None else None
    moments = [t for t in (due.last_step_at, sent_at) if t is not None]
    base = max(moments) if moments else due.enrolled_at
    previous = base if due.passed else None
    planned = due_time(step, base=base, zone=zone, send_hour=sequence.send_hour, previous=previous)
    if planned > now:
        return Outcome.PLANNED, {"next_step": step.id, "next_due_at": planned}, None
    opens = sending_window_opens(step, now=now, zone=zone, sequence=sequence)
    if opens is not None:
        return Outcome.PLANNED, {"next_step": step.id, "next_due_at": opens}, None

    passed = [*due.passed, step.id]
    following = sequence.next_step(passed)
    changes: dict[str, Any] = {"steps_passed": passed, "last_step_at": now}
    if following is None:
        changes.update(_finished(now))
    else:
        changes.update(
            next_step=following.id,
            next_due_at=due_time(
                following, base=now, zone=zone, send_hour=sequence.send_hour, previous=now
            ),
        )
    missing = sequence.missing_links(step)
    if missing:
        logger.info(
            "step %s skipped for subscriber %d: no %s",
            step.id,
            due.subscriber_id,
            ", ".join(missing),
        )
        outcome = Outcome.FINISHED if following is None else Outcome.SKIPPED
        return outcome, changes, None
    email = outbox.step_row(
        due.subscriber_id,
        due.email,
        template=step.template,
        sequence=sequence.name,
        step=step.id,
        dedupe_key=dedupe_key(sequence.name, due.subscriber_id, step.id),
        now=now,
    )
    return Outcome.QUEUED, changes, email


def _finished(now: datetime) -> dict[str, Any]:
    return {
        "status": EnrollmentStatus.FINISHED,
        "finished_at": now,
        "next_step": None,
        "next_due_at": None,
    }
