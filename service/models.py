"""The tables: subscribers, their consent records and events, the outbox, enrollments.

Every datetime is stored as UTC and comes back timezone-aware, on SQLite too.
"""

from __future__ import annotations

import enum
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    Enum,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    TypeDecorator,
    text,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import Mapped, mapped_column, relationship

from .db import Base


class UTCDateTime(TypeDecorator[datetime]):
    """A timezone-aware UTC datetime on every backend (SQLite stores it naive)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetimes are not stored; pass an aware datetime")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _enum(cls: type[enum.Enum]) -> Enum:
    """Store an enum by value in a VARCHAR with a CHECK constraint (portable, readable)."""
    return Enum(
        cls,
        native_enum=False,
        create_constraint=True,
        length=16,
        values_callable=lambda members: [m.value for m in members],
        name=cls.__name__.lower(),
    )


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
        Index(
            "ix_outbox_due",
            "due_at",
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


class SchedulerHeartbeat(Base):
    """When each scheduler process last ticked; /healthz reports the latest."""

    __tablename__ = "scheduler_heartbeats"

    worker: Mapped[str] = mapped_column(String(100), primary_key=True)
    started_at: Mapped[datetime] = mapped_column(UTCDateTime)
    last_tick_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)


class AdminUser(Base):
    """Someone who runs the list from /admin."""

    __tablename__ = "admin_users"

    id: Mapped[int] = mapped_column(primary_key=True)
    email: Mapped[str] = mapped_column(String(320))
    email_key: Mapped[str] = mapped_column(String(320), unique=True)
    password_hash: Mapped[str] = mapped_column(String(255))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    password_changed_at: Mapped[datetime] = mapped_column(UTCDateTime)
    last_login_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # When every session was last ended (a new password, "sign out everywhere"): device
    # cookies made before it no longer count (service.web.devices).
    sessions_reset_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class AdminSession(Base):
    """A signed-in browser. Its cookie holds a random token, stored here only as a hash: a
    session is valid while its row exists and was seen within ADMIN_SESSION_HOURS, so
    signing out (deleting the row) ends it for any copy of the cookie."""

    __tablename__ = "admin_sessions"

    id: Mapped[int] = mapped_column(primary_key=True)
    admin_id: Mapped[int] = mapped_column(
        ForeignKey("admin_users.id", ondelete="CASCADE"), index=True
    )
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)  # SHA-256 of the token
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    last_seen_at: Mapped[datetime] = mapped_column(UTCDateTime)
    ip: Mapped[str | None] = mapped_column(String(45))
    user_agent: Mapped[str | None] = mapped_column(String(200))


class Suppression(Base):
    """An erased subscriber's address, kept only as a one-way hash so that an unsubscribe
    is still honoured (an import cannot bring them back)."""

    __tablename__ = "suppressions"

    email_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    reason: Mapped[str] = mapped_column(String(32))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)


class BroadcastStatus(enum.StrEnum):
    DRAFT = "draft"
    SCHEDULED = "scheduled"  # waits for scheduled_at; the scheduler then queues its emails
    SENDING = "sending"  # one outbox row per recipient exists
    PAUSED = "paused"  # its queued emails are held
    SENT = "sent"  # nothing of it is left to send
    CANCELLED = "cancelled"


class Broadcast(Base):
    """A one-off newsletter to all confirmed subscribers or a part of them."""

    __tablename__ = "broadcasts"

    id: Mapped[int] = mapped_column(primary_key=True)
    subject: Mapped[str] = mapped_column(String(200))
    body: Mapped[str] = mapped_column(Text)  # Markdown
    status: Mapped[BroadcastStatus] = mapped_column(
        _enum(BroadcastStatus), default=BroadcastStatus.DRAFT, index=True
    )
    # Who gets it: confirmed subscribers, narrowed by these (empty: no narrowing).
    audience_source: Mapped[str] = mapped_column(String(100), default="")
    audience_sequence: Mapped[str] = mapped_column(String(16), default="")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)
    scheduled_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    recipients: Mapped[int] = mapped_column(Integer, default=0)
    # Why it is paused, when it paused itself (service.feedback's circuit breaker); and
    # whether the owner resumed it after that, which ends the breaker's watch over it.
    pause_reason: Mapped[str | None] = mapped_column(Text)
    breaker_overridden: Mapped[bool] = mapped_column(Boolean, default=False)


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


class ImportStatus(enum.StrEnum):
    CHECKING = "checking"  # the file is being read and every row checked
    CHECKED = "checked"  # the preview is ready; waiting for the owner to import it
    IMPORTING = "importing"  # rows are being added, a batch per transaction
    DONE = "done"
    FAILED = "failed"  # the file could not be read (the error says why)
    CANCELLED = "cancelled"


class Import(Base):
    """A CSV import: the uploaded file, its preview, and how far it has got.

    Checked and carried out in batches by whichever process holds its lease (the web
    request for a small file, a scheduler for a large one), so an import of any size
    finishes in flat memory and a process that dies hands it on (service.imports).
    """

    __tablename__ = "imports"

    id: Mapped[int] = mapped_column(primary_key=True)
    status: Mapped[ImportStatus] = mapped_column(_enum(ImportStatus), index=True)
    filename: Mapped[str] = mapped_column(String(255))
    size_bytes: Mapped[int] = mapped_column(Integer)
    created_by: Mapped[str] = mapped_column(String(320))  # the admin's address
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # The preview: field -> header, outcome -> rows, the first issues (line, email, why).
    columns: Mapped[dict[str, str]] = mapped_column(JSON, default=dict)
    counts: Mapped[dict[str, int]] = mapped_column(JSON, default=dict)
    issues: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)
    bytes_read: Mapped[int] = mapped_column(Integer, default=0)
    # What the owner chose when importing, and what has been done so far.
    mode: Mapped[str | None] = mapped_column(String(16))
    consent_text: Mapped[str | None] = mapped_column(Text)
    join_sequence: Mapped[bool] = mapped_column(Boolean, default=False)
    sequence: Mapped[str | None] = mapped_column(String(64))
    applied_line: Mapped[int] = mapped_column(Integer, default=0)  # rows up to it are done
    applied: Mapped[dict[str, int]] = mapped_column(JSON, default=dict)
    error: Mapped[str | None] = mapped_column(Text)
    interruptions: Mapped[int] = mapped_column(Integer, default=0)
    claimed_by: Mapped[str | None] = mapped_column(String(100))
    lease_until: Mapped[datetime | None] = mapped_column(UTCDateTime)


class ImportChunk(Base):
    """A piece of an uploaded file (up to 1 MB), in the database so that any process can
    read it; deleted when the import ends, or a day after an upload nobody imported."""

    __tablename__ = "import_chunks"

    import_id: Mapped[int] = mapped_column(
        ForeignKey("imports.id", ondelete="CASCADE"), primary_key=True
    )
    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    data: Mapped[bytes] = mapped_column(LargeBinary)


class ImportRow(Base):
    """One checked row of an import, staged between the preview and the import: the table,
    not memory, finds the duplicates of a file of a million rows."""

    __tablename__ = "import_rows"
    __table_args__ = (
        # One row per address per import; rows without an address (invalid, duplicate) are
        # NULL here, which a unique index allows any number of.
        Index("uq_import_rows_import_email_key", "import_id", "email_key", unique=True),
        Index("ix_import_rows_import_line", "import_id", "line"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    import_id: Mapped[int] = mapped_column(ForeignKey("imports.id", ondelete="CASCADE"))
    line: Mapped[int] = mapped_column(Integer)
    outcome: Mapped[str] = mapped_column(String(16))  # importer.Outcome
    email: Mapped[str] = mapped_column(String(320))
    email_key: Mapped[str | None] = mapped_column(String(320))
    first_name: Mapped[str | None] = mapped_column(String(100))
    time_zone: Mapped[str] = mapped_column(String(64))
    source: Mapped[str] = mapped_column(String(100))
    status: Mapped[str | None] = mapped_column(String(16))
    signed_up: Mapped[datetime | None] = mapped_column(UTCDateTime)
    confirmed: Mapped[datetime | None] = mapped_column(UTCDateTime)
    unsubscribed: Mapped[datetime | None] = mapped_column(UTCDateTime)
