"""Queueing emails: the outbox row's layout, written in the caller's transaction.

Everything that queues an email goes through here: one at a time (`enqueue`: signups,
confirmations, test copies), one per recipient of a query (`enqueue_for_each`:
newsletters) or a tick's sequence steps at once (`step_row`, `enqueue_steps`). An email
exists if and only if what caused it was committed. Each notes in the session that its
transaction queued an email due now, so that its commit wakes the scheduler
(service.wakeup).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from sqlalchemy import String, Subquery, bindparam, cast, literal, select, true, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.orm import Session

from .. import kinds
from ..db import insert_ignoring_conflicts, insert_many_ignoring_conflicts, insert_row
from ..models import OutboxMessage, OutboxStatus
from ..wakeup import note_queued

PENDING_STATES = (OutboxStatus.QUEUED, OutboxStatus.SENDING)


class Recipient(Protocol):
    """Whom an email goes to: a Subscriber, or anything with its id and address (no id:
    the owner)."""

    @property
    def id(self) -> int | None: ...

    @property
    def email(self) -> str: ...


def enqueue(
    session: Session,
    recipient: Recipient,
    kind: str,
    *,
    now: datetime,
    template: str | None = None,
    context: dict[str, Any] | None = None,
    dedupe_key: str | None = None,
    due_at: datetime | None = None,
) -> bool:
    """Queue one email of `kind` (service.kinds), with the kind's own template unless
    another is named. With a dedupe key, a second one is silently dropped.

    Returns whether a row was written.
    """
    rules = kinds.rules_of(kind)  # an unknown kind is refused here, not when it is due
    template = template or rules.template
    if template is None:
        raise ValueError(f"an email of kind {kind!r} needs its template named")
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
        written = True
    else:
        written = insert_ignoring_conflicts(session, OutboxMessage.__table__, values)
    if written and values["due_at"] <= now:
        note_queued(session)
    return written


@dataclass(frozen=True)
class Owner:
    """The owner as a recipient: an address with no subscriber behind it."""

    email: str
    id: None = None


def enqueue_for_each(
    session: Session,
    recipients: Subquery,
    kind: str,
    *,
    now: datetime,
    context: dict[str, Any],
    dedupe_prefix: str,
    broadcast_id: int | None = None,
) -> int:
    """Queue one email of `kind` for each (id, email) row of `recipients`, in one
    INSERT ... SELECT. Each row's dedupe key is `dedupe_prefix` and the subscriber's id, so
    a recipient who has one already is left alone. Returns how many rows it wrote."""
    template = kinds.rules_of(kind).template
    if template is None:
        raise ValueError(f"an email of kind {kind!r} needs its template named")
    key = literal(dedupe_prefix, String) + cast(recipients.c.id, String)
    layout = {
        "subscriber_id": recipients.c.id,
        "to_address": recipients.c.email,
        "kind": literal(kind, String),
        "template": literal(template, String),
        "context": literal(context, OutboxMessage.context.type),
        "dedupe_key": key,
        "status": literal(OutboxStatus.QUEUED.value, String),
        "attempts": literal(0),
        "due_at": literal(now, OutboxMessage.due_at.type),
        "created_at": literal(now, OutboxMessage.created_at.type),
        "broadcast_id": literal(broadcast_id, OutboxMessage.broadcast_id.type),
    }
    # SQLite reads "SELECT ... ON CONFLICT" as a join without a WHERE: hence true().
    rows = select(*layout.values()).where(true())
    insert = postgresql.insert if session.get_bind().dialect.name == "postgresql" else sqlite.insert
    # RETURNING, not rowcount: psycopg reports -1 for an INSERT ... ON CONFLICT DO NOTHING.
    written = session.connection().execute(
        insert(OutboxMessage.__table__)
        .from_select(list(layout), rows)
        .on_conflict_do_nothing(index_elements=["dedupe_key"])
        .returning(OutboxMessage.__table__.c.id)
    )
    count = sum(1 for _ in written)
    if count:
        note_queued(session)
    return count


def step_row(
    subscriber_id: int,
    to_address: str,
    *,
    template: str,
    sequence: str,
    step: str,
    dedupe_key: str,
    now: datetime,
) -> dict[str, Any]:
    """The outbox row of one sequence step, for `enqueue_steps`."""
    return {
        "subscriber_id": subscriber_id,
        "to_address": to_address,
        "kind": kinds.SEQUENCE_STEP,
        "template": template,
        "context": {"sequence": sequence, "step": step},
        "sequence_step": step,
        "dedupe_key": dedupe_key,
        "status": OutboxStatus.QUEUED,
        "attempts": 0,
        "due_at": now,
        "created_at": now,
    }


# PostgreSQL's SQLSTATE for a deadlock it broke by failing this statement.
DEADLOCK_DETECTED = "40P01"


def enqueue_steps(session: Session, rows: list[dict[str, Any]], *, now: datetime) -> set[str]:
    """Queue sequence steps (`step_row`s): one row per (subscriber, step), ever, inserted
    all at once, a conflict left alone. A row cancelled by a pause is revived on resume,
    with its new day slot; a row already sent is never sent again. The dedupe keys of the
    rows written or revived."""
    if not rows:
        return set()
    # In day-slot order, so that two schedulers inserting slots of the same readers wait
    # for each other in one order. (A revive after the inserts can still meet another
    # scheduler's insert the other way round: PostgreSQL then reports a deadlock to one of
    # them, which counts its row as lost, below.)
    rows = sorted(({"day_slot": None, **row} for row in rows), key=lambda r: r["day_slot"] or "")
    table = OutboxMessage.__table__
    written = set(
        insert_many_ignoring_conflicts(session, table, rows, returning=table.c.dedupe_key)
    )
    revive = (
        update(table)
        .where(table.c.dedupe_key == bindparam("key"), table.c.status == OutboxStatus.CANCELLED)
        .values(
            status=OutboxStatus.QUEUED,
            attempts=0,
            due_at=now,
            claimed_by=None,
            last_error=None,
            day_slot=bindparam("slot"),
        )
        .returning(table.c.dedupe_key)
    )
    # Rare (a resume after a pause): one statement each, for RETURNING, each in a savepoint:
    # another scheduler may have taken the day slot since it was looked up, and that step
    # then waits like one that lost its slot on insert.
    for row in rows:
        if row["dedupe_key"] not in written:
            try:
                with session.begin_nested():
                    found = session.connection().execute(
                        revive, {"key": row["dedupe_key"], "slot": row["day_slot"]}
                    )
                    written.update(found.scalars())
            except IntegrityError:
                continue
            except OperationalError as exc:
                if getattr(exc.orig, "sqlstate", None) != DEADLOCK_DETECTED:
                    raise
                continue
    if written:
        note_queued(session)
    return written


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
