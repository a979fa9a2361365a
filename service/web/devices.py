"""Device cookies: a browser that has signed in to an account is not locked out of it by
failed sign-ins from elsewhere (OWASP, "Slow Down Online Guessing Attacks with Device
Cookies").

Wrong passwords are counted per client address and per account, so an attacker who knows
the owner's address could use up the account's budget and lock the owner out. A
successful sign-in therefore leaves a signed cookie naming the account and a random nonce.
A sign-in attempt from a browser holding a valid one for the account it names is counted
against that device alone; attempts without one are counted as before. The cookie grants
nothing else: the password is still needed every time. Ending every session of the
account (a new password, "sign out everywhere") voids the device cookies made before.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from itsdangerous import BadSignature, Signer

DEVICE_COOKIE = "admin_device"
DEVICE_COOKIE_PATH = "/admin/login"
DEVICE_LIFETIME = timedelta(days=365)


def _account_digest(account: str) -> str:
    # The cookie names the account by a digest: the browser need not carry the address.
    return hashlib.sha256(account.encode()).hexdigest()[:32]


@dataclass(frozen=True)
class Device:
    """A browser known to have signed in to the account."""

    nonce: str
    issued_at: datetime


class DeviceCookies:
    """Makes and reads device cookies, signed with the service's key."""

    def __init__(self, secret_key: str) -> None:
        self._signer = Signer(
            secret_key, salt="newsletter.admin-device", digest_method=hashlib.sha256
        )

    def make(self, account: str, *, now: datetime) -> str:
        """A cookie value for a browser that just signed in to `account`."""
        # Milliseconds: a cookie made in the same second as, but before, the end of every
        # session must not outlive it (web/admin/auth.py compares the two).
        stamp = int(now.timestamp() * 1000)
        payload = f"{_account_digest(account)}.{secrets.token_hex(16)}.{stamp}"
        return self._signer.sign(payload).decode("ascii")

    def device(self, value: str | None, account: str, *, now: datetime) -> Device | None:
        """The device if `value` is a valid, unexpired cookie for `account`."""
        if not value or len(value) > 200:
            return None
        try:
            payload = self._signer.unsign(value).decode("ascii")
        except (BadSignature, UnicodeError):
            return None
        parts = payload.split(".")
        if len(parts) != 3:
            return None
        digest, nonce, stamp = parts
        if digest != _account_digest(account) or not stamp.isdecimal():
            return None
        issued_at = datetime.fromtimestamp(int(stamp) / 1000, UTC)
        if now - issued_at > DEVICE_LIFETIME:
            return None
        return Device(nonce, issued_at)
