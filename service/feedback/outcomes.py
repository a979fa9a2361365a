"""The one place a bounce or complaint becomes an outcome.

- A hard bounce marks the address bounced and cancels everything queued to it.
- A soft bounce is counted; SOFT_BOUNCE_LIMIT of them within SOFT_BOUNCE_WINDOW_DAYS, with
  no email delivered to them in between, count as a hard bounce.
- A complaint unsubscribes the reader (an objection ends all marketing, GDPR Art. 21) and
  puts the address on the suppression list, so no import brings it back.
- A newsletter whose first sends bounce or draw complaints past the policy's rates pauses
  itself (the circuit breaker), and says why.

Each event is written once, under its source's own name for it (`event_key`): a
redelivered webhook or a message read twice from the mailbox changes nothing twice. Pure
domain: takes a session and `now`, never commits.
"""

from __future__ import annotations

import enum
import hashlib
import logging
import math
from dataclasses import dataclass
from datetime import datetime, timedelta
from email.utils import parseaddr
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from .. import broadcasts, subscriptions
from ..db import insert_ignoring_conflicts
from ..erasure import suppression_hash
from ..message_ids import MessageIds, stamp_of
from ..models import (
    Broadcast,
    BroadcastStatus,
    FeedbackEvent,
    FeedbackType,
    OutboxMessage,
    OutboxStatus,
    Subscriber,
    SubscriberStatus,
    Suppression,
)
from ..signup_input import email_key

logger = logging.getLogger(__name__)

MAX_REASON = 2000
MAX_KEY = 200  # FeedbackEvent.event_key's length
# A report that names no email of ours is put down to the last one sent to its address,
# if that went out within this long before it.
ATTRIBUTION_WINDOW = timedelta(days=7)


@dataclass(frozen=True)
class Report:
    """One bounce or complaint, as a source heard it."""

    source: str  # ses, sendgrid, mailgun, postmark, bounce (the generic webhook), mailbox, smtp
    event_key: str  # unique for the event at its source: the same event, the same key
    type: FeedbackType
    email: str | None = None  # the address it is about
    # Text that may carry our mark (service.message_ids): the Message-ID the source
    # quotes, a VERP address. Checked before it is believed.
    reference: str | None = None
    outbox_id: int | None = None  # trusted: only for the SMTP refusal seen during dispatch
    reason: str = ""  # what the source said, for the owner
    diagnostic: str | None = None  # a status code, e.g. "5.1.1" or "550"
    occurred_at: datetime | None = None
    payload: Any = None  # the event as it came (JSON-able), kept FEEDBACK_PAYLOAD_DAYS
    # Whether the source proved who sent it (a webhook's signature or password, our own
    # SMTP session). Anyone can mail the bounce address: a report from the mailbox is
    # acted on only when our mark ties it to an email we sent.
    authenticated: bool = True


class Outcome(enum.StrEnum):
    DUPLICATE = "duplicate"  # heard before; nothing changed
    BOUNCED = "bounced"
    SOFT_COUNTED = "soft bounce counted"
    SOFT_LIMIT = "bounced after soft bounces"
    UNSUBSCRIBED = "unsubscribed"
    SUPPRESSED = "suppressed"  # a complaint from an address not on the list
    NO_CHANGE = "no change"  # already bounced or unsubscribed
    UNVERIFIED = "not verified"  # from the mailbox without our mark: kept, not acted on
    UNKNOWN = "unknown address"


@dataclass(frozen=True)
class FeedbackPolicy:
    soft_limit: int = 3
    soft_window: timedelta = timedelta(days=15)
    # The circuit breaker: judged on a newsletter's first sends (the smaller of the two).
    breaker_sends: int = 1000
    breaker_share: float = 0.10
    pause_bounce_rate: float = 0.05
    pause_complaint_rate: float = 0.005


@dataclass(frozen=True)
class Recorded:
    """What recording one report did."""

    outcome: Outcome
    event_id: int | None = None  # None for a duplicate
    subscriber_id: int | None = None
    paused_broadcast: int | None = None  # the newsletter the breaker paused, if it did


class Feedback:
    """Records reports and acts on them, under one policy and one secret key."""

    def __init__(self, ids: MessageIds, policy: FeedbackPolicy | None = None) -> None:
        self.ids = ids
        self.policy = policy or FeedbackPolicy()

    def record(self, session: Session, report: Report, *, now: datetime) -> Recorded:
        """Write the report down and act on it, once; a repeat changes nothing."""
        row = self._outbox_row(session, report)
        subscriber = self._subscriber(session, report, row)
        verified = report.authenticated or row is not None
        if row is None and subscriber is not None and verified:
            row = self._last_sent_to(session, subscriber.id, before=report.occurred_at or now)
        # The email's own address when we know the email: a report may redact or mangle it.
        address = (row.to_address if row else None) or parseaddr(_text(report.email))[1]
        event_id = insert_ignoring_conflicts(
            session,
            FeedbackEvent.__table__,
            {
                "event_key": _key(report),
                "source": report.source,
                "type": report.type.value,
                "email": (address or None) and address[:320],
                "subscriber_id": subscriber.id if subscriber else None,
                "outbox_id": row.id if row else None,
                "kind": row.kind if row else None,
                "sequence": (row.context.get("sequence") if row and row.sequence_step else None),
                "sequence_step": row.sequence_step if row else None,
                "broadcast_id": row.broadcast_id if row else None,
                "reason": _text(report.reason)[:MAX_REASON],
                "diagnostic": _text(report.diagnostic)[:64] or None,
                "outcome": "",
                "occurred_at": report.occurred_at,
                "received_at": now,
                "payload": report.payload,
            },
            returning=FeedbackEvent.id,
        )
        if event_id is None:
            return Recorded(Outcome.DUPLICATE)
        if verified:
            outcome = self._act(session, report, subscriber, address, now=now)
        else:
            outcome = Outcome.UNVERIFIED
        session.execute(
            update(FeedbackEvent).where(FeedbackEvent.id == event_id).values(outcome=outcome)
        )
        paused = None
        if (
            verified
            and row is not None
            and row.broadcast_id is not None
            and report.type is not FeedbackType.SOFT
        ):
            paused = self.check_breaker(session, row.broadcast_id, now=now, sent_at=row.sent_at)
        logger.info(
            "%s %s from %s: %s", report.source, report.type.value, address or "?", outcome.value
        )
        return Recorded(outcome, event_id, subscriber.id if subscriber else None, paused)

    def _outbox_row(self, session: Session, report: Report) -> OutboxMessage | None:
        if report.outbox_id is not None:
            return session.get(OutboxMessage, report.outbox_id)
        ref = self.ids.find(report.reference or "")
        if ref is None:
            return None
        row = session.get(OutboxMessage, ref.outbox_id)
        # The tag was ours; the stamp says it is this database's row, not another's.
        if row is None or stamp_of(row.created_at) != ref.stamp:
            return None
        return row

    @staticmethod
    def _subscriber(
        session: Session, report: Report, row: OutboxMessage | None
    ) -> Subscriber | None:
        if row is not None and row.subscriber_id is not None:
            return session.get(Subscriber, row.subscriber_id)
        address = parseaddr(_text(report.email))[1]
        if not address:
            return None
        return session.scalar(select(Subscriber).where(Subscriber.email_key == email_key(address)))

    @staticmethod
    def _last_sent_to(
        session: Session, subscriber_id: int, *, before: datetime
    ) -> OutboxMessage | None:
        return session.scalar(
            select(OutboxMessage)
            .where(
                OutboxMessage.subscriber_id == subscriber_id,
                OutboxMessage.status == OutboxStatus.SENT,
                OutboxMessage.sent_at <= before,
                OutboxMessage.sent_at > before - ATTRIBUTION_WINDOW,
            )
            .order_by(OutboxMessage.sent_at.desc(), OutboxMessage.id.desc())
            .limit(1)
        )

    def _act(
        self,
        session: Session,
        report: Report,
        subscriber: Subscriber | None,
        address: str | None,
        *,
        now: datetime,
    ) -> Outcome:
        if report.type is FeedbackType.COMPLAINT:
            if address:
                insert_ignoring_conflicts(
                    session,
                    Suppression.__table__,
                    {
                        "email_hash": suppression_hash(address),
                        "reason": "complaint",
                        "created_at": now,
                    },
                )
            if subscriber is None:
                return Outcome.SUPPRESSED if address else Outcome.UNKNOWN
            if subscriber.status is SubscriberStatus.UNSUBSCRIBED:
                return Outcome.NO_CHANGE
            subscriptions.unsubscribe(session, subscriber.id, via="complaint", now=now)
            return Outcome.UNSUBSCRIBED
        if subscriber is None:
            return Outcome.UNKNOWN
        if subscriber.status in (SubscriberStatus.BOUNCED, SubscriberStatus.UNSUBSCRIBED):
            return Outcome.NO_CHANGE
        reason = report.reason or f"{report.type.value} bounce reported by {report.source}"
        if report.type is FeedbackType.HARD:
            subscriptions.mark_bounced(session, subscriber.id, reason=reason, now=now)
            return Outcome.BOUNCED
        streak = self.soft_streak(session, subscriber.id, now=now)
        if streak < self.policy.soft_limit:
            return Outcome.SOFT_COUNTED
        subscriptions.mark_bounced(
            session,
            subscriber.id,
            reason=f"{streak} soft bounces in {self.policy.soft_window.days} days; last: {reason}",
            now=now,
        )
        return Outcome.SOFT_LIMIT

    def soft_streak(self, session: Session, subscriber_id: int, *, now: datetime) -> int:
        """Emails soft-bounced within the window since the last email that got through: one
        sent before the latest soft-bounced email, that nothing came back for."""
        since = now - self.policy.soft_window
        bounces = session.execute(
            select(FeedbackEvent.outbox_id, OutboxMessage.sent_at, FeedbackEvent.received_at)
            .outerjoin(OutboxMessage, OutboxMessage.id == FeedbackEvent.outbox_id)
            .where(
                FeedbackEvent.subscriber_id == subscriber_id,
                FeedbackEvent.type == FeedbackType.SOFT,
                FeedbackEvent.received_at >= since,
            )
        ).all()
        if not bounces:
            return 0
        # When each bounced email left us (when the bounce came, if it names none). An
        # email counts once, however many of its retries the source reported.
        by_email = {
            outbox_id if outbox_id is not None else f"event {n}": sent_at or received_at
            for n, (outbox_id, sent_at, received_at) in enumerate(bounces)
        }
        sent = list(by_email.values())
        came_back = select(FeedbackEvent.outbox_id).where(
            FeedbackEvent.subscriber_id == subscriber_id, FeedbackEvent.outbox_id.is_not(None)
        )
        delivered = session.scalar(
            select(func.max(OutboxMessage.sent_at)).where(
                OutboxMessage.subscriber_id == subscriber_id,
                OutboxMessage.status == OutboxStatus.SENT,
                OutboxMessage.sent_at >= since,
                OutboxMessage.sent_at < max(sent),
                OutboxMessage.id.not_in(came_back),
            )
        )
        return sum(1 for moment in sent if delivered is None or moment > delivered)

    def check_breaker(
        self, session: Session, broadcast_id: int, *, now: datetime, sent_at: datetime | None = None
    ) -> int | None:
        """Pause a sending newsletter whose first sends bounce or draw complaints past the
        policy's rates; returns its id if it paused it now. `sent_at`: when the email the
        new event is about went out (an email past the first sends cannot change them)."""
        broadcast = session.get(Broadcast, broadcast_id)
        if (
            broadcast is None
            or broadcast.status is not BroadcastStatus.SENDING
            or broadcast.breaker_overridden
        ):
            return None
        policy = self.policy
        sample = max(
            1, min(policy.breaker_sends, math.ceil(broadcast.recipients * policy.breaker_share))
        )
        # When the last of the first sends went out (ix_outbox_broadcast: `sample` entries).
        last_of_sample = session.scalar(
            select(OutboxMessage.sent_at)
            .where(OutboxMessage.broadcast_id == broadcast_id, OutboxMessage.sent_at.is_not(None))
            .order_by(OutboxMessage.sent_at)
            .offset(sample - 1)
            .limit(1)
        )
        # An email the server refused outright has no sent_at: it counts from when it bounced.
        if last_of_sample is not None and (sent_at or now) > last_of_sample:
            return None
        counted = (
            select(FeedbackEvent.type, func.count(func.distinct(FeedbackEvent.outbox_id)))
            .join(OutboxMessage, OutboxMessage.id == FeedbackEvent.outbox_id)
            .where(
                FeedbackEvent.broadcast_id == broadcast_id,
                FeedbackEvent.type != FeedbackType.SOFT,
            )
            .group_by(FeedbackEvent.type)
        )
        if last_of_sample is not None:
            when = func.coalesce(OutboxMessage.sent_at, FeedbackEvent.received_at)
            counted = counted.where(when <= last_of_sample)
        counts = dict(session.execute(counted).all())
        hard, complaints = counts.get(FeedbackType.HARD, 0), counts.get(FeedbackType.COMPLAINT, 0)
        if hard / sample > policy.pause_bounce_rate:
            why = (
                f"{hard} of its first {sample} emails bounced ({hard / sample:.1%}, "
                f"over {policy.pause_bounce_rate:.1%})"
            )
        elif complaints / sample > policy.pause_complaint_rate:
            why = (
                f"{complaints} of its first {sample} readers reported it as spam "
                f"({complaints / sample:.1%}, over {policy.pause_complaint_rate:.1%})"
            )
        else:
            return None
        # Locked only now, so the events that cannot trip it never wait for each other.
        session.refresh(broadcast, with_for_update=True)
        if not broadcasts.pause(session, broadcast_id, now=now):
            return None  # paused or cancelled meanwhile
        broadcast.pause_reason = (
            f"Paused by itself: {why}. Check the list, then resume or cancel it."
        )
        logger.warning("newsletter %d paused itself: %s", broadcast_id, why)
        return broadcast_id


def _text(value: str | None) -> str:
    """Text as the database takes it: PostgreSQL refuses NUL in a text column."""
    return (value or "").replace("\x00", "")


def _key(report: Report) -> str:
    """The event's key as stored: hashed, not cut, when too long (two keys stay two)."""
    key = _text(report.event_key)
    if len(key) <= MAX_KEY:
        return key
    return f"{report.source}:sha256:{hashlib.sha256(key.encode()).hexdigest()}"
