"""Bounces and complaints coming back: provider webhooks under load (the mailbox beside them).

    .venv/bin/python bench/feedback.py [--events 10000] [--clients 16] [--database sqlite|postgresql|both]

The webhook half: starts gunicorn (gunicorn.conf.py) on a fresh database holding one
confirmed reader per event, then posts that many webhook events, correctly signed and
spread over the five endpoints (SES through SNS, SendGrid, Mailgun, Postmark, the generic
one) and over hard bounces, soft bounces and complaints, from `--clients` client processes
at once, one event a request. SNS's certificate is the bench's own, handed to the app in
place of the fetch from Amazon (no internet needed). Prints events/s and p50/p99 latency
beside GET /healthz from the same clients (what the machine serves at all), checks that every event was recorded exactly once (the feedback_events rows, by event_key)
and acted on (each reader's status), then delivers 5 % of the events again, re-signed as
the provider would, and checks that nothing more was recorded.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import hmac
import http.client
import json
import os
import random
import secrets
import shutil
import sys
import tempfile
import time
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path

import sqlalchemy as sa

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import bounce_mailbox  # noqa: E402
from common import fresh_database, gunicorn  # noqa: E402

PROVIDERS = ("ses", "sendgrid", "mailgun", "postmark", "bounce")
TYPES = ("hard", "soft", "complaint")
TOPIC = "arn:aws:sns:eu-west-1:123456789012:bench-feedback"
CERT_URL = "https://sns.eu-west-1.amazonaws.com/SimpleNotificationService-bench.pem"
MAILGUN_KEY = "bench-mailgun-signing-key"
POSTMARK_USER, POSTMARK_PASSWORD = "postmark", "bench-postmark-password"
BOUNCE_TOKEN = "bench-bounce-token"
CHUNK = 2000
STATUS_AFTER = {"hard": "bounced", "soft": "confirmed", "complaint": "unsubscribed"}


def bench_app():
    """The web app for gunicorn, its SNS certificate read from BENCH_SNS_CERT (no internet)."""
    from service import create_app
    from service.feedback.webhooks.ses import SigningCertificates

    app = create_app()
    pem = Path(os.environ["BENCH_SNS_CERT"]).read_bytes()
    app.extensions["newsletter"].sns_certificates = SigningCertificates(lambda _url: pem)
    return app


class Signers:
    """The providers' keys, made for this run: RSA and a certificate for SNS, P-256 for
    SendGrid; Mailgun, Postmark and the generic endpoint share secrets with the app."""

    def __init__(self) -> None:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec, rsa
        from cryptography.x509.oid import NameOID

        self.sns_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "sns.amazonaws.com")])
        now = datetime.now(UTC)
        self.sns_certificate = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(self.sns_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(days=1))
            .not_valid_after(now + timedelta(days=1))
            .sign(self.sns_key, hashes.SHA256())
            .public_bytes(serialization.Encoding.PEM)
        )
        self.sendgrid_key = ec.generate_private_key(ec.SECP256R1())
        der = self.sendgrid_key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        self.sendgrid_public = base64.b64encode(der).decode()

    def settings(self) -> dict[str, str]:
        return {
            "SES_TOPIC_ARNS": TOPIC,
            "SENDGRID_WEBHOOK_PUBLIC_KEY": self.sendgrid_public,
            "MAILGUN_WEBHOOK_SIGNING_KEY": MAILGUN_KEY,
            "POSTMARK_WEBHOOK_USER": POSTMARK_USER,
            "POSTMARK_WEBHOOK_PASSWORD": POSTMARK_PASSWORD,
            "BOUNCE_WEBHOOK_TOKEN": BOUNCE_TOKEN,
        }

    def request(self, n: int, email: str, type_: str) -> tuple[str, dict, bytes, str]:
        """Event `n` as its provider posts it: (path, headers, body, its event_key)."""
        provider = PROVIDERS[n % len(PROVIDERS)]
        return getattr(self, provider)(n, email, type_)

    def ses(self, n: int, email: str, type_: str):
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import padding

        if type_ == "complaint":
            detail = {"feedbackId": f"fb-{n}", "complainedRecipients": [{"emailAddress": email}]}
            notification = {"notificationType": "Complaint", "complaint": detail}
        else:
            detail = {
                "feedbackId": f"fb-{n}",
                "bounceType": "Permanent" if type_ == "hard" else "Transient",
                "bounceSubType": "General",
                "bouncedRecipients": [{"emailAddress": email, "status": "5.1.1"}],
            }
            notification = {"notificationType": "Bounce", "bounce": detail}
        message = {
            "Type": "Notification",
            "MessageId": f"sns-{n}",
            "TopicArn": TOPIC,
            "Message": json.dumps(notification),
            "Timestamp": datetime.now(UTC).isoformat(timespec="milliseconds"),
        }
        canonical = "".join(
            f"{name}\n{message[name]}\n"
            for name in ("Message", "MessageId", "Subject", "Timestamp", "TopicArn", "Type")
            if name in message
        )
        version = "1" if n % 2 else "2"
        algorithm = hashes.SHA1() if version == "1" else hashes.SHA256()
        signature = self.sns_key.sign(canonical.encode(), padding.PKCS1v15(), algorithm)
        message.update(
            SignatureVersion=version,
            Signature=base64.b64encode(signature).decode(),
            SigningCertURL=CERT_URL,
        )
        headers = {"Content-Type": "text/plain; charset=UTF-8"}
        return "/webhooks/ses", headers, json.dumps(message).encode(), f"ses:fb-{n}:{email}"

    def sendgrid(self, n: int, email: str, type_: str):
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import ec

        event = {"email": email, "timestamp": int(time.time()), "sg_event_id": f"sg-{n}"}
        if type_ == "complaint":
            event["event"] = "spamreport"
        else:
            event.update(event="bounce", type="bounce" if type_ == "hard" else "blocked")
        body = json.dumps([event]).encode()
        stamp = str(int(time.time()))
        signature = self.sendgrid_key.sign(stamp.encode() + body, ec.ECDSA(hashes.SHA256()))
        headers = {
            "Content-Type": "application/json",
            "X-Twilio-Email-Event-Webhook-Signature": base64.b64encode(signature).decode(),
            "X-Twilio-Email-Event-Webhook-Timestamp": stamp,
        }
        return "/webhooks/sendgrid", headers, body, f"sendgrid:sg-{n}"

    def mailgun(self, n: int, email: str, type_: str):
        message_id = f"bench-{n}@bench.example"
        event = {
            "id": f"mg-{n}",
            "timestamp": time.time(),
            "recipient": email,
            "message": {"headers": {"message-id": message_id}},
        }
        if type_ == "complaint":
            event["event"] = "complained"
            key = f"mailgun:mg-{n}"
        else:
            severity = "permanent" if type_ == "hard" else "temporary"
            event.update(event="failed", severity=severity, reason="bounce")
            # A temporary failure is one per email, however often Mailgun retried it.
            key = f"mailgun:mg-{n}" if type_ == "hard" else f"mailgun:soft:{message_id}:{email}"
        stamp, token = str(int(time.time())), secrets.token_hex(25)
        signature = hmac.new(MAILGUN_KEY.encode(), (stamp + token).encode(), hashlib.sha256)
        body = {
            "signature": {"timestamp": stamp, "token": token, "signature": signature.hexdigest()},
            "event-data": event,
        }
        headers = {"Content-Type": "application/json"}
        return "/webhooks/mailgun", headers, json.dumps(body).encode(), key

    def postmark(self, n: int, email: str, type_: str):
        if type_ == "complaint":
            record = {"RecordType": "SpamComplaint", "Type": "SpamComplaint", "TypeCode": 100001}
        elif type_ == "hard":
            record = {"RecordType": "Bounce", "Type": "HardBounce", "TypeCode": 1}
        else:
            record = {"RecordType": "Bounce", "Type": "SoftBounce", "TypeCode": 4096}
        record.update(ID=n, Email=email, Details="bench", BouncedAt=datetime.now(UTC).isoformat())
        credentials = base64.b64encode(f"{POSTMARK_USER}:{POSTMARK_PASSWORD}".encode()).decode()
        headers = {"Content-Type": "application/json", "Authorization": f"Basic {credentials}"}
        return "/webhooks/postmark", headers, json.dumps(record).encode(), f"postmark:{n}"

    def bounce(self, n: int, email: str, type_: str):
        report = {"id": f"g-{n}", "email": email, "type": type_, "reason": "bench"}
        headers = {"Content-Type": "application/json", "Authorization": f"Bearer {BOUNCE_TOKEN}"}
        return "/webhooks/bounce", headers, json.dumps(report).encode(), f"bounce:g-{n}"


def post_all(
    port: int, requests: list[tuple[str, dict, bytes | None]]
) -> list[tuple[float, int, str]]:
    """One client: post each request in turn (GET without a body), a new connection each
    (gunicorn's sync workers close it); (seconds, status, body) for each."""
    answers = []
    for path, headers, body in requests:
        started = time.perf_counter()
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        try:
            connection.request("GET" if body is None else "POST", path, body=body, headers=headers)
            response = connection.getresponse()
            text = response.read().decode()
            answers.append((time.perf_counter() - started, response.status, text))
        except OSError as exc:
            answers.append((time.perf_counter() - started, 0, str(exc)))
        finally:
            connection.close()
    return answers


def post_concurrently(port: int, requests: list, clients: int) -> tuple[float, list]:
    """Post `requests` from `clients` processes at once; (seconds, answers)."""
    shares = [[r[:3] for r in requests[i::clients]] for i in range(clients)]
    with ProcessPoolExecutor(clients) as pool:
        pool.submit(time.sleep, 0).result()  # the pool's processes started before the clock
        started = time.perf_counter()
        answers = [a for share in pool.map(post_all, [port] * clients, shares) for a in share]
    return time.perf_counter() - started, answers


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


def add_readers(database_url: str, count: int) -> None:
    """`count` confirmed readers, r0@bench.example ... (one per event)."""
    now = datetime.now(UTC) - timedelta(days=30)
    engine = sa.create_engine(database_url)
    from service.models import Subscriber

    rows = [
        {
            "email": f"r{n}@bench.example",
            "email_key": f"r{n}@bench.example",
            "mailbox_key": f"r{n}@bench.example",
            "status": "confirmed",
            "time_zone": "UTC",
            "source": "bench",
            "created_at": now,
            "confirmed_at": now,
        }
        for n in range(count)
    ]
    with engine.begin() as connection:
        connection.execute(Subscriber.__table__.insert(), rows)
    engine.dispose()


def webhook_benchmark(kind: str, *, events: int, clients: int, workers: int | None) -> dict:
    """The webhook half on one database: figures, and whether every event counted once."""
    workdir = Path(tempfile.mkdtemp(prefix="feedback-bench-"))
    database_url = fresh_database(kind, workdir, "newsletter_bench_feedback")
    add_readers(database_url, events)
    signers = Signers()
    certificate = workdir / "sns.pem"
    certificate.write_bytes(signers.sns_certificate)
    with gunicorn(
        "feedback:bench_app()",
        database_url=database_url,
        workdir=workdir,
        settings={"BENCH_SNS_CERT": str(certificate), **signers.settings()},
        args=[
            "--pythonpath",
            f"{ROOT},{ROOT / 'bench'}",
            *(["--workers", str(workers)] if workers else []),
        ],
    ) as port:
        # The same clients against GET /healthz (one read of the database) first: what this
        # machine serves at all, as bench/signup.py measures it.
        healthz_seconds, healthz = post_concurrently(
            port, [("/healthz", {}, None, "")] * events, clients
        )
        plan = [
            (n, f"r{n}@bench.example", TYPES[(n // len(PROVIDERS)) % len(TYPES)])
            for n in range(events)
        ]
        requests, answers, seconds = [], [], 0.0
        # Signed a chunk at a time, just before it is sent: a signature over 5 minutes old
        # is refused, and a slow machine may take longer than that for them all.
        for start in range(0, events, CHUNK):
            chunk = [
                signers.request(n, email, type_) for n, email, type_ in plan[start : start + CHUNK]
            ]
            took, answered = post_concurrently(port, chunk, clients)
            requests += chunk
            answers += answered
            seconds += took
        # Redeliveries, re-signed as each provider would (Mailgun: a new token).
        again = random.Random(1).sample(plan, max(1, events // 20))
        redelivered = [signers.request(n, email, type_) for n, email, type_ in again]
        _, second = post_concurrently(port, redelivered, clients)

    engine = sa.create_engine(database_url)
    with engine.connect() as connection:
        keys = Counter(
            connection.exec_driver_sql("SELECT event_key FROM feedback_events").scalars()
        )
        statuses = dict(
            (email, status)
            for email, status in connection.exec_driver_sql("SELECT email, status FROM subscribers")
        )
    engine.dispose()
    shutil.rmtree(workdir, ignore_errors=True)
    expected = Counter(request[3] for request in requests)
    acted = sum(statuses.get(email) == STATUS_AFTER[type_] for _, email, type_ in plan)
    errors = [a for a in answers if a[1] != 200]
    late = [a for a in second if a[1] != 200 or json.loads(a[2]).get("duplicates") != 1]
    latencies = [a[0] for a in answers]
    return {
        "database": kind,
        "events": events,
        "healthz_per_second": events / healthz_seconds,
        "healthz_errors": sum(answer[1] != 200 for answer in healthz),
        "seconds": seconds,
        "per_second": events / seconds,
        "p50_ms": percentile(latencies, 0.50) * 1000,
        "p99_ms": percentile(latencies, 0.99) * 1000,
        "errors": len(errors),
        "first_error": errors[0][1:] if errors else None,
        "exactly_once": keys == expected,
        "rows": sum(keys.values()),
        "acted_on": acted,
        "redelivered": len(second),
        "redelivery_errors": len(late),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=10_000)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--workers", type=int, help="gunicorn workers (default: gunicorn.conf.py)")
    parser.add_argument("--database", choices=["sqlite", "postgresql", "both"], default="both")
    parser.add_argument(
        "--messages", type=int, default=1000, help="delivery reports for the mailbox half"
    )
    args = parser.parse_args()
    kinds = ["sqlite", "postgresql"] if args.database == "both" else [args.database]
    results = [
        webhook_benchmark(kind, events=args.events, clients=args.clients, workers=args.workers)
        for kind in kinds
    ]
    print(
        f"\n{args.events} webhook events (SES/SNS, SendGrid, Mailgun, Postmark, generic; hard, "
        f"soft, complaint), {args.clients} concurrent clients, gunicorn "
        f"{args.workers or 'default'} workers, {os.cpu_count()} CPUs\n"
    )
    print(
        f"{'database':<12}{'healthz/s':>10}{'events/s':>10}{'ratio':>7}{'p50 ms':>9}{'p99 ms':>9}"
        f"{'errors':>8}{'rows':>8}{'acted on':>10}{'once':>6}{'again':>7}"
    )
    ok = True
    for r in results:
        once = r["exactly_once"] and r["redelivery_errors"] == 0
        print(
            f"{r['database']:<12}{r['healthz_per_second']:>10.0f}{r['per_second']:>10.0f}"
            f"{r['per_second'] / r['healthz_per_second']:>7.2f}"
            f"{r['p50_ms']:>9.1f}{r['p99_ms']:>9.1f}{r['errors'] + r['healthz_errors']:>8d}{r['rows']:>8d}{r['acted_on']:>10d}{'yes' if once else 'NO':>6}"
            f"{r['redelivered']:>7d}"
        )
        if r["first_error"]:
            print(f"  first error: {r['first_error']}")
        ok = ok and once and r["errors"] == 0 and r["acted_on"] == r["events"]
    print(
        "\nevery event answered 200, recorded exactly once and acted on; every redelivery "
        "answered as a duplicate"
        if ok
        else "\nCHECK FAILED"
    )
    print("\nThe bounce mailbox: one poll of a real Dovecot's INBOX (bench/bounce_mailbox.py)\n")
    mailbox_status = bounce_mailbox.report(kinds, args.messages)
    return 0 if ok and mailbox_status == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
