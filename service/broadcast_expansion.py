"""A newsletter's send turned into outbox rows: one row per recipient, written in chunks of
subscriber ids, one chunk per transaction.

The audience is fixed when the send starts: readers whose subscriber id is at most the
highest id then (`Broadcast.audience_through`); someone who signs up afterwards does not get
it. Each of them gets it if they match the audience (confirmed, wanting newsletters, the
owner's narrowing) when their chunk is written, a few seconds at most after the start.

A chunk takes the newsletter's row lock, writes the rows of the next `CHUNK` subscriber ids
and moves `expanded_through` on, in one transaction: no transaction is long, a signup never
waits behind a million inserts, another scheduler sends the first chunks while later ones
are written, and a scheduler that dies between chunks leaves the next one to whoever comes
next (the dedupe key `newsletter:<id>:<subscriber>` makes writing a row twice harmless
anyway). Pausing and cancelling take the same row lock, so a chunk is either written before
them (and held or cancelled with the rest) or not at all: a paused newsletter's remaining
chunks wait for its resume, a cancelled one's are never written.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from . import kinds, newsletter_audience, outbox
from .models import Broadcast, BroadcastStatus, Subscriber

# Subscriber ids per transaction: a chunk of 20,000 rows takes about a second on
# PostgreSQL (bench/broadcast.py), short enough that nothing waits on it for long.
CHUNK = 20_000
# Far enough ahead that no scheduler claims a held row.
HELD_UNTIL = datetime(9999, 1, 1, tzinfo=UTC)


@dataclass(frozen=True)
class Chunk:
    """What one call of `expand_next` wrote."""

    broadcast_id: int
    queued: int  # rows written by this chunk
    recipients: int  # rows written so far, this chunk included
    done: bool  # whether every row of the newsletter is written now


def expanding(broadcast: Broadcast) -> bool:
    """Whether the newsletter's rows are still to be written (its count is not known); a
    cancelled one's never will be."""
    if broadcast.status is BroadcastStatus.SCHEDULED:
        return True
    return broadcast.status in (BroadcastStatus.SENDING, BroadcastStatus.PAUSED) and (
        broadcast.expanded_through < broadcast.audience_through
    )


def _next_to_expand(session: Session, *, now: datetime) -> Broadcast | None:
    """A newsletter with rows to write: one sending whose chunks are not all written, or
    one scheduled whose time has come. Locked; on PostgreSQL one another scheduler is
    writing is skipped (that scheduler goes on sending instead)."""
    query = (
        select(Broadcast)
        .where(
            (
                (Broadcast.status == BroadcastStatus.SENDING)
                & (Broadcast.expanded_through < Broadcast.audience_through)
            )
            | ((Broadcast.status == BroadcastStatus.SCHEDULED) & (Broadcast.scheduled_at <= now))
        )
        .order_by(Broadcast.id)
        .limit(1)
        .execution_options(populate_existing=True)
    )
    if session.get_bind().dialect.name == "postgresql":
        query = query.with_for_update(skip_locked=True)
    return session.scalars(query).first()


def _start(session: Session, broadcast: Broadcast, *, now: datetime) -> None:
    """Fix the audience (readers up to the highest id now) and mark it sending."""
    broadcast.status = BroadcastStatus.SENDING
    broadcast.started_at = now
    broadcast.audience_through = session.scalar(select(func.max(Subscriber.id))) or 0
    broadcast.expanded_through = 0
    broadcast.recipients = 0


def _chunk_end(session: Session, broadcast: Broadcast, size: int) -> int:
    """The last subscriber id of the next chunk: `size` ids on (along the primary key)."""
    last = session.scalar(
        select(Subscriber.id)
        .where(
            Subscriber.id > broadcast.expanded_through,
            Subscriber.id <= broadcast.audience_through,
        )
        .order_by(Subscriber.id)
        .offset(size - 1)
        .limit(1)
    )
    return broadcast.audience_through if last is None else last


def expand_next(
    session: Session, *, now: datetime, sequence: str, chunk: int | None = None
) -> Chunk | None:
    """Write the next chunk of rows of one newsletter, starting it if it was only due;
    None when no newsletter has rows left to write. The caller commits after each call.
    Run by the scheduler."""
    broadcast = _next_to_expand(session, now=now)
    if broadcast is None:
        return None
    if broadcast.status is BroadcastStatus.SCHEDULED:
        _start(session, broadcast, now=now)
    start, end = broadcast.expanded_through, _chunk_end(session, broadcast, chunk or CHUNK)
    queued = 0
    if end > start:
        audience = newsletter_audience.recipients(broadcast, sequence, now=now).where(
            Subscriber.id > start, Subscriber.id <= end
        )
        queued = outbox.enqueue_for_each(
            session,
            audience.subquery(),
            kinds.NEWSLETTER,
            now=now,
            context={"broadcast_id": broadcast.id},
            dedupe_prefix=f"{kinds.NEWSLETTER}:{broadcast.id}:",
            broadcast_id=broadcast.id,
        )
    broadcast.expanded_through = end
    broadcast.recipients += queued
    session.flush()
    return Chunk(
        broadcast_id=broadcast.id,
        queued=queued,
        recipients=broadcast.recipients,
        done=not expanding(broadcast),
    )
