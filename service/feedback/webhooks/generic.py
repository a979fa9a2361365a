"""The generic bounce webhook, for any other source: a bearer token, and one report (or a
list of them) in our own plain shape."""

from __future__ import annotations

import hmac
from datetime import datetime
from typing import Any

from ...models import FeedbackType
from ..outcomes import Report
from . import Malformed, Unauthorized, digest, event_key, expect, parse_json, text

SOURCE = "bounce"
MAX_REPORTS = 1000


def check_bearer(authorization: str | None, *, token: str) -> None:
    """Unauthorized unless `Authorization: Bearer <token>` (compared in constant time)."""
    scheme, _, given = (authorization or "").partition(" ")
    matches = hmac.compare_digest(given.strip().encode(), token.encode())
    if scheme.lower() != "bearer" or not matches:
        raise Unauthorized("wrong or missing bearer token", scheme="Bearer")


def receive(body: bytes, *, authorization: str | None, token: str, now: datetime) -> list[Report]:
    """The Reports in `{"email", "type", "reason", "message_id", "id"}` or a list of them;
    one malformed item refuses the whole request."""
    check_bearer(authorization, token=token)
    data = parse_json(body)
    items = data if isinstance(data, list) else [data]
    expect(len(items) <= MAX_REPORTS, f"at most {MAX_REPORTS} reports a request")
    return [_report(item) for item in items]


def _optional_text(item: dict[str, Any], name: str) -> str | None:
    value = item.get(name)
    expect(value is None or isinstance(value, str), f'"{name}" is text')
    return value or None


def _report(item: Any) -> Report:
    expect(isinstance(item, dict), "each report is a JSON object")
    try:
        type_ = FeedbackType(item.get("type"))
    except ValueError:
        raise Malformed('"type" is one of "hard", "soft", "complaint"') from None
    email = _optional_text(item, "email")
    message_id = _optional_text(item, "message_id")
    reason = _optional_text(item, "reason")
    expect(email is not None or message_id is not None, 'a report names "email" or "message_id"')
    given_id = item.get("id")
    expect(
        given_id is None or (isinstance(given_id, (str, int)) and not isinstance(given_id, bool)),
        '"id" is text or a number',
    )
    # Without an id, the report itself: the same report twice is one event.
    key = event_key(SOURCE, given_id) if given_id not in (None, "") else None
    return Report(
        source=SOURCE,
        event_key=key or event_key(SOURCE, "sha256", digest(item)),
        type=type_,
        email=email,
        reference=message_id,
        reason=text(reason),
        payload=item,
    )
