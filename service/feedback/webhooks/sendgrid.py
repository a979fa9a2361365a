"""The SendGrid Event Webhook: an ECDSA (P-256, SHA-256) signature over the timestamp
header and the raw body, checked with the verification key SendGrid shows; bounces,
drops for a dead or complaining address, and spam reports made Reports."""

from __future__ import annotations

import base64
import binascii
import functools
from datetime import datetime
from typing import TYPE_CHECKING, Any

from ...models import FeedbackType
from ..outcomes import Report
from . import (
    Forged,
    Malformed,
    Misconfigured,
    check_fresh,
    digest,
    event_key,
    expect,
    from_unix,
    parse_json,
    text,
)

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric import ec

SOURCE = "sendgrid"
SIGNATURE_HEADER = "X-Twilio-Email-Event-Webhook-Signature"
TIMESTAMP_HEADER = "X-Twilio-Email-Event-Webhook-Timestamp"
# A dropped email's reason says why SendGrid would not send it; the rest are not about the
# reader's address (our content, our quota, an unsubscribe SendGrid already keeps).
DROPPED = {
    "bounced address": FeedbackType.HARD,
    "invalid": FeedbackType.HARD,
    "spam reporting address": FeedbackType.COMPLAINT,
}


@functools.lru_cache(maxsize=4)
def public_key(setting: str) -> ec.EllipticCurvePublicKey:
    """The verification key as SendGrid shows it (base64 DER, PEM armour allowed)."""
    # cryptography (11 MB) is loaded by the processes that check a signature, not all.
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    body = "".join(line for line in setting.strip().splitlines() if not line.startswith("-----"))
    try:
        key = serialization.load_der_public_key(base64.b64decode(body, validate=True))
    except (binascii.Error, ValueError) as exc:
        raise Misconfigured(f"SENDGRID_WEBHOOK_PUBLIC_KEY: {exc}") from None
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise Misconfigured("SENDGRID_WEBHOOK_PUBLIC_KEY is not an elliptic-curve key")
    return key


def receive(
    body: bytes, *, signature: str | None, timestamp: str | None, key: str, now: datetime
) -> list[Report]:
    """The Reports in one signed batch of events."""
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec

    if not signature or not timestamp:
        raise Forged("the request is not signed")
    try:
        raw_signature = base64.b64decode(signature, validate=True)
        public_key(key).verify(raw_signature, timestamp.encode() + body, ec.ECDSA(hashes.SHA256()))
    except (binascii.Error, ValueError, InvalidSignature):
        raise Forged("the signature does not verify") from None
    try:
        check_fresh(from_unix(timestamp), now=now)
    except Malformed:
        raise Forged("the signed timestamp is not a number") from None
    events = parse_json(body)
    expect(isinstance(events, list), "the body is a JSON array of events")
    found = []
    for event in events:
        expect(isinstance(event, dict), "each event is a JSON object")
        report = _report(event)
        if report is not None:
            found.append(report)
    return found


def _type(event: dict[str, Any]) -> FeedbackType | None:
    name = event.get("event")
    if name == "bounce":
        # type "blocked": the receiving server refused for now (a block list, a policy).
        return FeedbackType.SOFT if event.get("type") == "blocked" else FeedbackType.HARD
    if name == "dropped":
        return DROPPED.get(str(event.get("reason", "")).strip().lower())
    if name == "spamreport":
        return FeedbackType.COMPLAINT
    return None  # deferred, delivered, opens...: nothing to act on


def _report(event: dict[str, Any]) -> Report | None:
    type_ = _type(event)
    if type_ is None:
        return None
    email = event.get("email")
    expect(isinstance(email, str), "a bounce or spam report names an email")
    event_id = event.get("sg_event_id")
    if not isinstance(event_id, str) or not event_id:
        event_id = "sha256:" + digest(event)
    try:
        occurred_at: datetime | None = from_unix(event.get("timestamp"))
    except Malformed:
        occurred_at = None
    smtp_id = event.get("smtp-id")
    return Report(
        source=SOURCE,
        event_key=event_key(SOURCE, event_id),
        type=type_,
        email=email,
        reference=smtp_id if isinstance(smtp_id, str) else None,
        reason=text(event.get("reason")) or f"{event.get('event')} reported by SendGrid",
        diagnostic=text(event.get("status"), 64) or None,
        occurred_at=occurred_at,
        payload=event,
    )
