"""The people who run the list: accounts, passwords and the sessions they hold.

Passwords are hashed with scrypt (Werkzeug's default) and must not be among those an
attacker tries first (zxcvbn's estimate). A session is a row in `admin_sessions`, found by
the hash of the random token in the browser's cookie: signing out deletes the row, so a
copy of the cookie dies with it; changing the password deletes every other session.

The first account can come from a setup link (`make run` prints one): signed, valid for an
hour, and good only while no account exists, so it serves once without a table of its own.
"""

from __future__ import annotations

import functools
import hashlib
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import delete, func, select, text, update
from sqlalchemy.orm import Session
from werkzeug.security import check_password_hash, generate_password_hash

from .models import AdminSession, AdminUser
from .signup_input import email_key, known_time_zones, normalize_email, sorted_time_zones
from .tokens import ExpiredToken, InvalidToken, Purpose, Tokens

MIN_PASSWORD_LENGTH = 12
MAX_PASSWORD_LENGTH = 1024
MAX_EMAIL_KEY = 320  # hashing a megabyte of "password" is a denial of service
# zxcvbn's score, 0-4: 3 and up resist an online attack for good and a slow-hash offline
# one for long (its "safely unguessable"); 0-2 are the passwords tried first.
MIN_PASSWORD_SCORE = 3
# zxcvbn takes at most 72 characters; a longer password is at least as strong as its start.
STRENGTH_CHECKED_LENGTH = 72
MAX_SESSION_TOKEN_LENGTH = 100
# A session's last visit is written at most this often (each write takes the write lock).
SESSION_TOUCH_INTERVAL = timedelta(minutes=1)
SETUP_LINK_LIFETIME = timedelta(hours=1)


@functools.cache
def _dummy_hash() -> str:
    """Checked against when the account does not exist, so a wrong address costs as much
    time as a wrong password and does not tell which addresses have accounts. Made on
    first use: scrypt takes 32 MB and 50 ms, which no command needs to pay at import."""
    return generate_password_hash("not a real password, only for timing")


class AdminError(ValueError):
    """A request about admin accounts that cannot be carried out; the message says why,
    and `field` which of the form's fields it is about ("email" or "password")."""

    def __init__(self, message: str, *, field: str = "password") -> None:
        super().__init__(message)
        self.field = field


class WrongPassword(AdminError):
    """The password given to prove who is asking was not right."""


class SetupLinkError(AdminError):
    """The setup link cannot create an account: `reason` is "forged", "expired" or "used"."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"the setup link is {reason}")
        self.reason = reason


def password_problem(password: str, *, user_inputs: tuple[str, ...] = ()) -> str | None:
    """Why `password` is not acceptable, or None. `user_inputs` (the account's address,
    say) are words an attacker would try with it."""
    if len(password) < MIN_PASSWORD_LENGTH:
        return f"Use at least {MIN_PASSWORD_LENGTH} characters."
    if len(password) > MAX_PASSWORD_LENGTH:
        return f"Use at most {MAX_PASSWORD_LENGTH} characters."
    if not password.strip():
        return "A password of spaces only is not a password."
    from zxcvbn import zxcvbn  # its dictionaries take 30 ms to load; only this needs them

    estimate = zxcvbn(password[:STRENGTH_CHECKED_LENGTH], user_inputs=list(user_inputs))
    if estimate["score"] < MIN_PASSWORD_SCORE:
        feedback = estimate["feedback"]
        hint = " ".join(filter(None, [feedback.get("warning"), *feedback.get("suggestions", [])]))
        return (
            "That password is among the first an attacker would try. "
            + (hint or "Add a few uncommon words.")
        ).strip()
    return None


def count(session: Session) -> int:
    return session.scalar(select(func.count()).select_from(AdminUser))


def exists(session: Session, email: str) -> bool:
    """Whether there is an account for `email` (in any of its spellings)."""
    return (
        session.scalar(select(AdminUser.id).where(AdminUser.email_key == account_key(email)))
        is not None
    )


def create(session: Session, email: str, password: str, *, now: datetime) -> AdminUser:
    """A new admin account; AdminError if the address is invalid or taken, or the
    password too weak."""
    try:
        address = normalize_email(email)
    except ValueError as exc:
        raise AdminError(str(exc), field="email") from None
    problem = password_problem(password, user_inputs=(address,))
    if problem:
        raise AdminError(problem)
    if session.scalar(select(AdminUser.id).where(AdminUser.email_key == email_key(address))):
        raise AdminError(f"There is already an admin account for {address}.", field="email")
    admin = AdminUser(
        email=address,
        email_key=email_key(address),
        password_hash=generate_password_hash(password),
        created_at=now,
        password_changed_at=now,
    )
    session.add(admin)
    session.flush()
    return admin


def setup_token(tokens: Tokens, *, now: datetime) -> str:
    """The token of a setup link made at `now`."""
    return tokens.make(Purpose.ADMIN_SETUP, 0, now=now)


def check_setup_token(session: Session, tokens: Tokens, token: str, *, now: datetime) -> None:
    """Raise SetupLinkError unless `token` may create the first account now."""
    try:
        tokens.read(Purpose.ADMIN_SETUP, token, now=now, max_age=SETUP_LINK_LIFETIME)
    except InvalidToken:
        raise SetupLinkError("forged") from None
    except ExpiredToken:
        # An old link to an instance that has its owner says so, not "ask for a new one".
        raise SetupLinkError("used" if count(session) else "expired") from None
    if count(session):
        raise SetupLinkError("used")


def create_owner(
    session: Session, tokens: Tokens, token: str, email: str, password: str, *, now: datetime
) -> AdminUser:
    """The first account, made through a setup link; SetupLinkError if the link cannot
    make it, AdminError if the address or the password will not do."""
    if session.get_bind().dialect.name == "postgresql":
        # Two posts of the link at once: the second waits here for the first to commit,
        # then finds its account. (SQLite's writes already take turns, BEGIN IMMEDIATE.)
        session.execute(text("LOCK TABLE admin_users IN EXCLUSIVE MODE"))
    check_setup_token(session, tokens, token, now=now)
    return create(session, email, password, now=now)


def account_key(email: str) -> str:
    """The form an account name is looked up and rate-limited by: `Owner@EXAMPLE.com`, the
    same with full-width letters (IDNA folds them) and `owner@example.com` are one account,
    and so one budget of attempts. Something that is no address at all is kept as typed,
    less what no database stores (a NUL, say), so that it still has a budget of its own."""
    try:
        return email_key(normalize_email(email))
    except ValueError:
        printable = "".join(ch for ch in email if ch.isprintable())
        return printable.strip().lower()[:MAX_EMAIL_KEY]


@dataclass(frozen=True)
class SignIn:
    """Who proved their password."""

    admin_id: int
    email: str


def authenticate(session: Session, email: str, password: str) -> SignIn | None:
    """The account if the password is right, else None (the same time either way).

    Only reads: scrypt takes ~50 ms, too long to hold SQLite's write lock. The caller
    then starts the session (`start_session`) in a short write of its own.
    """
    password = password[:MAX_PASSWORD_LENGTH]
    admin = session.scalar(select(AdminUser).where(AdminUser.email_key == account_key(email)))
    if admin is None:
        check_password_hash(_dummy_hash(), password)
        return None
    if not check_password_hash(admin.password_hash, password):
        return None
    return SignIn(admin.id, admin.email)


def _token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def start_session(
    session: Session,
    admin_id: int,
    *,
    ip: str | None,
    user_agent: str | None,
    idle: timedelta,
    now: datetime,
) -> str:
    """A new session for the account; returns the token its browser keeps. Sessions of the
    account idle for longer than `idle` are cleared away on the way."""
    token = secrets.token_urlsafe(32)
    session.execute(
        delete(AdminSession).where(
            AdminSession.admin_id == admin_id, AdminSession.last_seen_at < now - idle
        )
    )
    session.add(
        AdminSession(
            admin_id=admin_id,
            token_hash=_token_hash(token),
            created_at=now,
            last_seen_at=now,
            ip=ip,
            user_agent=(user_agent or "")[:200] or None,
        )
    )
    session.execute(update(AdminUser).where(AdminUser.id == admin_id).values(last_login_at=now))
    return token


@dataclass(frozen=True)
class SessionCheck:
    """The account a session speaks for, and whether its last visit is due to be noted."""

    admin: AdminUser
    stale: bool


def for_session(
    session: Session, token: object, *, idle: timedelta, now: datetime
) -> SessionCheck | None:
    """The account a browser's session token speaks for, if that session is still valid:
    not signed out, and seen within `idle`."""
    if not isinstance(token, str) or not 0 < len(token) <= MAX_SESSION_TOKEN_LENGTH:
        return None
    row = session.scalar(select(AdminSession).where(AdminSession.token_hash == _token_hash(token)))
    if row is None or now - row.last_seen_at > idle:
        return None
    admin = session.get(AdminUser, row.admin_id)
    if admin is None:
        return None
    return SessionCheck(admin, stale=now - row.last_seen_at >= SESSION_TOUCH_INTERVAL)


def touch_session(session: Session, token: str, *, now: datetime) -> None:
    """Note a visit: the session's idle time starts again."""
    session.execute(
        update(AdminSession)
        .where(AdminSession.token_hash == _token_hash(token))
        .values(last_seen_at=now)
    )


def end_session(session: Session, token: object) -> None:
    """Sign one browser out: its session ends wherever its cookie is."""
    if isinstance(token, str) and token:
        session.execute(delete(AdminSession).where(AdminSession.token_hash == _token_hash(token)))


def sessions_of(session: Session, admin_id: int, *, idle: timedelta, now: datetime) -> int:
    """How many sessions the account has open (signed in, not signed out, not idle)."""
    return session.scalar(
        select(func.count())
        .select_from(AdminSession)
        .where(AdminSession.admin_id == admin_id, AdminSession.last_seen_at >= now - idle)
    )


def sessions_reset_at(session: Session, account: str) -> datetime | None:
    """When every session of the account (named by `account_key`) was last ended."""
    return session.scalar(select(AdminUser.sessions_reset_at).where(AdminUser.email_key == account))


def new_password_hash(session: Session, admin_id: int, current: str, new: str) -> str:
    """The hash to store for `new`, once `current` is proven right (reads only; both
    scrypt runs happen here, outside any write transaction). AdminError says what was
    wrong."""
    admin = session.get(AdminUser, admin_id)
    if admin is None:
        raise AdminError("That account no longer exists.")
    if not check_password_hash(admin.password_hash, current[:MAX_PASSWORD_LENGTH]):
        raise WrongPassword("The current password is not right.")
    problem = password_problem(new, user_inputs=(admin.email,))
    if problem:
        raise AdminError(problem)
    return generate_password_hash(new)


def _locked(session: Session, admin_id: int) -> AdminUser:
    admin = session.get(AdminUser, admin_id, with_for_update=True)
    if admin is None:
        raise AdminError("That account no longer exists.")
    return admin


def set_password_hash(
    session: Session, admin_id: int, password_hash: str, *, keep: str, now: datetime
) -> None:
    """Store a new password hash and end every session but `keep` (this browser's token)."""
    admin = _locked(session, admin_id)
    admin.password_hash = password_hash
    admin.password_changed_at = admin.sessions_reset_at = now
    session.execute(
        delete(AdminSession).where(
            AdminSession.admin_id == admin_id, AdminSession.token_hash != _token_hash(keep)
        )
    )


def end_all_sessions(session: Session, admin_id: int, *, now: datetime) -> int:
    """Sign the account out everywhere (a lost laptop), device cookies included; returns
    how many sessions ended."""
    _locked(session, admin_id).sessions_reset_at = now
    return session.execute(delete(AdminSession).where(AdminSession.admin_id == admin_id)).rowcount


MACHINE_ZONE_ALIASES = frozenset({"localtime", "posixrules", "Factory"})


@functools.cache
def owner_time_zones() -> tuple[str, ...]:
    """The zones an owner may pick: every IANA zone but the machine's own aliases."""
    return tuple(zone for zone in sorted_time_zones() if zone not in MACHINE_ZONE_ALIASES)


def set_time_zone(session: Session, admin_id: int, zone: str) -> None:
    """Show the admin pages in `zone` (an IANA name); empty: in DEFAULT_TIME_ZONE."""
    if zone and (zone not in known_time_zones() or zone in MACHINE_ZONE_ALIASES):
        raise AdminError("Pick a time zone from the list.", field="time_zone")
    session.execute(
        update(AdminUser).where(AdminUser.id == admin_id).values(time_zone=zone or None)
    )


def reset_password(session: Session, email: str, password: str, *, now: datetime) -> int:
    """Give the account a new password and sign it out everywhere, device cookies included
    (for an owner who forgot theirs); returns how many sessions ended."""
    admin_id = session.scalar(select(AdminUser.id).where(AdminUser.email_key == account_key(email)))
    if admin_id is None:
        raise AdminError(f"There is no admin account for {email}.")
    admin = _locked(session, admin_id)
    problem = password_problem(password, user_inputs=(admin.email,))
    if problem:
        raise AdminError(problem)
    admin.password_hash = generate_password_hash(password)
    admin.password_changed_at = now
    return end_all_sessions(session, admin_id, now=now)
