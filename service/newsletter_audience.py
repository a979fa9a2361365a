"""Who a newsletter is for: every confirmed reader, or the part the owner chose (a source,
the drip sequence finished or not), as one query the send turns into outbox rows and the
compose page counts."""

from __future__ import annotations

from sqlalchemy import Select, func, select
from sqlalchemy.orm import Session

from .models import Broadcast, Enrollment, EnrollmentStatus, Subscriber, SubscriberStatus

SEQUENCE_CHOICES = {
    "": "everyone confirmed",
    "finished": "only those who finished the sequence",
    "not_finished": "only those still in the sequence (or never in it)",
}


def recipients(broadcast: Broadcast, sequence: str) -> Select:
    """Confirmed subscribers the broadcast is for, as (subscriber id, address) rows."""
    query = select(Subscriber.id, Subscriber.email).where(
        Subscriber.status == SubscriberStatus.CONFIRMED
    )
    if broadcast.audience_source:
        query = query.where(Subscriber.source == broadcast.audience_source)
    if broadcast.audience_sequence:
        finished = (
            select(Enrollment.id)
            .where(
                Enrollment.subscriber_id == Subscriber.id,
                Enrollment.sequence == sequence,
                Enrollment.status == EnrollmentStatus.FINISHED,
            )
            .exists()
        )
        query = query.where(finished if broadcast.audience_sequence == "finished" else ~finished)
    return query


def size(session: Session, broadcast: Broadcast, *, sequence: str) -> int:
    """How many would get it if it went now."""
    return session.scalar(
        select(func.count()).select_from(recipients(broadcast, sequence).subquery())
    )
