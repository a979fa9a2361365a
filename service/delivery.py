"""What a dispatch pass works with and what it writes down: the Mailer it sends through,
its DeliveryPolicy (claims, retries, pace), its Pacer and PassReport, and the recording
of each email's outcome on its outbox row (sent, retried, failed, bounced, undeliverable).

The recorders run in the sending loop's transaction (service.dispatch), on a plain
Connection.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Protocol

from sqlalchemy import Connection
from sqlalchemy.orm import Session

from . import journal, outbox
from .feedback import Feedback, Report
from .mail import (
    INTERNATIONAL_ADDRESSES_REFUSED,
    AddressNotSupported,
    MailerUnavailable,
    Message,
    MessageRejected,
    RecipientRejected,
    ServerBusy,
    TemporaryFailure,
)
from .models import FeedbackType

logger = logging.getLogger(__name__)

UNDELIVERABLE = "undeliverable"  # the event's kind


class Mailer(Protocol):
    """What the dispatcher needs from a mail backend (service.mail has three)."""

    def send(self, message: Message) -> None:
        """Deliver one message, or raise a service.mail.DeliveryError saying what to do."""

    def close(self) -> None:
        """Release the connection, if any."""


@dataclass
class PassReport:
    """What one pass did, for logs and tests."""

    claimed: int = 0
    sent: int = 0
    retried: int = 0
    failed: int = 0
    bounced: int = 0
    cancelled: int = 0
    released: int = 0
    lost: int = 0  # claims that lapsed before the row's turn (another scheduler may have it)
    paused: set[int] = field(default_factory=set)  # newsletters that paused themselves
    stopped: str | None = None  # why the pass ended early, if it did
    errors: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        counts = ", ".join(
            f"{name} {getattr(self, name)}"
            for name in (
                "claimed",
                "sent",
                "retried",
                "failed",
                "bounced",
                "cancelled",
                "released",
                "lost",
            )
        )
        return counts + (f"; stopped: {self.stopped}" if self.stopped else "")


@dataclass(frozen=True)
class DeliveryPolicy:
    """How many rows to claim, for how long, and how to retry."""

    batch_size: int = 100
    lease: timedelta = timedelta(minutes=5)
    max_attempts: int = 8
    retry_base: timedelta = timedelta(minutes=1)
    retry_cap: timedelta = timedelta(hours=6)
    per_second: float = 0  # 0: no limit
    per_hour: int = 0  # 0: no limit


class Pacer:
    """Spaces sends `1 / per_second` apart (for providers that cap the rate)."""

    def __init__(
        self,
        per_second: float,
        *,
        monotonic: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.interval = 1 / per_second if per_second > 0 else 0.0
        self.monotonic = monotonic
        self.sleep = sleep
        self._next = 0.0

    def wait(self) -> None:
        if not self.interval:
            return
        now = self.monotonic()
        if now < self._next:
            self.sleep(self._next - now)
            now = self._next
        self._next = now + self.interval


def record_sent(connection: Connection, *, worker: str, sent: outbox.Sent) -> None:
    """The server accepted the email."""
    if not outbox.mark_sent(connection, sent.id, worker=worker, now=sent.at):
        logger.warning("outbox %d was sent but its claim had moved on", sent.id)  # pragma: no cover


def record_failure(
    connection: Connection, *, worker: str, row: outbox.Claimed, error: str, report: PassReport
) -> None:
    """The server refused the message as it is: sending it again would not help."""
    outbox.mark_failed(connection, row.id, worker=worker, error=error)
    report.failed += 1


def retry_or_fail(
    connection: Connection,
    *,
    worker: str,
    policy: DeliveryPolicy,
    row: outbox.Claimed,
    error: str,
    now: datetime,
    report: PassReport,
) -> None:
    """A temporary failure: try again later, backing off, until the attempts run out."""
    if row.attempts >= policy.max_attempts:
        outbox.mark_failed(
            connection,
            row.id,
            worker=worker,
            error=f"gave up after {row.attempts} attempts: {error}",
        )
        report.failed += 1
        logger.warning("outbox %d failed after %d attempts: %s", row.id, row.attempts, error)
        return
    delay = outbox.retry_delay(row.attempts, base=policy.retry_base, cap=policy.retry_cap)
    outbox.retry_later(connection, row.id, worker=worker, due_at=now + delay, error=error)
    report.retried += 1
    logger.info("outbox %d will be retried in %s: %s", row.id, delay, error)


def record_bounce(
    connection: Connection,
    *,
    worker: str,
    row: outbox.Claimed,
    error: str,
    code: int | None,
    now: datetime,
    report: PassReport,
    feedback: Feedback,
) -> None:
    """The server refused the recipient: a hard bounce, no more mail to that address."""
    outbox.mark_failed(connection, row.id, worker=worker, error=error)
    # The domain works on a Session; this one joins the connection's transaction.
    with Session(bind=connection) as session:
        recorded = feedback.record(
            session,
            Report(
                source="smtp",
                event_key=f"smtp:{row.id}",
                type=FeedbackType.HARD,
                email=row.to_address,
                outbox_id=row.id,
                reason=error,
                diagnostic=str(code) if code else None,
                occurred_at=now,
            ),
            now=now,
        )
        session.flush()
    if recorded.paused_broadcast is not None:
        report.paused.add(recorded.paused_broadcast)
    report.failed += 1
    report.bounced += 1
    logger.warning("outbox %d bounced; no more mail to that address: %s", row.id, error)


def record_undeliverable(
    connection: Connection,
    *,
    worker: str,
    row: outbox.Claimed,
    now: datetime,
    report: PassReport,
    reason: str = INTERNATIONAL_ADDRESSES_REFUSED,
) -> None:
    """The email cannot go through this mail server, whatever the reader does: it failed
    (retrying would fail alike), and the reader's history says why, for the owner to see.
    Not a bounce: the address may well work, so the reader stays on the list."""
    record_failure(connection, worker=worker, row=row, error=reason, report=report)
    if row.subscriber_id is None:
        return
    # The journal works on a Session; this one joins the connection's transaction.
    with Session(bind=connection) as session:
        journal.record_event(
            session,
            row.subscriber_id,
            UNDELIVERABLE,
            now=now,
            detail={"reason": reason, "outbox_id": row.id, "email_kind": row.kind},
        )


def deliver(
    mailer: Mailer,
    message: Message,
    *,
    row: outbox.Claimed,
    now: datetime,
    worker: str,
    policy: DeliveryPolicy,
    feedback: Feedback,
    report: PassReport,
    record: Callable[..., None],
) -> outbox.Sent | None:
    """Hand one email to the mailer. Sent: returned, for the next lease renewal to record
    (service.dispatch). Anything else is recorded at once through `record(recorder,
    **outcome)`, except that nothing can go now (MailerUnavailable, ServerBusy), which is
    raised for the pass to hold the queue."""
    outcome = {"worker": worker, "row": row, "report": report}
    try:
        mailer.send(message)
    except (MailerUnavailable, ServerBusy):
        raise
    except TemporaryFailure as exc:
        record(retry_or_fail, **outcome, error=str(exc), now=now, policy=policy)
    except RecipientRejected as exc:
        record(record_bounce, **outcome, error=str(exc), code=exc.code, now=now, feedback=feedback)
    except AddressNotSupported as exc:
        logger.warning("outbox %d cannot go through this server: %s", row.id, exc)
        record(record_undeliverable, **outcome, now=now)
    except MessageRejected as exc:
        logger.warning("outbox %d rejected by the server: %s", row.id, exc)
        record(record_failure, **outcome, error=str(exc))
    except Exception as exc:  # one bad message must not stall the rest of the pass
        logger.exception("outbox %d could not be sent", row.id)
        record(retry_or_fail, **outcome, error=f"unexpected error: {exc!r}", now=now, policy=policy)
    else:
        report.sent += 1
        return outbox.Sent(row.id, now)
    return None
