"""Newsletters (broadcasts): written in Markdown, sent once to every confirmed subscriber
or a part of them, through the same outbox and scheduler as every other email.

A broadcast goes draft -> scheduled -> sending -> sent. Scheduling is one conditional
UPDATE, so a double click cannot send it twice; when it is due, the scheduler writes one
outbox row per recipient, in chunks of subscriber ids (service.broadcast_expansion), with
a unique dedupe key (`newsletter:<id>:<subscriber>`), so no reader can get it twice
either; it is sent once every chunk is written and nothing is left to send. Pausing holds
its queued rows (due at HELD_UNTIL) and the chunks not written yet; resuming makes them due
again; cancelling cancels them. Someone who unsubscribes meanwhile loses their row like any
other email.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import delete, func, select, update
from sqlalchemy.orm import Session

from . import kinds, newsletter_audience, newsletter_markdown, outbox
from .broadcast_expansion import HELD_UNTIL, expand_next
from .models import (
    Broadcast,
    BroadcastStatus,
    OutboxMessage,
    OutboxStatus,
)
from .newsletter_audience import SEQUENCE_CHOICES
from .newsletter_markdown import CONTROL

# How far ahead a newsletter may be scheduled.
LATEST_SEND = timedelta(days=366)
MAX_SUBJECT_LENGTH = 200
MAX_BODY_LENGTH = 100_000


class BroadcastError(ValueError):
    """The newsletter cannot be saved or changed that way; the message says why, and
    `field` which of the editor's fields it is about (None: the newsletter as a whole)."""

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


@dataclass(frozen=True)
class Content:
    """A newsletter as its email template needs it."""

    subject: str
    body_html: str
    email_html: str
    body_text: str
    greeting: bool  # "Hi <first name>," before the body


def content_of(subject: str, body: str, *, greeting: bool = True) -> Content:
    """The Markdown body as HTML for the archive and for the email, and as plain text."""
    body_html = newsletter_markdown.to_html(body)
    return Content(
        subject=subject,
        body_html=body_html,
        email_html=newsletter_markdown.for_email(body_html),
        body_text=newsletter_markdown.to_text(body),
        greeting=greeting,
    )


def _checked(subject: str, body: str, sequence_choice: str) -> tuple[str, str]:
    subject = " ".join(CONTROL.sub("", subject).split())
    if not subject:
        raise BroadcastError("Give the newsletter a subject.", field="subject")
    if len(subject) > MAX_SUBJECT_LENGTH:
        raise BroadcastError(
            f"Keep the subject under {MAX_SUBJECT_LENGTH} characters.", field="subject"
        )
    body = CONTROL.sub("", body.replace("\r\n", "\n")).strip()
    if not body:
        raise BroadcastError("Write something in the body.", field="body")
    if len(body) > MAX_BODY_LENGTH:
        raise BroadcastError(f"Keep the body under {MAX_BODY_LENGTH:,} characters.", field="body")
    if sequence_choice not in SEQUENCE_CHOICES:
        raise BroadcastError(
            f"Unknown audience choice {sequence_choice!r}.", field="audience_sequence"
        )
    return subject, body


def save_draft(
    session: Session,
    broadcast_id: int | None,
    *,
    subject: str,
    body: str,
    audience_source: str = "",
    audience_sequence: str = "",
    include_tags: Iterable[str] = (),
    exclude_tags: Iterable[str] = (),
    tags_match: str = "any",
    greeting: bool = True,
    now: datetime,
) -> Broadcast:
    """Create a draft, or change one; a newsletter that left the drafts cannot change."""
    subject, body = _checked(subject, body, audience_sequence)
    broadcast = None if broadcast_id is None else get(session, broadcast_id)
    if broadcast is not None and broadcast.status is not BroadcastStatus.DRAFT:
        raise BroadcastError("This newsletter is no longer a draft; it cannot change.")
    try:
        tag_choice = newsletter_audience.checked_tags(
            session,
            include_tags,
            exclude_tags,
            tags_match,
            saved=[] if broadcast is None else [*broadcast.include_tags, *broadcast.exclude_tags],
        )
    except ValueError as exc:
        raise BroadcastError(str(exc), field="include_tags") from None
    if broadcast is None:
        broadcast = Broadcast(status=BroadcastStatus.DRAFT, created_at=now, recipients=0)
        session.add(broadcast)
    broadcast.subject = subject
    broadcast.body = body
    broadcast.audience_source = CONTROL.sub("", audience_source).strip()[:100]
    broadcast.audience_sequence = audience_sequence
    broadcast.include_tags = tag_choice.include
    broadcast.exclude_tags = tag_choice.exclude
    broadcast.tags_match = tag_choice.match
    broadcast.greeting = greeting
    broadcast.updated_at = now
    session.flush()
    return broadcast


def delete_draft(session: Session, broadcast_id: int) -> bool:
    """Delete a draft, and any test copy of it still waiting to go (it could never be
    built again); False for a newsletter that left the drafts (its emails, figures and
    archive page stay)."""
    result = session.execute(
        delete(Broadcast)
        .where(Broadcast.id == broadcast_id, Broadcast.status == BroadcastStatus.DRAFT)
        .execution_options(synchronize_session=False)
    )
    if result.rowcount != 1:
        return False
    session.execute(
        update(OutboxMessage)
        .where(
            OutboxMessage.kind == kinds.NEWSLETTER_TEST,
            OutboxMessage.status == OutboxStatus.QUEUED,
            OutboxMessage.context["broadcast_id"].as_integer() == broadcast_id,
        )
        .values(status=OutboxStatus.CANCELLED, last_error="draft deleted")
        .execution_options(synchronize_session=False)
    )
    return True


def get(session: Session, broadcast_id: int, *, lock: bool = False) -> Broadcast:
    """The newsletter; with `lock`, its row locked until the transaction ends (pausing and
    cancelling wait for a chunk of its rows being written, so that they see every row)."""
    broadcast = session.get(Broadcast, broadcast_id, with_for_update=lock, populate_existing=lock)
    if broadcast is None:
        raise BroadcastError("No such newsletter.")
    return broadcast


def schedule(session: Session, broadcast_id: int, *, at: datetime, now: datetime) -> bool:
    """Send the draft at `at` (now or later). False if it is not a draft any more: the
    second click of a double click, or a second tab, changes nothing."""
    result = session.execute(
        update(Broadcast)
        .where(Broadcast.id == broadcast_id, Broadcast.status == BroadcastStatus.DRAFT)
        .values(status=BroadcastStatus.SCHEDULED, scheduled_at=max(at, now), updated_at=now)
        .execution_options(synchronize_session=False)
    )
    return result.rowcount == 1


def in_progress(session: Session) -> bool:
    """Whether any newsletter is scheduled or being sent (a read: a tick with nothing to do
    for newsletters need not take the write lock)."""
    busy = (BroadcastStatus.SCHEDULED, BroadcastStatus.SENDING)
    return (
        session.scalar(select(Broadcast.id).where(Broadcast.status.in_(busy)).limit(1)) is not None
    )


def start_due(session: Session, *, now: datetime, sequence: str) -> list[tuple[int, int]]:
    """Queue every email of every newsletter whose time has come, chunk after chunk in the
    caller's transaction; returns (broadcast id, recipients) for each newsletter it
    finished queueing. (The scheduler commits after each chunk instead: `expand_next`.)"""
    started = []
    while (chunk := expand_next(session, now=now, sequence=sequence)) is not None:
        if chunk.done:
            started.append((chunk.broadcast_id, chunk.recipients))
    return started


def finish_done(session: Session, *, now: datetime) -> int:
    """Mark sending broadcasts with nothing left to send as sent; returns how many."""
    pending = (
        select(OutboxMessage.id)
        .where(
            OutboxMessage.broadcast_id == Broadcast.id,
            OutboxMessage.status.in_([OutboxStatus.QUEUED, OutboxStatus.SENDING]),
        )
        .exists()
    )
    result = session.execute(
        update(Broadcast)
        .where(
            Broadcast.status == BroadcastStatus.SENDING,
            # Not while chunks of its rows are still to be written.
            Broadcast.expanded_through >= Broadcast.audience_through,
            ~pending,
        )
        .values(status=BroadcastStatus.SENT, finished_at=now)
        .execution_options(synchronize_session=False)
    )
    return result.rowcount


def _queued_rows(broadcast_id: int):
    return update(OutboxMessage).where(
        OutboxMessage.broadcast_id == broadcast_id,
        OutboxMessage.status == OutboxStatus.QUEUED,
    )


def pause(session: Session, broadcast_id: int, *, now: datetime) -> bool:
    """Hold what is not sent yet (a message already on the wire still goes)."""
    broadcast = get(session, broadcast_id, lock=True)
    if broadcast.status is not BroadcastStatus.SENDING:
        return False
    session.execute(
        _queued_rows(broadcast_id)
        .values(due_at=HELD_UNTIL)
        .execution_options(synchronize_session=False)
    )
    broadcast.status = BroadcastStatus.PAUSED
    broadcast.updated_at = now
    return True


def resume(session: Session, broadcast_id: int, *, now: datetime) -> bool:
    broadcast = get(session, broadcast_id, lock=True)
    if broadcast.status is not BroadcastStatus.PAUSED:
        return False
    session.execute(
        _queued_rows(broadcast_id).values(due_at=now).execution_options(synchronize_session=False)
    )
    broadcast.status = BroadcastStatus.SENDING
    broadcast.updated_at = now
    if broadcast.pause_reason is not None:
        # It paused itself and the owner looked: the circuit breaker stops watching it.
        broadcast.pause_reason = None
        broadcast.breaker_overridden = True
    return True


def cancel(session: Session, broadcast_id: int, *, now: datetime) -> bool:
    """Stop it for good: nothing more of it goes out."""
    broadcast = get(session, broadcast_id, lock=True)
    if broadcast.status not in (
        BroadcastStatus.SCHEDULED,
        BroadcastStatus.SENDING,
        BroadcastStatus.PAUSED,
    ):
        return False
    session.execute(
        _queued_rows(broadcast_id)
        .values(status=OutboxStatus.CANCELLED, last_error="newsletter cancelled")
        .execution_options(synchronize_session=False)
    )
    broadcast.status = BroadcastStatus.CANCELLED
    broadcast.finished_at = now
    broadcast.updated_at = now
    return True


def progress(session: Session, broadcast_id: int) -> dict[str, int]:
    """Its emails by outbox status: sent, failed, queued, sending, cancelled."""
    return progress_of(session, [broadcast_id])[broadcast_id]


def progress_of(session: Session, broadcast_ids: list[int]) -> dict[int, dict[str, int]]:
    """`progress` for several newsletters in one query (the newsletters page)."""
    counts: dict[int, Counter[str]] = {broadcast_id: Counter() for broadcast_id in broadcast_ids}
    if broadcast_ids:
        for broadcast_id, status, count in session.execute(
            select(OutboxMessage.broadcast_id, OutboxMessage.status, func.count())
            .where(OutboxMessage.broadcast_id.in_(broadcast_ids))
            .group_by(OutboxMessage.broadcast_id, OutboxMessage.status)
        ):
            counts[broadcast_id][status.value] += count
    return {
        broadcast_id: {state.value: found[state.value] for state in OutboxStatus}
        for broadcast_id, found in counts.items()
    }


def queue_test(session: Session, broadcast: Broadcast, *, to: str, now: datetime) -> None:
    """Queue a copy for the owner to look at; the scheduler sends it like any email."""
    outbox.enqueue(
        session,
        outbox.Owner(to),
        kinds.NEWSLETTER_TEST,
        now=now,
        context={"broadcast_id": broadcast.id, "test": True},
    )
