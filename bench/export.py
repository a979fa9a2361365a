r"""Exporting a million subscribers to CSV with the CLI, against the database's own CSV
export of the same table, measured in the same run.

    .venv/bin/python bench/export.py [--subscribers 1000000] [--database sqlite|postgresql|both]

Fills a database with N subscribers, each with a consent record, a place in the sequence
and a sent email (the export joins all three), then runs, each as its own process:
- ours: `flask --app wsgi subscribers export -o FILE`;
- the baseline: the database's own CSV dump of the subscribers table, `sqlite3 -csv DB
  "SELECT * FROM subscribers"`, or on PostgreSQL
  `psql -c "\copy (select * from subscribers) to stdout csv"`.
Prints seconds, rows/s and peak RSS for each, and the ratio of the times.
Goal: ours at most 4 times the baseline's time, with peak RSS under 100 MB.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import sqlalchemy as sa

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from common import fresh_database  # noqa: E402

from service.config import load_settings  # noqa: E402
from service.models import (  # noqa: E402
    ConsentRecord,
    Enrollment,
    EnrollmentStatus,
    OutboxMessage,
    OutboxStatus,
    Subscriber,
    SubscriberStatus,
)
from service.services import Services  # noqa: E402

NOW = datetime(2026, 11, 27, 10, 0, tzinfo=UTC)
CHUNK = 20_000
NAMES = ["Ann", "Bob", "Zoë", "=SUM(A1)", None, "José", "Li", "+441234", "O'Neil, Jr."]
STATUSES = [SubscriberStatus.CONFIRMED] * 8 + [
    SubscriberStatus.UNSUBSCRIBED,
    SubscriberStatus.PENDING,
]
MAX_RSS_MB = 100
MAX_RATIO = 4


def settings_for(database: str, workdir: Path) -> dict[str, str]:
    return {
        "APP_ENV": "testing",
        "SECRET_KEY": "benchmark-secret-key-0123456789",
        "DATABASE_URL": database,
        "INSTANCE_DIR": str(workdir),
        "MAIL_URL": "smtp://127.0.0.1:9",
        "LOG_LEVEL": "WARNING",
    }


def fill(database: str, workdir: Path, count: int) -> None:
    services = Services.from_settings(load_settings(settings_for(database, workdir), environ={}))
    steps = [s.id for s in services.default_sequence.steps]
    started = time.perf_counter()
    for start in range(0, count, CHUNK):
        numbers = range(start, min(count, start + CHUNK))
        with services.database.begin() as session:
            signed_up = [NOW - timedelta(days=400) + timedelta(seconds=n * 30) for n in numbers]
            session.execute(
                sa.insert(Subscriber),
                [
                    {
                        "id": n + 1,
                        "email": f"reader{n}@example.com",
                        "email_key": f"reader{n}@example.com",
                        "first_name": NAMES[n % len(NAMES)],
                        "status": STATUSES[n % len(STATUSES)],
                        "time_zone": "Europe/Berlin" if n % 2 else "America/Vancouver",
                        "source": "form" if n % 3 else "import",
                        "created_at": at,
                        "confirmed_at": at + timedelta(minutes=5),
                    }
                    for n, at in zip(numbers, signed_up, strict=True)
                ],
            )
            session.execute(
                sa.insert(ConsentRecord),
                [
                    {
                        "subscriber_id": n + 1,
                        "action": "confirm",
                        "at": at,
                        "ip": f"198.51.{n % 256}.{n // 256 % 256}",
                        "user_agent": "Mozilla/5.0",
                        "source": "form",
                        "text": "Yes, send me the guide and the tips.",
                        "text_version": "3f2a9c1b",
                    }
                    for n, at in zip(numbers, signed_up, strict=True)
                ],
            )
            session.execute(
                sa.insert(Enrollment),
                [
                    {
                        "subscriber_id": n + 1,
                        "sequence": services.default_sequence.name,
                        "enrolled_at": at,
                        "status": EnrollmentStatus.ACTIVE,
                        "steps_passed": steps[: n % len(steps)],
                        "next_step": steps[n % len(steps)],
                        "next_due_at": NOW + timedelta(hours=1 + n % 500),
                    }
                    for n, at in zip(numbers, signed_up, strict=True)
                ],
            )
            session.execute(
                sa.insert(OutboxMessage),
                [
                    {
                        "subscriber_id": n + 1,
                        "to_address": f"reader{n}@example.com",
                        "kind": "welcome",
                        "template": "welcome",
                        "context": {},
                        "status": OutboxStatus.SENT,
                        "attempts": 1,
                        "due_at": at,
                        "created_at": at,
                        "sent_at": at + timedelta(minutes=6),
                    }
                    for n, at in zip(numbers, signed_up, strict=True)
                ],
            )
    # As a list that has been live for a while looks: statistics gathered and, on
    # PostgreSQL, vacuumed (the first read of new rows would otherwise write every page
    # to set hint bits, and only our export, which runs first, would pay for it).
    engine = services.database.engine
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
        connection.exec_driver_sql(
            "VACUUM ANALYZE" if engine.dialect.name == "postgresql" else "ANALYZE"
        )
    services.database.dispose()
    print(f"filled {count} subscribers (4 tables) in {time.perf_counter() - started:.0f} s")


# Peak RSS is measured by a bare Python process that forks and execs the command: a child
# forked from this (large) process would count this process's memory as its own.
MEASURE = """
import os, sys, time
started = time.perf_counter()
pid = os.fork()
if pid == 0:
    if sys.argv[1] != "-":
        fd = os.open(sys.argv[1], os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        os.dup2(fd, 1)
    os.execvp(sys.argv[2], sys.argv[2:])
_, status, usage = os.wait4(pid, 0)
print(time.perf_counter() - started, usage.ru_maxrss, os.waitstatus_to_exitcode(status))
"""


def run(command: list[str], *, stdout_path: Path | None = None, env=None) -> tuple[float, float]:
    """Seconds and peak RSS (MB) of one process."""
    result = subprocess.run(
        [sys.executable, "-S", "-c", MEASURE, str(stdout_path or "-"), *command],
        capture_output=True,
        env=env,
        check=False,
    )
    seconds, max_rss_kb, code = result.stdout.split()[-3:]
    if int(code) != 0 or result.returncode != 0:
        raise SystemExit(f"{command[0]} failed: {result.stderr.decode()[-2000:]}")
    return float(seconds), int(max_rss_kb) / 1024


def count_lines(path: Path) -> int:
    with path.open("rb") as file:
        return sum(chunk.count(b"\n") for chunk in iter(lambda: file.read(1 << 20), b""))


def measure(kind: str, count: int) -> bool:
    workdir = Path(tempfile.mkdtemp(prefix="export-bench-"))
    try:
        database = fresh_database(kind, workdir, "newsletter_bench_export")
        fill(database, workdir, count)
        env = {**os.environ, **settings_for(database, workdir), "DOTENV_PATH": ""}
        ours_file = workdir / "ours.csv"
        ours = run(
            [
                str(Path(sys.executable).with_name("flask")),
                "--app",
                "wsgi",
                "subscribers",
                "export",
                "-o",
                str(ours_file),
            ],
            env={**env, "PYTHONPATH": str(ROOT)},
        )
        baseline_file = workdir / "baseline.csv"
        if kind == "sqlite":
            path = sa.engine.make_url(database).database
            command = ["sqlite3", "-csv", path, "SELECT * FROM subscribers"]
            label = "sqlite3 -csv"
        else:
            url = sa.engine.make_url(database)
            command = [
                "psql",
                "-h",
                url.host or "127.0.0.1",
                "-U",
                url.username or "postgres",
                "-d",
                url.database,
                "-c",
                r"\copy (select * from subscribers) to stdout csv",
            ]
            label = "psql \\copy"
        baseline = run(command, stdout_path=baseline_file)
        ours_rows = count_lines(ours_file) - 1  # without its header
        baseline_rows = count_lines(baseline_file)  # the dump has none
        ratio = ours[0] / baseline[0]
        met = ratio <= MAX_RATIO and ours[1] < MAX_RSS_MB and ours_rows == count
        print(f"\n{kind}: {count} subscribers")
        print(f"{'':<24}{'seconds':>9}{'rows/s':>11}{'peak RSS':>11}{'rows':>10}")
        for name, (seconds, rss), rows in (
            ("flask subscribers export", ours, ours_rows),
            (label, baseline, baseline_rows),
        ):
            print(f"{name:<24}{seconds:>9.2f}{rows / seconds:>11.0f}{rss:>8.0f} MB{rows:>10}")
        print(
            f"ratio {ratio:.2f} (goal <= {MAX_RATIO}), peak RSS {ours[1]:.0f} MB "
            f"(goal < {MAX_RSS_MB} MB): {'met' if met else 'NOT MET'}"
        )
        return met
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subscribers", type=int, default=1_000_000)
    parser.add_argument("--database", choices=["sqlite", "postgresql", "both"], default="both")
    args = parser.parse_args()
    kinds = ["sqlite", "postgresql"] if args.database == "both" else [args.database]
    print(f"{os.cpu_count()} CPUs")
    results = [measure(kind, args.subscribers) for kind in kinds]
    return 0 if all(results) else 1


if __name__ == "__main__":
    sys.exit(main())
