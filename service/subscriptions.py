"""Subscribing, confirming, unsubscribing: the life of a subscription.

Pure domain: functions take a session, the facts and `now`; they add rows (subscribers,
consent records, events, outbox emails) and never commit. The web form and the JSON API
read their input through service.signup_input, then call `subscribe`.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import bindparam, select, text
from sqlalchemy.orm import Session

from . import kinds, outbox, sequences
from .db import insert_ignoring_conflicts
from .journal import Origin, record_consent, record_event
from .magnets import LeadMagnet
from .models import (
    Subscriber,
    SubscriberStatus,
)
from .signup_input import Signup, email_key, mailbox_key


class UnknownSubscriber(LookupError):
    """No subscriber has that id (never existed, or erased)."""


class SupersededToken(ValueError):
    """The link was made before the subscriber left; it cannot bring them back."""


class SignupResult(enum.StrEnum):
    CREATED = "created"  # new subscriber, confirmation email queued
    CONFIRMATION_SENT = "confirmation_sent"  # known, not confirmed: confirmation queued again
    GUIDE_SENT = "guide_sent"  # already confirmed: the guide link is emailed again
    SUPPRESSED = "suppressed"  # asked again inside the cooldown: nothing sent


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


def _mailbox_asked_recently(
    session: Session, mailbox: str, *, cooldown: timedelta, now: datetime
) -> bool:
    """Whether a request for any spelling of this mailbox caused an email within
    `cooldown` (one indexed lookup)."""
    found = session.connection().execute(
        _MAILBOX_ASKED_SINCE, {"mailbox": mailbox, "since": now - cooldown}
    )
    return found.first() is not None


def _serialize_mailbox(session: Session, mailbox: str) -> None:
    """On PostgreSQL, signups for spellings of one mailbox wait for each other until commit,
    so that two at once cannot both find it quiet (SQLite's writers take turns anyway)."""
    if session.get_bind().dialect.name == "postgresql":
        session.execute(
            text("SELECT pg_advisory_xact_lock(hashtextextended(:mailbox, 0))"),
            {"mailbox": f"mailbox:{mailbox}"},
        )


def _address_asked_recently(subscriber: Subscriber, *, cooldown: timedelta, now: datetime) -> bool:
    """Whether a request for this very address caused an email within `cooldown`."""
    last = subscriber.last_requested_at
    return last is not None and now - last < cooldown


def _asked_recently(
    session: Session, subscriber: Subscriber, *, cooldown: timedelta, now: datetime
) -> bool:
    """Whether a request for this address, or for another spelling of its mailbox (unless
    this is the plain spelling), already caused an email within `cooldown`."""
    if _address_asked_recently(subscriber, cooldown=cooldown, now=now):
        return True
    mailbox = subscriber.mailbox_key or mailbox_key(subscriber.email)
    if mailbox == subscriber.email_key:
        return False
    return _mailbox_asked_recently(session, mailbox, cooldown=cooldown, now=now)


def _find(session: Session, email: str) -> Subscriber | None:
    return session.scalar(
        select(Subscriber)
        .where(Subscriber.email_key == email_key(email))
        .with_for_update(key_share=True)
    )


@dataclass(frozen=True)
class NewSubscriber:
    id: int
    email: str


def subscribe(
    session: Session,
    signup: Signup,
    origin: Origin,
    *,
    consent_text: str,
    cooldown: timedelta,
    now: datetime,
) -> tuple[int, SignupResult]:
    """Handle a signup request for any address, new or known; (subscriber id, what happened).

    The caller answers every request the same way, so nobody learns whether an address is
    on the list; this decides which email (if any) goes out:
    new or not yet confirmed -> a confirmation email; already confirmed -> the guide link
    again; a second request inside `cooldown` -> nothing, so a form cannot flood an inbox.
    The cooldown also counts per mailbox (`mailbox_key`): `bomb+1@`, `b.o.m.b@` at a
    provider that ignores dots and full-width letters are new subscribers, kept as typed,
    but no second email goes through them to the one inbox they all reach. The plain
    spelling (`bomb@gmail.com`) only waits for its own cooldown, so nobody can keep a
    reader from signing up by asking again and again for `reader+x@`.
    """
    mailbox = mailbox_key(signup.email)
    cooling_down = False
    if mailbox != email_key(signup.email):
        _serialize_mailbox(session, mailbox)
        cooling_down = _mailbox_asked_recently(session, mailbox, cooldown=cooldown, now=now)
    # New addresses are the common case: one INSERT that yields to an existing row (also
    # one committed by a concurrent request) instead of a SELECT, a savepoint and a retry.
    new_id = insert_ignoring_conflicts(
        session,
        Subscriber.__table__,
        {
            "email": signup.email,
            "email_key": email_key(signup.email),
            "mailbox_key": mailbox,
            "first_name": signup.first_name,
            "status": SubscriberStatus.PENDING,
            "time_zone": signup.time_zone,
            "source": signup.source,
            "created_at": now,
            "last_requested_at": None if cooling_down else now,
        },
        returning=Subscriber.id,
    )
    if new_id is not None:
        record_consent(
            session,
            new_id,
            action="signup",
            origin=origin,
            source=signup.source,
            consent_text=consent_text,
            now=now,
        )
        record_event(session, new_id, "signed_up", now=now, detail={"source": signup.source})
        if cooling_down:
            record_event(session, new_id, "signup_suppressed", now=now)
            return new_id, SignupResult.SUPPRESSED
        outbox.enqueue(session, NewSubscriber(new_id, signup.email), kinds.CONFIRM, now=now)
        return new_id, SignupResult.CREATED

    subscriber = _find(session, signup.email)
    assert subscriber is not None  # the insert found it there
    # The mailbox was looked up above; only the address's own cooldown is left to check.
    if cooling_down or _address_asked_recently(subscriber, cooldown=cooldown, now=now):
        record_event(session, subscriber.id, "signup_suppressed", now=now)
        return subscriber.id, SignupResult.SUPPRESSED
    subscriber.last_requested_at = now

    if subscriber.status is SubscriberStatus.CONFIRMED:
        outbox.enqueue(session, subscriber, kinds.GUIDE_AGAIN, now=now)
        record_event(session, subscriber.id, "guide_resent", now=now)
        return subscriber.id, SignupResult.GUIDE_SENT

    # Pending, unsubscribed or bounced: they may come (back) in, by confirming again.
    record_consent(
        session,
        subscriber.id,
        action="signup",
        origin=origin,
        source=signup.source,
        consent_text=consent_text,
        now=now,
    )
    outbox.enqueue(session, subscriber, kinds.CONFIRM, now=now)
    record_event(session, subscriber.id, "confirmation_resent", now=now)
    return subscriber.id, SignupResult.CONFIRMATION_SENT


def get_subscriber(session: Session, subscriber_id: int, *, for_update: bool = False) -> Subscriber:
    """The subscriber with that id, or UnknownSubscriber."""
    # FOR NO KEY UPDATE (key_share): a tick inserting outbox rows for this subscriber takes
    # a KEY SHARE lock for the foreign key; a plain FOR UPDATE would deadlock with it.
    lock = {"key_share": True} if for_update else None
    subscriber = session.get(Subscriber, subscriber_id, with_for_update=lock)
    if subscriber is None:
        raise UnknownSubscriber(subscriber_id)
    return subscriber


def confirm(
    session: Session,
    subscriber_id: int,
    origin: Origin,
    *,
    token_issued_at: datetime,
    consent_text: str,
    magnet: LeadMagnet,
    now: datetime,
) -> tuple[Subscriber, bool]:
    """Confirm a subscription; (subscriber, True) if this call confirmed it.

    Confirming records the consent, queues the email that delivers the lead `magnet`
    (once per subscriber and magnet, ever) and enrolls the subscriber in the magnet's drip
    sequence. Confirming again is harmless. A link made before the subscriber unsubscribed or bounced is refused, so an
    old email cannot silently bring them back.
    """
    subscriber = get_subscriber(session, subscriber_id, for_update=True)
    if subscriber.status is SubscriberStatus.CONFIRMED:
        return subscriber, False
    left_at = subscriber.unsubscribed_at or subscriber.bounced_at
    # Tokens carry whole seconds.
    if left_at is not None and token_issued_at < left_at.replace(microsecond=0):
        raise SupersededToken(subscriber_id)

    subscriber.status = SubscriberStatus.CONFIRMED
    subscriber.confirmed_at = now
    subscriber.unsubscribed_at = None
    subscriber.bounced_at = None
    record_consent(
        session,
        subscriber.id,
        action="confirm",
        origin=origin,
        source=subscriber.source,
        consent_text=consent_text,
        now=now,
    )
    record_event(session, subscriber.id, "confirmed", now=now)
    outbox.enqueue(
        session,
        subscriber,
        kinds.WELCOME,
        template=magnet.incentive_template,
        now=now,
        dedupe_key=incentive_key(magnet.id, subscriber.id),
    )
    if magnet.sequence is not None:
        sequences.enroll(session, subscriber, now=now, sequence=magnet.sequence)
    return subscriber, True


def incentive_key(magnet_id: str, subscriber_id: int) -> str:
    """The dedupe key of a magnet's incentive email to a subscriber: one, ever."""
    return f"{kinds.WELCOME}:{magnet_id}:{subscriber_id}"


def stop_mail(session: Session, subscriber: Subscriber, reason: str, now: datetime) -> None:
    # The sequence first: it waits for a tick that is queueing a step for this subscriber,
    # so the cancelling below sees that step as well.
    sequences.stop(session, subscriber.id, now=now, reason=reason)
    outbox.cancel_for_subscriber(session, subscriber.id, reason=reason)


def unsubscribe(
    session: Session, subscriber_id: int, *, via: str, now: datetime
) -> Subscriber | None:
    """Unsubscribe; nothing more is sent, including emails already queued or being sent.

    Returns None if the subscriber no longer exists (an erased subscriber stays gone).
    Unsubscribing twice is harmless.
    """
    try:
        subscriber = get_subscriber(session, subscriber_id, for_update=True)
    except UnknownSubscriber:
        return None
    if subscriber.status is SubscriberStatus.UNSUBSCRIBED:
        return subscriber
    subscriber.status = SubscriberStatus.UNSUBSCRIBED
    subscriber.unsubscribed_at = now
    stop_mail(session, subscriber, reason="unsubscribed", now=now)
    record_event(session, subscriber.id, "unsubscribed", now=now, detail={"via": via})
    return subscriber


def mark_bounced(
    session: Session, subscriber_id: int, *, reason: str, now: datetime
) -> Subscriber | None:
    """The address does not take mail: stop everything to it."""
    try:
        subscriber = get_subscriber(session, subscriber_id, for_update=True)
    except UnknownSubscriber:
        return None
    if subscriber.status is not SubscriberStatus.UNSUBSCRIBED:
        subscriber.status = SubscriberStatus.BOUNCED
        subscriber.bounced_at = now
    stop_mail(session, subscriber, reason="address bounced", now=now)
    record_event(session, subscriber.id, "bounced", now=now, detail={"reason": reason[:500]})
    return subscriber


def record_download(session: Session, subscriber_id: int, *, now: datetime) -> Subscriber:
    """Count a download of the guide."""
    subscriber = get_subscriber(session, subscriber_id)
    record_event(session, subscriber.id, "downloaded", now=now)
    return subscriber


def _request_again(
    session: Session,
    subscriber_id: int,
    *,
    confirmed: bool,
    kind: str,
    event: str,
    cooldown: timedelta,
    now: datetime,
) -> bool:
    subscriber = get_subscriber(session, subscriber_id, for_update=True)
    if (subscriber.status is SubscriberStatus.CONFIRMED) is not confirmed:
        return False
    if _asked_recently(session, subscriber, cooldown=cooldown, now=now):
        return False
    subscriber.last_requested_at = now
    outbox.enqueue(session, subscriber, kind, now=now)
    record_event(session, subscriber.id, event, now=now)
    return True


def request_guide_link(
    session: Session, subscriber_id: int, *, cooldown: timedelta, now: datetime
) -> bool:
    """Email a confirmed subscriber a fresh download link (their old one expired)."""
    return _request_again(
        session,
        subscriber_id,
        confirmed=True,
        kind=kinds.GUIDE_AGAIN,
        event="guide_resent",
        cooldown=cooldown,
        now=now,
    )


def request_confirmation(
    session: Session, subscriber_id: int, *, cooldown: timedelta, now: datetime
) -> bool:
    """Email a new confirmation link (the old one expired) unless one went out recently."""
    return _request_again(
        session,
        subscriber_id,
        confirmed=False,
        kind=kinds.CONFIRM,
        event="confirmation_resent",
        cooldown=cooldown,
        now=now,
    )
