"""Provider webhooks: one small module per provider turns a request it verified into Reports.

Each module is pure domain: it takes the raw body, the headers it needs, its secret and
`now`, and returns `list[Report]` or raises one of the errors below; the web layer
(service.web.webhooks) answers each error with its `status`, and records the Reports with
`Feedback.record` in one transaction. Adding a provider is one module and one route.
"""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime, timedelta
from typing import Any

# How far a signed timestamp may be from our clock, either way, before it is refused:
# an old one is a replay, one far ahead a forgery (or a clock to fix).
MAX_SKEW = timedelta(minutes=5)
MAX_KEY = 200  # FeedbackEvent.event_key's length


class WebhookError(Exception):
    """A request refused; `status` is the HTTP answer."""

    status = 400


class Malformed(WebhookError):
    """Not JSON, or not the shape the provider documents."""

    status = 400


class Unauthorized(WebhookError):
    """Missing or wrong credentials (a password, a bearer token)."""

    status = 401

    def __init__(self, message: str, *, scheme: str) -> None:
        super().__init__(message)
        self.scheme = scheme  # for the answer's WWW-Authenticate


class Forged(WebhookError):
    """A signature that does not verify, or a sender we do not accept."""

    status = 403


class Stale(WebhookError):
    """A signed timestamp too far from our clock: a replay, or a clock to fix."""

    status = 403


class Replayed(WebhookError):
    """A one-time token seen before."""

    status = 403


class Misconfigured(WebhookError):
    """Our own secret is not usable (a key that does not parse): the operator's to fix."""

    status = 500


class Unreachable(WebhookError):
    """Something the check needs (a signing certificate) could not be fetched; the
    provider retries."""

    status = 502


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def parse_json(body: bytes) -> Any:
    """The body as JSON, or Malformed."""
    try:
        # NaN and Infinity are no JSON (RFC 8259), and PostgreSQL refuses them.
        return json.loads(body, parse_constant=_no_constant)
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
        raise Malformed(f"the body is not JSON: {exc}") from None


def check_fresh(moment: datetime, *, now: datetime) -> None:
    """Refuse a signed moment more than MAX_SKEW from now, either way."""
    if abs(now - moment) > MAX_SKEW:
        raise Stale(f"timestamp {moment.isoformat()} is more than 5 minutes from now")


def from_unix(value: Any) -> datetime:
    """A Unix timestamp (number or numeric string) as an aware datetime, or Malformed."""
    try:
        seconds = float(value)
        return datetime.fromtimestamp(seconds, UTC)
    except (TypeError, ValueError, OverflowError, OSError):
        raise Malformed(f"not a Unix timestamp: {str(value)[:40]!r}") from None


def from_iso(value: Any) -> datetime | None:
    """An ISO 8601 moment as an aware datetime; None when absent or unreadable."""
    if not isinstance(value, str):
        return None
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def event_key(source: str, *parts: object) -> str:
    """`source:part:part`, hashed when it would not fit the column (no two events share one)."""
    key = ":".join([source, *(str(part) for part in parts)])
    if len(key) <= MAX_KEY:
        return key
    return f"{source}:sha256:{hashlib.sha256(key.encode()).hexdigest()}"


def digest(value: Any) -> str:
    """A stable SHA-256 of a JSON value: the same object, the same digest."""
    canonical = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


def text(value: Any, limit: int = 2000) -> str:
    """A field as text for the owner to read ('' when absent)."""
    if value is None:
        return ""
    return (value if isinstance(value, str) else json.dumps(value))[:limit]


def expect(condition: bool, what: str) -> None:
    """Malformed unless `condition`: the payload is not the documented shape."""
    if not condition:
        raise Malformed(what)
