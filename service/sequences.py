"""Drip sequences: who is enrolled in which sequence.

Confirming a subscription enrolls the subscriber in the default sequence. What the
sequence's steps are and when each is due is not built yet: enrollment records the
subscriber's place so that the sequence engine can pick them up from their start.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy.orm import Session

from .db import insert_ignoring_conflicts
from .models import Enrollment, Subscriber

DEFAULT_SEQUENCE = "back-pain-tips"


def enroll(
    session: Session, subscriber: Subscriber, *, now: datetime, sequence: str = DEFAULT_SEQUENCE
) -> bool:
    """Enroll a confirmed subscriber in a sequence once; True if they were not enrolled yet."""
    return insert_ignoring_conflicts(
        session,
        Enrollment.__table__,
        {"subscriber_id": subscriber.id, "sequence": sequence, "enrolled_at": now},
    )
