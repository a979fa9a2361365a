"""The reader's own choices, made from the preference centre every email links to: pause
all email for a while, leave one sequence, newsletters off or on, a new first name or time
zone, or unsubscribe from everything.

Pure domain: functions take (session, subscriber id, ..., now), change rows, record an
event for the subscriber's history (which the owner's desk shows) and never commit. What
the reader asked for (a confirmation, a magnet's download link) is never held back.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from . import kinds, signup_input, subscriptions
from .journal import record_event
from .models import (
    Enrollment,
    OutboxMessage,
    OutboxStatus,
    Subscriber,
    SubscriberStatus,
)
from .sequences import enrollments
from .sequences.definition import STEP_ID

VIA = "preferences"
PAUSE_WEEKS = (2, 4)


class PreferenceError(ValueError):
    """The change cannot be made; `errors` maps each field to a sentence for the reader.
    Nothing was changed."""

    def __init__(self, errors: dict[str, str]) -> None:
        super().__init__("; ".join(f"{field}: {message}" for field, message in errors.items()))
        self.errors = errors


@dataclass(frozen=True)
class Preferences:
    """What the preference centre shows a reader."""

    subscriber: Subscriber
    enrollments: list[Enrollment]
    paused_until: datetime | None  # only while the pause lasts

    @property
    def receiving(self) -> bool:
        """Whether they get mail at all, so pausing or choosing mail makes sense."""
        return self.subscriber.status is SubscriberStatus.CONFIRMED


def preferences_of(session: Session, subscriber_id: int, *, now: datetime) -> Preferences:
    """The reader's choices and sequences; UnknownSubscriber if erased."""
    subscriber = subscriptions.get_subscriber(session, subscriber_id)
    rows = session.scalars(
        select(Enrollment).where(Enrollment.subscriber_id == subscriber_id).order_by(Enrollment.id)
    ).all()
    until = subscriber.paused_until
    return Preferences(subscriber, list(rows), until if until is not None and until > now else None)


def _receiving(session: Session, subscriber_id: int) -> Subscriber:
    """The subscriber, locked, if they get mail; PreferenceError otherwise."""
    subscriber = subscriptions.get_subscriber(session, subscriber_id, for_update=True)
    if subscriber.status is not SubscriberStatus.CONFIRMED:
        raise PreferenceError({"status": "You are not receiving our emails at the moment."})
    return subscriber


def _cancel_newsletters(session: Session, subscriber_id: int, *, reason: str) -> int:
    """Take back newsletters queued for the reader. A newsletter is one-off: it is not
    kept for later, where it would arrive out of date."""
    result = session.execute(
        update(OutboxMessage)
        .where(
            OutboxMessage.subscriber_id == subscriber_id,
            OutboxMessage.kind == kinds.NEWSLETTER,
            OutboxMessage.status == OutboxStatus.QUEUED,
        )
        .values(status=OutboxStatus.CANCELLED, last_error=reason)
        .execution_options(synchronize_session=False)
    )
    return result.rowcount


def pause_all(session: Session, subscriber_id: int, weeks: int, *, now: datetime) -> Subscriber:
    """No sequence email or newsletter for `weeks` weeks. Sequences carry on afterwards
    from where the reader stands, the next step on the first sending morning after the
    pause and the rest timed from it: no burst of what would have come meanwhile."""
    if weeks not in PAUSE_WEEKS:
        raise PreferenceError({"weeks": "Choose a pause of 2 or 4 weeks."})
    subscriber = _receiving(session, subscriber_id)
    until = now + timedelta(weeks=weeks)
    subscriber.paused_until = until
    enrollments.hold(session, subscriber_id, until=until, reason="paused by the reader")
    _cancel_newsletters(session, subscriber_id, reason="paused by the reader")
    record_event(
        session,
        subscriber_id,
        "paused_email",
        now=now,
        detail={"weeks": weeks, "until": until.isoformat(), "via": VIA},
    )
    return subscriber


def resume_now(session: Session, subscriber_id: int, *, now: datetime) -> Subscriber:
    """End a pause early; sequences carry on from the next sending morning."""
    subscriber = _receiving(session, subscriber_id)
    if subscriber.paused_until is None or subscriber.paused_until <= now:
        return subscriber
    subscriber.paused_until = None
    enrollments.release(session, subscriber_id, now=now)
    record_event(session, subscriber_id, "resumed_email", now=now, detail={"via": VIA})
    return subscriber


def leave_sequence(
    session: Session, subscriber_id: int, sequence: str, *, now: datetime
) -> Subscriber:
    """Leave one sequence for good; newsletters and other sequences are unchanged."""
    subscriber = _receiving(session, subscriber_id)
    # Only a sequence name is looked up (a NUL, say, is refused by PostgreSQL itself).
    if not STEP_ID.fullmatch(sequence) or not enrollments.leave(
        session, subscriber_id, sequence=sequence, now=now
    ):
        raise PreferenceError({"sequence": "You are not in that series any more."})
    record_event(
        session, subscriber_id, "left_sequence", now=now, detail={"sequence": sequence, "via": VIA}
    )
    return subscriber


def set_newsletters(
    session: Session, subscriber_id: int, wanted: bool, *, now: datetime
) -> Subscriber:
    """Newsletters on or off; sequences carry on either way."""
    subscriber = _receiving(session, subscriber_id)
    if subscriber.wants_newsletters == wanted:
        return subscriber
    subscriber.wants_newsletters = wanted
    if not wanted:
        _cancel_newsletters(session, subscriber_id, reason="newsletters turned off by the reader")
    kind = "newsletters_on" if wanted else "newsletters_off"
    record_event(session, subscriber_id, kind, now=now, detail={"via": VIA})
    return subscriber


def change_details(
    session: Session,
    subscriber_id: int,
    first_name: str,
    time_zone: str,
    *,
    now: datetime,
) -> Subscriber:
    """A new first name and time zone, checked as a signup's are; a zone the zone database
    does not know is refused (a signup falls back to the default instead, since there the
    browser, not the reader, chose it). A new zone re-plans the next sequence step in it.

    The event names the fields changed, never the name itself (the history is kept longer
    than a name need be, and the row holds it).
    """
    errors: dict[str, str] = {}
    name: str | None = None
    try:
        name = signup_input.clean_name(first_name)
    except ValueError as exc:
        errors["first_name"] = str(exc)
    zone = time_zone.strip()
    if zone not in signup_input.known_time_zones():
        errors["time_zone"] = "Please choose your time zone from the list, e.g. Europe/Berlin."
    if errors:
        raise PreferenceError(errors)
    subscriber = subscriptions.get_subscriber(session, subscriber_id, for_update=True)
    changed = []
    if subscriber.first_name != name:
        subscriber.first_name = name
        changed.append("first_name")
    if subscriber.time_zone != zone:
        subscriber.time_zone = zone
        changed.append("time_zone")
        enrollments.replan(session, subscriber_id, now=now)
    if changed:
        detail: dict[str, object] = {"fields": changed, "via": VIA}
        if "time_zone" in changed:
            detail["time_zone"] = zone
        record_event(session, subscriber_id, "details_changed", now=now, detail=detail)
    return subscriber


def unsubscribe_all(session: Session, subscriber_id: int, *, now: datetime) -> Subscriber:
    """Unsubscribe from everything, as the unsubscribe link does."""
    subscriber = subscriptions.unsubscribe(session, subscriber_id, via=VIA, now=now)
    if subscriber is None:
        raise subscriptions.UnknownSubscriber(subscriber_id)
    return subscriber
