"""The provider webhooks (service.web.webhooks, service.feedback.webhooks), on both
databases: each request signed in the test exactly as its provider signs it, with keys the
test makes; what was recorded and done is read back from the database."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from datetime import UTC, datetime, timedelta

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.x509.oid import NameOID
from sqlalchemy import select
from sqlalchemy.exc import OperationalError

from service import outbox as outbox_module
from service.erasure import suppression_hash
from service.feedback.webhooks.ses import SigningCertificates, fetch_https
from service.models import (
    FeedbackEvent,
    OutboxMessage,
    OutboxStatus,
    SubscriberStatus,
    Suppression,
    WebhookToken,
)
from tests.conftest import START
from tests.helpers import get_subscriber, make_subscriber, services_of

TOPIC = "arn:aws:sns:eu-west-1:123456789012:ses-feedback"
CERT_URL = "https://sns.eu-west-1.amazonaws.com/SimpleNotificationService-abc123.pem"
SUBSCRIBE_URL = "https://sns.eu-west-1.amazonaws.com/?Action=ConfirmSubscription&TopicArn=" + TOPIC
MAILGUN_KEY = "key-mailgun-signing-0123456789abcdef"
POSTMARK_USER, POSTMARK_PASSWORD = "postmark", "correct horse battery staple"
BOUNCE_TOKEN = "generic-bounce-token-0123456789"
SNS_FIELDS = {
    "Notification": ["Message", "MessageId", "Subject", "Timestamp", "TopicArn", "Type"],
    "SubscriptionConfirmation": [
        "Message",
        "MessageId",
        "SubscribeURL",
        "Timestamp",
        "Token",
        "TopicArn",
        "Type",
    ],
}


# Keys, made once: RSA with a self-signed certificate for SNS, P-256 for SendGrid.


def _certificate(key: rsa.RSAPrivateKey, *, not_before: datetime, not_after: datetime) -> bytes:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "sns.amazonaws.com")])
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .sign(key, hashes.SHA256())
    )
    return certificate.public_bytes(serialization.Encoding.PEM)


@pytest.fixture(scope="module")
def sns_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def sns_certificate(sns_key) -> bytes:
    return _certificate(
        sns_key, not_before=START - timedelta(days=1), not_after=START + timedelta(days=365)
    )


@pytest.fixture(scope="module")
def sendgrid_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def sendgrid_public(key: ec.EllipticCurvePrivateKey) -> str:
    """The verification key as SendGrid's settings page shows it: base64 DER."""
    der = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return base64.b64encode(der).decode()


class FakeFetcher:
    """Stands in for the internet: answers the URLs it was given, remembers every GET."""

    def __init__(self, pages: dict[str, bytes]) -> None:
        self.pages = pages
        self.fetched: list[str] = []

    def __call__(self, url: str) -> bytes:
        self.fetched.append(url)
        if url not in self.pages:
            raise OSError(f"no route to {url}")
        return self.pages[url]


@pytest.fixture
def fetcher(sns_certificate) -> FakeFetcher:
    return FakeFetcher(
        {CERT_URL: sns_certificate, SUBSCRIBE_URL: b"<ConfirmSubscriptionResponse/>"}
    )


@pytest.fixture
def hooks(make_app, sendgrid_key, fetcher):
    """An app with every webhook's secret set, fetching through the fake."""
    app = make_app(
        SES_TOPIC_ARNS=f"arn:aws:sns:us-east-1:123456789012:other, {TOPIC}",
        SENDGRID_WEBHOOK_PUBLIC_KEY=sendgrid_public(sendgrid_key),
        MAILGUN_WEBHOOK_SIGNING_KEY=MAILGUN_KEY,
        POSTMARK_WEBHOOK_USER=POSTMARK_USER,
        POSTMARK_WEBHOOK_PASSWORD=POSTMARK_PASSWORD,
        BOUNCE_WEBHOOK_TOKEN=BOUNCE_TOKEN,
    )
    services_of(app).sns_certificates = SigningCertificates(fetcher)
    return app


@pytest.fixture
def web(hooks):
    return hooks.test_client()


def subscriber(app, email: str, status=SubscriberStatus.CONFIRMED) -> int:
    services = services_of(app)
    with services.database.begin() as session:
        return make_subscriber(session, email, now=services.clock(), status=status).id


def queued_email(app, email: str) -> tuple[int, str]:
    """A confirmed reader with one email queued: (its outbox id, its Message-ID)."""
    services = services_of(app)
    now = services.clock()
    with services.database.begin() as session:
        reader = make_subscriber(session, email, now=now, status=SubscriberStatus.CONFIRMED)
        outbox_module.enqueue(session, reader, kind="confirm", template="confirm", now=now)
        row = session.scalar(select(OutboxMessage).where(OutboxMessage.subscriber_id == reader.id))
        return row.id, services.message_ids.message_id(row.id, row.created_at)


def events(app) -> list[FeedbackEvent]:
    with services_of(app).database.read() as session:
        return list(session.scalars(select(FeedbackEvent).order_by(FeedbackEvent.id)))


def status_of(app, email: str) -> SubscriberStatus:
    return get_subscriber(app, email).status


def suppressed(app, email: str) -> bool:
    with services_of(app).database.read() as session:
        return session.get(Suppression, suppression_hash(email)) is not None


def iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


# SES through SNS


def sns_signed(message: dict, key: rsa.RSAPrivateKey, *, version: str = "1", cert_url=CERT_URL):
    """`message` with SNS's signature: the canonical string signed with SHA1withRSA (1) or
    SHA256withRSA (2), as https://docs.aws.amazon.com/sns/latest/dg/sns-verify-signature-of-message.html
    describes it."""
    canonical = "".join(
        f"{name}\n{message[name]}\n" for name in SNS_FIELDS[message["Type"]] if name in message
    )
    algorithm = hashes.SHA1() if version == "1" else hashes.SHA256()
    signature = key.sign(canonical.encode(), padding.PKCS1v15(), algorithm)
    return {
        **message,
        "SignatureVersion": version,
        "Signature": base64.b64encode(signature).decode(),
        "SigningCertURL": cert_url,
    }


def ses_bounce(
    email: str, bounce_type: str = "Permanent", *, message_id: str | None = None, where="common"
):
    mail: dict = {"messageId": "0100018c-ses-own-id", "source": "hello@newsletter.test"}
    if message_id and where == "common":
        mail["commonHeaders"] = {"messageId": message_id, "subject": "Hello"}
    if message_id and where == "headers":
        mail["headers"] = [
            {"name": "To", "value": email},
            {"name": "Message-Id", "value": message_id},
        ]
    return {
        "notificationType": "Bounce",
        "bounce": {
            "feedbackId": f"fb-{email}-{bounce_type}",
            "bounceType": bounce_type,
            "bounceSubType": "General",
            "bouncedRecipients": [
                {
                    "emailAddress": email,
                    "action": "failed",
                    "status": "5.1.1",
                    "diagnosticCode": "smtp; 550 5.1.1 user unknown",
                }
            ],
            "timestamp": "2026-11-24T14:59:38.237Z",
        },
        "mail": mail,
    }


def ses_complaint(email: str):
    return {
        "notificationType": "Complaint",
        "complaint": {
            "feedbackId": f"complaint-{email}",
            "complainedRecipients": [{"emailAddress": email}],
            "complaintFeedbackType": "abuse",
            "timestamp": "2026-11-24T14:59:38.237Z",
        },
        "mail": {"messageId": "0100018c-ses-own-id"},
    }


def sns_notification(notification: dict, *, sns_id="sns-1", at=START, subject=None, topic=TOPIC):
    message = {
        "Type": "Notification",
        "MessageId": sns_id,
        "TopicArn": topic,
        "Message": json.dumps(notification),
        "Timestamp": iso(at),
    }
    if subject:
        message["Subject"] = subject
    return message


def post_sns(web, message: dict):
    return web.post(
        "/webhooks/ses",
        data=json.dumps(message),
        headers={
            "Content-Type": "text/plain; charset=UTF-8",
            "x-amz-sns-message-type": message["Type"],
        },
    )


@pytest.mark.parametrize(("version", "where"), [("1", "common"), ("2", "headers")])
def test_ses_hard_bounce_signed_by_sns_marks_the_reader_bounced(
    hooks, web, sns_key, version, where
):
    outbox_id, message_id = queued_email(hooks, "gone@example.com")
    message = sns_signed(
        sns_notification(
            # SES quotes our Message-ID in commonHeaders, and in headers when told to.
            ses_bounce("gone@example.com", message_id=message_id, where=where),
            subject="Bounce",
        ),
        sns_key,
        version=version,
    )
    response = post_sns(web, message)
    assert response.status_code == 200, response.get_json()
    assert response.get_json() == {
        "received": 1,
        "recorded": 1,
        "duplicates": 0,
        "outcomes": {"bounced": 1},
    }
    assert status_of(hooks, "gone@example.com") is SubscriberStatus.BOUNCED
    (event,) = events(hooks)
    assert (event.source, event.type.value, event.email) == ("ses", "hard", "gone@example.com")
    assert event.event_key == "ses:fb-gone@example.com-Permanent:gone@example.com"
    assert event.outbox_id == outbox_id  # our Message-ID named the email
    assert event.diagnostic == "5.1.1" and "user unknown" in event.reason
    (row,) = [m for m in _outbox(hooks) if m.id == outbox_id]
    assert row.status is not OutboxStatus.QUEUED  # the bounce cancelled it


def _outbox(app) -> list[OutboxMessage]:
    with services_of(app).database.read() as session:
        return list(session.scalars(select(OutboxMessage)))


def test_ses_transient_and_undetermined_bounces_are_soft(hooks, web, sns_key):
    for n, bounce_type in enumerate(["Transient", "Undetermined"]):
        address = f"{bounce_type.lower()}@example.com"
        subscriber(hooks, address)
        message = sns_signed(
            sns_notification(ses_bounce(address, bounce_type), sns_id=f"sns-{n}"), sns_key
        )
        assert post_sns(web, message).get_json()["outcomes"] == {"soft bounce counted": 1}
        assert status_of(hooks, address) is SubscriberStatus.CONFIRMED
    assert [e.type.value for e in events(hooks)] == ["soft", "soft"]


def test_ses_complaint_unsubscribes_and_suppresses(hooks, web, sns_key):
    subscriber(hooks, "angry@example.com")
    message = sns_signed(sns_notification(ses_complaint("angry@example.com")), sns_key, version="2")
    assert post_sns(web, message).status_code == 200
    assert status_of(hooks, "angry@example.com") is SubscriberStatus.UNSUBSCRIBED
    assert suppressed(hooks, "angry@example.com")
    assert [e.type.value for e in events(hooks)] == ["complaint"]


def test_ses_event_publishing_is_read_too(hooks, web, sns_key):
    subscriber(hooks, "gone@example.com")
    published = ses_bounce("gone@example.com")
    published["eventType"] = published.pop("notificationType")
    assert post_sns(web, sns_signed(sns_notification(published), sns_key)).status_code == 200
    assert status_of(hooks, "gone@example.com") is SubscriberStatus.BOUNCED


def test_ses_forged_message_is_refused_and_changes_nothing(hooks, web, sns_key):
    subscriber(hooks, "reader@example.com")
    genuine = sns_signed(sns_notification(ses_complaint("someone@example.com")), sns_key)
    # The signature of another message, over this one's text.
    forged = {**genuine, "Message": json.dumps(ses_complaint("reader@example.com"))}
    assert post_sns(web, forged).status_code == 403
    # Signed by a key that is not the certificate's.
    other_key = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    stranger = sns_signed(sns_notification(ses_complaint("reader@example.com")), other_key)
    assert post_sns(web, stranger).status_code == 403
    unsigned = {**genuine, "SignatureVersion": "3"}
    assert post_sns(web, unsigned).status_code == 403
    assert status_of(hooks, "reader@example.com") is SubscriberStatus.CONFIRMED
    assert events(hooks) == [] and not suppressed(hooks, "reader@example.com")


def test_ses_message_signed_over_five_minutes_away_is_stale(hooks, web, sns_key):
    subscriber(hooks, "gone@example.com")
    for offset in (timedelta(minutes=-6), timedelta(minutes=6)):
        message = sns_signed(
            sns_notification(ses_bounce("gone@example.com"), at=START + offset), sns_key
        )
        assert post_sns(web, message).status_code == 403
    assert events(hooks) == []
    fresh = sns_signed(
        sns_notification(ses_bounce("gone@example.com"), at=START - timedelta(minutes=4)), sns_key
    )
    assert post_sns(web, fresh).status_code == 200


def test_ses_redelivered_notification_is_recorded_once(hooks, web, sns_key, fetcher):
    subscriber(hooks, "full@example.com")
    message = sns_signed(sns_notification(ses_bounce("full@example.com", "Transient")), sns_key)
    assert post_sns(web, message).get_json()["recorded"] == 1
    again = post_sns(web, message)
    assert again.status_code == 200
    assert again.get_json()["duplicates"] == 1
    assert len(events(hooks)) == 1
    assert fetcher.fetched == [CERT_URL]  # the certificate, fetched once for the process


def test_ses_certificate_off_amazons_sns_hosts_is_never_fetched(hooks, web, sns_key, fetcher):
    subscriber(hooks, "reader@example.com")
    for cert_url in [
        "https://sns.eu-west-1.amazonaws.com.evil.example/cert.pem",
        "https://evil.example/sns.eu-west-1.amazonaws.com/cert.pem",
        "http://sns.eu-west-1.amazonaws.com/SimpleNotificationService-abc123.pem",
        "https://sns.eu-west-1.amazonaws.com:8443/SimpleNotificationService-abc123.pem",
        "https://user@sns.eu-west-1.amazonaws.com/SimpleNotificationService-abc123.pem",
        "https://s3.amazonaws.com/SimpleNotificationService-abc123.pem",
        "https://sns.eu-west-1.amazonaws.com/SimpleNotificationService-abc123.pem.txt",
        # Amazon hosts that start with "sns." but are an S3 bucket of that name.
        "https://sns.s3-external-1.amazonaws.com/SimpleNotificationService-abc123.pem",
        "https://sns.s3-website-us-east-1.amazonaws.com/SimpleNotificationService-abc123.pem",
    ]:
        fetcher.pages[cert_url] = fetcher.pages[CERT_URL]
        message = sns_signed(
            sns_notification(ses_complaint("reader@example.com")), sns_key, cert_url=cert_url
        )
        assert post_sns(web, message).status_code == 403, cert_url
    assert fetcher.fetched == []
    assert status_of(hooks, "reader@example.com") is SubscriberStatus.CONFIRMED


def test_ses_certificate_that_cannot_be_fetched_answers_502_so_sns_retries(
    hooks, web, sns_key, fetcher
):
    subscriber(hooks, "gone@example.com")
    del fetcher.pages[CERT_URL]
    message = sns_signed(sns_notification(ses_bounce("gone@example.com")), sns_key)
    assert post_sns(web, message).status_code == 502
    assert events(hooks) == []


def test_ses_expired_certificate_is_refused(hooks, web, sns_key, fetcher):
    fetcher.pages[CERT_URL] = _certificate(
        sns_key, not_before=START - timedelta(days=400), not_after=START - timedelta(days=1)
    )
    subscriber(hooks, "gone@example.com")
    message = sns_signed(sns_notification(ses_bounce("gone@example.com")), sns_key)
    assert post_sns(web, message).status_code == 403
    assert status_of(hooks, "gone@example.com") is SubscriberStatus.CONFIRMED


def confirmation(topic=TOPIC, subscribe_url=SUBSCRIBE_URL):
    return {
        "Type": "SubscriptionConfirmation",
        "MessageId": "165545c9-2a5c-472c-8df2-7ff2be2b3b1b",
        "Token": "2336412f37fb687f5d51e6e241d09c805a5a57b30d712f794cc5f6a988666d92768dd60a",
        "TopicArn": topic,
        "Message": f"You have chosen to subscribe to the topic {topic}.",
        "SubscribeURL": subscribe_url,
        "Timestamp": iso(START),
    }


def test_ses_subscription_is_confirmed_by_fetching_its_subscribe_url(hooks, web, sns_key, fetcher):
    response = post_sns(web, sns_signed(confirmation(), sns_key, version="2"))
    assert response.status_code == 200
    assert response.get_json()["received"] == 0
    assert fetcher.fetched == [CERT_URL, SUBSCRIBE_URL]


def test_ses_subscription_to_another_topic_or_forged_is_not_confirmed(hooks, web, sns_key, fetcher):
    other = "arn:aws:sns:eu-west-1:999999999999:not-ours"
    assert post_sns(web, sns_signed(confirmation(topic=other), sns_key)).status_code == 403
    tampered = {**sns_signed(confirmation(), sns_key), "Token": "another"}
    assert post_sns(web, tampered).status_code == 403
    elsewhere = sns_signed(confirmation(subscribe_url="https://evil.example/confirm"), sns_key)
    assert post_sns(web, elsewhere).status_code == 403
    assert SUBSCRIBE_URL not in fetcher.fetched
    assert "https://evil.example/confirm" not in fetcher.fetched


def test_ses_notification_from_a_topic_not_configured_is_refused_before_any_fetch(
    hooks, web, sns_key, fetcher
):
    message = sns_signed(
        sns_notification(ses_bounce("gone@example.com"), topic="arn:aws:sns:eu-west-1:1:other"),
        sns_key,
    )
    assert post_sns(web, message).status_code == 403
    assert fetcher.fetched == []


# Broken JSON and payloads of the wrong shape, for every endpoint


def sendgrid_headers(body: bytes, key, timestamp: int | None = None) -> dict[str, str]:
    """SendGrid's signature: ECDSA P-256 SHA-256 over timestamp + body, base64 DER."""
    stamp = str(int(timestamp if timestamp is not None else START.timestamp()))
    signature = key.sign(stamp.encode() + body, ec.ECDSA(hashes.SHA256()))
    return {
        "Content-Type": "application/json",
        "X-Twilio-Email-Event-Webhook-Signature": base64.b64encode(signature).decode(),
        "X-Twilio-Email-Event-Webhook-Timestamp": stamp,
    }


def mailgun_body(
    event: dict, *, token="a" * 50, timestamp: int | None = None, key=MAILGUN_KEY
) -> bytes:
    """Mailgun's JSON webhook body: the HMAC-SHA256 of timestamp + token, in hex, beside it."""
    stamp = str(int(timestamp if timestamp is not None else START.timestamp()))
    signature = hmac.new(key.encode(), (stamp + token).encode(), hashlib.sha256).hexdigest()
    return json.dumps(
        {
            "signature": {"timestamp": stamp, "token": token, "signature": signature},
            "event-data": event,
        }
    ).encode()


def basic(user: str, password: str) -> dict[str, str]:
    encoded = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {encoded}", "Content-Type": "application/json"}


BEARER = {"Authorization": f"Bearer {BOUNCE_TOKEN}", "Content-Type": "application/json"}


def test_broken_json_or_wrong_shape_is_400_on_every_endpoint(hooks, web, sendgrid_key):
    for body in [b"{not json", b"\xff\xfe", b"[" * 100_000, b"", b"42", b'"text"', b'{"Type": 5}']:
        broken_json_is_400(web, sendgrid_key, body)
    assert events(hooks) == []


def broken_json_is_400(web, sendgrid_key, body: bytes) -> None:
    """Mailgun's and SNS's signatures are inside the body: broken, they cannot be checked."""
    assert post_sns_raw(web, body).status_code in (400, 403)
    assert (
        web.post(
            "/webhooks/sendgrid", data=body, headers=sendgrid_headers(body, sendgrid_key)
        ).status_code
        == 400
    )
    assert web.post("/webhooks/mailgun", data=body).status_code in (400, 403)
    assert (
        web.post(
            "/webhooks/postmark", data=body, headers=basic(POSTMARK_USER, POSTMARK_PASSWORD)
        ).status_code
        == 400
    )
    assert web.post("/webhooks/bounce", data=body, headers=BEARER).status_code == 400


def post_sns_raw(web, body: bytes):
    return web.post("/webhooks/ses", data=body, headers={"Content-Type": "text/plain"})


def test_signed_payloads_of_the_wrong_shape_are_400_never_500(hooks, web, sns_key, sendgrid_key):
    shapes = [
        {"notificationType": "Bounce", "bounce": "gone"},
        {
            "notificationType": "Bounce",
            "bounce": {"bounceType": "Permanent", "bouncedRecipients": "x"},
        },
        {"notificationType": "Bounce", "bounce": {"bouncedRecipients": [{"emailAddress": 5}]}},
        {"notificationType": "Complaint", "complaint": {"complainedRecipients": [None]}},
    ]
    for n, shape in enumerate(shapes):
        message = sns_signed(sns_notification(shape, sns_id=f"shape-{n}"), sns_key)
        assert post_sns(web, message).status_code == 400, shape
    not_json = sns_signed({**sns_notification({}), "Message": "{oops"}, sns_key)
    assert post_sns(web, not_json).status_code == 400
    for body in [b'{"event": "bounce"}', b"[1, 2]", b'[{"event": "bounce", "email": 5}]']:
        response = web.post(
            "/webhooks/sendgrid", data=body, headers=sendgrid_headers(body, sendgrid_key)
        )
        assert response.status_code == 400, body
    for event in [
        [],
        {"event": "failed", "severity": "permanent"},
        {"event": "complained", "recipient": "a@example.com"},
    ]:
        assert (
            web.post(
                "/webhooks/mailgun", data=mailgun_body(event, token=str(id(event)) * 2)
            ).status_code
            == 400
        )
    for record in [
        [],
        {"RecordType": "Bounce", "TypeCode": "1", "ID": 1, "Email": "a@example.com"},
        {"RecordType": "SpamComplaint", "ID": 1},
    ]:
        response = web.post(
            "/webhooks/postmark", json=record, headers=basic(POSTMARK_USER, POSTMARK_PASSWORD)
        )
        assert response.status_code == 400, record
    for report in [
        {"email": "a@example.com", "type": "bounced"},
        {"type": "hard"},
        [{"email": "a@example.com", "type": "hard"}, 3],
        {"email": ["a"], "type": "hard"},
    ]:
        assert web.post("/webhooks/bounce", json=report, headers=BEARER).status_code == 400, report
    assert events(hooks) == []


def test_a_body_over_a_megabyte_is_413(hooks, web):
    response = web.post("/webhooks/bounce", data=b"[" + b" " * (1024 * 1024) + b"]", headers=BEARER)
    assert response.status_code == 413


# Endpoints whose secret is unset


def test_an_endpoint_whose_secret_is_unset_is_404(client):
    for path in ["ses", "sendgrid", "mailgun", "postmark", "bounce"]:
        response = client.post(f"/webhooks/{path}", data=b"{}", headers=BEARER)
        assert response.status_code == 404, path
        assert response.is_json


def test_postmark_needs_both_its_user_and_its_password(make_app):
    app = make_app(POSTMARK_WEBHOOK_USER="postmark")
    response = app.test_client().post("/webhooks/postmark", json={}, headers=basic("postmark", ""))
    assert response.status_code == 404


# SendGrid


def sendgrid_event(email: str, event: str, n: int, **fields):
    return {
        "email": email,
        "timestamp": int(START.timestamp()) - 30,
        "event": event,
        "sg_event_id": f"sg-event-{n}",
        "sg_message_id": f"14c5d75ce93.dfd.64b469.filter0001.16648.5515E0B88.{n}",
        "smtp-id": fields.pop("smtp_id", "<14c5d75ce93.dfd.64b469@ismtpd-555>"),
        **fields,
    }


def post_sendgrid(web, events_: list, key, timestamp=None):
    body = json.dumps(events_).encode()
    return web.post("/webhooks/sendgrid", data=body, headers=sendgrid_headers(body, key, timestamp))


def test_sendgrid_signed_batch_acts_on_bounces_drops_and_spam_reports(hooks, web, sendgrid_key):
    outbox_id, message_id = queued_email(hooks, "gone@example.com")
    for name in ["blocked", "dropped", "invalid", "spam", "reporter", "deferred", "unsub"]:
        subscriber(hooks, f"{name}@example.com")
    batch = [
        sendgrid_event(
            "gone@example.com",
            "bounce",
            1,
            type="bounce",
            status="5.1.1",
            reason="550 unknown",
            smtp_id=message_id,
        ),
        sendgrid_event(
            "blocked@example.com", "bounce", 2, type="blocked", status="4.0.0", reason="blocked"
        ),
        sendgrid_event("dropped@example.com", "dropped", 3, reason="Bounced Address"),
        sendgrid_event("invalid@example.com", "dropped", 4, reason="Invalid"),
        sendgrid_event("spam@example.com", "dropped", 5, reason="Spam Reporting Address"),
        sendgrid_event("reporter@example.com", "spamreport", 6),
        sendgrid_event("deferred@example.com", "deferred", 7, response="try later"),
        sendgrid_event("unsub@example.com", "dropped", 8, reason="Unsubscribed Address"),
        sendgrid_event("unsub@example.com", "delivered", 9),
    ]
    response = post_sendgrid(web, batch, sendgrid_key)
    assert response.status_code == 200, response.get_json()
    assert response.get_json()["received"] == 6
    assert status_of(hooks, "gone@example.com") is SubscriberStatus.BOUNCED
    assert status_of(hooks, "blocked@example.com") is SubscriberStatus.CONFIRMED  # soft
    assert status_of(hooks, "dropped@example.com") is SubscriberStatus.BOUNCED
    assert status_of(hooks, "invalid@example.com") is SubscriberStatus.BOUNCED
    for name in ("spam", "reporter"):
        assert status_of(hooks, f"{name}@example.com") is SubscriberStatus.UNSUBSCRIBED
        assert suppressed(hooks, f"{name}@example.com")
    assert status_of(hooks, "deferred@example.com") is SubscriberStatus.CONFIRMED
    assert status_of(hooks, "unsub@example.com") is SubscriberStatus.CONFIRMED
    recorded = {e.email: (e.type.value, e.event_key) for e in events(hooks)}
    assert recorded["gone@example.com"] == ("hard", "sendgrid:sg-event-1")
    assert recorded["blocked@example.com"][0] == "soft"
    assert {e.email for e in events(hooks) if e.outbox_id == outbox_id} == {"gone@example.com"}
    assert len(recorded) == 6


def test_sendgrid_forged_or_unsigned_batch_is_refused(hooks, web, sendgrid_key):
    subscriber(hooks, "reader@example.com")
    body = json.dumps([sendgrid_event("reader@example.com", "spamreport", 1)]).encode()
    other = ec.generate_private_key(ec.SECP256R1())
    assert (
        web.post("/webhooks/sendgrid", data=body, headers=sendgrid_headers(body, other)).status_code
        == 403
    )
    signed = sendgrid_headers(b"[]", sendgrid_key)
    assert web.post("/webhooks/sendgrid", data=body, headers=signed).status_code == 403
    changed_time = {
        **sendgrid_headers(body, sendgrid_key),
        "X-Twilio-Email-Event-Webhook-Timestamp": str(int(START.timestamp()) + 1),
    }
    assert web.post("/webhooks/sendgrid", data=body, headers=changed_time).status_code == 403
    assert (
        web.post(
            "/webhooks/sendgrid", data=body, headers={"Content-Type": "application/json"}
        ).status_code
        == 403
    )
    assert status_of(hooks, "reader@example.com") is SubscriberStatus.CONFIRMED
    assert events(hooks) == [] and not suppressed(hooks, "reader@example.com")


def test_sendgrid_stale_timestamp_is_refused(hooks, web, sendgrid_key):
    subscriber(hooks, "reader@example.com")
    batch = [sendgrid_event("reader@example.com", "spamreport", 1)]
    for offset in (-301, 301):
        response = post_sendgrid(web, batch, sendgrid_key, START.timestamp() + offset)
        assert response.status_code == 403
    assert events(hooks) == []
    assert post_sendgrid(web, batch, sendgrid_key, START.timestamp() - 299).status_code == 200


def test_sendgrid_redelivered_batch_is_recorded_once(hooks, web, sendgrid_key):
    subscriber(hooks, "full@example.com")
    batch = [sendgrid_event("full@example.com", "bounce", 1, type="blocked")]
    assert post_sendgrid(web, batch, sendgrid_key).get_json()["recorded"] == 1
    again = post_sendgrid(web, batch, sendgrid_key, START.timestamp() + 60)
    assert again.get_json() == {
        "received": 1,
        "recorded": 0,
        "duplicates": 1,
        "outcomes": {"duplicate": 1},
    }
    assert len(events(hooks)) == 1


def test_sendgrid_batch_over_the_usual_request_limit_is_accepted(hooks, web, sendgrid_key):
    batch = [sendgrid_event(f"r{n}@example.com", "delivered", n, pad="x" * 200) for n in range(400)]
    assert len(json.dumps(batch)) > 64 * 1024
    assert post_sendgrid(web, batch, sendgrid_key).status_code == 200


# Mailgun


def mailgun_event(
    email: str,
    event: str = "failed",
    severity: str | None = "permanent",
    n: int = 1,
    message_id="20261124.abc@newsletter.test",
):
    data = {
        "id": f"mg-event-{n}",
        "event": event,
        "timestamp": START.timestamp() - 10,
        "recipient": email,
        "message": {"headers": {"message-id": message_id, "to": email}},
        "delivery-status": {"code": 550, "description": "No such user", "message": "5.1.1 unknown"},
    }
    if severity:
        data["severity"] = severity
        data["reason"] = "bounce" if severity == "permanent" else "generic"
    return data


def test_mailgun_permanent_temporary_failures_and_complaints(hooks, web):
    outbox_id, message_id = queued_email(hooks, "gone@example.com")
    subscriber(hooks, "full@example.com")
    subscriber(hooks, "angry@example.com")
    posts = [
        mailgun_body(
            mailgun_event("gone@example.com", message_id=message_id.strip("<>")), token="t1" * 25
        ),
        mailgun_body(mailgun_event("full@example.com", severity="temporary", n=2), token="t2" * 25),
        mailgun_body(mailgun_event("angry@example.com", "complained", None, n=3), token="t3" * 25),
        mailgun_body(mailgun_event("angry@example.com", "delivered", None, n=4), token="t4" * 25),
    ]
    for body in posts:
        assert (
            web.post("/webhooks/mailgun", data=body, content_type="application/json").status_code
            == 200
        )
    assert status_of(hooks, "gone@example.com") is SubscriberStatus.BOUNCED
    assert status_of(hooks, "full@example.com") is SubscriberStatus.CONFIRMED
    assert status_of(hooks, "angry@example.com") is SubscriberStatus.UNSUBSCRIBED
    assert suppressed(hooks, "angry@example.com")
    recorded = [(e.email, e.type.value, e.event_key) for e in events(hooks)]
    assert recorded[0] == ("gone@example.com", "hard", "mailgun:mg-event-1")
    assert recorded[1][:2] == ("full@example.com", "soft")
    assert recorded[2] == ("angry@example.com", "complaint", "mailgun:mg-event-3")
    assert len(recorded) == 3
    assert events(hooks)[0].outbox_id == outbox_id


def test_mailgun_retries_of_one_email_count_as_one_soft_bounce(hooks, web):
    subscriber(hooks, "full@example.com")
    for n in range(3):
        event = mailgun_event("full@example.com", severity="temporary", n=n)
        response = web.post("/webhooks/mailgun", data=mailgun_body(event, token=f"retry{n}" * 10))
        assert response.status_code == 200
    assert len(events(hooks)) == 1
    assert status_of(hooks, "full@example.com") is SubscriberStatus.CONFIRMED


def test_mailgun_forged_signature_is_refused(hooks, web):
    subscriber(hooks, "reader@example.com")
    event = mailgun_event("reader@example.com", "complained", None)
    assert (
        web.post("/webhooks/mailgun", data=mailgun_body(event, key="not-the-key")).status_code
        == 403
    )
    tampered = json.loads(mailgun_body(event))
    tampered["signature"]["token"] = "b" * 50
    assert web.post("/webhooks/mailgun", json=tampered).status_code == 403
    not_hex = json.loads(mailgun_body(event))
    not_hex["signature"]["signature"] = "é" * 64  # compared as bytes: a 403, not a 500
    assert web.post("/webhooks/mailgun", json=not_hex).status_code == 403
    assert web.post("/webhooks/mailgun", json={"event-data": event}).status_code == 403
    assert status_of(hooks, "reader@example.com") is SubscriberStatus.CONFIRMED
    assert events(hooks) == []


def test_mailgun_stale_timestamp_is_refused(hooks, web):
    subscriber(hooks, "gone@example.com")
    for n, offset in enumerate((-301, 301)):
        body = mailgun_body(
            mailgun_event("gone@example.com"),
            token=f"{n}" * 50,
            timestamp=START.timestamp() + offset,
        )
        assert web.post("/webhooks/mailgun", data=body).status_code == 403
    assert events(hooks) == []
    fresh = mailgun_body(mailgun_event("gone@example.com"), timestamp=START.timestamp() - 299)
    assert web.post("/webhooks/mailgun", data=fresh).status_code == 200


def test_mailgun_replayed_token_is_refused_and_the_event_recorded_once(hooks, web, clock):
    subscriber(hooks, "gone@example.com")
    body = mailgun_body(mailgun_event("gone@example.com"))
    assert web.post("/webhooks/mailgun", data=body).status_code == 200
    clock.advance(minutes=1)
    replay = web.post("/webhooks/mailgun", data=body)
    assert replay.status_code == 403
    # The same event under a new token (a redelivery): answered, not recorded twice.
    again = web.post(
        "/webhooks/mailgun",
        data=mailgun_body(
            mailgun_event("gone@example.com"), token="c" * 50, timestamp=clock.now.timestamp()
        ),
    )
    assert again.status_code == 200 and again.get_json()["duplicates"] == 1
    assert len(events(hooks)) == 1


def test_mailgun_tokens_are_forgotten_once_stale(hooks, web, clock):
    assert (
        web.post(
            "/webhooks/mailgun", data=mailgun_body(mailgun_event("a@example.com"), token="old" * 10)
        ).status_code
        == 200
    )
    clock.advance(minutes=11)
    body = mailgun_body(
        mailgun_event("b@example.com", n=2), token="new" * 10, timestamp=clock.now.timestamp()
    )
    assert web.post("/webhooks/mailgun", data=body).status_code == 200
    with services_of(hooks).database.read() as session:
        assert list(session.scalars(select(WebhookToken.token))) == ["mailgun:" + "new" * 10]


def test_mailgun_token_is_spent_only_with_the_event_recorded(hooks, web, monkeypatch):
    """A request that fails after its token was taken leaves the token for Mailgun's retry:
    both are in one transaction."""
    subscriber(hooks, "gone@example.com")
    feedback = services_of(hooks).feedback
    record = feedback.record

    def failing_once(session, report, *, now):
        monkeypatch.setattr(feedback, "record", record)
        raise RuntimeError("the database went away")

    monkeypatch.setattr(feedback, "record", failing_once)
    body = mailgun_body(mailgun_event("gone@example.com"))
    assert web.post("/webhooks/mailgun", data=body).status_code == 500
    assert events(hooks) == []
    assert web.post("/webhooks/mailgun", data=body).status_code == 200  # the retry
    assert status_of(hooks, "gone@example.com") is SubscriberStatus.BOUNCED


# Postmark


def postmark_bounce(email: str, type_code: int, type_name: str, record_id: int = 1, **fields):
    return {
        "RecordType": "Bounce",
        "ID": record_id,
        "Type": type_name,
        "TypeCode": type_code,
        "MessageID": "883953f4-6105-42a2-a16a-77a8eac79483",
        "Email": email,
        "Description": "The server was unable to deliver your message.",
        "Details": "smtp;550 5.1.1 The email account that you tried to reach does not exist.",
        "BouncedAt": "2026-11-24T14:59:54.9070259Z",
        "MessageStream": "outbound",
        **fields,
    }


def post_postmark(web, record, user=POSTMARK_USER, password=POSTMARK_PASSWORD):
    return web.post("/webhooks/postmark", json=record, headers=basic(user, password))


def test_postmark_bounces_by_type_code_and_spam_complaints(hooks, web):
    outbox_id, message_id = queued_email(hooks, "gone@example.com")
    for name in ("bad", "full", "away", "angry"):
        subscriber(hooks, f"{name}@example.com")
    content = (
        f"Received: ...\r\nMessage-ID: {message_id}\r\n\r\nYour message could not be delivered"
    )
    records = [
        postmark_bounce("gone@example.com", 1, "HardBounce", 1, Content=content),
        postmark_bounce("bad@example.com", 100000, "BadEmailAddress", 2),
        postmark_bounce("full@example.com", 4096, "SoftBounce", 3),
        postmark_bounce("away@example.com", 64, "AutoResponder", 4),
        {
            "RecordType": "SpamComplaint",
            "ID": 5,
            "Type": "SpamComplaint",
            "TypeCode": 100001,
            "Email": "angry@example.com",
            "BouncedAt": "2026-11-24T14:59:54Z",
        },
        {"RecordType": "Delivery", "MessageID": "x", "Recipient": "away@example.com"},
    ]
    for record in records:
        assert post_postmark(web, record).status_code == 200
    assert status_of(hooks, "gone@example.com") is SubscriberStatus.BOUNCED
    assert status_of(hooks, "bad@example.com") is SubscriberStatus.BOUNCED
    assert status_of(hooks, "full@example.com") is SubscriberStatus.CONFIRMED
    assert status_of(hooks, "away@example.com") is SubscriberStatus.CONFIRMED
    assert status_of(hooks, "angry@example.com") is SubscriberStatus.UNSUBSCRIBED
    assert suppressed(hooks, "angry@example.com")
    recorded = [(e.email, e.type.value, e.event_key) for e in events(hooks)]
    assert recorded == [
        ("gone@example.com", "hard", "postmark:1"),
        ("bad@example.com", "hard", "postmark:2"),
        ("full@example.com", "soft", "postmark:3"),
        ("angry@example.com", "complaint", "postmark:5"),
    ]
    assert events(hooks)[0].outbox_id == outbox_id  # the bounce's content quoted our Message-ID


def test_postmark_wrong_or_missing_password_is_401(hooks, web):
    subscriber(hooks, "gone@example.com")
    record = postmark_bounce("gone@example.com", 1, "HardBounce")
    wrong = post_postmark(web, record, password="guess")
    assert wrong.status_code == 401
    assert wrong.headers["WWW-Authenticate"].startswith("Basic")
    assert post_postmark(web, record, user="admin").status_code == 401
    assert web.post("/webhooks/postmark", json=record).status_code == 401
    bearer = {"Authorization": f"Bearer {POSTMARK_PASSWORD}"}
    assert web.post("/webhooks/postmark", json=record, headers=bearer).status_code == 401
    assert status_of(hooks, "gone@example.com") is SubscriberStatus.CONFIRMED
    assert events(hooks) == []


def test_postmark_redelivered_record_is_recorded_once(hooks, web):
    subscriber(hooks, "full@example.com")
    record = postmark_bounce("full@example.com", 4096, "SoftBounce", 77)
    assert post_postmark(web, record).get_json()["recorded"] == 1
    assert post_postmark(web, record).get_json()["duplicates"] == 1
    assert len(events(hooks)) == 1


# The generic endpoint


def test_generic_reports_one_or_a_list(hooks, web):
    outbox_id, message_id = queued_email(hooks, "gone@example.com")
    subscriber(hooks, "full@example.com")
    subscriber(hooks, "angry@example.com")
    one = {"type": "hard", "message_id": message_id, "reason": "550 5.1.1 no such user"}
    assert web.post("/webhooks/bounce", json=one, headers=BEARER).get_json()["outcomes"] == {
        "bounced": 1
    }
    many = [
        {"email": "full@example.com", "type": "soft", "reason": "mailbox full", "id": 17},
        {"email": "Angry@Example.com", "type": "complaint"},
    ]
    assert web.post("/webhooks/bounce", json=many, headers=BEARER).get_json()["received"] == 2
    assert status_of(hooks, "gone@example.com") is SubscriberStatus.BOUNCED
    assert status_of(hooks, "full@example.com") is SubscriberStatus.CONFIRMED
    assert status_of(hooks, "angry@example.com") is SubscriberStatus.UNSUBSCRIBED
    assert suppressed(hooks, "angry@example.com")
    recorded = events(hooks)
    assert recorded[0].outbox_id == outbox_id and recorded[0].email == "gone@example.com"
    assert {e.email: e.event_key for e in recorded}["full@example.com"] == "bounce:17"


def test_generic_wrong_or_missing_token_is_401(hooks, web):
    subscriber(hooks, "gone@example.com")
    report = {"email": "gone@example.com", "type": "hard"}
    for headers in (
        {"Authorization": "Bearer guess"},
        {},
        {"Authorization": BOUNCE_TOKEN},
        {"Authorization": f"Token {BOUNCE_TOKEN}"},
        basic("x", BOUNCE_TOKEN),
    ):
        response = web.post("/webhooks/bounce", json=report, headers=headers)
        assert response.status_code == 401, headers
    assert status_of(hooks, "gone@example.com") is SubscriberStatus.CONFIRMED
    assert events(hooks) == []


def test_generic_repeated_report_is_recorded_once(hooks, web):
    subscriber(hooks, "full@example.com")
    with_id = {"email": "full@example.com", "type": "soft", "id": "ticket-1"}
    without_id = {"email": "full@example.com", "type": "soft", "reason": "full"}
    for report in (with_id, with_id, without_id, without_id):
        assert web.post("/webhooks/bounce", json=report, headers=BEARER).status_code == 200
    assert len(events(hooks)) == 2


# Unknown addresses


def test_events_about_unknown_addresses_are_recorded_as_unknown(hooks, web, sns_key, sendgrid_key):
    assert (
        post_sns(
            web, sns_signed(sns_notification(ses_bounce("who@example.com")), sns_key)
        ).status_code
        == 200
    )
    assert (
        post_sendgrid(
            web, [sendgrid_event("who2@example.com", "bounce", 1, type="bounce")], sendgrid_key
        ).status_code
        == 200
    )
    assert (
        web.post(
            "/webhooks/mailgun", data=mailgun_body(mailgun_event("who3@example.com"))
        ).status_code
        == 200
    )
    assert (
        post_postmark(web, postmark_bounce("who4@example.com", 1, "HardBounce")).status_code == 200
    )
    assert (
        web.post(
            "/webhooks/bounce", json={"email": "who5@example.com", "type": "hard"}, headers=BEARER
        ).status_code
        == 200
    )
    recorded = events(hooks)
    assert [(e.source, e.outcome, e.subscriber_id) for e in recorded] == [
        (source, "unknown address", None)
        for source in ("ses", "sendgrid", "mailgun", "postmark", "bounce")
    ]


# Odds and ends


def test_the_default_fetcher_takes_https_only():
    with pytest.raises(ValueError):
        fetch_https("http://sns.eu-west-1.amazonaws.com/SimpleNotificationService-abc123.pem")


def test_a_sendgrid_key_that_does_not_parse_is_the_operators_error(make_app, sendgrid_key):
    app = make_app(SENDGRID_WEBHOOK_PUBLIC_KEY="c2VuZGdyaWQ=")  # base64, not a key
    body = b"[]"
    response = app.test_client().post(
        "/webhooks/sendgrid", data=body, headers=sendgrid_headers(body, sendgrid_key)
    )
    assert response.status_code == 500
    assert "SENDGRID_WEBHOOK_PUBLIC_KEY" in response.get_json()["error"]


def test_a_transaction_postgresql_ends_to_break_a_deadlock_is_done_again(hooks, web, monkeypatch):
    subscriber(hooks, "gone@example.com")
    feedback = services_of(hooks).feedback
    record, calls = feedback.record, []

    class DeadlockDetected(Exception):
        sqlstate = "40P01"

    def deadlocked_once(session, report, *, now):
        calls.append(report.email)
        if len(calls) == 1:
            raise OperationalError("UPDATE ...", {}, DeadlockDetected())
        return record(session, report, now=now)

    monkeypatch.setattr(feedback, "record", deadlocked_once)
    report = {"email": "gone@example.com", "type": "hard"}
    response = web.post("/webhooks/bounce", json=report, headers=BEARER)
    assert response.status_code == 200
    assert calls == ["gone@example.com", "gone@example.com"]
    assert status_of(hooks, "gone@example.com") is SubscriberStatus.BOUNCED
    assert len(events(hooks)) == 1


JUNK = [None, [], {}, [1], 1.5, -1, True, "", "x" * 300]


def variants(value, path=()):
    """`value` with each of its fields (nested ones too) replaced in turn by each JUNK."""
    if isinstance(value, dict):
        children = list(value.items())
    elif isinstance(value, list) and value:
        children = [(0, value[0])]
    else:
        return
    for key, child in children:
        for junk in JUNK:
            yield _replaced(value, key, junk)
        for inner in variants(child, (*path, key)):
            yield _replaced(value, key, inner)


def _replaced(value, key, new):
    copy = dict(value) if isinstance(value, dict) else list(value)
    copy[key] = new
    return copy


@pytest.mark.slow
def test_no_signed_payload_of_any_shape_is_answered_500(hooks, web, sns_key, sendgrid_key):
    """Every field of a genuine event of each provider, in turn any JSON type: the answer
    is 200, 400 or 403, never 500."""
    subscriber(hooks, "gone@example.com")
    answers = []
    envelope = sns_notification(ses_bounce("gone@example.com", message_id="<1.a.b@x>"))
    for n, notification in enumerate(variants(json.loads(envelope["Message"]))):
        message = {**envelope, "MessageId": f"m{n}", "Message": json.dumps(notification)}
        answers.append(post_sns(web, sns_signed(message, sns_key)))
    for message in variants(sns_signed(envelope, sns_key)):  # the signature no longer fits
        answers.append(post_sns(web, message))
    for batch in variants([sendgrid_event("gone@example.com", "bounce", 1, type="bounce")]):
        answers.append(post_sendgrid(web, batch, sendgrid_key))
    for n, event in enumerate(variants(mailgun_event("gone@example.com"))):
        answers.append(web.post("/webhooks/mailgun", data=mailgun_body(event, token=f"{n:050d}")))
    for record in variants(postmark_bounce("gone@example.com", 1, "HardBounce", Content="x")):
        answers.append(post_postmark(web, record))
    generic_report = {"email": "gone@example.com", "type": "soft", "message_id": "m", "id": 1}
    for report in variants(generic_report):
        answers.append(web.post("/webhooks/bounce", json=report, headers=BEARER))
    assert len(answers) > 500
    assert {a.status_code for a in answers} <= {200, 400, 403}


def test_generic_nan_is_malformed_and_a_nul_is_stored_without_it(hooks, web):
    subscriber(hooks, "full@example.com")
    for constant in (b"NaN", b"Infinity", b"-Infinity"):
        body = b'{"email": "full@example.com", "type": "soft", "reason": ' + constant + b"}"
        assert web.post("/webhooks/bounce", data=body, headers=BEARER).status_code == 400
    nul = {"email": "full@example.com", "type": "soft", "reason": "full\u0000box", "id": "n1"}
    assert web.post("/webhooks/bounce", json=nul, headers=BEARER).status_code == 200
    assert [event.reason for event in events(hooks)] == ["fullbox"]
