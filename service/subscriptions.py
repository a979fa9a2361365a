"""Subscribing, confirming, unsubscribing: the life of a subscription.

Pure domain: functions take a session, the facts and `now`; they add rows (subscribers,
consent records, events, outbox emails) and never commit. The web form and the JSON API
read their input through service.signup_input, then call `subscribe`.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from . import funnels as funnels_
from . import kinds, outbox, sequences
from .cooldown import (
    address_asked_recently,
    asked_recently,
    mailbox_asked_recently,
    serialize_mailbox,
)
from .db import insert_ignoring_conflicts
from .funnels import Funnels
from .funnels import incentive_key as incentive_key
from .journal import Origin, record_consent, record_event
from .magnets import DEFAULT_MAGNET, LeadMagnet
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
    GUIDE_SENT = "guide_sent"  # already confirmed: the magnet's link is emailed again
    MAGNET_SENT = "magnet_sent"  # already confirmed, a magnet new to them: delivered at once
    SUPPRESSED = "suppressed"  # asked again inside the cooldown: nothing sent


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
    magnet: LeadMagnet | None = None,
    funnels: Funnels | None = None,
) -> tuple[int, SignupResult]:
    """Handle a signup request for any address, new or known; (subscriber id, what happened).

    The request is for `magnet` (the default magnet when None) and is recorded whatever
    happens, so a pending reader who asks for two magnets confirms once and gets both. A
    confirmed reader asking for a magnet new to them gets it at once, without confirming
    again (the consent record notes the request); asking for one they have sends its
    link again, within the cooldown's limit.

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
        serialize_mailbox(session, mailbox)
        cooling_down = mailbox_asked_recently(session, mailbox, cooldown=cooldown, now=now)
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
    magnet_id = magnet.id if magnet is not None else DEFAULT_MAGNET
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
        funnels_.record_request(
            session, new_id, magnet_id, source=signup.source, now=now, first=True
        )
        record_event(
            session,
            new_id,
            "signed_up",
            now=now,
            detail={"source": signup.source, "magnet": magnet_id},
        )
        if cooling_down:
            record_event(session, new_id, "signup_suppressed", now=now)
            return new_id, SignupResult.SUPPRESSED
        outbox.enqueue(
            session,
            NewSubscriber(new_id, signup.email),
            kinds.CONFIRM,
            now=now,
            context=funnels_.email_context(magnet),
        )
        return new_id, SignupResult.CREATED

    subscriber = _find(session, signup.email)
    assert subscriber is not None  # the insert found it there
    new_request = funnels_.record_request(
        session, subscriber.id, magnet_id, source=signup.source, now=now
    )
    if (
        subscriber.status is SubscriberStatus.CONFIRMED
        and magnet is not None
        and funnels
        and (new_request or funnels_.requested(session, subscriber.id).get(magnet.id) is None)
    ):
        # They opted in already: a magnet new to them comes at once. Each magnet comes
        # once, so this needs no cooldown of its own.
        record_consent(
            session,
            subscriber.id,
            action="request",
            origin=origin,
            source=f"{signup.source}:{magnet.id}"[:100],
            consent_text=consent_text,
            now=now,
        )
        funnels_.deliver(
            session,
            subscriber,
            magnet,
            sequence=funnels.sequences.get(magnet.sequence or ""),
            now=now,
        )
        record_event(
            session,
            subscriber.id,
            "magnet_requested",
            now=now,
            detail={"magnet": magnet.id, "source": signup.source},
        )
        return subscriber.id, SignupResult.MAGNET_SENT
    # The mailbox was looked up above; only the address's own cooldown is left to check.
    if cooling_down or address_asked_recently(subscriber, cooldown=cooldown, now=now):
        record_event(session, subscriber.id, "signup_suppressed", now=now)
        return subscriber.id, SignupResult.SUPPRESSED
    subscriber.last_requested_at = now

    if subscriber.status is SubscriberStatus.CONFIRMED:
        outbox.enqueue(
            session,
            subscriber,
            kinds.GUIDE_AGAIN,
            now=now,
            context=funnels_.email_context(magnet),
        )
        record_event(session, subscriber.id, "guide_resent", now=now, detail={"magnet": magnet_id})
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
    outbox.enqueue(
        session, subscriber, kinds.CONFIRM, now=now, context=funnels_.email_context(magnet)
    )
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
    now: datetime,
    magnet: LeadMagnet | None = None,
    funnels: Funnels | None = None,
) -> tuple[Subscriber, bool]:
    """Confirm a subscription; (subscriber, True) if this call confirmed it.

    Confirming records the consent and delivers every magnet the reader asked for
    (service.funnels: its email once per subscriber and magnet, ever; its tags; its drip
    sequence), or just `magnet` when no `funnels` are given. Confirming again is harmless. A link made before the subscriber unsubscribed or bounced is refused, so an
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
    if funnels is None:
        funnels = Funnels({magnet.id: magnet} if magnet is not None else {})
    if magnet is not None:
        funnels_.record_request(
            session, subscriber.id, magnet.id, source=subscriber.source, now=now
        )
    funnels_.deliver_requested(session, subscriber, funnels, now=now)
    return subscriber, True


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


def record_download(
    session: Session, subscriber_id: int, *, now: datetime, magnet: str = DEFAULT_MAGNET
) -> Subscriber:
    """Count a download of a magnet."""
    subscriber = get_subscriber(session, subscriber_id)
    record_event(session, subscriber.id, "downloaded", now=now, detail={"magnet": magnet})
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
    context: dict[str, str] | None = None,
) -> bool:
    subscriber = get_subscriber(session, subscriber_id, for_update=True)
    if (subscriber.status is SubscriberStatus.CONFIRMED) is not confirmed:
        return False
    if asked_recently(session, subscriber, cooldown=cooldown, now=now):
        return False
    subscriber.last_requested_at = now
    outbox.enqueue(session, subscriber, kind, now=now, context=context)
    detail = {"magnet": context["magnet"]} if context and "magnet" in context else None
    record_event(session, subscriber.id, event, now=now, detail=detail)
    return True


def request_guide_link(
    session: Session,
    subscriber_id: int,
    *,
    cooldown: timedelta,
    now: datetime,
    magnet: LeadMagnet | None = None,
) -> bool:
    """Email a confirmed subscriber a fresh download link for `magnet` (the default when
    None): their old one expired."""
    return _request_again(
        session,
        subscriber_id,
        confirmed=True,
        kind=kinds.GUIDE_AGAIN,
        event="guide_resent",
        cooldown=cooldown,
        now=now,
        context=funnels_.email_context(magnet),
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
