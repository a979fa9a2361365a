"""What one scheduler tick costs with a million subscribers in three sequences.

    .venv/bin/python bench/tick.py [--subscribers 1000000] [--database sqlite|postgresql|both]

Fills a database with N confirmed subscribers spread over three sequences: the two shipped
ones and a third the benchmark writes into a CONTENT_DIR of its own. Reader n is in
sequence n % 3, and every 4th reader in the next one too (about 1.25 N enrollments), their
next steps due over the coming weeks. Then measures, as medians of repeated runs:
- a whole tick with nothing due (heartbeat, the due query across sequences, the outbox claim);
- with 1,000 steps due across the three sequences: the query that finds them, the whole
  `advance_due` of them (with the daily cap's day-slot query; rolled back after each run),
  and the outbox claim once they are queued.
Goals: the idle tick under 20 ms; with 1,000 due, the due query and the claim under 50 ms
each (the whole advance, which writes 1,000 outbox rows, is printed for reference).
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
THIRD_SEQUENCE = """\
name = "bench-third"
send_hour = 8
latest_hour = 20

[[steps]]
id = "bench-third-one"
template = "planner/01_first_session"
delay = "2 days"

[[steps]]
id = "bench-third-two"
template = "planner/02_mid_week"
delay = "2 days"

[[steps]]
id = "bench-third-three"
template = "planner/03_next_week"
delay = "2 days"
"""


def services_for(database: str, workdir: Path) -> Services:
    """Services on `database` with a third sequence of the benchmark's own in `workdir`."""
    content = workdir / "content"
    (content / "emails" / "sequences").mkdir(parents=True, exist_ok=True)
    (content / "emails" / "sequences" / "bench-third.toml").write_text(THIRD_SEQUENCE)
    settings = load_settings(
        {
            "APP_ENV": "testing",
            "DATABASE_URL": database,
            "INSTANCE_DIR": str(workdir),
            "CONTENT_DIR": str(content),
            # Never connected: nothing is sent in these measurements.
            "MAIL_URL": "smtp://127.0.0.1:9",
            "LOG_LEVEL": "WARNING",
        },
        environ={},
    )
    services = Services.from_settings(settings)
    services.clock = lambda: NOW
    assert len(services.sequences) == 3, list(services.sequences)
    return services


def memberships(n: int, names: list[str]) -> list[str]:
    """The sequences reader `n` is in: one of the three, every 4th reader also the next."""
    first = n % len(names)
    if n % 4 == 0:
        return [names[first], names[(first + 1) % len(names)]]
    return [names[first]]


def fill(services: Services, count: int) -> int:
    """`count` confirmed subscribers in 1 or 2 of the sequences, each enrollment at some
    step, the next one due in 1 h to 30 days; returns the number of enrollments."""
    steps = {name: [s.id for s in sequence.steps] for name, sequence in services.sequences.items()}
    names = list(steps)
    confirmed = NOW - timedelta(days=10)
    first_id = 1
    enrollments = 0
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
            rows = [
                {
                    "subscriber_id": first_id + i,
                    "sequence": name,
                    "enrolled_at": confirmed,
                    "status": EnrollmentStatus.ACTIVE,
                    "steps_passed": steps[name][: (start + i) % len(steps[name])],
                    "next_step": steps[name][(start + i) % len(steps[name])],
                    "next_due_at": NOW + timedelta(hours=1 + (start + i + k * 97) % (30 * 24)),
                    "last_step_at": confirmed,
                }
                for i in range(size)
                for k, name in enumerate(memberships(start + i, names))
            ]
            session.execute(sa.insert(Enrollment), rows)
            enrollments += len(rows)
        first_id += size
    with services.database.engine.begin() as connection:
        connection.exec_driver_sql("ANALYZE")  # fresh statistics, as a live database has
    return enrollments


def median_ms(fn, runs: int = 21) -> float:
    fn()
    samples = []
    for _ in range(runs):
        started = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - started) * 1000)
    return statistics.median(samples)


def measure(kind: str, count: int) -> tuple[float, float, float, float, int, dict[str, int]]:
    workdir = Path(tempfile.mkdtemp(prefix="tick-bench-"))
    services = services_for(fresh_database(kind, workdir, "newsletter_bench_tick"), workdir)
    started = time.perf_counter()
    enrollments = fill(services, count)
    print(
        f"{kind}: {count} subscribers and {enrollments} enrollments in"
        f" {len(services.sequences)} sequences written in {time.perf_counter() - started:.0f} s",
        flush=True,
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
            .where(Enrollment.id % (enrollments // 1000) == 0)
            .values(next_due_at=NOW - timedelta(minutes=1))
        )

    with services.database.read() as session:
        per_sequence = dict(
            session.execute(
                sa.select(Enrollment.sequence, sa.func.count())
                .where(Enrollment.next_due_at <= NOW)
                .group_by(Enrollment.sequence)
            ).all()
        )

    def find_due() -> None:
        with services.database.read() as session:
            found = sequences.due_enrollments(session, None, now=NOW, limit=1000)
            assert len(found) == 1000, len(found)

    due_query = median_ms(find_due)

    def advance(commit: bool = False) -> int:
        with services.database.begin() as session:
            queued = sequences.advance_due(
                session,
                services.sequences,
                now=NOW,
                default_zone=services.settings.default_zone,
                limit=1000,
                max_per_day=services.settings.MAX_SEQUENCE_EMAILS_PER_DAY,
            ).queued
            if not commit:
                session.rollback()  # leave them due for the next run
        return queued

    advance_query = median_ms(advance)
    queued = advance(commit=True)

    def claim() -> None:
        with services.database.begin() as session:
            # As the sending loop claims: the ids (it reads each row as it renews its lease).
            claimed = outbox.claim_ids(
                session, worker="bench", now=NOW, limit=1000, lease=timedelta(minutes=5)
            )
            assert len(claimed) == queued
            session.rollback()  # leave them due for the next run

    claim_query = median_ms(claim)
    services.database.dispose()
    return idle, due_query, advance_query, claim_query, queued, per_sequence


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--subscribers", type=int, default=1_000_000)
    parser.add_argument("--database", choices=["sqlite", "postgresql", "both"], default="both")
    args = parser.parse_args()
    kinds = ["sqlite", "postgresql"] if args.database == "both" else [args.database]
    results = [(kind, *measure(kind, args.subscribers)) for kind in kinds]
    print(
        f"\n{'database':<12}{'idle tick':>12}{'find 1,000 due':>16}"
        f"{'advance 1,000':>16}{'claim 1,000':>14}"
    )
    failed = []
    for kind, idle, due_query, advance_query, claim_query, queued, per_sequence in results:
        print(
            f"{kind:<12}{idle:>10.2f}ms{due_query:>14.2f}ms{advance_query:>14.2f}ms"
            f"{claim_query:>12.2f}ms   ({queued} queued; due by sequence: "
            + ", ".join(f"{name} {n}" for name, n in sorted(per_sequence.items()))
            + ")"
        )
        goals = {
            "idle tick < 20 ms": idle < 20,
            "find 1,000 due < 50 ms": due_query < 50,
            "claim 1,000 < 50 ms": claim_query < 50,
        }
        print(
            f"{'':<12}"
            + "; ".join(f"{goal}: {'met' if ok else 'NOT met'}" for goal, ok in goals.items())
        )
        if not all(goals.values()):
            failed.append(kind)
    print(
        "\ngoal (idle tick < 20 ms; with 1,000 due, the due query and the claim < 50 ms each):",
        f"not met for {', '.join(failed)}" if failed else "met",
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
