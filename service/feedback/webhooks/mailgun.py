"""Mailgun's webhooks: an HMAC-SHA256 of timestamp + token under the webhook signing key,
each token good once; failures and complaints made Reports."""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from ...db import insert_ignoring_conflicts
from ...models import FeedbackType, WebhookToken
from ..outcomes import Report
from . import (
    MAX_SKEW,
    Forged,
    Malformed,
    Replayed,
    check_fresh,
    event_key,
    expect,
    from_unix,
    parse_json,
    text,
)

SOURCE = "mailgun"
PURGE_BATCH = 500


@dataclass(frozen=True)
class Signed:
    """A request whose signature verified: its one-time token, and what it reports."""

    token: str
    fresh_until: datetime  # past this the timestamp is stale, so the token need not be kept
    reports: list[Report]


def verify(body: bytes, *, signing_key: str, now: datetime) -> Signed:
    """Check the signature and its timestamp, and read the event."""
    payload = parse_json(body)
    expect(isinstance(payload, dict), "the body is a JSON object")
    signature = payload.get("signature")
    if not isinstance(signature, dict) or not all(
        isinstance(signature.get(name), str) for name in ("timestamp", "token", "signature")
    ):
        raise Forged("the request is not signed")
    timestamp, token = signature["timestamp"], signature["token"]
    expected = hmac.new(signing_key.encode(), (timestamp + token).encode(), hashlib.sha256)
    given = str(signature["signature"]).lower().encode("utf-8", "replace")
    if not hmac.compare_digest(expected.hexdigest().encode(), given):
        raise Forged("the signature does not verify")
    try:
        moment = from_unix(timestamp)
    except Malformed:
        raise Forged("the signed timestamp is not a number") from None
    check_fresh(moment, now=now)
    event = payload.get("event-data")
    expect(isinstance(event, dict), "event-data is a JSON object")
    report = _report(event)
    return Signed(token, moment + MAX_SKEW, [report] if report else [])


def spend_token(session: Session, token: str, *, fresh_until: datetime, now: datetime) -> None:
    """Remember a token until its timestamp goes stale; Replayed if it was seen before."""
    # Tokens past their time are purged here, a batch at a time; SKIP LOCKED (PostgreSQL)
    # so that concurrent requests never wait on, or deadlock over, each other's purge.
    expired = (
        select(WebhookToken.token)
        .where(WebhookToken.fresh_until < now)
        .limit(PURGE_BATCH)
        .with_for_update(skip_locked=True)
    )
    session.execute(
        delete(WebhookToken)
        .where(WebhookToken.token.in_(expired.scalar_subquery()))
        .execution_options(synchronize_session=False)
    )
    stored = insert_ignoring_conflicts(
        session,
        WebhookToken.__table__,
        {"token": f"{SOURCE}:{token}"[:200], "fresh_until": fresh_until},
    )
    if not stored:
        raise Replayed("this token was used before")


def _type(event: dict[str, Any]) -> FeedbackType | None:
    name = event.get("event")
    if name == "complained":
        return FeedbackType.COMPLAINT
    if name != "failed":
        return None  # delivered, opened, accepted...: nothing to act on
    severity = event.get("severity")
    # reason "old": Mailgun retried for hours and gave up; the address may be fine.
    if severity == "permanent" and event.get("reason") != "old":
        return FeedbackType.HARD
    if severity in ("permanent", "temporary"):
        return FeedbackType.SOFT
    return None


def _report(event: dict[str, Any]) -> Report | None:
    type_ = _type(event)
    if type_ is None:
        return None
    recipient = event.get("recipient")
    expect(isinstance(recipient, str), "a failure or complaint names its recipient")
    event_id = event.get("id")
    expect(isinstance(event_id, str) and event_id != "", "event-data has an id")
    message = event.get("message")
    headers = message.get("headers") if isinstance(message, dict) else None
    message_id = headers.get("message-id") if isinstance(headers, dict) else None
    message_id = message_id if isinstance(message_id, str) else None
    status = event.get("delivery-status")
    status = status if isinstance(status, dict) else {}
    if type_ is FeedbackType.SOFT and message_id:
        # Mailgun reports a temporary failure on every retry of one email, each its own
        # event: counted once per email, or three retries would make a hard bounce.
        key = event_key(SOURCE, "soft", message_id, recipient)
    else:
        key = event_key(SOURCE, event_id)
    try:
        occurred_at: datetime | None = from_unix(event.get("timestamp"))
    except Malformed:
        occurred_at = None
    return Report(
        source=SOURCE,
        event_key=key,
        type=type_,
        email=recipient,
        reference=message_id,
        reason=(
            text(status.get("description"))
            or text(status.get("message"))
            or text(event.get("reason"))
            or f"{event.get('event')} reported by Mailgun"
        ),
        diagnostic=text(status.get("code"), 64) or None,
        occurred_at=occurred_at,
        payload=event,
    )
