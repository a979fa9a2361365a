"""Subscribers, their consent records and events, and the suppression list."""

from __future__ import annotations

import enum
from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    ForeignKey,
    Index,
    String,
    Text,
)
from sqlalchemy.orm import Mapped, mapped_column, relationship

from ..db import Base
from .columns import UTCDateTime, _enum


class SubscriberStatus(enum.StrEnum):
    PENDING = "pending"  # signed up, not confirmed yet
    CONFIRMED = "confirmed"
    UNSUBSCRIBED = "unsubscribed"
    BOUNCED = "bounced"  # the mail server said the address does not exist


class Subscriber(Base):
    __tablename__ = "subscribers"
    # Ids are in signed links: SQLite must never hand a deleted subscriber's id to a new one.
    __table_args__ = {"sqlite_autoincrement": True}

    id: Mapped[int] = mapped_column(primary_key=True)
    # As the reader typed it, normalized by email-validator; used to send.
    email: Mapped[str] = mapped_column(String(320))
    # Case-folded form: one subscriber per address however it is capitalized.
    email_key: Mapped[str] = mapped_column(String(320), unique=True)
    # The mailbox the address reaches (signup_input.mailbox_key: no +tag, no dots where the
    # provider ignores them): the resend cooldown counts per mailbox, so five spellings of
    # one inbox get one confirmation. Only rows made before it existed lack it.
    mailbox_key: Mapped[str | None] = mapped_column(String(320), index=True)
    first_name: Mapped[str | None] = mapped_column(String(100))
    status: Mapped[SubscriberStatus] = mapped_column(_enum(SubscriberStatus), index=True)
    time_zone: Mapped[str] = mapped_column(String(64))
    source: Mapped[str] = mapped_column(String(100))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
    confirmed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    unsubscribed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    bounced_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # When a signup request last caused an email (confirmation or guide again); a new
    # request inside the cooldown sends nothing, so nobody can flood an inbox.
    last_requested_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # The reader's own choices (the preference centre): no email of any kind goes out
    # before `paused_until` except what they ask for; without newsletters they still get
    # their sequences.
    paused_until: Mapped[datetime | None] = mapped_column(UTCDateTime)
    wants_newsletters: Mapped[bool] = mapped_column(Boolean, default=True)

    consents: Mapped[list[ConsentRecord]] = relationship(
        back_populates="subscriber", order_by="ConsentRecord.id", passive_deletes=True
    )

    def __repr__(self) -> str:
        return f"<Subscriber {self.id} {self.status.value}>"


class ConsentRecord(Base):
    """What a subscriber agreed to, when, and from where: proof of opt-in."""

    __tablename__ = "consents"

    id: Mapped[int] = mapped_column(primary_key=True)
    subscriber_id: Mapped[int] = mapped_column(
        ForeignKey("subscribers.id", ondelete="CASCADE"), index=True
    )
    action: Mapped[str] = mapped_column(String(16))  # signup, confirm
    at: Mapped[datetime] = mapped_column(UTCDateTime)
    ip: Mapped[str | None] = mapped_column(String(45))
    user_agent: Mapped[str | None] = mapped_column(String(512))
    source: Mapped[str] = mapped_column(String(100))
    text: Mapped[str] = mapped_column(Text)  # the exact consent wording shown
    text_version: Mapped[str] = mapped_column(String(16))  # short hash of `text`

    subscriber: Mapped[Subscriber] = relationship(back_populates="consents")


class Event(Base):
    """Something that happened to a subscriber: the history and the dashboard's counts."""

    __tablename__ = "events"
    __table_args__ = (Index("ix_events_kind_at", "kind", "at"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    subscriber_id: Mapped[int | None] = mapped_column(
        ForeignKey("subscribers.id", ondelete="SET NULL"), index=True
    )
    kind: Mapped[str] = mapped_column(String(32))
    at: Mapped[datetime] = mapped_column(UTCDateTime)
    detail: Mapped[dict[str, Any] | None] = mapped_column(JSON)


class Suppression(Base):
    """An erased subscriber's address, kept only as a one-way hash so that an unsubscribe
    is still honoured (an import cannot bring them back)."""

    __tablename__ = "suppressions"

    email_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    reason: Mapped[str] = mapped_column(String(32))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
