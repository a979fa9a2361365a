"""Two schedulers against one, draining one newsletter on PostgreSQL into Postfix's
`smtp-sink`, measured in the same run.

    .venv/bin/python bench/schedulers.py [--readers 20000] [--database postgresql|sqlite]

For one and then two schedulers: a fresh database with N confirmed readers and a
newsletter to all of them, its N emails queued as the scheduler queues them; then that
many `python -m scheduler` processes, as an operator runs them, until every email is
sent. The rate counts from the first email sent to the last (each row's `sent_at`), so
process start-up is left out of both. Also a plain smtplib loop into the same sink, as in
bench/dispatch.py. Checks: every row sent exactly once (the sink's own message count, and
no row claimed twice). Goal: two schedulers together at least as fast as one, 0
duplicates, 0 lost.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import sqlalchemy as sa

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from common import free_port, fresh_database  # noqa: E402
from dispatch import baseline, wait_for_port  # noqa: E402

from service import kinds, outbox  # noqa: E402
from service.db import Database  # noqa: E402
from service.models import (  # noqa: E402
    Broadcast,
    BroadcastStatus,
    OutboxMessage,
    OutboxStatus,
    Subscriber,
    SubscriberStatus,
)

SETTINGS = {
    "APP_ENV": "development",
    "SECRET_KEY": "benchmark-secret-key-0123456789",
    "BASE_URL": "https://news.example.com",
    "MAIL_FROM": "Low Back Relief <hello@news.example.com>",
    "OWNER_POSTAL_ADDRESS": "1 Bench Street, Benchtown",
    "LOG_LEVEL": "WARNING",
}


class CountingSink:
    """smtp-sink with its running counters on: the number of messages it took. The
    counters go to a file (a pipe nobody reads would fill, and the sink would stall)."""

    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        self.counters = workdir / f"sink-{self.port}.out"
        with self.counters.open("wb") as output:
            self.process = subprocess.Popen(
                ["smtp-sink", "-c", "-u", "postfix", f"127.0.0.1:{self.port}", "256"],
                stdout=output,
                stderr=subprocess.DEVNULL,
            )
        wait_for_port(self.port)

    def stop(self) -> int:
        self.process.terminate()
        self.process.wait(timeout=30)
        counts = re.findall(r"mesg=(\d+)", self.counters.read_text())
        return int(counts[-1]) if counts else 0


def queue_newsletter(url: str, readers: int, now: datetime) -> None:
    """`readers` confirmed readers and one newsletter to them, its emails queued."""
    database = Database.connect(url)
    with database.begin() as session:
        session.execute(
            sa.insert(Subscriber),
            [
                {
                    "email": f"reader{n}@example.com",
                    "email_key": f"reader{n}@example.com",
                    "first_name": f"Reader{n}" if n % 3 else None,
                    "status": SubscriberStatus.CONFIRMED,
                    "time_zone": "UTC",
                    "source": "bench",
                    "created_at": now,
                    "confirmed_at": now,
                }
                for n in range(readers)
            ],
        )
        broadcast = Broadcast(
            subject="Why the glutes matter to the low back",
            body="Tight glutes pull on the fascia of the low back.\n\n" * 20,
            status=BroadcastStatus.SENDING,
            created_at=now,
            updated_at=now,
            started_at=now,
            recipients=readers,
        )
        session.add(broadcast)
        session.flush()
        outbox.enqueue_for_each(
            session,
            sa.select(Subscriber.id, Subscriber.email)
            .where(Subscriber.status == SubscriberStatus.CONFIRMED)
            .subquery(),
            kinds.NEWSLETTER,
            now=now,
            context={"broadcast_id": broadcast.id},
            dedupe_prefix=f"{kinds.NEWSLETTER}:{broadcast.id}:",
            broadcast_id=broadcast.id,
        )
    database.dispose()


def drain(url: str, workdir: Path, port: int, schedulers: int, readers: int) -> dict:
    """Run `schedulers` schedulers until every queued email is sent; the figures."""
    env = {
        **os.environ,
        **SETTINGS,
        "DOTENV_PATH": "",
        "DATABASE_URL": url,
        "INSTANCE_DIR": str(workdir),
        "MAIL_URL": f"smtp://127.0.0.1:{port}",
    }
    log = (workdir / f"schedulers-{schedulers}.log").open("wb")
    processes = [
        subprocess.Popen(
            [sys.executable, "-m", "scheduler", "--tick", "1"],
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=log,
        )
        for _ in range(schedulers)
    ]
    engine = sa.create_engine(url)
    pending = sa.select(sa.func.count()).where(OutboxMessage.status != OutboxStatus.SENT)
    try:
        deadline = time.monotonic() + 60 + readers / 50
        while True:
            with engine.connect() as connection:
                if connection.scalar(pending) == 0:
                    break
            if any(p.poll() is not None for p in processes):
                sys.exit("a scheduler exited:\n" + Path(log.name).read_text()[-2000:])
            if time.monotonic() > deadline:
                sys.exit(
                    "the queue was not drained in time:\n" + Path(log.name).read_text()[-2000:]
                )
            time.sleep(0.2)
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            process.wait(timeout=60)
        log.close()
    with engine.connect() as connection:
        first, last, rows, claimed_twice = connection.execute(
            sa.select(
                sa.func.min(OutboxMessage.sent_at),
                sa.func.max(OutboxMessage.sent_at),
                sa.func.count(),
                sa.func.count().filter(OutboxMessage.attempts > 1),
            ).where(OutboxMessage.status == OutboxStatus.SENT)
        ).one()
        by_worker = dict(
            connection.execute(
                sa.select(OutboxMessage.claimed_by, sa.func.count()).group_by(
                    OutboxMessage.claimed_by
                )
            ).all()
        )
    engine.dispose()
    seconds = max((last - first).total_seconds(), 1e-6)
    return {
        "rate": rows / seconds,
        "sent": rows,
        "claimed twice": claimed_twice,
        "leftover claims": {k: v for k, v in by_worker.items() if k is not None},
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--readers", type=int, default=20_000)
    parser.add_argument("--database", choices=["postgresql", "sqlite"], default="postgresql")
    args = parser.parse_args()
    print(f"{args.readers} readers, one newsletter; {os.cpu_count()} CPUs; {args.database}\n")
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        for schedulers in (1, 2):
            sink = CountingSink(workdir)
            url = fresh_database(args.database, workdir, f"bench_schedulers_{schedulers}")
            queue_newsletter(url, args.readers, datetime.now(UTC))
            figures = drain(url, workdir, sink.port, schedulers, args.readers)
            message = b"Subject: x\r\n\r\n" + b"Tight glutes pull on the fascia.\r\n" * 180
            figures["baseline"] = baseline(sink.port, message, min(args.readers, 20_000))
            figures["received"] = sink.stop() - min(args.readers, 20_000)
            results[schedulers] = figures
    print(f"{'schedulers':>10} {'baseline/s':>11} {'emails/s':>9} {'ratio':>6}  check")
    ok = True
    for schedulers, f in results.items():
        duplicates = f["received"] - args.readers
        lost = args.readers - f["sent"]
        check = f"received {f['received']}, {duplicates} duplicates, {lost} lost"
        if f["claimed twice"]:
            check += f", {f['claimed twice']} rows claimed twice"
        ok = ok and duplicates == 0 and lost == 0 and not f["claimed twice"]
        print(
            f"{schedulers:>10} {f['baseline']:>11.0f} {f['rate']:>9.0f}"
            f" {f['rate'] / f['baseline']:>6.2f}  {check}"
        )
    together = results[2]["rate"] / results[1]["rate"]
    met = ok and together >= 1.0
    print(f"\ntwo schedulers / one: {together:.2f}")
    print(
        f"goal (two at least as fast as one, 0 duplicates, 0 lost): {'met' if met else 'NOT MET'}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
