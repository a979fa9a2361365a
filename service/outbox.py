"""The outbox: emails waiting to go, claimed under a lease, and what became of them.

Rows are written by domain functions in the caller's transaction (so an email exists if and
only if what caused it was committed) and moved along by the scheduler's dispatch pass.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any, Protocol

from sqlalchemy import func, select, text, update
from sqlalchemy.orm import Session

from .db import insert_ignoring_conflicts, insert_row
from .models import OUTBOX_DUE_STATES, OutboxMessage, OutboxStatus, Subscriber, SubscriberStatus

PENDING_STATES = (OutboxStatus.QUEUED, OutboxStatus.SENDING)

# The kinds of email that may reach someone who has not confirmed yet.
BEFORE_CONFIRMATION = frozenset({"confirm"})


class Recipient(Protocol):
    """Whom an email goes to: a Subscriber, or anything with its id and address."""

    id: int
    email: str


def enqueue(
    session: Session,
    recipient: Recipient,
    *,
    kind: str,
    template: str,
    now: datetime,
    context: dict[str, Any] | None = None,
    dedupe_key: str | None = None,
    due_at: datetime | None = None,
) -> bool:
    """Queue one email. With a dedupe key, a second one is silently dropped.

    Returns whether a row was written.
    """
    values = {
        "subscriber_id": recipient.id,
        "to_address": recipient.email,
        "kind": kind,
        "template": template,
        "context": context or {},
        "dedupe_key": dedupe_key,
        "status": OutboxStatus.QUEUED,
        "attempts": 0,
        "due_at": due_at or now,
        "created_at": now,
    }
    if dedupe_key is None:
        insert_row(session, OutboxMessage.__table__, values)
        return True
    return insert_ignoring_conflicts(session, OutboxMessage.__table__, values)


def cancel_for_subscriber(session: Session, subscriber_id: int, *, reason: str) -> int:
    """Cancel everything not yet sent to a subscriber, including rows being sent right now.

    A claimed row keeps its claim: if its scheduler has already handed it to the server,
    it can still record that it was sent (see mark_sent).
    """
    result = session.execute(
        update(OutboxMessage)
        .where(
            OutboxMessage.subscriber_id == subscriber_id,
            OutboxMessage.status.in_(PENDING_STATES),
        )
        .values(status=OutboxStatus.CANCELLED, last_error=reason)
        .execution_options(synchronize_session=False)
    )
    return result.rowcount


def claim(
    session: Session, *, worker: str, now: datetime, limit: int, lease: timedelta
) -> Sequence[OutboxMessage]:
    """Claim the `limit` earliest-due rows for `worker` until `now + lease`.

    Due rows are queued rows whose time has come and rows whose lease ran out (their
    scheduler died). On PostgreSQL, rows another scheduler is claiming are skipped
    (FOR UPDATE SKIP LOCKED); on SQLite, BEGIN IMMEDIATE makes claims take turns.
    """
    is_due = (text(OUTBOX_DUE_STATES), OutboxMessage.due_at <= now)
    due = (
        select(OutboxMessage.id)
        .where(*is_due)
        .order_by(OutboxMessage.due_at, OutboxMessage.id)
        .limit(limit)
    )
    if session.get_bind().dialect.name == "postgresql":
        due = due.with_for_update(skip_locked=True)
    # A materialized CTE runs once. As `id IN (subquery)` PostgreSQL may rescan the
    # subquery for every row it updates, and LIMIT then stops limiting.
    due_ids = due.cte("due").prefix_with("MATERIALIZED")
    claimed = session.scalars(
        update(OutboxMessage)
        # Checked again on the row itself: a row claimed meanwhile is left alone.
        .where(OutboxMessage.id == due_ids.c.id, *is_due)
        .values(
            status=OutboxStatus.SENDING,
            claimed_by=worker,
            due_at=now + lease,
            attempts=OutboxMessage.attempts + 1,
        )
        .returning(OutboxMessage),
        execution_options={"synchronize_session": False},
    ).all()
    return sorted(claimed, key=lambda message: message.id)


def renew_claim(
    session: Session, message_id: int, *, worker: str, now: datetime, lease: timedelta
) -> bool:
    """Extend `worker`'s lease on a row before acting on it; False if the claim is gone.

    A claim is gone when the row was cancelled, or when its lease ran out (a slow batch)
    and another scheduler may have taken it over: then this one must not send it.
    """
    result = session.execute(
        update(OutboxMessage)
        .where(
            OutboxMessage.id == message_id,
            OutboxMessage.status == OutboxStatus.SENDING,
            OutboxMessage.claimed_by == worker,
            OutboxMessage.due_at > now,
        )
        .values(due_at=now + lease)
        .execution_options(synchronize_session=False)
    )
    return result.rowcount == 1


def load_claimed(
    session: Session, message_id: int, *, worker: str
) -> tuple[OutboxMessage, Subscriber | None] | None:
    """The row and its subscriber if `worker` still holds the claim, else None."""
    row = session.execute(
        select(OutboxMessage, Subscriber)
        .outerjoin(Subscriber, Subscriber.id == OutboxMessage.subscriber_id)
        .where(
            OutboxMessage.id == message_id,
            OutboxMessage.status == OutboxStatus.SENDING,
            OutboxMessage.claimed_by == worker,
        )
    ).one_or_none()
    return None if row is None else (row[0], row[1])


def may_receive(kind: str, subscriber: Subscriber | None) -> bool:
    """Whether an email of `kind` may still go to `subscriber` as they are now."""
    if subscriber is None:
        return False
    if kind in BEFORE_CONFIRMATION:
        return subscriber.status is not SubscriberStatus.CONFIRMED
    return subscriber.status is SubscriberStatus.CONFIRMED


def _finish(
    session: Session,
    message_id: int,
    worker: str,
    *,
    states: tuple[OutboxStatus, ...] = (OutboxStatus.SENDING,),
    **values: Any,
) -> bool:
    result = session.execute(
        update(OutboxMessage)
        .where(
            OutboxMessage.id == message_id,
            OutboxMessage.status.in_(states),
            OutboxMessage.claimed_by == worker,
        )
        .values(claimed_by=None, **values)
        .execution_options(synchronize_session=False)
    )
    return result.rowcount == 1


def mark_sent(session: Session, message_id: int, *, worker: str, now: datetime) -> bool:
    """Record that the server accepted the message.

    This holds even if the subscriber unsubscribed while the message was on the wire:
    the row then says what really happened (sent), not what was wished (cancelled).
    """
    return _finish(
        session,
        message_id,
        worker,
        states=(OutboxStatus.SENDING, OutboxStatus.CANCELLED),
        status=OutboxStatus.SENT,
        sent_at=now,
        last_error=None,
    )


def mark_failed(session: Session, message_id: int, *, worker: str, error: str) -> bool:
    """Give up on the message for good."""
    return _finish(session, message_id, worker, status=OutboxStatus.FAILED, last_error=error[:2000])


def mark_cancelled(session: Session, message_id: int, *, worker: str, reason: str) -> bool:
    """Drop the message: its recipient may no longer receive it."""
    return _finish(session, message_id, worker, status=OutboxStatus.CANCELLED, last_error=reason)


def retry_later(
    session: Session,
    message_id: int,
    *,
    worker: str,
    due_at: datetime,
    error: str,
    count_attempt: bool = True,
) -> bool:
    """Put the message back in the queue until `due_at`.

    With `count_attempt=False` the attempt the claim counted is given back: the failure was
    not the message's (a broken template waiting for the owner's fix).
    """
    values: dict[str, Any] = {
        "status": OutboxStatus.QUEUED,
        "due_at": due_at,
        "last_error": error[:2000],
    }
    if not count_attempt:
        values["attempts"] = OutboxMessage.attempts - 1
    return _finish(session, message_id, worker, **values)


def release(session: Session, message_ids: Sequence[int], *, worker: str, due_at: datetime) -> int:
    """Hand claimed rows back untried: they keep their attempt count and are due at `due_at`."""
    if not message_ids:
        return 0
    result = session.execute(
        update(OutboxMessage)
        .where(
            OutboxMessage.id.in_(message_ids),
            OutboxMessage.status == OutboxStatus.SENDING,
            OutboxMessage.claimed_by == worker,
        )
        .values(
            status=OutboxStatus.QUEUED,
            claimed_by=None,
            due_at=due_at,
            attempts=OutboxMessage.attempts - 1,
        )
        .execution_options(synchronize_session=False)
    )
    return result.rowcount


def sent_since(session: Session, since: datetime) -> int:
    """How many emails the server accepted since `since` (an index range on sent_at)."""
    return session.scalar(
        select(func.count()).select_from(OutboxMessage).where(OutboxMessage.sent_at >= since)
    )


def retry_delay(attempts: int, *, base: timedelta, cap: timedelta) -> timedelta:
    """Exponential backoff: base, 2*base, 4*base ... never more than cap."""
    return min(cap, base * (2 ** max(0, attempts - 1)))
