"""Newsletters, and the tracked links in every email with their clicks."""

from __future__ import annotations

import enum
from datetime import datetime

from sqlalchemy import (
    JSON,
    Boolean,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
)
from sqlalchemy.orm import Mapped, mapped_column

from ..db import Base
from .columns import UTCDateTime, _enum


class BroadcastStatus(enum.StrEnum):
    DRAFT = "draft"
    SCHEDULED = "scheduled"  # waits for scheduled_at; the scheduler then queues its emails
    SENDING = "sending"  # its outbox rows are being written (in chunks), or all are
    PAUSED = "paused"  # its queued emails are held
    SENT = "sent"  # nothing of it is left to send
    CANCELLED = "cancelled"


class Broadcast(Base):
    """A one-off newsletter to all confirmed subscribers or a part of them."""

    __tablename__ = "broadcasts"
    __table_args__ = (Index("uq_broadcasts_slug", "slug", unique=True),)

    id: Mapped[int] = mapped_column(primary_key=True)
    subject: Mapped[str] = mapped_column(String(200))
    body: Mapped[str] = mapped_column(Text)  # Markdown
    status: Mapped[BroadcastStatus] = mapped_column(
        _enum(BroadcastStatus), default=BroadcastStatus.DRAFT, index=True
    )
    # Who gets it: confirmed subscribers, narrowed by these (empty: no narrowing).
    audience_source: Mapped[str] = mapped_column(String(100), default="")
    audience_sequence: Mapped[str] = mapped_column(String(16), default="")
    # Tags: readers with any of `include_tags` (or all of them, `tags_match` "all"), and
    # none of `exclude_tags`. Empty lists narrow nothing.
    include_tags: Mapped[list[str]] = mapped_column(JSON, default=list)
    exclude_tags: Mapped[list[str]] = mapped_column(JSON, default=list)
    tags_match: Mapped[str] = mapped_column(String(8), default="any")
    # Whether the email starts with "Hi <first name>," (the owner may greet in the body).
    greeting: Mapped[bool] = mapped_column(Boolean, default=True)
    # Shown in the public archive (/archive/<slug>) once sent.
    public: Mapped[bool] = mapped_column(Boolean, default=False)
    slug: Mapped[str | None] = mapped_column(String(120))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)
    scheduled_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    recipients: Mapped[int] = mapped_column(Integer, default=0)
    # The send's audience is fixed when it starts: readers up to the highest subscriber id
    # then (`audience_through`); their rows are written in chunks of subscriber ids, and
    # `expanded_through` is the last id written (service.broadcast_expansion). Fully queued
    # once the two are equal (both 0 before it starts, and for a send written before chunks).
    audience_through: Mapped[int] = mapped_column(Integer, default=0)
    expanded_through: Mapped[int] = mapped_column(Integer, default=0)
    # Why it is paused, when it paused itself (service.feedback's circuit breaker); and
    # whether the owner resumed it after that, which ends the breaker's watch over it.
    pause_reason: Mapped[str | None] = mapped_column(Text)
    breaker_overridden: Mapped[bool] = mapped_column(Boolean, default=False)


class TrackedLink(Base):
    """A link in an email, stored here: the redirect looks it up by id and goes only to a
    target stored by us (never an open redirect)."""

    __tablename__ = "links"

    id: Mapped[int] = mapped_column(primary_key=True)
    url: Mapped[str] = mapped_column(Text)
    url_hash: Mapped[str] = mapped_column(String(64), unique=True)  # SHA-256 of url
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)


class Click(Base):
    """One click on a tracked link in one email."""

    __tablename__ = "clicks"
    __table_args__ = (Index("ix_clicks_link_outbox", "link_id", "outbox_id"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    link_id: Mapped[int] = mapped_column(ForeignKey("links.id", ondelete="CASCADE"))
    outbox_id: Mapped[int | None] = mapped_column(
        ForeignKey("outbox.id", ondelete="SET NULL"), index=True
    )
    subscriber_id: Mapped[int | None] = mapped_column(
        ForeignKey("subscribers.id", ondelete="SET NULL"), index=True
    )
    at: Mapped[datetime] = mapped_column(UTCDateTime)
