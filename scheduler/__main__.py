"""`python -m scheduler`: an APScheduler clock that ticks the dispatch pass.

APScheduler only keeps time here; the work queue is the outbox table. Each tick claims
due rows under a lease and sends them, so several schedulers can run at once. SIGTERM
(or Ctrl-C) lets the message in flight finish, hands the rest of the claim back, and exits.

    python -m scheduler                      tick every SCHEDULER_TICK_SECONDS
    python -m scheduler --once               one pass, then exit (cron, catch-up)
    python -m scheduler --once --now 2026-12-01T08:00:00Z   one pass at a given time
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from collections.abc import Callable, Sequence
from datetime import UTC, datetime

from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.schedulers.blocking import BlockingScheduler

from service import health
from service.config import ConfigError, load_settings
from service.dispatch import Dispatcher, PassReport
from service.services import Services, configure_logging, worker_name

logger = logging.getLogger("scheduler")


def parse_instant(text: str) -> datetime:
    """An ISO-8601 instant; one without an offset is taken as UTC."""
    value = datetime.fromisoformat(text)
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def tick(
    services: Services,
    dispatcher: Dispatcher,
    *,
    started_at: datetime,
    clock: Callable[[], datetime],
    stop: threading.Event,
) -> PassReport:
    """One tick: note the heartbeat, then send everything that is due."""
    with services.database.begin() as session:
        health.record_tick(session, dispatcher.worker, started_at=started_at, now=clock())
    mailer = services.make_mailer()
    try:
        report = dispatcher.drain(mailer, clock=clock, stop=stop)
    finally:
        mailer.close()
    if report.claimed or report.stopped:
        logger.info("pass: %s", report)
    return report


def run_forever(services: Services, dispatcher: Dispatcher, *, interval: float) -> None:
    """Tick every `interval` seconds until SIGTERM or SIGINT."""
    stop = threading.Event()
    started_at = services.clock()
    scheduler = BlockingScheduler(
        timezone=UTC,
        executors={"default": ThreadPoolExecutor(max_workers=1)},
        # A tick that runs long is not run twice, and missed ticks collapse into one.
        job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": None},
    )
    scheduler.add_job(
        tick,
        "interval",
        seconds=interval,
        next_run_time=datetime.now(UTC),
        kwargs={
            "services": services,
            "dispatcher": dispatcher,
            "started_at": started_at,
            "clock": services.clock,
            "stop": stop,
        },
        id="dispatch",
    )

    def on_signal(signum: int, _frame: object) -> None:
        if stop.is_set():
            return
        logger.info(
            "%s: finishing the message in flight, then stopping", signal.Signals(signum).name
        )
        stop.set()
        scheduler.shutdown(wait=True)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    logger.info("scheduler %s ticking every %ss", dispatcher.worker, interval)
    scheduler.start()
    logger.info("scheduler %s stopped", dispatcher.worker)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m scheduler", description=__doc__.split("\n")[0])
    parser.add_argument("--once", action="store_true", help="run one pass and exit")
    parser.add_argument("--now", type=parse_instant, help="with --once: the pass's time (ISO-8601)")
    parser.add_argument("--tick", type=float, help="seconds between ticks (SCHEDULER_TICK_SECONDS)")
    args = parser.parse_args(argv)
    if args.now and not args.once:
        parser.error("--now goes with --once")
    try:
        settings = load_settings()
    except ConfigError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2
    configure_logging(settings)
    services = Services.from_settings(settings)
    dispatcher = services.make_dispatcher(worker_name())
    try:
        if args.once:
            clock = (lambda: args.now) if args.now else services.clock
            report = tick(
                services, dispatcher, started_at=clock(), clock=clock, stop=threading.Event()
            )
            print(f"pass: {report}")
            return 1 if report.stopped else 0
        run_forever(services, dispatcher, interval=args.tick or settings.SCHEDULER_TICK_SECONDS)
        return 0
    finally:
        services.database.dispose()


if __name__ == "__main__":
    sys.exit(main())
