"""One dispatch pass: claim due outbox rows, compose each (service.compose), deliver it,
record the outcome.

Each message is committed as sent as soon as the server accepts it, in its own short
transaction, and before the next message goes out. Two windows remain in which one
email can reach its reader twice, each holding at most the one message in flight:
- the scheduler dies after the server accepted the message, before that commit: the
  row's lease runs out and another pass sends it again;
- the server's reply to DATA never arrives (timeout, dropped line): it may have taken
  the message, but we cannot know, so it is retried.
Message-IDs stay the same on every attempt, so receiving servers can spot a repeat.

Before each message the scheduler renews its lease on the row, reading the clock again:
a batch that runs longer than its lease can never send a row another scheduler has taken.
"""

from __future__ import annotations

import functools
import logging
import threading
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

from sqlalchemy import Connection, select

from . import broadcasts, kinds, outbox
from .compose import Composer
from .db import Database
from .delivery import (
    DeliveryPolicy,
    Mailer,
    Pacer,
    PassReport,
    record_bounce,
    record_failure,
    record_sent,
    record_undeliverable,
    retry_or_fail,
)
from .feedback import Feedback
from .kinds import Receivers
from .mail import (
    AddressNotSupported,
    MailerUnavailable,
    Message,
    MessageRejected,
    RecipientRejected,
    ServerBusy,
    TemporaryFailure,
)
from .models import OutboxMessage, OutboxStatus
from .sequences import sending_window_opens, zone_of

logger = logging.getLogger(__name__)


class Dispatcher:
    """Moves due outbox rows to a mailer for one scheduler (`worker`)."""

    def __init__(
        self,
        database: Database,
        composer: Composer,
        *,
        default_zone: ZoneInfo,
        worker: str,
        policy: DeliveryPolicy,
        feedback: Feedback,
    ) -> None:
        self.database = database
        # A refused recipient is a bounce like any other (service.feedback).
        self.feedback = feedback
        self.composer = composer
        self.default_zone = default_zone
        self.worker = worker
        self.policy = policy

    def drain(
        self,
        mailer: Mailer,
        *,
        clock: Callable[[], datetime],
        stop: threading.Event | None = None,
        after_batch: Callable[[datetime], None] | None = None,
        pacer: Pacer | None = None,
    ) -> PassReport:
        """Send batches until nothing is due, delivery must stop, or `stop` is set.

        `after_batch` is called with the time after every batch (the scheduler's heartbeat).
        """
        report = PassReport()
        pacer = pacer or Pacer(self.policy.per_second)
        allowance = self._hourly_allowance(clock) if self.policy.per_hour else None
        while not report.stopped:
            if stop is not None and stop.is_set():
                report.stopped = "stop requested"
                break
            if allowance is not None and allowance <= 0:
                report.stopped = "hourly sending limit reached"
                break
            limit = (
                self.policy.batch_size
                if allowance is None
                else min(self.policy.batch_size, allowance)
            )
            with self.database.begin() as session:
                claimed = [
                    row.id
                    for row in outbox.claim(
                        session,
                        worker=self.worker,
                        now=clock(),
                        limit=limit,
                        lease=self.policy.lease,
                    )
                ]
            if not claimed:
                break
            report.claimed += len(claimed)
            sent_before = report.sent
            self._send_claimed(claimed, mailer, clock=clock, report=report, stop=stop, pacer=pacer)
            if allowance is not None:
                allowance -= report.sent - sent_before
            if after_batch is not None:
                after_batch(clock())
        return report

    def _hourly_allowance(self, clock: Callable[[], datetime]) -> int:
        """How many more emails may go out in the hour up to now."""
        with self.database.read() as session:
            sent = outbox.sent_since(session, clock() - timedelta(hours=1))
        return max(0, self.policy.per_hour - sent)

    def _send_claimed(
        self,
        claimed: Sequence[int],
        mailer: Mailer,
        *,
        clock: Callable[[], datetime],
        report: PassReport,
        stop: threading.Event | None,
        pacer: Pacer,
    ) -> None:
        with self.database.read() as session:
            readers = outbox.readers_of(session, claimed)
        # One connection for the batch, one transaction per email. What became of the email
        # just sent is committed together with the lease renewal of the next one, and always
        # before the next one goes out.
        record: Callable[[Connection], None] | None = None
        with self.database.engine.connect() as connection:
            for index, message_id in enumerate(claimed):
                if record is not None and pacer.interval:
                    # Never leave a sent email unrecorded while waiting for the pace.
                    with connection.begin():
                        record(connection)
                    record = None
                pacer.wait()
                now = clock()
                try:
                    with connection.begin():
                        if record is not None:
                            record(connection)
                        if stop is not None and stop.is_set():
                            report.released += outbox.release(
                                connection, list(claimed[index:]), worker=self.worker, due_at=now
                            )
                            report.stopped = "stop requested"
                            return
                        prepared = self._prepare(
                            connection, message_id, readers, now=now, report=report
                        )
                except Exception:
                    # Rolled back: a skeleton rendered in it may point at links stored in it.
                    self.composer.forget_rendered()
                    # The next row failed; what became of the last email must still stick.
                    if record is not None:
                        with connection.begin():
                            record(connection)
                    raise
                record = None
                if prepared is None:
                    continue
                row, message = prepared
                outcome = {"worker": self.worker, "row": row, "report": report}
                try:
                    mailer.send(message)
                except (MailerUnavailable, ServerBusy) as exc:
                    with connection.begin():
                        self._hold_the_queue(
                            exc, connection, claimed[index:], now=now, report=report
                        )
                    return
                except TemporaryFailure as exc:
                    record = functools.partial(
                        retry_or_fail, **outcome, error=str(exc), now=now, policy=self.policy
                    )
                except RecipientRejected as exc:
                    record = functools.partial(
                        record_bounce,
                        **outcome,
                        error=str(exc),
                        code=exc.code,
                        now=now,
                        feedback=self.feedback,
                    )
                except AddressNotSupported as exc:
                    logger.warning("outbox %d cannot go through this server: %s", message_id, exc)
                    record = functools.partial(record_undeliverable, **outcome, now=now)
                except MessageRejected as exc:
                    logger.warning("outbox %d rejected by the server: %s", message_id, exc)
                    record = functools.partial(record_failure, **outcome, error=str(exc))
                except Exception as exc:  # one bad message must not stall the rest of the pass
                    logger.exception("outbox %d could not be sent", message_id)
                    record = functools.partial(
                        retry_or_fail,
                        **outcome,
                        error=f"unexpected error: {exc!r}",
                        now=now,
                        policy=self.policy,
                    )
                else:
                    report.sent += 1
                    record = functools.partial(record_sent, worker=self.worker, row=row, now=now)
            if record is not None:
                with connection.begin():
                    record(connection)

    def _hold_the_queue(
        self,
        exc: MailerUnavailable | ServerBusy,
        connection: Connection,
        unsent: Sequence[int],
        *,
        now: datetime,
        report: PassReport,
    ) -> None:
        """Nothing can go now: hand the rest of the claim back, attempts untouched."""
        if isinstance(exc, MailerUnavailable):
            logger.error(
                "MAIL DELIVERY IS STOPPED: %s. No email goes out until this is fixed; "
                "%d claimed emails stay queued.",
                exc,
                len(unsent),
            )
            reason = "mailer unavailable"
        else:
            logger.warning("the mail server asks us to come back later: %s", exc)
            reason = "server busy"
        report.errors.append(str(exc))
        report.released += outbox.release(
            connection, list(unsent), worker=self.worker, due_at=now + self.policy.retry_base
        )
        report.stopped = f"{reason}: {exc}"

    def _prepare(
        self,
        connection: Connection,
        message_id: int,
        readers: dict[int, outbox.Reader],
        *,
        now: datetime,
        report: PassReport,
    ) -> tuple[outbox.Claimed, Message] | None:
        """The row and its message, or None if it must not (or cannot) go now."""
        row = outbox.renew_claim(
            connection, message_id, worker=self.worker, now=now, lease=self.policy.lease
        )
        if row is None:
            # Cancelled since the claim (the reader left), or the lease lapsed.
            status = connection.scalar(
                select(OutboxMessage.status).where(OutboxMessage.id == message_id)
            )
            if status is OutboxStatus.CANCELLED:
                report.cancelled += 1
            else:
                report.lost += 1
                logger.warning("outbox %d: the claim lapsed before its turn", message_id)
            return None
        if report.paused and row.context.get("broadcast_id") in report.paused:
            # Its newsletter paused itself during this pass: hold it with the rest.
            report.released += outbox.release(
                connection, [message_id], worker=self.worker, due_at=broadcasts.HELD_UNTIL
            )
            return None
        reader = readers.get(row.subscriber_id) if row.subscriber_id is not None else None
        try:
            rules = kinds.rules_of(row.kind)
        except LookupError as exc:
            # Kept, like an email whose template fails, until a release that knows it runs.
            return self._wait_for_a_fix(connection, row, str(exc), now=now, report=report)
        if reader is None and rules.receivers is Receivers.OWNER:
            reader = outbox.Reader.stand_in(row.to_address)
        reason = step = sequence = None
        if not outbox.may_receive(row.kind, reader):
            reason = "recipient may not receive it"
        elif rules.sequence_step:
            sequence = self.composer.sequence_of(row)
            step = sequence.step(row.sequence_step or "") if sequence is not None else None
            if sequence is None:
                reason = f"sequence {row.context.get('sequence')!r} is not loaded"
            elif step is None:
                reason = f"step {row.sequence_step!r} is no longer in the sequence"
        if reason is not None:
            outbox.mark_cancelled(connection, message_id, worker=self.worker, reason=reason)
            report.cancelled += 1
            return None
        if step is not None:
            # A step held back by a mail outage still reaches the reader at a sensible hour.
            opens = sending_window_opens(
                step,
                now=now,
                zone=zone_of(reader.time_zone, self.default_zone),
                sequence=sequence,
            )
            if opens is not None:
                outbox.retry_later(
                    connection,
                    message_id,
                    worker=self.worker,
                    due_at=opens,
                    error="waits for the reader's sending hours",
                    count_attempt=False,
                )
                report.released += 1
                return None
        if row.attempts > self.policy.max_attempts:
            outbox.mark_failed(
                connection,
                message_id,
                worker=self.worker,
                error=f"gave up after {row.attempts - 1} attempts; last error: {row.last_error}",
            )
            report.failed += 1
            return None
        assert reader is not None  # may_receive() is False without one
        try:
            return row, self.composer.compose(row, reader, now=now, connection=connection)
        except Exception as exc:
            error = f"template {row.template!r} failed: {exc!r}"
        # Keep the email, without using up its attempts, until the template is fixed.
        return self._wait_for_a_fix(connection, row, error, now=now, report=report)

    def _wait_for_a_fix(
        self,
        connection: Connection,
        row: outbox.Claimed,
        error: str,
        *,
        now: datetime,
        report: PassReport,
    ) -> None:
        """The email cannot be built as things are (its template fails, its kind is
        unknown): keep it, its attempts untouched, and try again later."""
        logger.error("outbox %d: %s", row.id, error)
        report.errors.append(error)
        outbox.retry_later(
            connection,
            row.id,
            worker=self.worker,
            due_at=now + self.policy.retry_base,
            error=error,
            count_attempt=False,
        )
        report.retried += 1
