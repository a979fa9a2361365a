"""Claiming due emails under a lease, and recording what became of each.

The scheduler's dispatch pass claims due rows (`claim`), renews its lease before acting on
each (`renew_claim`) and records the outcome (`mark_sent`, `retry_later`, `mark_failed`,
`mark_cancelled`, `release`). The statements that run once per email are compiled once
and run on a plain Connection.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, Update, and_, bindparam, case, func, or_, select, text, update
from sqlalchemy.orm import Session

from .. import kinds
from ..kinds import Receivers
from ..models import OUTBOX_DUE_STATES, OutboxMessage, OutboxStatus, Subscriber, SubscriberStatus
from ..prepared import PreparedStatement

logger = logging.getLogger(__name__)

# What a row may be when its email is recorded as sent: cancelled while on the wire too.
SENT_FROM = (OutboxStatus.SENDING, OutboxStatus.CANCELLED)

# The sending loop runs these on a plain Connection (an ORM Session costs more per email
# than the statements themselves); everything else passes a Session.
Bind = Session | Connection


def _connection(bind: Bind) -> Connection:
    return bind.connection() if isinstance(bind, Session) else bind


def claim(
    session: Session, *, worker: str, now: datetime, limit: int, lease: timedelta
) -> Sequence[OutboxMessage]:
    """Claim the `limit` earliest-due rows for `worker` until `now + lease`.

    Due rows are queued rows whose time has come and rows whose lease ran out (their
    scheduler died). On PostgreSQL, rows another scheduler is claiming are skipped
    (FOR UPDATE SKIP LOCKED); on SQLite, BEGIN IMMEDIATE makes claims take turns.
    """
    claimed = session.scalars(
        _claim_statement(session, worker=worker, now=now, limit=limit, lease=lease).returning(
            OutboxMessage
        ),
        execution_options={"synchronize_session": False},
    ).all()
    return sorted(claimed, key=lambda message: message.id)


def claim_ids(
    session: Session, *, worker: str, now: datetime, limit: int, lease: timedelta
) -> list[int]:
    """claim(), for the sending loop: the ids alone, in order (it reads each row again as
    it renews the lease, and loading whole rows here cost a fifth of a batch's time)."""
    statement = _claim_statement(session, worker=worker, now=now, limit=limit, lease=lease)
    return sorted(session.execute(statement.returning(OutboxMessage.id)).scalars())


def _claim_statement(
    session: Session, *, worker: str, now: datetime, limit: int, lease: timedelta
) -> Update:
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
    return (
        update(OutboxMessage)
        # Checked again on the row itself: a row claimed meanwhile is left alone.
        .where(OutboxMessage.id == due_ids.c.id, *is_due)
        .values(
            status=OutboxStatus.SENDING,
            claimed_by=worker,
            due_at=now + lease,
            attempts=OutboxMessage.attempts + 1,
        )
    )


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
    # Part of the row's Message-ID and VERP token (service.message_ids): ids alone repeat
    # across databases.
    created_at: datetime


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


@dataclass(frozen=True)
class Sent:
    """An email the server accepted at `at`, to be recorded with the next lease renewal."""

    id: int
    at: datetime


@functools.cache
def _renew_statement(with_sent: bool) -> Update:
    # Built once: this runs for every email, and building SQL costs more than running it.
    table = OutboxMessage.__table__
    columns = table.c
    renewable = and_(
        columns.id == bindparam("message_id"),
        columns.status == OutboxStatus.SENDING,
        columns.due_at > bindparam("now"),
    )
    returning = [columns[name] for name in Claimed.__dataclass_fields__]
    if not with_sent:
        return (
            table.update()
            .where(renewable, columns.claimed_by == bindparam("worker"))
            .values(due_at=bindparam("lease_until"))
            .returning(*returning)
        )
    # One UPDATE for two rows, the email just sent and the next one, so that both cost one
    # round trip (on PostgreSQL, one commit). CASE, not a CTE: SQLite runs it too.
    sent = columns.id == bindparam("sent_id")
    recordable = and_(
        sent,
        or_(*(columns.status == state for state in SENT_FROM)),
    )
    return (
        table.update()
        .where(columns.claimed_by == bindparam("worker"), or_(recordable, renewable))
        .values(
            status=case((sent, OutboxStatus.SENT), else_=columns.status),
            sent_at=case(
                (sent, bindparam("sent_at", type_=columns.sent_at.type)), else_=columns.sent_at
            ),
            last_error=case((sent, None), else_=columns.last_error),
            claimed_by=case((sent, None), else_=columns.claimed_by),
            due_at=case((sent, columns.due_at), else_=bindparam("lease_until")),
        )
        .returning(*returning)
    )


def renew_claim(
    bind: Bind,
    message_id: int,
    *,
    worker: str,
    now: datetime,
    lease: timedelta,
    sent: Sent | None = None,
) -> Claimed | None:
    """Extend `worker`'s lease on a row before acting on it, and read it; None if the claim
    is gone. With `sent`, the same statement records that email as sent (mark_sent).

    A claim is gone when the row was cancelled (the reader left: this is the check that
    stops an email claimed before an unsubscribe), or when its lease ran out (a slow batch)
    and another scheduler may have taken it over: then this one must not send it.
    """
    connection = _connection(bind)
    values = {"message_id": message_id, "worker": worker, "now": now, "lease_until": now + lease}
    if sent is not None:
        values.update(sent_id=sent.id, sent_at=sent.at)
    statement = _prepared(_renew_statement(sent is not None), connection)
    renewed = None
    for row in statement.all(connection, values):
        if row[0] == message_id:
            renewed = Claimed(*row)
        elif sent is not None:
            sent = None  # recorded
    if sent is not None:
        logger.warning("outbox %d was sent but its claim had moved on", sent.id)
    return renewed


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
        states=SENT_FROM,
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
