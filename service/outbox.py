"""The outbox: emails waiting to go, claimed under a lease, and what became of them.

Rows are written by domain functions in the caller's transaction (so an email exists if and
only if what caused it was committed) and moved along by the scheduler's dispatch pass.
This module owns the row's layout: everything that queues an email (signups, sequences,
newsletters) goes through `enqueue`, `enqueue_for_each` or `enqueue_steps`.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Protocol

from sqlalchemy import (
    Connection,
    String,
    Subquery,
    Update,
    bindparam,
    cast,
    func,
    literal,
    or_,
    select,
    text,
    true,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from . import kinds
from .db import PreparedStatement, insert_ignoring_conflicts, insert_row
from .kinds import Receivers
from .models import OUTBOX_DUE_STATES, OutboxMessage, OutboxStatus, Subscriber, SubscriberStatus

PENDING_STATES = (OutboxStatus.QUEUED, OutboxStatus.SENDING)

# The sending loop runs these on a plain Connection (an ORM Session costs more per email
# than the statements themselves); everything else passes a Session.
Bind = Session | Connection


def _connection(bind: Bind) -> Connection:
    return bind.connection() if isinstance(bind, Session) else bind


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
    template = template or kinds.rules_of(kind).template
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
        return True
    return insert_ignoring_conflicts(session, OutboxMessage.__table__, values)


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
) -> None:
    """Queue one email of `kind` for each (id, email) row of `recipients`, in one
    INSERT ... SELECT. Each row's dedupe key is `dedupe_prefix` and the subscriber's id, so
    a recipient who has one already is left alone."""
    key = literal(dedupe_prefix, String) + cast(recipients.c.id, String)
    layout = {
        "subscriber_id": recipients.c.id,
        "to_address": recipients.c.email,
        "kind": literal(kind, String),
        "template": literal(kinds.rules_of(kind).template, String),
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
    session.execute(
        insert(OutboxMessage.__table__)
        .from_select(list(layout), rows)
        .on_conflict_do_nothing(index_elements=["dedupe_key"])
    )


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


def enqueue_steps(session: Session, rows: list[dict[str, Any]], *, now: datetime) -> None:
    """Queue sequence steps (`step_row`s): one row per (subscriber, step), ever, inserted
    all at once, a conflict left alone. A row cancelled by a pause is revived on resume; a
    row already sent is never sent again."""
    if not rows:
        return
    insert = postgresql.insert if session.get_bind().dialect.name == "postgresql" else sqlite.insert
    session.connection().execute(insert(OutboxMessage.__table__).on_conflict_do_nothing(), rows)
    session.execute(
        update(OutboxMessage)
        .where(
            OutboxMessage.dedupe_key.in_([row["dedupe_key"] for row in rows]),
            OutboxMessage.status == OutboxStatus.CANCELLED,
        )
        .values(
            status=OutboxStatus.QUEUED, attempts=0, due_at=now, claimed_by=None, last_error=None
        )
        .execution_options(synchronize_session=False)
    )


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


@dataclass(frozen=True)
class Claimed:
    """A claimed row, as the dispatcher needs it."""

    id: int
    subscriber_id: int | None
    to_address: str
    kind: str
    template: str
    context: dict[str, Any]
    sequence_step: str | None
    attempts: int
    last_error: str | None


@dataclass(frozen=True)
class Reader:
    """Who a claimed row goes to, as far as sending needs to know."""

    id: int
    email: str
    first_name: str | None
    status: SubscriberStatus
    time_zone: str

    @classmethod
    def stand_in(cls, email: str, first_name: str | None = None) -> Reader:
        """Someone with no subscriber behind the address: the owner getting a test copy, or
        the sample reader of a preview."""
        return cls(
            id=0,
            email=email,
            first_name=first_name,
            status=SubscriberStatus.CONFIRMED,
            time_zone="UTC",
        )


_prepared_statements: dict[tuple[int, str, str], PreparedStatement] = {}


def _prepared(statement: Update, connection: Connection) -> PreparedStatement:
    """`statement` compiled once for this connection's dialect (see PreparedStatement)."""
    dialect = connection.dialect
    key = (id(statement), dialect.name, dialect.driver)
    prepared = _prepared_statements.get(key)
    if prepared is None:
        prepared = _prepared_statements[key] = PreparedStatement(statement, dialect)
    return prepared


@functools.cache
def _renew_statement() -> Update:
    # Built once: this runs for every email, and building SQL costs more than running it.
    table = OutboxMessage.__table__
    columns = table.c
    return (
        table.update()
        .where(
            columns.id == bindparam("message_id"),
            columns.status == OutboxStatus.SENDING,
            columns.claimed_by == bindparam("worker"),
            columns.due_at > bindparam("now"),
        )
        .values(due_at=bindparam("lease_until"))
        .returning(*(columns[name] for name in Claimed.__dataclass_fields__))
    )


def renew_claim(
    bind: Bind, message_id: int, *, worker: str, now: datetime, lease: timedelta
) -> Claimed | None:
    """Extend `worker`'s lease on a row before acting on it, and read it; None if the claim
    is gone.

    A claim is gone when the row was cancelled (the reader left: this is the check that
    stops an email claimed before an unsubscribe), or when its lease ran out (a slow batch)
    and another scheduler may have taken it over: then this one must not send it.
    """
    connection = _connection(bind)
    row = _prepared(_renew_statement(), connection).first(
        connection,
        {"message_id": message_id, "worker": worker, "now": now, "lease_until": now + lease},
    )
    return None if row is None else Claimed(*row)


def readers_of(session: Session, message_ids: Sequence[int]) -> dict[int, Reader]:
    """The subscribers of a batch of claimed rows, by subscriber id (one query)."""
    rows = session.execute(
        select(
            Subscriber.id,
            Subscriber.email,
            Subscriber.first_name,
            Subscriber.status,
            Subscriber.time_zone,
        )
        .join(OutboxMessage, OutboxMessage.subscriber_id == Subscriber.id)
        .where(OutboxMessage.id.in_(list(message_ids)))
    )
    return {row[0]: Reader(*row) for row in rows}


def may_receive(kind: str, subscriber: Subscriber | Reader | None) -> bool:
    """Whether an email of `kind` may still go to `subscriber` as they are now."""
    receivers = kinds.rules_of(kind).receivers
    if receivers is Receivers.OWNER:
        return True
    if subscriber is None:
        return False
    if receivers is Receivers.NOT_CONFIRMED:
        return subscriber.status is not SubscriberStatus.CONFIRMED
    return subscriber.status is SubscriberStatus.CONFIRMED


@functools.cache
def _finish_statement(
    states: tuple[OutboxStatus, ...], names: tuple[str, ...], give_back: bool
) -> Update:
    table = OutboxMessage.__table__
    values: dict[str, Any] = {name: bindparam(f"new_{name}") for name in names}
    values["claimed_by"] = None
    if give_back:
        values["attempts"] = table.c.attempts - 1
    return (
        table.update()
        .where(
            table.c.id == bindparam("message_id"),
            # OR of equalities, not IN: an IN list is re-rendered into the SQL on every run.
            or_(*(table.c.status == state for state in states)),
            table.c.claimed_by == bindparam("worker"),
        )
        .values(**values)
    )


def _finish(
    bind: Bind,
    message_id: int,
    worker: str,
    *,
    states: tuple[OutboxStatus, ...] = (OutboxStatus.SENDING,),
    give_back_attempt: bool = False,
    **values: Any,
) -> bool:
    statement = _finish_statement(states, tuple(sorted(values)), give_back_attempt)
    params = {"message_id": message_id, "worker": worker}
    params.update({f"new_{name}": value for name, value in values.items()})
    connection = _connection(bind)
    return _prepared(statement, connection).rowcount(connection, params) == 1


def mark_sent(bind: Bind, message_id: int, *, worker: str, now: datetime) -> bool:
    """Record that the server accepted the message.

    This holds even if the subscriber unsubscribed while the message was on the wire:
    the row then says what really happened (sent), not what was wished (cancelled).
    """
    return _finish(
        bind,
        message_id,
        worker,
        states=(OutboxStatus.SENDING, OutboxStatus.CANCELLED),
        status=OutboxStatus.SENT,
        sent_at=now,
        last_error=None,
    )


def mark_failed(bind: Bind, message_id: int, *, worker: str, error: str) -> bool:
    """Give up on the message for good."""
    return _finish(bind, message_id, worker, status=OutboxStatus.FAILED, last_error=error[:2000])


def mark_cancelled(bind: Bind, message_id: int, *, worker: str, reason: str) -> bool:
    """Drop the message: its recipient may no longer receive it."""
    return _finish(bind, message_id, worker, status=OutboxStatus.CANCELLED, last_error=reason)


def retry_later(
    bind: Bind,
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
    return _finish(
        bind,
        message_id,
        worker,
        give_back_attempt=not count_attempt,
        status=OutboxStatus.QUEUED,
        due_at=due_at,
        last_error=error[:2000],
    )


def release(bind: Bind, message_ids: Sequence[int], *, worker: str, due_at: datetime) -> int:
    """Hand claimed rows back untried: they keep their attempt count and are due at `due_at`."""
    if not message_ids:
        return 0
    table = OutboxMessage.__table__
    result = _connection(bind).execute(
        table.update()
        .where(
            table.c.id.in_(list(message_ids)),
            table.c.status == OutboxStatus.SENDING,
            table.c.claimed_by == worker,
        )
        .values(
            status=OutboxStatus.QUEUED,
            claimed_by=None,
            due_at=due_at,
            attempts=table.c.attempts - 1,
        )
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
