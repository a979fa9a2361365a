"""Postmark's bounce and spam-complaint webhooks: HTTP Basic credentials (which Postmark
sends from the webhook's URL) checked against ours; a bounce judged by its TypeCode."""

from __future__ import annotations

import base64
import binascii
import hmac
from datetime import datetime
from typing import Any

from ...models import FeedbackType
from ..outcomes import Report
from . import Unauthorized, event_key, expect, from_iso, parse_json, text

SOURCE = "postmark"
# Postmark's bounce types (TypeCode) that say something about the reader's address; the
# rest (AutoResponder 64, Subscribe 32, AddressChange 128, ChallengeVerification 16384,
# our own API or template errors...) are ignored.
BOUNCE_TYPES = {
    1: FeedbackType.HARD,  # HardBounce
    100000: FeedbackType.HARD,  # BadEmailAddress
    100002: FeedbackType.HARD,  # ManuallyDeactivated: Postmark will not send to it
    2: FeedbackType.SOFT,  # Transient
    256: FeedbackType.SOFT,  # DnsError
    512: FeedbackType.SOFT,  # SpamNotification: the receiver filtered it
    2048: FeedbackType.SOFT,  # Unknown
    4096: FeedbackType.SOFT,  # SoftBounce
    8192: FeedbackType.SOFT,  # VirusNotification
    100006: FeedbackType.SOFT,  # Blocked: an ISP block
    100009: FeedbackType.SOFT,  # DMARCPolicy
    100001: FeedbackType.COMPLAINT,  # SpamComplaint, when it comes as a bounce
}


def check_credentials(authorization: str | None, *, user: str, password: str) -> None:
    """Unauthorized unless the Basic credentials are ours (compared in constant time)."""
    scheme, _, encoded = (authorization or "").partition(" ")
    try:
        given = base64.b64decode(encoded.strip(), validate=True)
    except (binascii.Error, ValueError):
        given = b""
    given_user, _, given_password = given.partition(b":")
    # Both compared, always: how far a guess got must not show in the time taken.
    user_ok = hmac.compare_digest(given_user, user.encode())
    password_ok = hmac.compare_digest(given_password, password.encode())
    if scheme.lower() != "basic" or not (user_ok and password_ok):
        raise Unauthorized("wrong or missing credentials", scheme="Basic")


def receive(
    body: bytes, *, authorization: str | None, user: str, password: str, now: datetime
) -> list[Report]:
    """The Report in one bounce or spam-complaint record (none for the other records)."""
    check_credentials(authorization, user=user, password=password)
    record = parse_json(body)
    expect(isinstance(record, dict), "the body is a JSON object")
    type_ = _type(record)
    if type_ is None:
        return []
    record_id = record.get("ID")
    expect(
        isinstance(record_id, (int, str)) and not isinstance(record_id, bool) and record_id != "",
        "the record has an ID",
    )
    email = record.get("Email")
    expect(isinstance(email, str), "the record names an Email")
    content = record.get("Content")
    return [
        Report(
            source=SOURCE,
            event_key=event_key(SOURCE, record_id),
            type=type_,
            email=email,
            # The bounce message itself, if the webhook includes it: it quotes our Message-ID.
            reference=content if isinstance(content, str) else None,
            reason=text(record.get("Details")) or text(record.get("Description")),
            diagnostic=text(record.get("Type"), 64) or None,
            occurred_at=from_iso(record.get("BouncedAt")),
            payload=record,
        )
    ]


def _type(record: dict[str, Any]) -> FeedbackType | None:
    kind = record.get("RecordType")
    expect(isinstance(kind, str), "the record has a RecordType")
    if kind == "SpamComplaint":
        return FeedbackType.COMPLAINT
    if kind != "Bounce":
        return None  # Delivery, Open, Click, SubscriptionChange
    code = record.get("TypeCode")
    expect(isinstance(code, int) and not isinstance(code, bool), "a bounce has a TypeCode")
    return BOUNCE_TYPES.get(code)
