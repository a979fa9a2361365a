"""The people who run the list: accounts, passwords and the sessions they may hold.

Passwords are hashed with scrypt (Werkzeug's default). A session is valid while its epoch
matches the account's: changing the password raises the epoch, which ends every other
session at its next request.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session
from werkzeug.security import check_password_hash, generate_password_hash

from .models import AdminUser
from .subscriptions import email_key, normalize_email

MIN_PASSWORD_LENGTH = 12
MAX_PASSWORD_LENGTH = 1024
MAX_EMAIL_KEY = 320  # hashing a megabyte of "password" is a denial of service


@functools.cache
def _dummy_hash() -> str:
    """Checked against when the account does not exist, so a wrong address costs as much
    time as a wrong password and does not tell which addresses have accounts. Made on
    first use: scrypt takes 32 MB and 50 ms, which no command needs to pay at import."""
    return generate_password_hash("not a real password, only for timing")


class AdminError(ValueError):
    """A request about admin accounts that cannot be carried out; the message says why."""


def password_problem(password: str) -> str | None:
    """Why `password` is not acceptable, or None."""
    if len(password) < MIN_PASSWORD_LENGTH:
        return f"Use at least {MIN_PASSWORD_LENGTH} characters."
    if len(password) > MAX_PASSWORD_LENGTH:
        return f"Use at most {MAX_PASSWORD_LENGTH} characters."
    if not password.strip():
        return "A password of spaces only is not a password."
    return None


def count(session: Session) -> int:
    return session.scalar(select(func.count()).select_from(AdminUser))


def create(session: Session, email: str, password: str, *, now: datetime) -> AdminUser:
    """A new admin account; AdminError if the address is invalid or taken, or the
    password too weak."""
    try:
        address = normalize_email(email)
    except ValueError as exc:
        raise AdminError(str(exc)) from None
    problem = password_problem(password)
    if problem:
        raise AdminError(problem)
    if session.scalar(select(AdminUser.id).where(AdminUser.email_key == email_key(address))):
        raise AdminError(f"There is already an admin account for {address}.")
    admin = AdminUser(
        email=address,
        email_key=email_key(address),
        password_hash=generate_password_hash(password),
        session_epoch=0,
        created_at=now,
        password_changed_at=now,
    )
    session.add(admin)
    session.flush()
    return admin


def account_key(email: str) -> str:
    """The form an account name is looked up and rate-limited by: `Owner@EXAMPLE.com`, the
    same with full-width letters (IDNA folds them) and `owner@example.com` are one account,
    and so one budget of attempts."""
    try:
        return email_key(normalize_email(email))
    except ValueError:
        return email.strip().lower()[:MAX_EMAIL_KEY]


@dataclass(frozen=True)
class SignIn:
    """Who signed in, and the epoch their session starts in."""

    admin_id: int
    email: str
    session_epoch: int


def authenticate(session: Session, email: str, password: str) -> SignIn | None:
    """The account if the password is right, else None (the same time either way).

    Only reads: scrypt takes ~50 ms, too long to hold SQLite's write lock. The caller
    records the sign-in (`record_sign_in`) in a short write of its own.
    """
    password = password[:MAX_PASSWORD_LENGTH]
    admin = session.scalar(select(AdminUser).where(AdminUser.email_key == account_key(email)))
    if admin is None:
        check_password_hash(_dummy_hash(), password)
        return None
    if not check_password_hash(admin.password_hash, password):
        return None
    return SignIn(admin.id, admin.email, admin.session_epoch)


def record_sign_in(session: Session, admin_id: int, *, now: datetime) -> None:
    session.execute(update(AdminUser).where(AdminUser.id == admin_id).values(last_login_at=now))


def new_password_hash(session: Session, admin_id: int, current: str, new: str) -> str:
    """The hash to store for `new`, once `current` is proven right (reads only; both
    scrypt runs happen here, outside any write transaction). AdminError says what was
    wrong."""
    admin = session.get(AdminUser, admin_id)
    if admin is None:
        raise AdminError("That account no longer exists.")
    if not check_password_hash(admin.password_hash, current[:MAX_PASSWORD_LENGTH]):
        raise AdminError("The current password is not right.")
    problem = password_problem(new)
    if problem:
        raise AdminError(problem)
    return generate_password_hash(new)


def _locked(session: Session, admin_id: int) -> AdminUser:
    admin = session.get(AdminUser, admin_id, with_for_update=True)
    if admin is None:
        raise AdminError("That account no longer exists.")
    return admin


def set_password_hash(session: Session, admin_id: int, password_hash: str, *, now: datetime) -> int:
    """Store a new password hash and end every other session; returns the new epoch."""
    admin = _locked(session, admin_id)
    admin.password_hash = password_hash
    admin.password_changed_at = now
    admin.session_epoch += 1
    return admin.session_epoch


def end_all_sessions(session: Session, admin_id: int) -> int:
    """Sign the account out everywhere (a lost laptop); returns the new epoch."""
    admin = _locked(session, admin_id)
    admin.session_epoch += 1
    return admin.session_epoch


def for_session(session: Session, admin_id: object, epoch: object) -> AdminUser | None:
    """The account a session cookie speaks for, if that session is still valid."""
    if not isinstance(admin_id, int) or not isinstance(epoch, int):
        return None
    admin = session.get(AdminUser, admin_id)
    if admin is None or admin.session_epoch != epoch:
        return None
    return admin
