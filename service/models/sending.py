"""What the scheduler works through: the outbox, sequence enrollments, its heartbeats."""

from __future__ import annotations

import enum
from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    text,
)
from sqlalchemy.orm import Mapped, mapped_column

from ..db import Base
from .columns import UTCDateTime, _enum

# Rows a scheduler may act on. Written out literally, in the partial index and in the claim
# query alike: SQLite uses a partial index only for a query with the very same terms.
OUTBOX_DUE_STATES = "status IN ('queued', 'sending')"


class OutboxStatus(enum.StrEnum):
    QUEUED = "queued"  # waiting for due_at
    SENDING = "sending"  # claimed by a scheduler until due_at (the lease)
    SENT = "sent"
    FAILED = "failed"  # rejected for good, or out of attempts
    CANCELLED = "cancelled"  # the subscriber left before it went out


class OutboxMessage(Base):
    """One email to send. Written in the transaction that causes it; sent by the scheduler.

    `due_at` is when a scheduler should next act on the row: for a queued row the time it
    is due (first send or retry), for a row being sent the end of the claim's lease, after
    which another scheduler may take it over. One partial index serves both.
    """

    __tablename__ = "outbox"
    __table_args__ = (
        # Claims read it in (due_at, id) order, and stop after a batch: with the id in it,
        # a newsletter's million rows due at one instant need no sort (migration 0020).
        Index(
            "ix_outbox_due",
            "due_at",
            "id",
            sqlite_where=text(OUTBOX_DUE_STATES),
            postgresql_where=text(OUTBOX_DUE_STATES),
        ),
        # A subscriber's emails, and the last one sent from the index alone (the export).
        Index("ix_outbox_subscriber_sent", "subscriber_id", "sent_at"),
        # A newsletter's rows in the order they went out: progress, and the circuit
        # breaker's "first sends" (service.feedback) read only their end of it.
        Index(
            "ix_outbox_broadcast",
            "broadcast_id",
            "sent_at",
            sqlite_where=text("broadcast_id IS NOT NULL"),
            postgresql_where=text("broadcast_id IS NOT NULL"),
        ),
        Index("uq_outbox_day_slot", "day_slot", unique=True),
        # Ids are in Message-IDs: never reused, even after rows are deleted.
        {"sqlite_autoincrement": True},
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    subscriber_id: Mapped[int | None] = mapped_column(
        ForeignKey("subscribers.id", ondelete="SET NULL")
    )
    to_address: Mapped[str] = mapped_column(String(320))
    kind: Mapped[str] = mapped_column(String(32))  # one of service.kinds
    template: Mapped[str] = mapped_column(String(100))
    context: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    sequence_step: Mapped[str | None] = mapped_column(String(64))  # for kind "sequence"
    # Where at most one such email may ever exist, e.g. "welcome:glute-guide:42".
    dedupe_key: Mapped[str | None] = mapped_column(String(200), unique=True)
    status: Mapped[OutboxStatus] = mapped_column(_enum(OutboxStatus), default=OutboxStatus.QUEUED)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    due_at: Mapped[datetime] = mapped_column(UTCDateTime)
    claimed_by: Mapped[str | None] = mapped_column(String(100))
    last_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    # Indexed for the hourly sending limit (how many went out in the last hour).
    sent_at: Mapped[datetime | None] = mapped_column(UTCDateTime, index=True)
    # For kind "broadcast": the newsletter it belongs to (progress, pause, cancel).
    # Indexed partially (ix_outbox_broadcast): other rows, the most, cost the index nothing.
    broadcast_id: Mapped[int | None] = mapped_column(
        ForeignKey("broadcasts.id", ondelete="SET NULL")
    )
    # For kind "sequence": `<subscriber>:<local day>:<n>`, the n-th sequence email of that
    # reader's day. Unique: however many schedulers queue steps at once, a reader gets at
    # most MAX_SEQUENCE_EMAILS_PER_DAY a day (service.sequences.engine). A step taken
    # back gives its place up (NULL).
    day_slot: Mapped[str | None] = mapped_column(String(48))

    def __repr__(self) -> str:
        return f"<OutboxMessage {self.id} {self.kind} {self.status.value}>"


class EnrollmentStatus(enum.StrEnum):
    ACTIVE = "active"  # steps come when due
    PAUSED = "paused"  # the owner holds it; resuming re-times the next step from then
    FINISHED = "finished"  # every step passed; steps added later do not reach them
    STOPPED = "stopped"  # unsubscribed or bounced


# Written out literally for the same reason as OUTBOX_DUE_STATES.
ENROLLMENT_DUE_STATES = "status = 'active'"


class Enrollment(Base):
    """A subscriber's place in a drip sequence (see service.sequences)."""

    __tablename__ = "enrollments"
    __table_args__ = (
        Index("uq_enrollments_subscriber_sequence", "subscriber_id", "sequence", unique=True),
        # A tick reads only the due end of this index: its cost follows what is due.
        Index(
            "ix_enrollments_due",
            "next_due_at",
            sqlite_where=text(ENROLLMENT_DUE_STATES),
            postgresql_where=text(ENROLLMENT_DUE_STATES),
        ),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    subscriber_id: Mapped[int] = mapped_column(
        ForeignKey("subscribers.id", ondelete="CASCADE"), index=True
    )
    sequence: Mapped[str] = mapped_column(String(64))
    status: Mapped[EnrollmentStatus] = mapped_column(
        _enum(EnrollmentStatus), default=EnrollmentStatus.ACTIVE
    )
    enrolled_at: Mapped[datetime] = mapped_column(UTCDateTime)
    # Step ids passed so far (sent, or skipped for want of a link), in order.
    steps_passed: Mapped[list[str]] = mapped_column(JSON, default=list)
    next_step: Mapped[str | None] = mapped_column(String(64))  # planned; checked when due
    next_due_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    last_step_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    paused_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    resumed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    stopped_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # The reader paused their email until then (the preference centre): the next step
    # goes on the first sending morning after it, and the rest are timed from that one.
    held_until: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # The reader left this sequence themselves: nothing starts it again for them.
    left_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # Since when its next step has waited for the reader's daily cap: it goes before a
    # step that came due later (service.sequences.engine).
    deferred_since: Mapped[datetime | None] = mapped_column(UTCDateTime)


class SchedulerHeartbeat(Base):
    """When each scheduler process last ticked; /healthz reports the latest."""

    __tablename__ = "scheduler_heartbeats"

    worker: Mapped[str] = mapped_column(String(100), primary_key=True)
    started_at: Mapped[datetime] = mapped_column(UTCDateTime)
    last_tick_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
