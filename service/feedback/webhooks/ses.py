"""Amazon SES notifications delivered through SNS: the SNS signature checked against
Amazon's certificate, the subscription confirmed, bounces and complaints made Reports.

SNS signs a canonical string of the message's fields (SignatureVersion 1: SHA1withRSA,
2: SHA256withRSA) with the key of a certificate it names by URL; we fetch that certificate
only from an https://sns.<region>.amazonaws.com/ URL, once per process (SigningCertificates).
Both SES notifications (notificationType) and SES event publishing (eventType) are read.
"""

from __future__ import annotations

import base64
import binascii
import logging
import re
import urllib.request
from collections.abc import Callable, Collection
from datetime import datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from ...models import FeedbackType
from ..outcomes import Report
from . import (
    Forged,
    Unreachable,
    check_fresh,
    event_key,
    expect,
    from_iso,
    parse_json,
    text,
)

if TYPE_CHECKING:
    from cryptography import x509
    from cryptography.hazmat.primitives.asymmetric import rsa

logger = logging.getLogger(__name__)

SOURCE = "ses"
# SNS's own hosts: sns.<region>.amazonaws.com (and .com.cn in China's regions).
# A region's shape (us-east-1, eu-central-2, us-gov-west-1, cn-north-1), so that no other
# Amazon host that starts with "sns." (an S3 bucket of that name) passes.
AMAZON_HOST = re.compile(r"sns\.[a-z]{2}(-gov|-iso[a-z]?)?-[a-z]+-\d\.amazonaws\.com(\.cn)?")
FETCH_TIMEOUT = 10.0
MAX_FETCH = 64 * 1024  # a certificate is 2 KB; SubscribeURL's answer is small too
MAX_CERTIFICATES = 32
# The fields each message type signs, in the order SNS joins them; Subject only if present.
SIGNED_FIELDS = {
    "Notification": ("Message", "MessageId", "Subject", "Timestamp", "TopicArn", "Type"),
    "SubscriptionConfirmation": (
        "Message",
        "MessageId",
        "SubscribeURL",
        "Timestamp",
        "Token",
        "TopicArn",
        "Type",
    ),
}
SIGNED_FIELDS["UnsubscribeConfirmation"] = SIGNED_FIELDS["SubscriptionConfirmation"]
# SignatureVersion: the hash the signature is made over (SHA1withRSA, SHA256withRSA).
HASHES = {"1": "SHA1", "2": "SHA256"}


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    """A redirect could lead off Amazon's hosts: refuse it (urllib then raises)."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


def fetch_https(url: str) -> bytes:
    """GET an https URL with a timeout, no redirects; the body (at most MAX_FETCH bytes)."""
    if urlsplit(url).scheme != "https":
        raise ValueError(f"not an https URL: {url!r}")
    opener = urllib.request.build_opener(_NoRedirects)
    with opener.open(url, timeout=FETCH_TIMEOUT) as response:
        return response.read(MAX_FETCH)


def is_amazon_url(url: str) -> bool:
    """An https URL on one of SNS's own hosts, with no port or user name."""
    parts = urlsplit(url)
    return parts.scheme == "https" and AMAZON_HOST.fullmatch(parts.netloc) is not None


class SigningCertificates:
    """SNS's signing keys, fetched through `fetch` from Amazon's hosts only, kept per URL
    for the life of the process."""

    def __init__(self, fetch: Callable[[str], bytes] = fetch_https) -> None:
        self.fetch = fetch
        self._keys: dict[str, x509.Certificate] = {}

    def public_key(self, url: str, *, now: datetime) -> rsa.RSAPublicKey:
        """The RSA key of the certificate at `url`; Forged for a URL off Amazon's hosts."""
        # cryptography (11 MB) is loaded by the processes that check a signature, not all.
        from cryptography import x509
        from cryptography.hazmat.primitives.asymmetric import rsa

        if not (is_amazon_url(url) and urlsplit(url).path.endswith(".pem")):
            raise Forged(f"signing certificate not on an SNS host: {url[:200]!r}")
        certificate = self._keys.get(url)
        if certificate is None:
            try:
                certificate = x509.load_pem_x509_certificate(self.fetch(url))
            except Exception as exc:  # the network, or not a certificate: SNS retries
                logger.warning("could not fetch SNS certificate %s: %s", url, exc)
                raise Unreachable("the signing certificate could not be fetched") from None
            if len(self._keys) >= MAX_CERTIFICATES:
                self._keys.clear()
            self._keys[url] = certificate
        if not certificate.not_valid_before_utc <= now <= certificate.not_valid_after_utc:
            raise Forged("the signing certificate is not valid now")
        key = certificate.public_key()
        if not isinstance(key, rsa.RSAPublicKey):
            raise Forged("the signing certificate's key is not RSA")
        return key


def canonical(message: dict[str, Any]) -> bytes:
    """The string SNS signs: each signed field's name and value, one a line."""
    lines = []
    for name in SIGNED_FIELDS[message["Type"]]:
        if message.get(name) is not None:
            lines.append(f"{name}\n{message[name]}\n")
    return "".join(lines).encode()


def verify(message: dict[str, Any], certificates: SigningCertificates, *, now: datetime) -> None:
    """Forged unless SNS signed this message."""
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import padding

    version = message.get("SignatureVersion")
    algorithm = HASHES.get(version) if isinstance(version, str) else None
    if algorithm is None:
        raise Forged(f"unknown SignatureVersion {str(message.get('SignatureVersion'))[:20]!r}")
    try:
        signature = base64.b64decode(str(message.get("Signature", "")), validate=True)
    except (binascii.Error, ValueError):
        raise Forged("the signature is not base64") from None
    url = message.get("SigningCertURL") or message.get("SigningCertUrl") or ""
    key = certificates.public_key(str(url), now=now)
    try:
        key.verify(signature, canonical(message), padding.PKCS1v15(), getattr(hashes, algorithm)())
    except InvalidSignature:
        raise Forged("the SNS signature does not verify") from None


def receive(
    body: bytes,
    *,
    topics: Collection[str],
    certificates: SigningCertificates,
    now: datetime,
) -> list[Report]:
    """The Reports in one SNS message from an accepted topic; a subscription to one is
    confirmed (its SubscribeURL fetched) once the signature verifies."""
    message = parse_json(body)
    expect(isinstance(message, dict), "an SNS message is a JSON object")
    kind = message.get("Type")
    expect(isinstance(kind, str) and kind in SIGNED_FIELDS, f"unknown SNS type {str(kind)[:40]!r}")
    for name in SIGNED_FIELDS[kind]:
        if name != "Subject":
            expect(isinstance(message.get(name), str), f"{name} is missing")
    expect(message.get("Subject") is None or isinstance(message["Subject"], str), "Subject")
    # Before anything is fetched: a stranger's topic never makes us fetch a certificate.
    if message["TopicArn"] not in topics:
        raise Forged(f"topic not in SES_TOPIC_ARNS: {message['TopicArn'][:200]!r}")
    verify(message, certificates, now=now)
    sent = from_iso(message["Timestamp"])
    expect(sent is not None, "Timestamp is not a moment")
    check_fresh(sent, now=now)  # type: ignore[arg-type]
    if kind == "SubscriptionConfirmation":
        confirm(message["SubscribeURL"], certificates.fetch, topic=message["TopicArn"])
        return []
    if kind == "UnsubscribeConfirmation":
        logger.warning("SNS topic %s unsubscribed this endpoint", message["TopicArn"])
        return []
    notification = parse_json(message["Message"].encode())
    expect(isinstance(notification, dict), "the SES notification is a JSON object")
    return reports(notification, sns_id=message["MessageId"])


def confirm(url: str, fetch: Callable[[str], bytes], *, topic: str) -> None:
    """Follow a SubscriptionConfirmation's link (on Amazon's hosts only)."""
    if not is_amazon_url(url):
        raise Forged(f"SubscribeURL not on an SNS host: {url[:200]!r}")
    try:
        fetch(url)
    except Exception as exc:
        logger.warning("could not confirm the subscription to %s: %s", topic, exc)
        raise Unreachable("the subscription could not be confirmed") from None
    logger.info("confirmed the subscription to SNS topic %s", topic)


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def reference(mail: dict[str, Any]) -> str | None:
    """The Message-ID(s) the notification quotes from our email."""
    found = [_dict(mail.get("commonHeaders")).get("messageId")]
    headers = mail.get("headers")
    for header in headers if isinstance(headers, list) else []:
        if str(_dict(header).get("name", "")).lower() == "message-id":
            found.append(_dict(header).get("value"))
    quoted = [value for value in found if isinstance(value, str)]
    return " ".join(quoted) or None


def reports(notification: dict[str, Any], *, sns_id: str) -> list[Report]:
    """One Report per recipient of a bounce or complaint; other notifications, none."""
    kind = notification.get("notificationType") or notification.get("eventType")
    if kind == "Bounce":
        detail = notification.get("bounce")
        expect(isinstance(detail, dict), "a bounce notification has a bounce object")
        bounce_type = detail.get("bounceType")
        # Undetermined: SES could not tell; a soft bounce until it happens again.
        type_ = FeedbackType.HARD if bounce_type == "Permanent" else FeedbackType.SOFT
        recipients = detail.get("bouncedRecipients")
        summary = f"{text(bounce_type, 40)}/{text(detail.get('bounceSubType'), 40)}"
    elif kind == "Complaint":
        detail = notification.get("complaint")
        expect(isinstance(detail, dict), "a complaint notification has a complaint object")
        type_ = FeedbackType.COMPLAINT
        recipients = detail.get("complainedRecipients")
        summary = "complaint: " + (text(detail.get("complaintFeedbackType"), 40) or "abuse")
    else:
        return []
    expect(isinstance(recipients, list), "the recipients are a list")
    # SES's feedbackId names the event however it reached us (a notification, event
    # publishing); SNS's MessageId if it is missing.
    feedback_id = detail.get("feedbackId") if isinstance(detail.get("feedbackId"), str) else None
    quoted = reference(_dict(notification.get("mail")))
    found = []
    for recipient in recipients:
        address = _dict(recipient).get("emailAddress")
        expect(isinstance(address, str), "a recipient has an emailAddress")
        found.append(
            Report(
                source=SOURCE,
                event_key=event_key(SOURCE, feedback_id or sns_id, address),
                type=type_,
                email=address,
                reference=quoted,
                reason=text(recipient.get("diagnosticCode")) or summary,
                diagnostic=text(recipient.get("status"), 64) or None,
                occurred_at=from_iso(detail.get("timestamp")),
                payload=notification,
            )
        )
    return found
