"""Signed tokens in links: one salt per purpose, so a token made for one cannot serve another.

A token carries a subscriber id and the time it was made. Expiry is checked against the
`now` the caller passes, never against the wall clock.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from itsdangerous import BadSignature, URLSafeSerializer


class Purpose(enum.StrEnum):
    CONFIRM = "confirm"
    DOWNLOAD = "download"
    UNSUBSCRIBE = "unsubscribe"


class InvalidToken(ValueError):
    """The token was not made by us for this purpose (forged, mangled or misused)."""


class ExpiredToken(ValueError):
    """The token is genuine but too old; the subscriber it names can ask for a new one."""

    def __init__(self, subscriber_id: int, issued_at: datetime) -> None:
        super().__init__(f"token for subscriber {subscriber_id} expired")
        self.subscriber_id = subscriber_id
        self.issued_at = issued_at


@dataclass(frozen=True)
class TokenData:
    subscriber_id: int
    issued_at: datetime


class Tokens:
    """Makes and reads tokens with the service's secret key."""

    def __init__(self, secret_key: str) -> None:
        self._serializers = {
            purpose: URLSafeSerializer(secret_key, salt=f"newsletter.{purpose.value}")
            for purpose in Purpose
        }

    def make(self, purpose: Purpose, subscriber_id: int, *, now: datetime) -> str:
        """A token for `subscriber_id`, stamped with `now`."""
        return self._serializers[purpose].dumps([subscriber_id, int(now.timestamp())])

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
            payload = self._serializers[purpose].loads(token)
        except BadSignature as exc:
            raise InvalidToken(str(exc)) from exc
        if (
            not isinstance(payload, list)
            or len(payload) != 2
            or not all(type(part) is int for part in payload)
        ):
            raise InvalidToken("malformed payload")
        subscriber_id, stamp = payload
        issued_at = datetime.fromtimestamp(stamp, UTC)
        if max_age is not None and now - issued_at > max_age:
            raise ExpiredToken(subscriber_id, issued_at)
        return TokenData(subscriber_id, issued_at)
