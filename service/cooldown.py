"""The resend cooldown: a signup request that would email an address (or another spelling
of its mailbox) asked for within the cooldown sends nothing, so the form cannot flood an
inbox. Used by service.subscriptions for signups and for links asked for again."""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import bindparam, select, text
from sqlalchemy.orm import Session

from .models import Subscriber
from .signup_input import mailbox_key

_subscribers = Subscriber.__table__
# Core, not ORM: every signup runs it, and the ORM's execution costs more than the lookup.
_MAILBOX_ASKED_SINCE = (
    select(_subscribers.c.id)
    .where(
        _subscribers.c.mailbox_key == bindparam("mailbox"),
        _subscribers.c.last_requested_at > bindparam("since"),
    )
    .limit(1)
)


def mailbox_asked_recently(
    session: Session, mailbox: str, *, cooldown: timedelta, now: datetime
) -> bool:
    """Whether a request for any spelling of this mailbox caused an email within
    `cooldown` (one indexed lookup)."""
    found = session.connection().execute(
        _MAILBOX_ASKED_SINCE, {"mailbox": mailbox, "since": now - cooldown}
    )
    return found.first() is not None


def serialize_mailbox(session: Session, mailbox: str) -> None:
    """On PostgreSQL, signups for spellings of one mailbox wait for each other until commit,
    so that two at once cannot both find it quiet (SQLite's writers take turns anyway)."""
    if session.get_bind().dialect.name == "postgresql":
        session.execute(
            text("SELECT pg_advisory_xact_lock(hashtextextended(:mailbox, 0))"),
            {"mailbox": f"mailbox:{mailbox}"},
        )


def address_asked_recently(subscriber: Subscriber, *, cooldown: timedelta, now: datetime) -> bool:
    """Whether a request for this very address caused an email within `cooldown`."""
    last = subscriber.last_requested_at
    return last is not None and now - last < cooldown


def asked_recently(
    session: Session, subscriber: Subscriber, *, cooldown: timedelta, now: datetime
) -> bool:
    """Whether a request for this address, or for another spelling of its mailbox (unless
    this is the plain spelling), already caused an email within `cooldown`."""
    if address_asked_recently(subscriber, cooldown=cooldown, now=now):
        return True
    mailbox = subscriber.mailbox_key or mailbox_key(subscriber.email)
    if mailbox == subscriber.email_key:
        return False
    return mailbox_asked_recently(session, mailbox, cooldown=cooldown, now=now)
