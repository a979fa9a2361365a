"""Each subscriber's enrollment in a sequence: starting (or restarting) it, stopping it,
pausing and resuming it.

An enrollment row holds the steps passed so far, the step planned next and when it is due;
service.sequences.engine moves it on. Each step's email is an outbox row of its own, one
per subscriber and step, ever, found by its dedupe key: stopping or pausing takes back the
ones not yet sent.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session

from ..db import insert_ignoring_conflicts
from ..kinds import SEQUENCE_STEP
from ..models import Enrollment, EnrollmentStatus, OutboxMessage, OutboxStatus, SubscriberTag
from ..outbox.queue import Recipient
from ..tags import add as add_tags
from ..tags import finished_tag
from .definition import DripSequence


def dedupe_key(sequence: str, subscriber_id: int, step_id: str) -> str:
    """The outbox's key for one step's email to one subscriber."""
    return f"{SEQUENCE_STEP}:{sequence}:{subscriber_id}:{step_id}"


def enroll(session: Session, subscriber: Recipient, *, now: datetime, sequence: str) -> bool:
    """Start (or, after a new confirmation, restart) a subscriber's place in a sequence.

    The first step is planned by the next scheduler tick, which knows the sequence file.
    A returning subscriber carries on after the steps they already had; someone who
    finished stays finished, and so does one who left the sequence (the preference
    centre). True if an enrollment was created or reactivated.
    """
    created = insert_ignoring_conflicts(
        session,
        Enrollment.__table__,
        {
            "subscriber_id": subscriber.id,
            "sequence": sequence,
            "enrolled_at": now,
            "status": EnrollmentStatus.ACTIVE,
            "steps_passed": [],
            "next_due_at": now,
        },
    )
    if created:
        return True
    result = session.execute(
        update(Enrollment)
        .where(
            Enrollment.subscriber_id == subscriber.id,
            Enrollment.sequence == sequence,
            Enrollment.status == EnrollmentStatus.STOPPED,
            # One the reader left themselves stays left.
            Enrollment.left_at.is_(None),
        )
        .values(
            status=EnrollmentStatus.ACTIVE,
            next_step=None,
            next_due_at=now,
            resumed_at=now,
            last_step_at=now,
            held_until=None,
            deferred_since=None,
        )
        .execution_options(synchronize_session=False)
    )
    return result.rowcount == 1


def start(
    session: Session, subscriber: Recipient, sequence: DripSequence, *, now: datetime
) -> bool:
    """Enroll a reader in `sequence` (see `enroll`) unless it leaves out readers of a
    sequence they are in or finished; whether they were enrolled or taken back in."""
    if sequence.excludes and excluded(session, subscriber.id, sequence):
        return False
    return enroll(session, subscriber, now=now, sequence=sequence.name)


# Enrollments that count as "in or finished" a sequence, for `exclude`.
EXCLUDING_STATES = (EnrollmentStatus.ACTIVE, EnrollmentStatus.PAUSED, EnrollmentStatus.FINISHED)


def excluded(session: Session, subscriber_id: int, sequence: DripSequence) -> bool:
    """Whether the reader is in, or finished, a sequence that `sequence` leaves out."""
    found = session.scalar(
        select(Enrollment.id)
        .where(
            Enrollment.subscriber_id == subscriber_id,
            Enrollment.sequence.in_(sequence.excludes),
            Enrollment.status.in_(EXCLUDING_STATES),
        )
        .limit(1)
    )
    return found is not None


def _take_back_steps(
    session: Session,
    enrollment: Enrollment,
    *,
    states: tuple[OutboxStatus, ...],
    reason: str,
) -> None:
    """Cancel the enrollment's steps that are in the outbox but not sent, and count them as
    not passed, so they come again if the sequence carries on."""
    taken_back = session.scalars(
        update(OutboxMessage)
        .where(
            OutboxMessage.dedupe_key.startswith(
                dedupe_key(enrollment.sequence, enrollment.subscriber_id, "")
            ),
            OutboxMessage.status.in_(states),
        )
        # Its day slot is given up: another step may have the reader's day.
        .values(status=OutboxStatus.CANCELLED, last_error=reason, day_slot=None)
        .returning(OutboxMessage.sequence_step)
        .execution_options(synchronize_session=False)
    ).all()
    if taken_back:
        enrollment.steps_passed = [s for s in enrollment.steps_passed if s not in taken_back]


def stop(session: Session, subscriber_id: int, *, now: datetime, reason: str) -> None:
    """End a subscriber's sequences (they unsubscribed or bounced), including a step
    already claimed for sending. Sent steps stay sent; unsent ones are not counted as
    passed, so a reader who comes back gets them.

    Locking the enrollments first waits for a tick that is moving them on, so a step it
    has just queued is cancelled here too.
    """
    enrollments = session.scalars(
        select(Enrollment)
        .where(
            Enrollment.subscriber_id == subscriber_id,
            Enrollment.status.in_([EnrollmentStatus.ACTIVE, EnrollmentStatus.PAUSED]),
        )
        .with_for_update()
    ).all()
    for enrollment in enrollments:
        _take_back_steps(
            session, enrollment, states=(OutboxStatus.QUEUED, OutboxStatus.SENDING), reason=reason
        )
        _end(enrollment, now=now)


def _end(enrollment: Enrollment, *, now: datetime) -> None:
    """Stop an enrollment: nothing is due, held or waiting any more."""
    enrollment.status = EnrollmentStatus.STOPPED
    enrollment.stopped_at = now
    enrollment.next_due_at = None
    enrollment.held_until = None
    enrollment.deferred_since = None


def _enrollment(session: Session, subscriber_id: int, sequence: str) -> Enrollment | None:
    return session.scalar(
        select(Enrollment)
        .where(Enrollment.subscriber_id == subscriber_id, Enrollment.sequence == sequence)
        .with_for_update()
    )


def pause(session: Session, subscriber_id: int, *, sequence: str, now: datetime) -> bool:
    """Hold a subscriber's sequence. A step queued but not sent is taken back; one already
    on its way to the mail server goes."""
    enrollment = _enrollment(session, subscriber_id, sequence)
    if enrollment is None or enrollment.status is not EnrollmentStatus.ACTIVE:
        return False
    _take_back_steps(session, enrollment, states=(OutboxStatus.QUEUED,), reason="sequence paused")
    enrollment.status = EnrollmentStatus.PAUSED
    enrollment.paused_at = now
    enrollment.next_due_at = None
    enrollment.deferred_since = None
    return True


def resume(session: Session, subscriber_id: int, *, sequence: str, now: datetime) -> bool:
    """Carry on with the next step, timed afresh from now: no burst of missed emails."""
    enrollment = _enrollment(session, subscriber_id, sequence)
    if enrollment is None or enrollment.status is not EnrollmentStatus.PAUSED:
        return False
    enrollment.status = EnrollmentStatus.ACTIVE
    enrollment.resumed_at = now
    enrollment.last_step_at = now
    enrollment.next_step = None  # the next tick plans it from `now`
    enrollment.next_due_at = now
    if enrollment.held_until is not None and enrollment.held_until <= now:
        enrollment.held_until = None  # the reader's pause is over: timed from the resume
    elif enrollment.held_until is not None:
        enrollment.next_due_at = enrollment.held_until  # still within the reader's pause
    return True


# --- the reader's own choices (service.preferences) ------------------------------------


def _enrollments(
    session: Session, subscriber_id: int, *states: EnrollmentStatus
) -> list[Enrollment]:
    """The subscriber's enrollments in those states, locked (a tick may be moving them)."""
    return list(
        session.scalars(
            select(Enrollment)
            .where(Enrollment.subscriber_id == subscriber_id, Enrollment.status.in_(states))
            .order_by(Enrollment.id)
            .with_for_update()
        )
    )


def hold(session: Session, subscriber_id: int, *, until: datetime, reason: str) -> None:
    """Hold every sequence of a reader until `until`: steps queued but not sent are taken
    back, and the engine looks at the enrollment again only then, planning the next step
    for the first sending morning after it. A sequence the owner paused is held as well,
    should the owner resume it sooner. A sequence that finished with its last step still
    queued gets that step back, after the pause."""
    enrollments = _enrollments(
        session,
        subscriber_id,
        EnrollmentStatus.ACTIVE,
        EnrollmentStatus.PAUSED,
        EnrollmentStatus.FINISHED,
    )
    for enrollment in enrollments:
        if enrollment.status is not EnrollmentStatus.PAUSED:  # the owner's pause stays as it is
            passed = len(enrollment.steps_passed)
            _take_back_steps(session, enrollment, states=(OutboxStatus.QUEUED,), reason=reason)
            if enrollment.status is EnrollmentStatus.FINISHED:
                if len(enrollment.steps_passed) == passed:
                    continue  # finished and sent: nothing to hold
                enrollment.status = EnrollmentStatus.ACTIVE
                enrollment.finished_at = None
                session.execute(
                    delete(SubscriberTag).where(
                        SubscriberTag.subscriber_id == subscriber_id,
                        SubscriberTag.tag == finished_tag(enrollment.sequence),
                    )
                )
            enrollment.next_step = None
            enrollment.next_due_at = until
        enrollment.held_until = until
        enrollment.deferred_since = None  # waiting for the pause, not for the cap


def release(session: Session, subscriber_id: int, *, now: datetime) -> None:
    """End a hold early: the next step goes on the first sending morning from now."""
    for enrollment in _enrollments(
        session, subscriber_id, EnrollmentStatus.ACTIVE, EnrollmentStatus.PAUSED
    ):
        if enrollment.held_until is None:
            continue
        enrollment.held_until = now
        if enrollment.status is EnrollmentStatus.ACTIVE:
            enrollment.next_step = None
            enrollment.next_due_at = now


def leave(session: Session, subscriber_id: int, *, sequence: str, now: datetime) -> bool:
    """The reader leaves one sequence for good (their other mail carries on); a step
    already claimed for sending is taken back too. False if they were not in it."""
    enrollment = _enrollment(session, subscriber_id, sequence)
    if enrollment is None or enrollment.status not in (
        EnrollmentStatus.ACTIVE,
        EnrollmentStatus.PAUSED,
    ):
        return False
    _take_back_steps(
        session,
        enrollment,
        states=(OutboxStatus.QUEUED, OutboxStatus.SENDING),
        reason="the reader left the sequence",
    )
    _end(enrollment, now=now)
    enrollment.left_at = now
    enrollment.next_step = None
    return True


def replan(session: Session, subscriber_id: int, *, now: datetime) -> None:
    """Have the next tick plan each running, unheld sequence's next step afresh (the
    reader moved to another time zone); a held one is planned when its hold ends."""
    for enrollment in _enrollments(session, subscriber_id, EnrollmentStatus.ACTIVE):
        enrollment.next_step = None
        if enrollment.held_until is None or enrollment.held_until <= now:
            enrollment.next_due_at = now
        else:
            enrollment.next_due_at = enrollment.held_until


@dataclass(frozen=True)
class _Reader:
    id: int
    email: str


def after_finishing(
    session: Session,
    finished: list[tuple[int, str, str]],
    loaded: Mapping[str, DripSequence],
    *,
    now: datetime,
) -> None:
    """Readers who finished a sequence, as (subscriber id, email, sequence): they carry
    `finished:<sequence>`, and start the sequence it names `then` (unless that one leaves
    them out, or they left it)."""
    for subscriber_id, email, name in finished:
        add_tags(session, subscriber_id, [finished_tag(name)], added_by="sequence", now=now)
        following = loaded[name].then if name in loaded else None
        if following is not None and following in loaded:
            start(session, _Reader(subscriber_id, email), loaded[following], now=now)
