"""Erasing a subscriber (GDPR) and remembering them only as a one-way hash, so that an
import can never bring them back.

Pure domain, like service.subscriptions: takes a session and `now`, never commits.
"""

from __future__ import annotations

import hashlib
from datetime import datetime

from sqlalchemy import delete, func, or_, select, update
from sqlalchemy.orm import Session

from .db import insert_ignoring_conflicts
from .journal import record_event
from .models import (
    ConsentRecord,
    Enrollment,
    Event,
    FeedbackEvent,
    OutboxMessage,
    Subscriber,
    Suppression,
)
from .signup_input import email_key
from .subscriptions import get_subscriber, stop_mail


def suppression_hash(email: str) -> str:
    """The one-way hash an erased address is remembered by (SHA-256 of its compared form)."""
    return hashlib.sha256(f"suppressed:{email_key(email)}".encode()).hexdigest()


def is_suppressed(session: Session, email: str) -> bool:
    """Whether `email` is on the suppression list (erased, or complained): never imported."""
    return bool(suppressed(session, [email]))


def suppressed(session: Session, emails: list[str]) -> dict[str, str]:
    """Those of `emails` on the suppression list, with why: "erased" (on their request) or
    "complaint" (they reported an email as spam). One query per 500."""
    by_hash = {suppression_hash(email): email for email in emails}
    hashes = list(by_hash)
    found: dict[str, str] = {}
    for start in range(0, len(hashes), 500):
        for digest, reason in session.execute(
            select(Suppression.email_hash, Suppression.reason).where(
                Suppression.email_hash.in_(hashes[start : start + 500])
            )
        ):
            found[by_hash[digest]] = reason
    return found


def erase(session: Session, subscriber_id: int, *, now: datetime) -> str:
    """Remove a subscriber's personal data from every table (GDPR erasure); irreversible.

    What stays: a hash of the address in `suppressions`, so an import cannot bring them
    back; their events and sent emails without anything that says whose they were, so the
    dashboard's counts still add up. Returns the erased address, for the owner's message.
    """
    subscriber = get_subscriber(session, subscriber_id, for_update=True)
    address = subscriber.email
    stop_mail(session, subscriber, reason="erased", now=now)
    insert_ignoring_conflicts(
        session,
        Suppression.__table__,
        {"email_hash": suppression_hash(address), "reason": "erased", "created_at": now},
    )
    session.execute(
        update(Event)
        .where(Event.subscriber_id == subscriber_id)
        .values(subscriber_id=None, detail=None)
        .execution_options(synchronize_session=False)
    )
    session.execute(
        update(OutboxMessage)
        .where(OutboxMessage.subscriber_id == subscriber_id)
        # The dedupe key names the subscriber's id, which would tie these rows together.
        .values(subscriber_id=None, to_address="", context={}, last_error=None, dedupe_key=None)
        .execution_options(synchronize_session=False)
    )
    # Bounces and complaints keep their type and what they were about (the rates), and
    # lose the address, the server's words (which often quote it) and the raw report.
    session.execute(
        update(FeedbackEvent)
        .where(
            or_(
                FeedbackEvent.subscriber_id == subscriber_id,
                func.lower(FeedbackEvent.email) == email_key(address),
            )
        )
        .values(subscriber_id=None, email=None, reason="", payload=None)
        .execution_options(synchronize_session=False)
    )
    record_event(session, None, "erased", now=now)
    # Deleted explicitly rather than left to ON DELETE CASCADE, which SQLite applies only
    # with foreign keys switched on.
    session.execute(delete(ConsentRecord).where(ConsentRecord.subscriber_id == subscriber_id))
    session.execute(delete(Enrollment).where(Enrollment.subscriber_id == subscriber_id))
    session.execute(delete(Subscriber).where(Subscriber.id == subscriber_id))
    session.expunge(subscriber)
    return address
