"""Signed tokens in links: one salt per purpose, so a token made for one cannot serve another.

A token is `<subscriber id>.<unix time>.<signature>`, signed by itsdangerous with a key
derived from SECRET_KEY and the purpose; a download token may also name what it is for
(`<subscriber id>.<unix time>.<magnet>.<signature>`), a token without one being for the
default magnet. Expiry is checked against the `now` the caller
passes, never against the wall clock.
"""

from __future__ import annotations

import enum
import hashlib
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from itsdangerous import BadSignature, Signer


class Purpose(enum.StrEnum):
    CONFIRM = "confirm"
    DOWNLOAD = "download"
    UNSUBSCRIBE = "unsubscribe"
    PREFERENCES = "preferences"
    ADMIN_SETUP = "admin-setup"  # the owner's first-account link; names subscriber 0, no one


class InvalidToken(ValueError):
    """The token was not made by us for this purpose (forged, mangled or misused)."""


class ExpiredToken(ValueError):
    """The token is genuine but too old; the subscriber it names can ask for a new one."""

    def __init__(self, subscriber_id: int, issued_at: datetime) -> None:
        super().__init__(f"token for subscriber {subscriber_id} expired")
        self.subscriber_id = subscriber_id
        self.issued_at = issued_at


SCOPE = re.compile(r"[a-z][a-z0-9_-]{0,63}")  # a magnet id: never all digits


@dataclass(frozen=True)
class TokenData:
    subscriber_id: int
    issued_at: datetime
    scope: str = ""  # what the token is for within its purpose (a magnet's id), or ""


class Tokens:
    """Makes and reads tokens with the service's secret key."""

    def __init__(self, secret_key: str) -> None:
        # One Signer per purpose, made once: a token is signed for every email sent.
        self._signers = {
            purpose: Signer(
                secret_key, salt=f"newsletter.{purpose.value}", digest_method=hashlib.sha256
            )
            for purpose in Purpose
        }

    def make(self, purpose: Purpose, subscriber_id: int, *, now: datetime, scope: str = "") -> str:
        """A token for `subscriber_id`, stamped with `now`, for `scope` if given."""
        payload = f"{subscriber_id}.{int(now.timestamp())}"
        if scope:
            if not SCOPE.fullmatch(scope):
                raise ValueError(f"{scope!r} cannot be a token's scope")
            payload += f".{scope}"
        return self._signers[purpose].sign(payload).decode("ascii")

    def read(
        self,
        purpose: Purpose,
        token: str,
        *,
        now: datetime,
        max_age: timedelta | None = None,
    ) -> TokenData:
        """The token's contents; raise InvalidToken or ExpiredToken."""
        try:
            payload = self._signers[purpose].unsign(token).decode("ascii")
        except (BadSignature, UnicodeError) as exc:
            raise InvalidToken(str(exc)) from exc
        parts = payload.split(".")
        scope = parts.pop() if len(parts) == 3 and SCOPE.fullmatch(parts[2]) else ""
        if len(parts) != 2 or not all(part.isdigit() and part.isascii() for part in parts):
            raise InvalidToken("malformed payload")
        subscriber_id, stamp = (int(part) for part in parts)
        issued_at = datetime.fromtimestamp(stamp, UTC)
        if max_age is not None and now - issued_at > max_age:
            raise ExpiredToken(subscriber_id, issued_at)
        return TokenData(subscriber_id, issued_at, scope)
