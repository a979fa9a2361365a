"""One subscriber: everything held about them, for their page on the owner's desk and for
their data export (a GDPR access request)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from .models import (
    Click,
    ConsentRecord,
    Enrollment,
    Event,
    FeedbackEvent,
    MagnetRequest,
    OutboxMessage,
    Subscriber,
    SubscriberTag,
    TrackedLink,
)


@dataclass
class History:
    """Everything we hold about one subscriber, for their page and their data export."""

    subscriber: Subscriber
    consents: list[ConsentRecord]
    events: list[Event]
    emails: list[OutboxMessage]
    enrollments: list[Enrollment] = field(default_factory=list)
    clicks: list[tuple[str, datetime]] = field(default_factory=list)  # (link target, when)
    feedback: list[FeedbackEvent] = field(default_factory=list)  # bounces and complaints
    tags: list[SubscriberTag] = field(default_factory=list)  # by name
    magnets: list[MagnetRequest] = field(default_factory=list)  # the lead magnets asked for


def history(session: Session, subscriber_id: int) -> History | None:
    subscriber = session.get(Subscriber, subscriber_id)
    if subscriber is None:
        return None

    def rows_of(model: Any) -> list[Any]:
        """The subscriber's rows of a table with a `subscriber_id`, oldest first."""
        statement = select(model).where(model.subscriber_id == subscriber_id).order_by(model.id)
        return list(session.scalars(statement))

    return History(
        subscriber=subscriber,
        consents=rows_of(ConsentRecord),
        events=rows_of(Event),
        emails=rows_of(OutboxMessage),
        enrollments=rows_of(Enrollment),
        feedback=rows_of(FeedbackEvent),
        tags=list(
            session.scalars(
                select(SubscriberTag)
                .where(SubscriberTag.subscriber_id == subscriber_id)
                .order_by(SubscriberTag.tag)
            )
        ),
        magnets=list(
            session.scalars(
                select(MagnetRequest)
                .where(MagnetRequest.subscriber_id == subscriber_id)
                .order_by(MagnetRequest.requested_at)
            )
        ),
        clicks=[
            (url, at)
            for url, at in session.execute(
                select(TrackedLink.url, Click.at)
                .join(Click, Click.link_id == TrackedLink.id)
                .where(Click.subscriber_id == subscriber_id)
                .order_by(Click.id)
            )
        ],
    )


def _stamp(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


def personal_data(record: History) -> dict[str, Any]:
    """What we hold about a subscriber, as JSON-ready data (a GDPR access request)."""
    subscriber = record.subscriber
    return {
        "subscriber": {
            "email": subscriber.email,
            "first_name": subscriber.first_name,
            "status": subscriber.status.value,
            "time_zone": subscriber.time_zone,
            "source": subscriber.source,
            "signed_up_at": _stamp(subscriber.created_at),
            "confirmed_at": _stamp(subscriber.confirmed_at),
            "unsubscribed_at": _stamp(subscriber.unsubscribed_at),
            "bounced_at": _stamp(subscriber.bounced_at),
        },
        "consents": [
            {
                "action": consent.action,
                "at": _stamp(consent.at),
                "ip": consent.ip,
                "user_agent": consent.user_agent,
                "source": consent.source,
                "text": consent.text,
                "text_version": consent.text_version,
            }
            for consent in record.consents
        ],
        "events": [
            {"kind": event.kind, "at": _stamp(event.at), "detail": event.detail}
            for event in record.events
        ],
        "emails": [
            {
                "kind": email.kind,
                "template": email.template,
                "sequence_step": email.sequence_step,
                "status": email.status.value,
                "queued_at": _stamp(email.created_at),
                "sent_at": _stamp(email.sent_at),
            }
            for email in record.emails
        ],
        "clicks": [{"link": url, "at": _stamp(at)} for url, at in record.clicks],
        "bounces_and_complaints": [
            {
                "type": event.type.value,
                "source": event.source,
                "received_at": _stamp(event.received_at),
                "occurred_at": _stamp(event.occurred_at),
                "address": event.email,
                "reason": event.reason,
                "diagnostic": event.diagnostic,
                "email_kind": event.kind,
                "sequence_step": event.sequence_step,
                "newsletter": event.broadcast_id,
                "outcome": event.outcome,
                "report": event.payload,
            }
            for event in record.feedback
        ],
        "sequences": [
            {
                "sequence": enrollment.sequence,
                "status": enrollment.status.value,
                "enrolled_at": _stamp(enrollment.enrolled_at),
                "steps_received": list(enrollment.steps_passed),
                "next_step": enrollment.next_step,
                "next_due_at": _stamp(enrollment.next_due_at),
            }
            for enrollment in record.enrollments
        ],
        "tags": [
            {"tag": tag.tag, "added_by": tag.added_by, "added_at": _stamp(tag.added_at)}
            for tag in record.tags
        ],
        "lead_magnets": [
            {
                "magnet": request.magnet,
                "requested_at": _stamp(request.requested_at),
                "delivered_at": _stamp(request.delivered_at),
                "source": request.source,
            }
            for request in record.magnets
        ],
        "choices": {
            "paused_until": _stamp(subscriber.paused_until),
            "newsletters": subscriber.wants_newsletters,
        },
    }
