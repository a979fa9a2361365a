"""A newsletter to a big list on PostgreSQL: writing its outbox rows while readers sign up,
then sending them with two schedulers into Postfix's smtp-sink.

    .venv/bin/python bench/broadcast.py [--readers 100000] [--clients 16] [--baseline 15]
                                        [--no-drain]

1. Fills a fresh PostgreSQL database with N confirmed readers (one INSERT ... SELECT) and
   schedules a newsletter to all of them.
2. Signups: gunicorn serves the app; 16 clients (threads, keep-alive, a new address per
   request) POST /subscribe for --baseline seconds: the baseline. Then the same load again
   while another process writes the newsletter's rows chunk by chunk, exactly as the
   scheduler's tick does (broadcasts.expand_next, one transaction per chunk). Prints the
   expansion's seconds and rows/s, and signup p50/p99 without and during it (only the
   requests started while it ran). Goals: expansion under 60 s at 1,000,000 readers,
   signup p99 under 100 ms during it.
3. Drain: two `python -m scheduler` processes send everything into smtp-sink (-c: it
   counts messages). Prints emails/s, each scheduler's peak RSS (VmHWM) when 100,000 of
   the newsletter were sent and at the end, and checks every row of the newsletter was
   sent exactly once: every row `sent`, one per reader, and as many messages received as
   rows marked sent (the signups' confirmations go out too, and are counted alike).
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import sqlalchemy as sa

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from common import free_port, fresh_database, gunicorn  # noqa: E402

from service import broadcasts  # noqa: E402
from service.config import load_settings  # noqa: E402
from service.services import Services  # noqa: E402

SUBJECT = "Foam rolling, week two"
BODY = "Roll **slowly**, about three times a week.\n\n[The course](https://example.com/course)"
RSS_MARK = 100_000


def settings_for(database: str, workdir: Path, mail_url: str = "smtp://127.0.0.1:9") -> dict:
    return {
        "APP_ENV": "testing",
        "SECRET_KEY": "benchmark-secret-key-0123456789",
        "DATABASE_URL": database,
        "INSTANCE_DIR": str(workdir),
        "MAIL_URL": mail_url,
        "BASE_URL": "https://news.example.com",
        "MAIL_FROM": "Low Back Relief <hello@news.example.com>",
        "OWNER_POSTAL_ADDRESS": "1 Bench Street, Benchtown",
        "LOG_LEVEL": "WARNING",
    }


def services_for(database: str, workdir: Path) -> Services:
    return Services.from_settings(load_settings(settings_for(database, workdir), environ={}))


def fill(database: str, count: int) -> None:
    """`count` confirmed readers, written by the server in one statement, then vacuumed and
    analysed as a list live for a while is."""
    started = time.perf_counter()
    engine = sa.create_engine(database)
    with engine.begin() as connection:
        connection.execute(
            sa.text(
                "INSERT INTO subscribers (email, email_key, first_name, status, time_zone,"
                " source, created_at, confirmed_at, wants_newsletters)"
                " SELECT 'reader' || n || '@example.com', 'reader' || n || '@example.com',"
                " 'Reader', 'confirmed', 'Europe/Berlin', 'form', :at, :at, true"
                " FROM generate_series(1, :count) AS n"
            ),
            {"at": datetime.now(UTC) - timedelta(days=30), "count": count},
        )
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
        connection.exec_driver_sql("VACUUM ANALYZE")
    engine.dispose()
    print(f"filled {count:,} confirmed readers in {time.perf_counter() - started:.0f} s")


def schedule_newsletter(services: Services) -> int:
    now = services.clock()
    with services.database.begin() as session:
        broadcast = broadcasts.save_draft(session, None, subject=SUBJECT, body=BODY, now=now)
        broadcasts.schedule(session, broadcast.id, at=now, now=now)
        return broadcast.id


def expand(database: str, workdir: Path) -> None:
    """The child process: write every due newsletter's rows as the scheduler's tick does;
    prints its wall-clock start and end, rows and chunks as JSON."""
    services = services_for(database, workdir)
    sequence = services.default_sequence.name
    started, rows, chunks, longest = time.time(), 0, 0, 0.0
    while True:
        chunk_started = time.perf_counter()
        with services.database.begin() as session:
            chunk = broadcasts.expand_next(session, now=services.clock(), sequence=sequence)
        if chunk is None:
            break
        longest = max(longest, time.perf_counter() - chunk_started)
        rows, chunks = rows + chunk.queued, chunks + 1
    ended = time.time()
    services.database.dispose()
    report = {"started": started, "ended": ended, "rows": rows, "chunks": chunks}
    print(json.dumps({**report, "longest_chunk": longest}))


class Signups:
    """Clients posting signups in a loop, each on a keep-alive connection; every request's
    wall-clock start, latency and status are kept."""

    def __init__(self, port: int, clients: int) -> None:
        self.port, self.clients = port, clients
        self.stop = threading.Event()
        self.results: list[tuple[float, float, int]] = []
        self._threads: list[threading.Thread] = []

    def _client(self, number: int) -> None:
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        sent = 0
        while not self.stop.is_set():
            sent += 1
            body = (
                f"email=load-{number}-{sent}-{time.time_ns()}%40example.com"
                "&first_name=Bench&time_zone=Europe%2FBerlin&source=bench"
            )
            started = time.time()
            try:
                connection.request(
                    "POST",
                    "/subscribe",
                    body=body,
                    headers={"Content-Type": "application/x-www-form-urlencoded"},
                )
                response = connection.getresponse()
                response.read()
                status = response.status
            except (OSError, http.client.HTTPException):
                connection.close()
                status = 0
            self.results.append((started, time.time() - started, status))

    def start(self) -> None:
        self._threads = [
            threading.Thread(target=self._client, args=(n,), daemon=True)
            for n in range(self.clients)
        ]
        for thread in self._threads:
            thread.start()

    def finish(self) -> None:
        self.stop.set()
        for thread in self._threads:
            thread.join()

    def between(self, start: float, end: float) -> dict:
        chosen = [(lat, status) for at, lat, status in self.results if start <= at <= end]
        latencies = sorted(lat * 1000 for lat, _ in chosen)
        if not latencies:
            return {"requests": 0, "rps": 0.0, "p50": 0.0, "p99": 0.0, "errors": 0}
        return {
            "requests": len(latencies),
            "rps": len(latencies) / (end - start),
            "p50": statistics.median(latencies),
            "p99": latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))],
            "errors": sum(1 for _, status in chosen if status != 303),
        }


def signups_and_expansion(
    database: str, workdir: Path, *, clients: int, baseline_seconds: float
) -> tuple[dict, dict, dict]:
    """Signup load alone, then with the expansion running in another process."""
    with gunicorn(
        "wsgi:app",
        database_url=database,
        workdir=workdir,
        settings={"SIGNUP_RATE_LIMIT": "1000000 per minute"},
        args=[],
    ) as port:
        load = Signups(port, clients)
        load.start()
        time.sleep(2)  # warm up
        baseline_start = time.time()
        time.sleep(baseline_seconds)
        baseline_end = time.time()
        child = subprocess.run(
            [sys.executable, __file__, "--expand", database, "--workdir", str(workdir)],
            capture_output=True,
            text=True,
            check=True,
        )
        time.sleep(1)
        load.finish()
    expansion = json.loads(child.stdout.strip().splitlines()[-1])
    during = load.between(expansion["started"], expansion["ended"])
    return load.between(baseline_start, baseline_end), during, expansion


def rss_of(pid: int) -> tuple[int, int]:
    """(VmRSS, VmHWM) of a process, in MB."""
    found = dict.fromkeys(("VmRSS", "VmHWM"), 0)
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            key = line.split(":")[0]
            if key in found:
                found[key] = int(line.split()[1]) // 1024
    return found["VmRSS"], found["VmHWM"]


def drain(
    database: str, workdir: Path, broadcast_id: int, expected: int, *, minutes: float | None
) -> bool:
    """Two schedulers send everything into smtp-sink (for at most `minutes`); True if every
    row went exactly once (or, stopped early, every row sent went once)."""
    port = free_port()
    sink_log = workdir / "sink.log"
    with open(sink_log, "w") as log:
        sink = subprocess.Popen(
            ["smtp-sink", "-c", "-u", "postfix", f"127.0.0.1:{port}", "256"],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    env = {
        **os.environ,
        "DOTENV_PATH": "",
        **settings_for(database, workdir, f"smtp://127.0.0.1:{port}"),
        "SCHEDULER_TICK_SECONDS": "1",
    }
    schedulers = [
        subprocess.Popen(
            [sys.executable, "-m", "scheduler"],
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=open(workdir / f"scheduler-{n}.log", "w"),  # noqa: SIM115
        )
        for n in range(2)
    ]
    engine = sa.create_engine(database)
    count_sent = sa.text(
        "SELECT count(*) FROM outbox WHERE broadcast_id = :id AND status = 'sent'"
    ).bindparams(id=broadcast_id)
    started = time.perf_counter()
    at_mark: list[int] | None = None
    rss_samples: list[tuple[int, list[int]]] = []
    sent = 0
    deadline = None if minutes is None else time.perf_counter() + minutes * 60
    try:
        while sent < expected and (deadline is None or time.perf_counter() < deadline):
            time.sleep(2)
            if any(process.poll() is not None for process in schedulers):
                print("a scheduler exited; see", workdir)
                break
            with engine.connect() as connection:
                sent = connection.execute(count_sent).scalar()
            rss = [rss_of(process.pid) for process in schedulers]
            rss_samples.append((sent, [now for now, _ in rss]))
            if at_mark is None and sent >= min(RSS_MARK, expected):
                at_mark = [peak for _, peak in rss]
                rate = sent / (time.perf_counter() - started)
                print(f"  {sent:,} sent, {rate:.0f}/s; peak RSS so far {at_mark} MB")
        elapsed = time.perf_counter() - started
        at_end = [rss_of(process.pid)[1] for process in schedulers]
        time.sleep(3)  # the last ticks record their batches and mark the newsletter sent
    finally:
        for process in schedulers:
            process.send_signal(signal.SIGTERM)
        for process in schedulers:
            process.wait(timeout=60)
        sink.terminate()
        sink.wait(timeout=10)
    received = int(re.findall(r"mesg=(\d+)", sink_log.read_text())[-1])
    with engine.connect() as connection:
        by_status = dict(
            connection.execute(
                sa.text(
                    "SELECT status, count(*) FROM outbox WHERE broadcast_id = :id GROUP BY status"
                ),
                {"id": broadcast_id},
            ).all()
        )
        readers = connection.execute(
            sa.text("SELECT count(DISTINCT subscriber_id) FROM outbox WHERE broadcast_id = :id"),
            {"id": broadcast_id},
        ).scalar()
        all_sent = connection.execute(
            sa.text("SELECT count(*) FROM outbox WHERE status = 'sent'")
        ).scalar()
        status = connection.execute(
            sa.text("SELECT status FROM broadcasts WHERE id = :id"), {"id": broadcast_id}
        ).scalar()
    engine.dispose()
    rows = sum(by_status.values())
    print(
        f"drain: {by_status.get('sent', 0):,} of the newsletter sent in {elapsed:.0f} s "
        f"({by_status.get('sent', 0) / elapsed:.0f} emails/s with two schedulers)"
    )
    print(f"peak RSS of each scheduler at {min(RSS_MARK, expected):,} sent: {at_mark} MB")
    print(f"peak RSS of each scheduler at {sent:,} sent: {at_end} MB")
    step = max(1, len(rss_samples) // 8)
    print(
        "RSS along the way (sent: MB each): "
        + ", ".join(f"{sample_sent:,}: {now}" for sample_sent, now in rss_samples[::step])
    )
    duplicates = received - all_sent
    finished = by_status.get("sent", 0) + by_status.get("queued", 0) == expected
    lost = expected - by_status.get("sent", 0) if sent >= expected else 0
    if sent < expected:
        print(f"stopped after {minutes} minutes, as asked: {expected - sent:,} still queued")
    print(
        f"rows of the newsletter by status: {by_status}; {readers:,} readers in {rows:,} rows; "
        f"newsletter {status}"
    )
    print(
        f"messages received by smtp-sink: {received:,}; rows marked sent (newsletter and "
        f"confirmations): {all_sent:,}; duplicates: {duplicates}; lost: {lost}"
    )
    if sent < expected:
        return duplicates == 0 and finished and readers == rows == expected
    return duplicates == 0 and lost == 0 and readers == rows == expected and status == "sent"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--readers", type=int, default=100_000)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--baseline", type=float, default=15, help="seconds of signups alone")
    parser.add_argument("--no-drain", action="store_true", help="stop after the expansion")
    parser.add_argument("--drain-minutes", type=float, help="stop the drain after this long")
    parser.add_argument("--expand", metavar="DATABASE_URL", help=argparse.SUPPRESS)
    parser.add_argument("--workdir", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.expand:
        expand(args.expand, Path(args.workdir))
        return 0
    if shutil.which("smtp-sink") is None:
        sys.exit("smtp-sink is not installed: apt-get install postfix")

    workdir = Path(tempfile.mkdtemp(prefix="broadcast-bench-"))
    database = fresh_database("postgresql", workdir, "newsletter_bench_broadcast")
    print(f"{args.readers:,} readers; PostgreSQL; {os.cpu_count()} CPUs; load {os.getloadavg()}")
    fill(database, args.readers)
    services = services_for(database, workdir)
    broadcast_id = schedule_newsletter(services)
    services.database.dispose()

    baseline, during, expansion = signups_and_expansion(
        database, workdir, clients=args.clients, baseline_seconds=args.baseline
    )
    seconds = expansion["ended"] - expansion["started"]
    print(
        f"\nexpansion: {expansion['rows']:,} rows in {seconds:.1f} s "
        f"({expansion['rows'] / seconds:,.0f} rows/s), {expansion['chunks']} chunks, "
        f"the longest {expansion['longest_chunk']:.2f} s  (goal < 60 s at 1,000,000)"
    )
    print(
        f"\nsignups, {args.clients} clients{'':<8}{'req/s':>8}{'p50 ms':>9}{'p99 ms':>9}"
        f"{'errors':>8}"
    )
    for name, result in (("without the expansion", baseline), ("during the expansion", during)):
        print(
            f"  {name:<30}{result['rps']:>8.0f}{result['p50']:>9.1f}{result['p99']:>9.1f}"
            f"{result['errors']:>8d}"
        )
    print(
        f"  p99 during / without: {during['p99'] / baseline['p99']:.2f}  "
        f"(goal: p99 during < 100 ms); load {os.getloadavg()}"
    )
    ok = (
        expansion["rows"] == args.readers
        and during["p99"] < 100
        and during["errors"] == 0
        and baseline["errors"] == 0
        and (args.readers < 1_000_000 or seconds < 60)
    )
    if not args.no_drain:
        print("\ndraining into smtp-sink with two schedulers ...")
        ok = (
            drain(database, workdir, broadcast_id, expansion["rows"], minutes=args.drain_minutes)
            and ok
        )
    print("goal met" if ok else "GOAL NOT MET")
    shutil.rmtree(workdir, ignore_errors=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
