"""One dispatch pass: claim due outbox rows, compose each (service.compose), deliver it,
record the outcome.

Each message is committed as sent as soon as the server accepts it, and before the next
message goes out: by the one statement that also renews the next row's lease (one round
trip per email), or on its own at the end of a batch. Two windows remain in which one
email can reach its reader twice, each holding at most the one message in flight:
- the scheduler dies after the server accepted the message, before that commit: the
  row's lease runs out and another pass sends it again;
- the server's reply to DATA never arrives (timeout, dropped line): it may have taken
  the message, but we cannot know, so it is retried.
Message-IDs stay the same on every attempt, so receiving servers can spot a repeat. On
PostgreSQL the sending connection does not wait for commits to reach the disk: see
`Dispatcher._sending_connection` for what that trades.

Before each message the scheduler renews its lease on the row, reading the clock again:
a batch that runs longer than its lease can never send a row another scheduler has taken.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import Connection, select
from sqlalchemy.exc import DBAPIError

from . import broadcasts, kinds, outbox
from .compose import Composer
from .db import Database
from .delivery import DeliveryPolicy, Mailer, Pacer, PassReport, deliver, record_sent
from .feedback import Feedback
from .kinds import Receivers
from .mail import MailerUnavailable, Message, ServerBusy
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
                claimed = outbox.claim_ids(
                    session,
                    worker=self.worker,
                    now=clock(),
                    limit=limit,
                    lease=self.policy.lease,
                )
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
        # The email just sent is recorded by the statement that renews the next one's lease,
        # and always before the next one goes out; any other outcome is recorded at once,
        # in a transaction of its own.
        sent: outbox.Sent | None = None
        with self._sending_connection() as connection:
            try:
                for index, message_id in enumerate(claimed):
                    if sent is not None and pacer.interval:
                        # Never leave a sent email unrecorded while waiting for the pace.
                        with connection.begin():
                            record_sent(connection, worker=self.worker, sent=sent)
                        sent = None
                    pacer.wait()
                    now = clock()
                    with connection.begin():
                        if stop is not None and stop.is_set():
                            if sent is not None:
                                record_sent(connection, worker=self.worker, sent=sent)
                                sent = None
                            report.released += outbox.release(
                                connection, list(claimed[index:]), worker=self.worker, due_at=now
                            )
                            report.stopped = "stop requested"
                            return
                        prepared = self._prepare(
                            connection, message_id, readers, now=now, report=report, sent=sent
                        )
                    sent = None
                    if prepared is None:
                        continue
                    row, message = prepared
                    try:
                        sent = deliver(
                            mailer,
                            message,
                            row=row,
                            now=now,
                            worker=self.worker,
                            policy=self.policy,
                            feedback=self.feedback,
                            report=report,
                            record=self._record,
                        )
                    except (MailerUnavailable, ServerBusy) as exc:
                        with connection.begin():
                            self._hold_the_queue(
                                exc, connection, claimed[index:], now=now, report=report
                            )
                        return
                if sent is not None:
                    with connection.begin():
                        record_sent(connection, worker=self.worker, sent=sent)
                    sent = None
            except Exception as exc:
                self._after_a_failure(exc, sent, claimed, now=clock())
                raise

    @contextmanager
    def _sending_connection(self) -> Iterator[Connection]:
        """The connection a batch's statements run on.

        On PostgreSQL it commits each statement as it runs (autocommit: no BEGIN and COMMIT
        round trips) and does not wait for the commit to reach the disk (asynchronous commit:
        no fsync). The durability trade, also in README ("The durability trade on PostgreSQL"):
        - the scheduler dies (SIGKILL, a lost machine): nothing is lost, since a statement has
          returned only once the database server has committed it; at most the one email on
          the wire goes out again, as before;
        - the database server itself crashes: it may forget the commits of its last
          3 x wal_writer_delay (0.6 s by default), so up to that many seconds of "sent"
          marks: those emails go out again once their lease runs out (at 1,000 emails/s,
          at most about 600 repeats), each with its own Message-ID unchanged.
        Statements that must stand or fall together (a bounce, say) run in a transaction of
        their own (`_record`). On SQLite each `connection.begin()` is a write transaction,
        as elsewhere.
        """
        with self.database.engine.connect() as connection:
            if connection.dialect.name != "postgresql":
                yield connection
                return
            connection.execution_options(isolation_level="AUTOCOMMIT")
            connection.exec_driver_sql("SET synchronous_commit TO off")
            connection.commit()  # ends SQLAlchemy's autobegun (and empty) transaction
            try:
                yield connection
            finally:
                if not connection.invalidated:
                    connection.exec_driver_sql("RESET synchronous_commit")

    def _record(self, recorder: Callable[..., None], **outcome: Any) -> None:
        """Record an outcome other than "sent" in a transaction of its own."""
        with self.database.engine.begin() as connection:
            recorder(connection, **outcome)

    def _after_a_failure(
        self, exc: Exception, sent: outbox.Sent | None, claimed: Sequence[int], *, now: datetime
    ) -> None:
        """The pass failed: whatever was rendered in it may be gone with its transaction, the
        email just sent must still be recorded, and if the database connection was lost,
        the rest of the claim goes back at once (on a new connection) rather than when its
        lease runs out."""
        # Rolled back: a skeleton rendered in it may point at links stored in it.
        self.composer.forget_rendered()
        lost = isinstance(exc, DBAPIError) and exc.connection_invalidated
        if sent is None and not lost:
            return
        with self.database.engine.begin() as connection:
            if sent is not None:
                # Already recorded if the statement that failed came after it; then this
                # changes nothing.
                outbox.mark_sent(connection, sent.id, worker=self.worker, now=sent.at)
            if lost:
                released = outbox.release(connection, list(claimed), worker=self.worker, due_at=now)
                logger.error(
                    "the database connection was lost mid-pass; %d claimed emails handed back",
                    released,
                )

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
        sent: outbox.Sent | None,
    ) -> tuple[outbox.Claimed, Message] | None:
        """The row and its message, or None if it must not (or cannot) go now. Records
        `sent` as sent in the same statement that renews the row's lease."""
        row = outbox.renew_claim(
            connection, message_id, worker=self.worker, now=now, lease=self.policy.lease, sent=sent
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
