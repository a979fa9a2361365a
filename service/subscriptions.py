"""Subscribing, confirming, unsubscribing: the life of a subscription.

Pure domain: functions take a session, the facts and `now`; they add rows (subscribers,
consent records, events, outbox emails) and never commit. The web form and the JSON API
both go through `parse_signup` and `subscribe`.
"""

from __future__ import annotations

import enum
import functools
import hashlib
import re
import unicodedata
import zoneinfo
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from email_validator import EmailNotValidError, validate_email
from sqlalchemy import bindparam, delete, select, text, update
from sqlalchemy.orm import Session

from . import outbox, sequences
from .db import insert_ignoring_conflicts, insert_row
from .models import (
    ConsentRecord,
    Enrollment,
    Event,
    OutboxMessage,
    Subscriber,
    SubscriberStatus,
    Suppression,
)

MAX_EMAIL_LENGTH = 254
MAX_NAME_LENGTH = 100
MAX_SOURCE_LENGTH = 100
MAX_USER_AGENT_LENGTH = 512

SOURCE_PATTERN = re.compile(rf"[A-Za-z0-9_.:/-]{{1,{MAX_SOURCE_LENGTH}}}")
# Characters a name never needs: controls (Cc), invisible formatting (Cf: bidirectional
# marks and overrides, which can make a name display as something else in the owner's
# pages, zero-width spaces, soft hyphens), lone surrogates (Cs, which no database can
# store) and private-use code points (Co). The zero-width joiner and non-joiner are Cf
# too, but Persian and Indic names and emoji sequences are spelled with them.
NOT_IN_NAMES = frozenset({"Cc", "Cf", "Cs", "Co"})
NAME_JOINERS = frozenset("\u200c\u200d")
LINK_PATTERN = re.compile(r"://|\bwww\.|\bhttps?\b|\.(com|net|org|ru|io|xyz|top)\b", re.IGNORECASE)


class InvalidSignup(ValueError):
    """The signup data has errors; `errors` maps each bad field to a sentence for the reader."""

    def __init__(self, errors: dict[str, str]) -> None:
        super().__init__("; ".join(f"{field}: {message}" for field, message in errors.items()))
        self.errors = errors


class UnknownSubscriber(LookupError):
    """No subscriber has that id (never existed, or erased)."""


class SupersededToken(ValueError):
    """The link was made before the subscriber left; it cannot bring them back."""


@dataclass(frozen=True)
class Signup:
    """Validated signup data."""

    email: str
    first_name: str | None
    time_zone: str
    source: str


@dataclass(frozen=True)
class Origin:
    """Where a request came from, for the consent record."""

    ip: str | None
    user_agent: str | None

    def __post_init__(self) -> None:
        if self.user_agent is not None:
            object.__setattr__(self, "user_agent", self.user_agent[:MAX_USER_AGENT_LENGTH])


class SignupResult(enum.StrEnum):
    CREATED = "created"  # new subscriber, confirmation email queued
    CONFIRMATION_SENT = "confirmation_sent"  # known, not confirmed: confirmation queued again
    GUIDE_SENT = "guide_sent"  # already confirmed: the guide link is emailed again
    SUPPRESSED = "suppressed"  # asked again inside the cooldown: nothing sent


@functools.cache
def known_time_zones() -> frozenset[str]:
    return frozenset(zoneinfo.available_timezones())


def normalize_email(raw: str) -> str:
    """The canonical form of an address; raise ValueError with a reader-facing reason.

    The domain is stored in its ASCII (IDNA) form, which is how it travels in SMTP, so
    `Bob@EXÄMPLE.de` and `Bob@xn--exmple-cua.de` are one subscriber.
    """
    raw = raw.strip()
    if not raw:
        raise ValueError("Please enter your email address.")
    if len(raw) > MAX_EMAIL_LENGTH:
        raise ValueError("That email address is too long.")
    try:
        result = validate_email(raw, check_deliverability=False, allow_smtputf8=True)
    except EmailNotValidError as exc:
        raise ValueError(str(exc)) from exc
    return f"{result.local_part}@{result.ascii_domain}"


def email_key(email: str) -> str:
    """The form two addresses are compared in: one subscriber however it is capitalized.

    lower(), not casefold(): casefold would make straße@ and strasse@ one address.
    """
    return email.lower()


# Providers that deliver b.o.m.b@ and bomb@ to one inbox, and the domain each is one with.
DOTS_IGNORED = {"gmail.com": "gmail.com", "googlemail.com": "gmail.com"}


def mailbox_key(email: str) -> str:
    """The inbox an address reaches, as far as can be told from the address: its
    compatibility form (NFKC: full-width letters are letters), lower case, without a
    +tag, and without dots where the provider ignores them. Only the resend cooldown uses
    it; the address is kept, and mailed, as typed."""
    local, _, domain = unicodedata.normalize("NFKC", email).lower().rpartition("@")
    untagged = local.split("+", 1)[0] or local
    if domain in DOTS_IGNORED:
        domain = DOTS_IGNORED[domain]
        untagged = untagged.replace(".", "") or untagged
    return f"{untagged}@{domain}"[:320]


def clean_name(raw: str) -> str | None:
    """A first name as it is kept; ValueError with a reader-facing reason.

    Spammers put links in name fields (the confirmation email would carry them): anything
    that reads as a link is refused, judged on the name's compatibility form (NFKC) so
    that look-alikes such as `evil\u2024com` (a one-dot leader) or full-width letters
    count as what they look like.
    """
    if any(unicodedata.category(ch) in NOT_IN_NAMES and ch not in NAME_JOINERS for ch in raw):
        raise ValueError("Your first name can only be one line of plain text.")
    name = " ".join(unicodedata.normalize("NFC", raw).split())
    if not name:
        return None
    if len(name) > MAX_NAME_LENGTH:
        raise ValueError(f"Please keep your first name under {MAX_NAME_LENGTH} characters.")
    looks_like = unicodedata.normalize("NFKC", name)
    if LINK_PATTERN.search(looks_like) or "<" in looks_like or ">" in looks_like:
        raise ValueError("Please enter just your first name.")
    return name


def parse_signup(data: Mapping[str, Any], *, default_time_zone: str, default_source: str) -> Signup:
    """Validate signup fields from a form or JSON; raise InvalidSignup listing every problem."""
    errors: dict[str, str] = {}

    def text(field: str) -> str:
        value = data.get(field)
        if value is None:
            return ""
        if not isinstance(value, str):
            errors[field] = "Must be text."
            return ""
        if not value.isascii():
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:  # a lone surrogate, from JSON's \\udcff say
                errors[field] = "Must be text (this holds a character that is not one)."
                return ""
        return value

    email = ""
    raw_email = text("email")
    if "email" not in errors:
        try:
            email = normalize_email(raw_email)
        except ValueError as exc:
            errors["email"] = str(exc)

    first_name = None
    raw_name = text("first_name")
    if "first_name" not in errors:
        try:
            first_name = clean_name(raw_name)
        except ValueError as exc:
            errors["first_name"] = str(exc)

    # The browser reports the zone; a missing or unknown one is not the reader's problem.
    time_zone = text("time_zone").strip()
    errors.pop("time_zone", None)
    if time_zone not in known_time_zones():
        time_zone = default_time_zone

    source = text("source").strip() or default_source
    if "source" not in errors and not SOURCE_PATTERN.fullmatch(source):
        errors["source"] = (
            f"Use letters, digits and . _ - : / only, at most {MAX_SOURCE_LENGTH} characters."
        )

    if errors:
        raise InvalidSignup(errors)
    return Signup(email=email, first_name=first_name, time_zone=time_zone, source=source)


def consent_version(text: str) -> str:
    """A short, stable fingerprint of a consent wording."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:12]


def record_consent(
    session: Session,
    subscriber_id: int,
    *,
    action: str,
    origin: Origin,
    source: str,
    consent_text: str,
    now: datetime,
) -> None:
    insert_row(
        session,
        ConsentRecord.__table__,
        {
            "subscriber_id": subscriber_id,
            "action": action,
            "at": now,
            "ip": origin.ip,
            "user_agent": origin.user_agent,
            "source": source,
            "text": consent_text,
            "text_version": consent_version(consent_text),
        },
    )


def record_event(
    session: Session,
    subscriber_id: int | None,
    kind: str,
    *,
    now: datetime,
    detail: dict[str, Any] | None = None,
) -> None:
    """Add an entry to a subscriber's history."""
    insert_row(
        session,
        Event.__table__,
        {"subscriber_id": subscriber_id, "kind": kind, "at": now, "detail": detail},
    )


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


def _asked_recently(
    session: Session, subscriber: Subscriber, *, cooldown: timedelta, now: datetime
) -> bool:
    """Whether a request for this address, or for another spelling of its mailbox (unless
    this is the plain spelling), already caused an email within `cooldown`."""
    last = subscriber.last_requested_at
    if last is not None and now - last < cooldown:
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
        outbox.enqueue(
            session,
            NewSubscriber(new_id, signup.email),
            kind="confirm",
            template="confirm",
            now=now,
        )
        return new_id, SignupResult.CREATED

    subscriber = _find(session, signup.email)
    assert subscriber is not None  # the insert found it there
    if cooling_down or _asked_recently(session, subscriber, cooldown=cooldown, now=now):
        record_event(session, subscriber.id, "signup_suppressed", now=now)
        return subscriber.id, SignupResult.SUPPRESSED
    subscriber.last_requested_at = now

    if subscriber.status is SubscriberStatus.CONFIRMED:
        outbox.enqueue(session, subscriber, kind="guide", template="guide_again", now=now)
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
    outbox.enqueue(session, subscriber, kind="confirm", template="confirm", now=now)
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
    sequence: str,
    now: datetime,
) -> tuple[Subscriber, bool]:
    """Confirm a subscription; (subscriber, True) if this call confirmed it.

    Confirming records the consent, queues the welcome email with the guide (once per
    subscriber, ever) and enrolls the subscriber in the drip `sequence`. Confirming again is
    harmless. A link made before the subscriber unsubscribed or bounced is refused, so an
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
        kind="welcome",
        template="welcome",
        now=now,
        dedupe_key=f"welcome:{subscriber.id}",
    )
    sequences.enroll(session, subscriber, now=now, sequence=sequence)
    return subscriber, True


def _stop_mail(session: Session, subscriber: Subscriber, reason: str, now: datetime) -> None:
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
    _stop_mail(session, subscriber, reason="unsubscribed", now=now)
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
    _stop_mail(session, subscriber, reason="address bounced", now=now)
    record_event(session, subscriber.id, "bounced", now=now, detail={"reason": reason[:500]})
    return subscriber


def suppression_hash(email: str) -> str:
    """The one-way hash an erased address is remembered by (SHA-256 of its compared form)."""
    return hashlib.sha256(f"suppressed:{email_key(email)}".encode()).hexdigest()


def is_suppressed(session: Session, email: str) -> bool:
    """Whether `email` belongs to someone who was erased (and so must not be imported)."""
    return bool(suppressed(session, [email]))


def suppressed(session: Session, emails: list[str]) -> set[str]:
    """Those of `emails` that belong to someone who was erased (one query per 500)."""
    by_hash = {suppression_hash(email): email for email in emails}
    hashes = list(by_hash)
    found: set[str] = set()
    for start in range(0, len(hashes), 500):
        found.update(
            session.scalars(
                select(Suppression.email_hash).where(
                    Suppression.email_hash.in_(hashes[start : start + 500])
                )
            )
        )
    return {by_hash[digest] for digest in found}


def erase(session: Session, subscriber_id: int, *, now: datetime) -> str:
    """Remove a subscriber's personal data from every table (GDPR erasure); irreversible.

    What stays: a hash of the address in `suppressions`, so an import cannot bring them
    back; their events and sent emails without anything that says whose they were, so the
    dashboard's counts still add up. Returns the erased address, for the owner's message.
    """
    subscriber = get_subscriber(session, subscriber_id, for_update=True)
    address = subscriber.email
    _stop_mail(session, subscriber, reason="erased", now=now)
    insert_ignoring_conflicts(
        session,
        Suppression.__table__,
        {"email_hash": suppression_hash(address), "reason": "erased", "created_at": now},
    )
    session.execute(
        update(Event)
        .where(Event.subscriber_id == subscriber_id)
        .values(subscriber_id=None, detail=None)
        .execution_options(synchronize_session=False)
    )
    session.execute(
        update(OutboxMessage)
        .where(OutboxMessage.subscriber_id == subscriber_id)
        # The dedupe key names the subscriber's id, which would tie these rows together.
        .values(subscriber_id=None, to_address="", context={}, last_error=None, dedupe_key=None)
        .execution_options(synchronize_session=False)
    )
    record_event(session, None, "erased", now=now)
    # Deleted explicitly rather than left to ON DELETE CASCADE, which SQLite applies only
    # with foreign keys switched on.
    session.execute(delete(ConsentRecord).where(ConsentRecord.subscriber_id == subscriber_id))
    session.execute(delete(Enrollment).where(Enrollment.subscriber_id == subscriber_id))
    session.execute(delete(Subscriber).where(Subscriber.id == subscriber_id))
    session.expunge(subscriber)
    return address


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
    template: str,
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
    outbox.enqueue(session, subscriber, kind=kind, template=template, now=now)
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
        kind="guide",
        template="guide_again",
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
        kind="confirm",
        template="confirm",
        event="confirmation_resent",
        cooldown=cooldown,
        now=now,
    )
