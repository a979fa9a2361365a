"""Bounce and complaint rates, as mailbox providers and relays judge a sender by them: for
the last 7 and 30 days, per newsletter and per sequence step, each with its warning level.

The thresholds are the ones providers publish: Gmail and Yahoo ask bulk senders to keep
spam complaints under 0.1 % and block them past 0.3 %; relays review accounts whose hard
bounces pass a few percent (we warn at 2 %).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import case, distinct, func, or_, select
from sqlalchemy.orm import Session

from ..kinds import SEQUENCE_STEP
from ..mail import INTERNATIONAL_ADDRESSES_REFUSED
from ..models import FeedbackEvent, FeedbackType, OutboxMessage, OutboxStatus

COMPLAINT_WARN = 0.001
COMPLAINT_ALARM = 0.003
HARD_BOUNCE_WARN = 0.02


class Level(enum.StrEnum):
    OK = "ok"
    WARN = "warn"
    ALARM = "alarm"


@dataclass(frozen=True)
class Rates:
    """What one group of emails drew: sends, and the bounces and complaints about them."""

    label: str
    sent: int
    hard: int = 0
    soft: int = 0
    complaints: int = 0

    @property
    def hard_rate(self) -> float | None:
        return self.hard / self.sent if self.sent else None

    @property
    def complaint_rate(self) -> float | None:
        return self.complaints / self.sent if self.sent else None

    @property
    def hard_level(self) -> Level:
        rate = self.hard_rate
        return Level.WARN if rate is not None and rate > HARD_BOUNCE_WARN else Level.OK

    @property
    def complaint_level(self) -> Level:
        rate = self.complaint_rate
        if rate is None or rate <= COMPLAINT_WARN:
            return Level.OK
        return Level.ALARM if rate > COMPLAINT_ALARM else Level.WARN

    @property
    def level(self) -> Level:
        levels = (self.hard_level, self.complaint_level)
        if Level.ALARM in levels:
            return Level.ALARM
        return Level.WARN if Level.WARN in levels else Level.OK


def _counts_by_type() -> list:
    """Hard bounces, soft bounces and complaints, each counted once per email however many
    sources told of it (an event naming no email counts by itself)."""
    return [
        func.count(
            distinct(
                case(
                    (
                        FeedbackEvent.type == kind,
                        func.coalesce(FeedbackEvent.outbox_id, -FeedbackEvent.id),
                    )
                )
            )
        )
        for kind in (FeedbackType.HARD, FeedbackType.SOFT, FeedbackType.COMPLAINT)
    ]


def _went_out():
    """Emails that left us: accepted by the SMTP server, or refused by it for good (a
    refused email bounced as surely as one returned later)."""
    return or_(OutboxMessage.sent_at.is_not(None), OutboxMessage.status == OutboxStatus.FAILED)


def recent(session: Session, *, now: datetime, days: int) -> Rates:
    """Emails sent in the last `days` (or refused by the SMTP server), and the bounces and
    complaints received in them."""
    since = now - timedelta(days=days)
    sent = session.scalar(
        select(func.count())
        .select_from(OutboxMessage)
        .where(OutboxMessage.sent_at >= since, OutboxMessage.sent_at <= now)
    )
    # A refused email never got a sent_at, but it was sent as much as it bounced.
    sent += session.scalar(
        select(func.count())
        .select_from(FeedbackEvent)
        .where(
            FeedbackEvent.source == "smtp",
            FeedbackEvent.received_at >= since,
            FeedbackEvent.received_at <= now,
        )
    )
    hard, soft, complaints = session.execute(
        select(*_counts_by_type()).where(
            FeedbackEvent.received_at >= since, FeedbackEvent.received_at <= now
        )
    ).one()
    return Rates(f"Last {days} days", sent or 0, int(hard), int(soft), int(complaints))


def per_newsletter(session: Session, broadcast_ids: list[int]) -> dict[int, Rates]:
    """Each newsletter's sends, bounces and complaints."""
    if not broadcast_ids:
        return {}
    sent = dict(
        session.execute(
            select(OutboxMessage.broadcast_id, func.count())
            .where(
                OutboxMessage.broadcast_id.in_(broadcast_ids),
                _went_out(),
            )
            .group_by(OutboxMessage.broadcast_id)
        ).all()
    )
    heard = {
        broadcast_id: counts
        for broadcast_id, *counts in session.execute(
            select(FeedbackEvent.broadcast_id, *_counts_by_type())
            .where(FeedbackEvent.broadcast_id.in_(broadcast_ids))
            .group_by(FeedbackEvent.broadcast_id)
        )
    }
    return {
        broadcast_id: Rates(
            f"Newsletter {broadcast_id}",
            sent.get(broadcast_id, 0),
            *(int(n) for n in heard.get(broadcast_id, (0, 0, 0))),
        )
        for broadcast_id in broadcast_ids
    }


def per_step(session: Session, *, sequence: str) -> list[Rates]:
    """Each step of a sequence: its sends, bounces and complaints, by step id."""
    sent = dict(
        session.execute(
            select(OutboxMessage.sequence_step, func.count())
            .where(
                # The sequence's rows (each step's row names its sequence).
                OutboxMessage.context["sequence"].as_string() == sequence,
                OutboxMessage.kind == SEQUENCE_STEP,
                _went_out(),
            )
            .group_by(OutboxMessage.sequence_step)
        ).all()
    )
    heard = {
        step: counts
        for step, *counts in session.execute(
            select(FeedbackEvent.sequence_step, *_counts_by_type())
            .where(FeedbackEvent.kind == SEQUENCE_STEP, FeedbackEvent.sequence == sequence)
            .group_by(FeedbackEvent.sequence_step)
        )
    }
    return [
        Rates(step, sent.get(step, 0), *(int(n) for n in heard.get(step, (0, 0, 0))))
        for step in sorted(set(sent) | set(heard), key=lambda step: step or "")
    ]


def international_refused(session: Session, *, now: datetime, days: int = 30) -> int:
    """Emails the SMTP server refused in the last `days` for an international address."""
    return session.scalar(
        select(func.count())
        .select_from(OutboxMessage)
        .where(
            OutboxMessage.status == OutboxStatus.FAILED,
            OutboxMessage.created_at >= now - timedelta(days=days),
            OutboxMessage.last_error.startswith(INTERNATIONAL_ADDRESSES_REFUSED, autoescape=True),
        )
    )
