"""The people who run the list: accounts, passwords and the sessions they may hold.

Passwords are hashed with scrypt (Werkzeug's default). A session is valid while its epoch
matches the account's: changing the password raises the epoch, which ends every other
session at its next request.
"""

from __future__ import annotations

import functools
from datetime import datetime

from sqlalchemy import func, select
from sqlalchemy.orm import Session
from werkzeug.security import check_password_hash, generate_password_hash

from .models import AdminUser
from .subscriptions import email_key, normalize_email

MIN_PASSWORD_LENGTH = 12
MAX_PASSWORD_LENGTH = 1024  # hashing a megabyte of "password" is a denial of service


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


def authenticate(session: Session, email: str, password: str, *, now: datetime) -> AdminUser | None:
    """The account if the password is right, else None (the same time either way)."""
    password = password[:MAX_PASSWORD_LENGTH]
    try:
        key = email_key(normalize_email(email))
    except ValueError:
        key = None
    admin = session.scalar(select(AdminUser).where(AdminUser.email_key == key)) if key else None
    if admin is None:
        check_password_hash(_dummy_hash(), password)
        return None
    if not check_password_hash(admin.password_hash, password):
        return None
    admin.last_login_at = now
    return admin


def change_password(
    session: Session, admin_id: int, current: str, new: str, *, now: datetime
) -> AdminUser:
    """Set a new password and end every other session; AdminError says what was wrong."""
    admin = session.get(AdminUser, admin_id)
    if admin is None:
        raise AdminError("That account no longer exists.")
    if not check_password_hash(admin.password_hash, current[:MAX_PASSWORD_LENGTH]):
        raise AdminError("The current password is not right.")
    problem = password_problem(new)
    if problem:
        raise AdminError(problem)
    admin.password_hash = generate_password_hash(new)
    admin.password_changed_at = now
    admin.session_epoch += 1
    return admin


def for_session(session: Session, admin_id: object, epoch: object) -> AdminUser | None:
    """The account a session cookie speaks for, if that session is still valid."""
    if not isinstance(admin_id, int) or not isinstance(epoch, int):
        return None
    admin = session.get(AdminUser, admin_id)
    if admin is None or admin.session_epoch != epoch:
        return None
    return admin
