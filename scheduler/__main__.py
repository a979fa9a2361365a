"""`python -m scheduler`: an APScheduler clock that ticks the dispatch pass.

APScheduler only keeps time here; the work queue is the outbox table. Each pass claims
due rows under a lease and sends them, so several schedulers can run at once. The passes
run on a dispatch thread of their own (scheduler/wakeups.py): every SCHEDULER_TICK_SECONDS
the "dispatch" job asks for one and waits for it, and so does a listener the moment a
transaction queues an email due now (PostgreSQL LISTEN/NOTIFY; a Unix socket beside the
SQLite file; SCHEDULER_WAKEUPS=off turns them off). An ask that comes while a pass runs
gets the next pass, straight after; a burst of them, one pass. A pass that answers only
wake-ups just sends (`send_queued`); one that answers the tick is the whole tick.

A second job, on its own thread, checks and imports large CSV uploads (service.imports),
so a long import never holds up mail; an hourly one forgets old raw bounce reports.
SIGTERM (or Ctrl-C) lets the message in flight and the import batch in hand finish, hands
the rest back, and exits.

    python -m scheduler                      tick every SCHEDULER_TICK_SECONDS
    python -m scheduler --once               one pass, then exit (cron, catch-up)
    python -m scheduler --once --now 2026-12-01T08:00:00Z   one pass at a given time
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path

from apscheduler.events import EVENT_SCHEDULER_STARTED
from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.schedulers.blocking import BlockingScheduler
from sqlalchemy.exc import SQLAlchemyError

from scheduler.bounces import mailbox_job
from scheduler.wakeups import Bell, Listener, ask_and_wait, run_passes, start_listener
from service import broadcasts, health, imports, sequences
from service.config import ConfigError, load_settings
from service.dispatch import Dispatcher, PassReport
from service.feedback.retention import forget_payloads, forget_unparseable, unparseable_folder
from service.services import Services, configure_logging, worker_name

logger = logging.getLogger("scheduler")
HOUSEKEEPING_SECONDS = 3600


def parse_instant(text: str) -> datetime:
    """An ISO-8601 instant; one without an offset is taken as UTC."""
    value = datetime.fromisoformat(text)
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def advance_sequences(
    services: Services, *, clock: Callable[[], datetime], stop: threading.Event
) -> sequences.TickReport:
    """Move every subscriber whose next step is due one step on, in every sequence at
    once (earliest due first, the daily cap across them), a batch per transaction."""
    limit = services.settings.SEQUENCE_BATCH_SIZE
    total = sequences.TickReport()
    while not stop.is_set():
        with services.database.begin() as session:
            report = sequences.advance_due(
                session,
                services.sequences,
                now=clock(),
                default_zone=services.settings.default_zone,
                limit=limit,
                max_per_day=services.settings.MAX_SEQUENCE_EMAILS_PER_DAY,
            )
        for outcome in sequences.Outcome:
            setattr(
                total, outcome.value, getattr(total, outcome.value) + getattr(report, outcome.value)
            )
        if report.total < limit:
            break
    return total


def heartbeat(
    services: Services, dispatcher: Dispatcher, *, started_at: datetime
) -> Callable[[datetime], None]:
    """Notes that this scheduler is alive at a given time (health.record_tick)."""

    def record(now: datetime) -> None:
        with services.database.begin() as session:
            health.record_tick(session, dispatcher.worker, started_at=started_at, now=now)

    return record


def send_due(
    services: Services,
    dispatcher: Dispatcher,
    *,
    clock: Callable[[], datetime],
    stop: threading.Event,
    after_batch: Callable[[datetime], None],
) -> PassReport:
    """Send everything due over one SMTP connection."""
    mailer = services.make_mailer()
    try:
        return dispatcher.drain(mailer, clock=clock, stop=stop, after_batch=after_batch)
    finally:
        mailer.close()


def tick(
    services: Services,
    dispatcher: Dispatcher,
    *,
    started_at: datetime,
    clock: Callable[[], datetime],
    stop: threading.Event,
) -> PassReport:
    """One tick: queue the sequence steps and newsletters that are due, then send
    everything due, noting the heartbeat before and after each batch."""
    beat = heartbeat(services, dispatcher, started_at=started_at)
    beat(clock())
    try:
        steps = advance_sequences(services, clock=clock, stop=stop)
    except SQLAlchemyError:
        # What is queued already still goes; the sequences are tried again next tick.
        logger.exception("moving the sequences on failed; sending what is queued")
    else:
        if steps.total:
            logger.info("sequences: %s", steps)
    with services.database.read() as session:
        newsletters = broadcasts.in_progress(session)
    # A newsletter's rows are written a chunk per transaction: signups never wait on them,
    # and another scheduler sends the first chunks meanwhile (service.broadcast_expansion).
    while newsletters and not stop.is_set():
        with services.database.begin() as session:
            chunk = broadcasts.expand_next(
                session, now=clock(), sequence=services.default_sequence.name
            )
        if chunk is None:
            break
        beat(clock())  # a million readers' rows take a minute or more
        if chunk.done:
            logger.info("newsletter %d: %d emails queued", chunk.broadcast_id, chunk.recipients)
    report = send_due(services, dispatcher, clock=clock, stop=stop, after_batch=beat)
    if newsletters:
        with services.database.begin() as session:
            broadcasts.finish_done(session, now=clock())
    if report.claimed or report.stopped:
        logger.info("pass: %s", report)
    return report


def send_queued(
    services: Services,
    dispatcher: Dispatcher,
    *,
    started_at: datetime,
    clock: Callable[[], datetime],
    stop: threading.Event,
) -> PassReport:
    """A pass for a wake-up (an email just queued): only the sending part of a tick.
    Sequence steps and newsletters come due with time, not with a commit: they wait for
    the tick, as the heartbeat before the pass does (the one after each batch stays)."""
    beat = heartbeat(services, dispatcher, started_at=started_at)
    report = send_due(services, dispatcher, clock=clock, stop=stop, after_batch=beat)
    if report.claimed or report.stopped:
        logger.info("pass: %s", report)
    return report


def work_on_imports(
    services: Services, *, worker: str, clock: Callable[[], datetime], stop: threading.Event
) -> int:
    """Check and import the CSV uploads too large for a web request, a batch at a time."""
    return imports.work(
        services.database,
        worker=worker,
        default_time_zone=services.settings.DEFAULT_TIME_ZONE,
        clock=clock,
        should_stop=stop.is_set,
    )


class StopSignals:
    """SIGTERM and SIGINT ask the pass to stop after the message in flight.

    The handler only sets an event: a handler that logged or waited could deadlock on a
    lock held by the very code it interrupted. A second signal exits at once, leaving any
    claimed rows to come back when their lease runs out.
    """

    def __init__(self) -> None:
        self.stop = threading.Event()
        self.received: int | None = None

    def install(self) -> StopSignals:
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, self._handle)
        # Saying so is left to a thread of its own: the handler must not touch logging.
        threading.Thread(target=self._announce, name="stop-announcer", daemon=True).start()
        return self

    def _announce(self) -> None:
        self.stop.wait()
        logger.info("%s: finishing the message in flight, then stopping", self.name)

    def _handle(self, signum: int, _frame: object) -> None:
        if self.stop.is_set():
            os._exit(128 + signum)
        self.received = signum
        self.stop.set()

    @property
    def name(self) -> str:
        return signal.Signals(self.received).name if self.received else "stop"


def keep_house(services: Services, *, clock: Callable[[], datetime], stop: threading.Event) -> None:
    """Forget the raw payloads of bounces and complaints past FEEDBACK_PAYLOAD_DAYS, and
    the unreadable messages `bounces receive` kept."""
    if stop.is_set():
        return
    with services.database.begin() as session:
        forgotten = forget_payloads(
            session, now=clock(), days=services.settings.FEEDBACK_PAYLOAD_DAYS
        )
    folder = unparseable_folder(services.settings.INSTANCE_DIR)
    forgotten += forget_unparseable(
        folder, now=clock(), days=services.settings.FEEDBACK_PAYLOAD_DAYS
    )
    if forgotten:
        logger.info("forgot the raw reports of %d bounces and complaints", forgotten)


def quiet_apscheduler() -> None:
    """APScheduler says at INFO that each job started and that it finished: two lines a
    job every tick, burying the ones that say something (the emails the console mailer
    prints among them). It also warns at every tick that comes while a long pass runs (a
    newsletter to many readers), though skipping that tick is what the job asks for
    (max_instances=1). Its other warnings and errors stay, the jobs log what they did,
    and LOG_LEVEL=DEBUG brings its lines back."""
    if logging.getLogger().getEffectiveLevel() > logging.DEBUG:
        logging.getLogger("apscheduler").setLevel(logging.WARNING)
        logging.getLogger("apscheduler.scheduler").addFilter(_not_a_skipped_tick)


def _not_a_skipped_tick(record: logging.LogRecord) -> bool:
    return "maximum number of running instances reached" not in record.getMessage()


def make_scheduler(
    services: Services, dispatcher: Dispatcher, *, interval: float, signals: StopSignals
) -> BlockingScheduler:
    """The clock: every job on its schedule, shutting down once `signals` asks."""
    quiet_apscheduler()
    started_at = services.clock()
    scheduler = BlockingScheduler(
        timezone=UTC,
        # Mail, imports, the bounce mailbox and housekeeping each on a thread of their own.
        executors={"default": ThreadPoolExecutor(max_workers=4)},
        # A tick that runs long is not run twice, and missed ticks collapse into one.
        job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": None},
    )
    # The bounce mailbox (BOUNCE_MAILBOX_URL), every BOUNCE_MAILBOX_INTERVAL_SECONDS on a
    # thread of its own: a mailbox slow to answer never holds up mail (scheduler/bounces.py).
    bounces = mailbox_job(services, clock=services.clock)
    if bounces is not None:
        scheduler.add_executor(ThreadPoolExecutor(max_workers=1), alias="bounce-mailbox")
        scheduler.add_job(
            bounces,
            "interval",
            seconds=bounces.interval.total_seconds(),
            next_run_time=datetime.now(UTC),
            id="bounce-mailbox",
            executor="bounce-mailbox",
        )
    # The passes run on a thread of their own; the "dispatch" job asks for one every tick
    # and waits for it, as do the listeners when an email is queued (scheduler/wakeups.py).
    bell = Bell(signals.stop)
    clock, stop = services.clock, signals.stop
    passes = threading.Thread(
        target=run_passes,
        kwargs={
            "bell": bell,
            "run_tick": lambda: tick(
                services, dispatcher, started_at=started_at, clock=clock, stop=stop
            ),
            "run_wakeup": lambda: send_queued(
                services, dispatcher, started_at=started_at, clock=clock, stop=stop
            ),
        },
        name="dispatch",
    )
    scheduler.add_job(
        ask_and_wait,
        "interval",
        seconds=interval,
        next_run_time=datetime.now(UTC),
        kwargs={"bell": bell},
        id="dispatch",
    )
    scheduler.add_job(
        work_on_imports,
        "interval",
        seconds=interval,
        next_run_time=datetime.now(UTC),
        kwargs={"services": services, "clock": clock, "stop": stop, "worker": dispatcher.worker},
        id="imports",
    )
    scheduler.add_job(
        keep_house,
        "interval",
        seconds=HOUSEKEEPING_SECONDS,
        next_run_time=datetime.now(UTC),
        kwargs={"services": services, "clock": clock, "stop": stop},
        id="housekeeping",
    )

    def start_threads(_event: object) -> None:
        passes.start()
        listener = None
        if services.settings.SCHEDULER_WAKEUPS:
            listener = start_listener(
                bell, services.database.engine, services.settings.database_url
            )
        threading.Thread(
            target=shut_down_when_asked, args=(listener,), name="stopper", daemon=True
        ).start()

    def shut_down_when_asked(listener: Listener | None) -> None:
        signals.stop.wait()
        bell.wake_all()
        if listener is not None:
            listener.close()
        passes.join()  # the pass in hand hands back what it has not sent
        scheduler.shutdown(wait=True)

    # Started once the scheduler runs, so shutdown() never meets a scheduler not started.
    scheduler.add_listener(start_threads, EVENT_SCHEDULER_STARTED)
    return scheduler


def run_forever(
    services: Services, dispatcher: Dispatcher, *, interval: float, signals: StopSignals
) -> None:
    """Tick every `interval` seconds until SIGTERM or SIGINT."""
    scheduler = make_scheduler(services, dispatcher, interval=interval, signals=signals)
    woken = ", and as soon as an email is queued" if services.settings.SCHEDULER_WAKEUPS else ""
    logger.info("scheduler %s ticking every %ss%s", dispatcher.worker, interval, woken)
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
        configure_logging(settings)
        services = Services.from_settings(settings)
    except ConfigError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2
    dispatcher = services.make_dispatcher(worker_name())
    imports.remove_legacy_previews(Path(settings.INSTANCE_DIR))
    signals = StopSignals().install()
    try:
        if args.once:
            clock = (lambda: args.now) if args.now else services.clock
            report = tick(services, dispatcher, started_at=clock(), clock=clock, stop=signals.stop)
            work_on_imports(services, worker=dispatcher.worker, clock=clock, stop=signals.stop)
            bounces = mailbox_job(services, clock=clock)
            if bounces is not None:
                bounces()
            print(f"pass: {report}")
            return 1 if report.stopped and not signals.stop.is_set() else 0
        run_forever(
            services,
            dispatcher,
            interval=args.tick or settings.SCHEDULER_TICK_SECONDS,
            signals=signals,
        )
        return 0
    finally:
        services.database.dispose()


if __name__ == "__main__":
    sys.exit(main())
