"""Bounces and complaints heard after the mail left us, and webhook tokens spent."""

from __future__ import annotations

import enum
from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    ForeignKey,
    Index,
    String,
    Text,
    text,
)
from sqlalchemy.orm import Mapped, mapped_column

from ..db import Base
from .columns import UTCDateTime, _enum


class FeedbackType(enum.StrEnum):
    HARD = "hard"  # the address does not exist or refuses mail for good
    SOFT = "soft"  # a full mailbox, a server down: SOFT_BOUNCE_LIMIT in a row make a hard one
    COMPLAINT = "complaint"  # the reader reported an email as spam


class FeedbackEvent(Base):
    """A bounce or complaint heard after the mail left us (service.feedback): from a
    provider's webhook, the bounce mailbox, or the SMTP server's own refusal."""

    __tablename__ = "feedback_events"
    __table_args__ = (
        Index("ix_feedback_events_type_received", "type", "received_at"),
        Index("ix_feedback_events_subscriber", "subscriber_id", "received_at"),
        Index(
            "ix_feedback_events_broadcast",
            "broadcast_id",
            sqlite_where=text("broadcast_id IS NOT NULL"),
            postgresql_where=text("broadcast_id IS NOT NULL"),
        ),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    # The source's own name for the event: a redelivered one is found here and ignored.
    event_key: Mapped[str] = mapped_column(String(200), unique=True)
    source: Mapped[str] = mapped_column(String(16))  # ses, sendgrid, ..., mailbox, smtp
    type: Mapped[FeedbackType] = mapped_column(_enum(FeedbackType))
    email: Mapped[str | None] = mapped_column(String(320))  # as the source reported it
    subscriber_id: Mapped[int | None] = mapped_column(
        ForeignKey("subscribers.id", ondelete="SET NULL")
    )
    # The email it was about, when the source named it, and what that email was.
    outbox_id: Mapped[int | None] = mapped_column(
        ForeignKey("outbox.id", ondelete="SET NULL"), index=True
    )
    kind: Mapped[str | None] = mapped_column(String(32))
    sequence: Mapped[str | None] = mapped_column(String(64))
    sequence_step: Mapped[str | None] = mapped_column(String(64))
    broadcast_id: Mapped[int | None] = mapped_column(
        ForeignKey("broadcasts.id", ondelete="SET NULL")
    )
    reason: Mapped[str] = mapped_column(Text, default="")
    diagnostic: Mapped[str | None] = mapped_column(String(64))  # e.g. "5.1.1"
    outcome: Mapped[str] = mapped_column(String(32))  # what was done (service.feedback)
    occurred_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    received_at: Mapped[datetime] = mapped_column(UTCDateTime)
    # The event as it came (JSON, or the message's text), for the owner to read; emptied
    # FEEDBACK_PAYLOAD_DAYS after it came.
    payload: Mapped[Any | None] = mapped_column(JSON(none_as_null=True))


class WebhookToken(Base):
    """A webhook's one-time token (Mailgun's), kept until its signed timestamp is too old
    to be accepted anyway: a token seen twice is a replay."""

    __tablename__ = "webhook_tokens"

    token: Mapped[str] = mapped_column(String(200), primary_key=True)  # "mailgun:<token>"
    fresh_until: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
