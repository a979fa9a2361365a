"""Provider webhooks for bounces and complaints: verify, record, answer.

Each view checks its provider's proof (service.feedback.webhooks), then records every
Report in one transaction before it answers: an event answered 2xx is stored and acted on,
and a provider that gets no 2xx sends it again. No mail is sent here. An endpoint whose
secret is unset is no page (404). These views use no session cookie, so the admin's CSRF
check (under /admin only) does not concern them, nor does the signup rate limit.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable

from flask import Blueprint, abort, request
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session
from werkzeug.exceptions import HTTPException

from ..feedback import Report
from ..feedback.outcomes import Outcome
from ..feedback.webhooks import (
    Unauthorized,
    WebhookError,
    generic,
    mailgun,
    postmark,
    sendgrid,
    ses,
)
from . import now, services

logger = logging.getLogger(__name__)

bp = Blueprint("webhooks", __name__, url_prefix="/webhooks")

# SendGrid posts its events in batches; SES, Mailgun and Postmark one event a request.
MAX_BODY_BYTES = 1024 * 1024
DEADLOCK = "40P01"  # PostgreSQL's SQLSTATE for a transaction it ended to break a deadlock
DEADLOCK_ATTEMPTS = 3


@bp.before_request
def _allow_batches() -> None:
    request.max_content_length = MAX_BODY_BYTES


def _secret(value: str) -> str:
    """The endpoint's secret; no page at all when it is not configured."""
    if not value:
        abort(404)
    return value


def _body() -> bytes:
    """The raw body, exactly as signed (413 past MAX_BODY_BYTES)."""
    return request.get_data(cache=False)


def _record(reports: list[Report], *, first: Callable[[Session], None] | None = None) -> dict:
    """Record every report in one transaction (after `first`, in the same one)."""
    feedback = services().feedback
    for attempt in range(1, DEADLOCK_ATTEMPTS + 1):
        outcomes: Counter[str] = Counter()
        try:
            with services().database.begin() as session:
                if first is not None:
                    first(session)
                # In one order (by address), so two batches naming the same readers lock
                # their rows in the same order rather than each waiting for the other.
                for report in sorted(reports, key=lambda report: (report.email or "").casefold()):
                    outcomes[feedback.record(session, report, now=now()).outcome.value] += 1
            break
        except OperationalError as exc:
            # Two batches can still cross (a reader's row, then a newsletter's for its
            # circuit breaker): PostgreSQL ends one; it is done again from the start.
            if getattr(exc.orig, "sqlstate", None) != DEADLOCK or attempt == DEADLOCK_ATTEMPTS:
                raise
            logger.info("webhook %s: deadlock, attempt %d again", request.path, attempt)
    duplicates = outcomes[Outcome.DUPLICATE.value]
    return {
        "received": len(reports),
        "recorded": len(reports) - duplicates,
        "duplicates": duplicates,
        "outcomes": dict(outcomes),
    }


@bp.post("/ses")
def ses_notification():
    """An SES notification through SNS (a subscription to an accepted topic is confirmed)."""
    topics = {arn.strip() for arn in services().settings.SES_TOPIC_ARNS.split(",") if arn.strip()}
    if not topics:
        abort(404)
    reports = ses.receive(
        _body(), topics=topics, certificates=services().sns_certificates, now=now()
    )
    return _record(reports)


@bp.post("/sendgrid")
def sendgrid_events():
    """A batch of SendGrid Event Webhook events."""
    key = _secret(services().settings.SENDGRID_WEBHOOK_PUBLIC_KEY)
    reports = sendgrid.receive(
        _body(),
        signature=request.headers.get(sendgrid.SIGNATURE_HEADER),
        timestamp=request.headers.get(sendgrid.TIMESTAMP_HEADER),
        key=key,
        now=now(),
    )
    return _record(reports)


@bp.post("/mailgun")
def mailgun_event():
    """One Mailgun webhook event; its token is spent in the transaction that records it."""
    key = _secret(services().settings.MAILGUN_WEBHOOK_SIGNING_KEY)
    signed = mailgun.verify(_body(), signing_key=key, now=now())

    def spend(session: Session) -> None:
        mailgun.spend_token(session, signed.token, fresh_until=signed.fresh_until, now=now())

    return _record(signed.reports, first=spend)


@bp.post("/postmark")
def postmark_record():
    """One Postmark bounce or spam-complaint record."""
    settings = services().settings
    user = _secret(settings.POSTMARK_WEBHOOK_USER)
    password = _secret(settings.POSTMARK_WEBHOOK_PASSWORD)
    reports = postmark.receive(
        _body(),
        authorization=request.headers.get("Authorization"),
        user=user,
        password=password,
        now=now(),
    )
    return _record(reports)


@bp.post("/bounce")
def generic_bounce():
    """One report, or a list of them, from any other source."""
    token = _secret(services().settings.BOUNCE_WEBHOOK_TOKEN)
    reports = generic.receive(
        _body(), authorization=request.headers.get("Authorization"), token=token, now=now()
    )
    return _record(reports)


@bp.errorhandler(WebhookError)
def refused(error: WebhookError):
    """A refused request: its status, and why, for the provider's delivery log."""
    if error.status >= 500:
        logger.error("webhook %s failed: %s", request.path, error)
    else:
        logger.warning("webhook %s refused (%d): %s", request.path, error.status, error)
    headers = {}
    if isinstance(error, Unauthorized):
        headers["WWW-Authenticate"] = f'{error.scheme} realm="webhooks"'
    return {"error": str(error)}, error.status, headers


@bp.errorhandler(HTTPException)
def http_error(error: HTTPException):
    """404, 405, 413 in JSON: the caller is a program."""
    return {"error": error.description}, error.code or 500
