"""A scheduler tick's work on a sequence: finding the enrollments that are due and moving
each one step on.

A tick turns due enrollments into outbox rows (one per subscriber and step, unique) in the
same transaction that moves the enrollment on, so the work of a tick is proportional to
what is due, found through an index on the due time. One pass covers every sequence,
earliest due first.

A reader in several sequences gets at most `max_per_day` sequence emails on one local
day: each step's row takes a day slot (`<subscriber>:<local day>:<n>`, unique in the
outbox), and a step that finds its reader's slots taken moves to the next allowed morning,
its own sequence's timing otherwise unchanged (the steps after it are timed from when it
goes). The slots are read for the whole batch in one query; the unique index settles a
race between two schedulers, the loser waiting for the next morning like any other.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
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
from . import daily_cap
from .definition import DripSequence
from .enrollments import after_finishing, dedupe_key
from .outcomes import Outcome, TickReport
from .timing import due_time, first_morning, sending_window_opens, zone_of

logger = logging.getLogger(__name__)


@dataclass
class _Due:
    enrollment_id: int
    subscriber_id: int
    email: str
    subscriber_status: SubscriberStatus
    time_zone: str
    sequence: str
    enrolled_at: datetime
    last_step_at: datetime | None
    next_step: str | None
    held_until: datetime | None
    next_due_at: datetime
    deferred_since: datetime | None
    passed: list[str] = field(default_factory=list)

    @property
    def waiting_since(self) -> datetime:
        """Since when its next step has been due: earlier ones go first."""
        return self.deferred_since or self.next_due_at


def due_enrollments(
    session: Session,
    sequence: DripSequence | None = None,
    *,
    now: datetime,
    limit: int,
) -> list[_Due]:
    """Enrollments whose next step is due, earliest first (an index range scan), in every
    sequence or in `sequence`.

    On PostgreSQL the rows are locked, skipping rows another scheduler holds.
    """
    statement = (
        select(
            Enrollment.id,
            Subscriber.id,
            Subscriber.email,
            Subscriber.status,
            Subscriber.time_zone,
            Enrollment.sequence,
            Enrollment.enrolled_at,
            Enrollment.last_step_at,
            Enrollment.next_step,
            Enrollment.held_until,
            Enrollment.next_due_at,
            Enrollment.deferred_since,
            Enrollment.steps_passed,
        )
        .join(Subscriber, Subscriber.id == Enrollment.subscriber_id)
        .where(
            # The index's own terms, with the table named (the query joins subscribers).
            text(f"enrollments.{ENROLLMENT_DUE_STATES}"),
            Enrollment.next_due_at <= now,
        )
        .order_by(Enrollment.next_due_at)
        .limit(limit)
    )
    if sequence is not None:
        statement = statement.where(Enrollment.sequence == sequence.name)
    if session.get_bind().dialect.name == "postgresql":
        statement = statement.with_for_update(skip_locked=True, of=Enrollment)
    return [_Due(*row[:12], passed=list(row[12] or [])) for row in session.execute(statement)]


Decision = tuple["_Due", Outcome, dict[str, Any], dict[str, Any] | None]


def advance_due(
    session: Session,
    sequences: DripSequence | Mapping[str, DripSequence],
    *,
    now: datetime,
    default_zone: ZoneInfo,
    limit: int = 500,
    max_per_day: int = 1,
) -> TickReport:
    """Move every due enrollment (up to `limit`) one step on, in this transaction: in
    every sequence of the mapping, or in the one sequence given.

    Each gets at most one step per call, and never while its previous step is still
    waiting in the outbox: a step is timed from when the previous one actually went out.
    So a scheduler or mail server that was down catches up without sending anyone two
    steps at once. No reader gets more than `max_per_day` sequence emails on a local day.
    """
    if isinstance(sequences, DripSequence):
        loaded, only = {sequences.name: sequences}, sequences
    else:
        loaded, only = sequences, None
    report = TickReport()
    due = due_enrollments(session, only, now=now, limit=limit)
    previous = _previous_emails(session, due)
    decisions: list[Decision] = []
    for entry in due:
        sequence = loaded.get(entry.sequence)
        if sequence is None:
            logger.warning(
                "subscriber %d is in sequence %s, which is not loaded",
                entry.subscriber_id,
                entry.sequence,
            )
            decisions.append((entry, Outcome.PLANNED, {"next_due_at": now + LOST_RECHECK}, None))
            continue
        outcome, changes, email = _advance_one(
            entry,
            sequence,
            previous.get((entry.sequence, entry.subscriber_id)),
            now=now,
            default_zone=default_zone,
        )
        decisions.append((entry, outcome, changes, email))
    decisions = _within_daily_cap(session, decisions, loaded, now, default_zone, max_per_day)
    lost = daily_cap.enqueue(
        session, [email for *_, email in decisions if email is not None], now=now
    )
    updates: list[dict[str, Any]] = []
    finished: list[_Due] = []
    for entry, outcome, changes, email in decisions:
        if email is not None and email["dedupe_key"] in lost:
            # Another scheduler took the reader's last slot of the day a moment ago.
            outcome, changes = _deferred(entry, loaded[entry.sequence], now, default_zone)
        report.add(outcome)
        updates.append({"id": entry.enrollment_id, **changes})
        if changes.get("status") is EnrollmentStatus.FINISHED:
            finished.append(entry)
    if updates:
        session.execute(update(Enrollment), updates)
    after_finishing(
        session, [(e.subscriber_id, e.email, e.sequence) for e in finished], loaded, now=now
    )
    return report


def _previous_emails(
    session: Session, due: list[_Due]
) -> dict[tuple[str, int], tuple[OutboxStatus, datetime | None]]:
    """The outbox state of each subscriber's last step in each sequence (one query, by
    unique key)."""
    keys = {
        dedupe_key(d.sequence, d.subscriber_id, d.passed[-1]): (d.sequence, d.subscriber_id)
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


def _within_daily_cap(
    session: Session,
    decisions: list[Decision],
    loaded: Mapping[str, DripSequence],
    now: datetime,
    default_zone: ZoneInfo,
    max_per_day: int,
) -> list[Decision]:
    """Each step to queue gets a free slot of its reader's day (service.sequences.
    daily_cap), or waits for the next allowed morning."""
    allotted = daily_cap.allot(
        session,
        (
            daily_cap.Wanted(
                entry.enrollment_id,
                entry.subscriber_id,
                zone_of(entry.time_zone, default_zone),
                entry.waiting_since,
            )
            for entry, _, _, email in decisions
            if email is not None
        ),
        now=now,
        max_per_day=max_per_day,
    )
    kept: list[Decision] = []
    for entry, outcome, changes, email in decisions:
        if email is not None:
            slot = allotted[entry.enrollment_id]
            if slot is None:
                outcome, changes = _deferred(entry, loaded[entry.sequence], now, default_zone)
                email = None
            else:
                email = {**email, "day_slot": slot}
        kept.append((entry, outcome, changes, email))
    return kept


def _deferred(
    entry: _Due, sequence: DripSequence, now: datetime, default_zone: ZoneInfo
) -> tuple[Outcome, dict[str, Any]]:
    """The step waits for the reader's next allowed morning, first in line then."""
    step = sequence.next_step(entry.passed)
    assert step is not None  # only a step about to be queued is deferred
    zone = zone_of(entry.time_zone, default_zone)
    return Outcome.DEFERRED, {
        "next_step": step.id,
        "next_due_at": daily_cap.next_morning(
            step, now=now, zone=zone, send_hour=sequence.send_hour
        ),
        "deferred_since": entry.waiting_since,
    }


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
    if due.held_until is not None:
        # Back from the reader's own pause: the first sending morning after it.
        day = due.held_until.astimezone(zone).date()
        planned = first_morning(step, day, zone=zone, send_hour=sequence.send_hour)
        if planned < due.held_until:
            planned = first_morning(
                step, day + timedelta(days=1), zone=zone, send_hour=sequence.send_hour
            )
    else:
        planned = due_time(
            step, base=base, zone=zone, send_hour=sequence.send_hour, previous=previous
        )
    if planned > now:
        return Outcome.PLANNED, {"next_step": step.id, "next_due_at": planned}, None
    opens = sending_window_opens(step, now=now, zone=zone, sequence=sequence)
    if opens is not None:
        return Outcome.PLANNED, {"next_step": step.id, "next_due_at": opens}, None

    passed = [*due.passed, step.id]
    following = sequence.next_step(passed)
    changes: dict[str, Any] = {
        "steps_passed": passed,
        "last_step_at": now,
        "held_until": None,
        "deferred_since": None,
    }
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
