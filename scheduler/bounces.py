"""The scheduler's bounce-mailbox job: a poll every BOUNCE_MAILBOX_INTERVAL_SECONDS, on a
thread of its own, backing off while the mailbox fails. Mail delivery never waits for it."""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime, timedelta

from service.feedback.mailbox import BounceMailbox, MailboxError, PollReport
from service.services import Services

logger = logging.getLogger("scheduler.bounces")

MAX_BACKOFF = timedelta(hours=1)


class MailboxJob:
    """Polls the bounce mailbox; a failure is one log line and a longer wait, never an
    exception into the scheduler."""

    def __init__(
        self,
        services: Services,
        mailbox: BounceMailbox,
        *,
        clock: Callable[[], datetime],
        interval: timedelta,
    ) -> None:
        self.services = services
        self.mailbox = mailbox
        self.clock = clock
        self.interval = interval
        self.failures = 0
        self.next_try: datetime | None = None

    def __call__(self) -> PollReport | None:
        """One poll, unless backing off; what it did, or None."""
        now = self.clock()
        if self.next_try is not None and now < self.next_try:
            return None
        try:
            report = self.mailbox.poll(self.services.database, self.services.feedback, now=now)
        except MailboxError as exc:
            self._failed(now, str(exc))
            return None
        except Exception as exc:  # the database gone, or a fault of ours: still one line
            logger.debug("bounce mailbox poll failed", exc_info=True)
            first_line = (str(exc).splitlines() or [""])[0]
            self._failed(
                now, f"bounce mailbox {self.mailbox.address}: {type(exc).__name__}: {first_line}"
            )
            return None
        if self.failures:
            logger.info(
                "bounce mailbox %s: read again after %d failures",
                self.mailbox.address,
                self.failures,
            )
        self.failures, self.next_try = 0, None
        if report.read:
            logger.info("bounce mailbox %s: %s", self.mailbox.address, report)
        return report

    def _failed(self, now: datetime, why: str) -> None:
        self.failures += 1
        wait = min(self.interval * 2**self.failures, max(MAX_BACKOFF, self.interval))
        self.next_try = now + wait
        logger.error("%s; next try in %d s", why, wait.total_seconds())


def mailbox_job(services: Services, *, clock: Callable[[], datetime]) -> MailboxJob | None:
    """The job for BOUNCE_MAILBOX_URL, or None when it is unset or wrong (said in a log
    line: the scheduler sends mail all the same)."""
    settings = services.settings
    if not settings.BOUNCE_MAILBOX_URL:
        return None
    try:
        mailbox = BounceMailbox.from_settings(
            settings.BOUNCE_MAILBOX_URL, settings.BOUNCE_MAILBOX_AFTER
        )
    except ValueError as exc:
        logger.error("the bounce mailbox is not read: %s", exc)
        return None
    interval = timedelta(seconds=max(1, settings.BOUNCE_MAILBOX_INTERVAL_SECONDS))
    return MailboxJob(services, mailbox, clock=clock, interval=interval)
