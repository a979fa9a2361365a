"""What one scheduler tick costs with a million subscribers.

    .venv/bin/python bench/tick.py [--subscribers 1000000] [--database sqlite|postgresql|both]

Fills a database with N confirmed subscribers spread over the sequence (their next steps
due over the coming weeks), then measures, as medians of repeated runs:
- a whole tick with nothing due (heartbeat, the sequence's due query, the outbox claim);
- with 1,000 steps due: the query that finds them, and the outbox claim once they are queued.
Goal: the idle tick under 20 ms; with 1,000 due, the claim query under 50 ms.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import sqlalchemy as sa

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from common import fresh_database  # noqa: E402

from scheduler.__main__ import tick  # noqa: E402
from service import outbox, sequences  # noqa: E402
from service.config import load_settings  # noqa: E402
from service.models import Enrollment, EnrollmentStatus, Subscriber, SubscriberStatus  # noqa: E402
from service.services import Services  # noqa: E402

NOW = datetime(2026, 11, 27, 10, 0, tzinfo=UTC)
CHUNK = 20_000


def services_for(database: str, workdir: Path) -> Services:
    settings = load_settings(
        {
            "APP_ENV": "testing",
            "DATABASE_URL": database,
            "INSTANCE_DIR": str(workdir),
            # Never connected: nothing is sent in these measurements.
            "MAIL_URL": "smtp://127.0.0.1:9",
            "LOG_LEVEL": "WARNING",
        },
        environ={},
    )
    services = Services.from_settings(settings)
    services.clock = lambda: NOW
    return services


def fill(services: Services, count: int) -> None:
    """`count` confirmed subscribers, each at some step, the next one due in 1 h to 30 days."""
    steps = [s.id for s in services.default_sequence.steps]
    confirmed = NOW - timedelta(days=10)
    first_id = 1
    for start in range(0, count, CHUNK):
        size = min(CHUNK, count - start)
        with services.database.begin() as session:
            session.execute(
                sa.insert(Subscriber),
                [
                    {
                        "email": f"r{n}@example.com",
                        "email_key": f"r{n}@example.com",
                        "status": SubscriberStatus.CONFIRMED,
                        "time_zone": "UTC",
                        "source": "bench",
                        "created_at": confirmed,
                        "confirmed_at": confirmed,
                    }
                    for n in range(start, start + size)
                ],
            )
            session.execute(
                sa.insert(Enrollment),
                [
                    {
                        "subscriber_id": first_id + i,
                        "sequence": services.default_sequence.name,
                        "enrolled_at": confirmed,
                        "status": EnrollmentStatus.ACTIVE,
                        "steps_passed": steps[: (start + i) % len(steps)],
                        "next_step": steps[(start + i) % len(steps)],
                        "next_due_at": NOW + timedelta(hours=1 + (start + i) % (30 * 24)),
                        "last_step_at": confirmed,
                    }
                    for i in range(size)
                ],
            )
        first_id += size
    with services.database.engine.begin() as connection:
        connection.exec_driver_sql("ANALYZE")  # fresh statistics, as a live database has


def median_ms(fn, runs: int = 21) -> float:
    fn()
    samples = []
    for _ in range(runs):
        started = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - started) * 1000)
    return statistics.median(samples)


def measure(kind: str, count: int) -> tuple[float, float, float, int]:
    workdir = Path(tempfile.mkdtemp(prefix="tick-bench-"))
    services = services_for(fresh_database(kind, workdir, "newsletter_bench_tick"), workdir)
    started = time.perf_counter()
    fill(services, count)
    print(
        f"{kind}: {count} subscribers and enrollments written in {time.perf_counter() - started:.0f} s"
    )
    dispatcher = services.make_dispatcher("bench")
    stop = threading.Event()

    def idle_tick() -> None:
        report = tick(services, dispatcher, started_at=NOW, clock=services.clock, stop=stop)
        assert report.claimed == 0

    idle = median_ms(idle_tick)

    # 1,000 steps due: spread through the table, not the first rows of it.
    with services.database.begin() as session:
        session.execute(
            sa.update(Enrollment)
            .where(Enrollment.id % (count // 1000) == 0)
            .values(next_due_at=NOW - timedelta(minutes=1))
        )

    def find_due() -> None:
        with services.database.read() as session:
            found = sequences.due_enrollments(
                session, services.default_sequence, now=NOW, limit=1000
            )
            assert len(found) == 1000, len(found)

    due_query = median_ms(find_due)
    with services.database.begin() as session:
        queued = sequences.advance_due(
            session,
            services.default_sequence,
            now=NOW,
            default_zone=services.settings.default_zone,
            limit=1000,
        ).queued

    def claim() -> None:
        with services.database.begin() as session:
            claimed = outbox.claim(
                session, worker="bench", now=NOW, limit=1000, lease=timedelta(minutes=5)
            )
            assert len(claimed) == queued
            session.rollback()  # leave them due for the next run

    claim_query = median_ms(claim)
    services.database.dispose()
    return idle, due_query, claim_query, queued


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--subscribers", type=int, default=1_000_000)
    parser.add_argument("--database", choices=["sqlite", "postgresql", "both"], default="both")
    args = parser.parse_args()
    kinds = ["sqlite", "postgresql"] if args.database == "both" else [args.database]
    results = [(kind, *measure(kind, args.subscribers)) for kind in kinds]
    print(f"\n{'database':<12}{'idle tick':>12}{'find 1,000 due':>16}{'claim 1,000':>14}")
    failed = []
    for kind, idle, due_query, claim_query, queued in results:
        print(
            f"{kind:<12}{idle:>10.2f}ms{due_query:>14.2f}ms{claim_query:>12.2f}ms   ({queued} queued)"
        )
        if idle >= 20 or due_query >= 50 or claim_query >= 50:
            failed.append(kind)
    print(
        "\ngoal (idle tick < 20 ms; with 1,000 due, each claim query < 50 ms):",
        f"not met for {', '.join(failed)}" if failed else "met",
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
