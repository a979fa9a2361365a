r"""Exporting a million subscribers to CSV with the CLI, against the database's own CSV
export of the same table, measured in the same run.

    .venv/bin/python bench/export.py [--subscribers 1000000] [--database sqlite|postgresql|both]
        [--runs 3] [--filled URL]

Fills a database with N subscribers, each with a consent record, a place in the sequence
and a sent email (the export joins all three), then runs, each as its own process:
- ours: `flask --app wsgi subscribers export -o FILE`;
- the baseline: the database's own CSV dump of the subscribers table, `sqlite3 -csv DB
  "SELECT * FROM subscribers"`, or on PostgreSQL
  `psql -c "\copy (select * from subscribers) to stdout csv"`.
Each runs --runs times, taking turns, and the best time of each counts: on a machine others
are using, one run of either may be slowed by them. Prints seconds, rows/s, peak RSS and CPU
seconds for each, and the ratio of the times. --filled URL (with --database sqlite or
postgresql) measures a database filled the same way before (a run leaves its PostgreSQL
one, newsletter_bench_export) instead of filling one.
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
from dataclasses import dataclass
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
cpu = usage.ru_utime + usage.ru_stime
print(time.perf_counter() - started, usage.ru_maxrss, cpu, os.waitstatus_to_exitcode(status))
"""


@dataclass(frozen=True)
class Run:
    seconds: float
    rss_mb: float
    cpu_seconds: float  # user + system, of the process itself (not the database server's)


def run(command: list[str], *, stdout_path: Path | None = None, env=None) -> Run:
    """One process, measured."""
    result = subprocess.run(
        [sys.executable, "-S", "-c", MEASURE, str(stdout_path or "-"), *command],
        capture_output=True,
        env=env,
        check=False,
    )
    seconds, max_rss_kb, cpu, code = result.stdout.split()[-4:]
    if int(code) != 0 or result.returncode != 0:
        raise SystemExit(f"{command[0]} failed: {result.stderr.decode()[-2000:]}")
    return Run(float(seconds), int(max_rss_kb) / 1024, float(cpu))


def best(runs: list[Run]) -> Run:
    """The fastest time and the least CPU; the highest peak RSS."""
    return Run(
        min(r.seconds for r in runs), max(r.rss_mb for r in runs), min(r.cpu_seconds for r in runs)
    )


def count_lines(path: Path) -> int:
    with path.open("rb") as file:
        return sum(chunk.count(b"\n") for chunk in iter(lambda: file.read(1 << 20), b""))


def measure(kind: str, count: int, *, runs: int, filled: str | None) -> bool:
    workdir = Path(tempfile.mkdtemp(prefix="export-bench-"))
    try:
        if filled is None:
            database = fresh_database(kind, workdir, "newsletter_bench_export")
            fill(database, workdir, count)
        else:
            database = filled
        env = {**os.environ, **settings_for(database, workdir), "DOTENV_PATH": ""}
        ours_file = workdir / "ours.csv"
        ours_command = [
            str(Path(sys.executable).with_name("flask")),
            "--app",
            "wsgi",
            "subscribers",
            "export",
            "-o",
            str(ours_file),
        ]
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
        ours_runs, baseline_runs = [], []
        for _ in range(runs):
            ours_runs.append(run(ours_command, env={**env, "PYTHONPATH": str(ROOT)}))
            baseline_runs.append(run(command, stdout_path=baseline_file))
        ours, baseline = best(ours_runs), best(baseline_runs)
        ours_rows = count_lines(ours_file) - 1  # without its header
        baseline_rows = count_lines(baseline_file)  # the dump has none
        ratio = ours.seconds / baseline.seconds
        met = ratio <= MAX_RATIO and ours.rss_mb < MAX_RSS_MB and ours_rows == count
        print(
            f"\n{kind}: {count} subscribers, best of {runs} runs each "
            f"(load average now {os.getloadavg()[0]:.1f})"
        )
        print(f"{'':<24}{'seconds':>9}{'rows/s':>11}{'peak RSS':>11}{'CPU s':>8}{'rows':>10}")
        for name, measured, rows in (
            ("flask subscribers export", ours, ours_rows),
            (label, baseline, baseline_rows),
        ):
            print(
                f"{name:<24}{measured.seconds:>9.2f}{rows / measured.seconds:>11.0f}"
                f"{measured.rss_mb:>8.0f} MB{measured.cpu_seconds:>8.2f}{rows:>10}"
            )
        each = ", ".join(
            f"{o.seconds / b.seconds:.2f}" for o, b in zip(ours_runs, baseline_runs, strict=True)
        )
        turns = sorted(o.seconds / b.seconds for o, b in zip(ours_runs, baseline_runs, strict=True))
        print(f"ratio of each turn: {each} (median {turns[len(turns) // 2]:.2f})")
        print(
            f"ratio {ratio:.2f} (goal <= {MAX_RATIO}), peak RSS {ours.rss_mb:.0f} MB "
            f"(goal < {MAX_RSS_MB} MB): {'met' if met else 'NOT MET'}"
        )
        return met
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subscribers", type=int, default=1_000_000)
    parser.add_argument("--database", choices=["sqlite", "postgresql", "both"], default="both")
    parser.add_argument("--runs", type=int, default=3, help="turns of each (the best counts)")
    parser.add_argument("--filled", help="a database this bench filled before (no new fill)")
    args = parser.parse_args()
    kinds = ["sqlite", "postgresql"] if args.database == "both" else [args.database]
    if args.filled and len(kinds) != 1:
        parser.error("--filled needs --database sqlite or --database postgresql")
    print(f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}")
    results = [
        measure(kind, args.subscribers, runs=args.runs, filled=args.filled) for kind in kinds
    ]
    return 0 if all(results) else 1


if __name__ == "__main__":
    sys.exit(main())
