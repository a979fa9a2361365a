"""Time to inbox: from a signup's answer to its confirmation's arrival at the SMTP server.

    .venv/bin/python bench/latency.py [--signups 200] [--seconds 60]
                                      [--database sqlite|postgresql|both] [--wakeups on|off|both]

For each database and each SCHEDULER_WAKEUPS value: a fresh database, gunicorn
(gunicorn.conf.py, the signup rate limit raised: every client shares one address) and
`python -m scheduler` with default settings otherwise (a 5 s tick), sending to an aiosmtpd
server in this process that notes when each message has arrived. One signup first, whose
arrival says the scheduler is up. Then N signups with unique addresses at random moments
over the given seconds, each POST /subscribe on a connection of its own from a few client
threads; the moment each 303 has been read is noted. Prints p50/p95/p99/max of
(arrival - answer) for each run, and of the answers themselves. Goal: with the wake-up,
p95 under 1 s on both databases.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from aiosmtpd.controller import Controller

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from common import free_port, fresh_database, gunicorn  # noqa: E402

GOAL_P95_MS = 1000
CLIENT_THREADS = 8


class Arrivals:
    """An aiosmtpd handler that notes when each recipient's message has arrived."""

    def __init__(self) -> None:
        self.at: dict[str, float] = {}
        self.changed = threading.Condition()

    async def handle_DATA(self, server, session, envelope) -> str:
        now = time.monotonic()
        with self.changed:
            for address in envelope.rcpt_tos:
                self.at.setdefault(address, now)
            self.changed.notify_all()
        return "250 OK"

    def wait_for(self, addresses: set[str], timeout: float) -> bool:
        with self.changed:
            return self.changed.wait_for(lambda: addresses <= self.at.keys(), timeout=timeout)


@contextlib.contextmanager
def scheduler(database_url: str, workdir: Path, mail_url: str, wakeups: str) -> Iterator[None]:
    """`python -m scheduler` with default settings but the database, mail and wake-ups."""
    env = {
        **os.environ,
        "DOTENV_PATH": "",
        "APP_ENV": "development",
        "DATABASE_URL": database_url,
        "INSTANCE_DIR": str(workdir),
        "MAIL_URL": mail_url,
        "LOG_LEVEL": "WARNING",
        "SCHEDULER_WAKEUPS": wakeups,
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "scheduler"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        yield
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=60)


def sign_up(port: int, address: str) -> float:
    """POST /subscribe; the moment the whole answer has been read."""
    body = urllib.parse.urlencode(
        {"email": address, "first_name": "Bench", "time_zone": "Europe/Berlin", "source": "bench"}
    )
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        connection.request(
            "POST",
            "/subscribe",
            body,
            {"Content-Type": "application/x-www-form-urlencoded"},
        )
        response = connection.getresponse()
        response.read()
        answered = time.monotonic()
    finally:
        connection.close()
    if response.status not in (202, 303):
        raise RuntimeError(f"signup of {address}: HTTP {response.status}")
    return answered


def percentiles(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    cuts = statistics.quantiles(ordered, n=100, method="inclusive")
    return {"p50": cuts[49], "p95": cuts[94], "p99": cuts[98], "max": ordered[-1]}


def run(kind: str, wakeups: str, *, signups: int, seconds: float, seed: int) -> dict:
    """One run: fresh database, servers, the signups; the latencies in ms."""
    workdir = Path(tempfile.mkdtemp(prefix="latency-bench-"))
    arrivals = Arrivals()
    sink = Controller(arrivals, hostname="127.0.0.1", port=free_port())
    sink.start()
    try:
        database_url = fresh_database(kind, workdir, "newsletter_bench_latency")
        mail_url = f"smtp://127.0.0.1:{sink.port}?tls=none"
        settings = {"SIGNUP_RATE_LIMIT": "1000000 per minute", "SCHEDULER_WAKEUPS": wakeups}
        with (
            gunicorn(
                "wsgi:app", database_url=database_url, workdir=workdir, settings=settings, args=[]
            ) as port,
            scheduler(database_url, workdir, mail_url, wakeups),
        ):
            # Up and listening: its first tick sends this one.
            sign_up(port, "warm-up@example.com")
            if not arrivals.wait_for({"warm-up@example.com"}, timeout=60):
                sys.exit("the scheduler sent nothing in 60 s")
            chance = random.Random(seed)
            moments = sorted(chance.uniform(0, seconds) for _ in range(signups))
            addresses = [f"reader-{n}@example.com" for n in range(signups)]
            asked: dict[str, float] = {}
            start = time.monotonic()
            with ThreadPoolExecutor(CLIENT_THREADS) as clients:
                futures = {}
                for address, moment in zip(addresses, moments, strict=True):
                    delay = start + moment - time.monotonic()
                    if delay > 0:
                        time.sleep(delay)
                    asked[address] = time.monotonic()
                    futures[address] = clients.submit(sign_up, port, address)
                answered = {address: future.result() for address, future in futures.items()}
            if not arrivals.wait_for(set(addresses), timeout=60):
                missing = len(set(addresses) - arrivals.at.keys())
                sys.exit(f"{missing} confirmations never arrived")
    finally:
        sink.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    to_inbox = [(arrivals.at[a] - answered[a]) * 1000 for a in addresses]
    answers = [(answered[a] - asked[a]) * 1000 for a in addresses]
    return {"to_inbox": percentiles(to_inbox), "answer": percentiles(answers)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--signups", type=int, default=200)
    parser.add_argument("--seconds", type=float, default=60, help="the signups' spread")
    parser.add_argument("--database", choices=["sqlite", "postgresql", "both"], default="both")
    parser.add_argument("--wakeups", choices=["on", "off", "both"], default="both")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    kinds = ["sqlite", "postgresql"] if args.database == "both" else [args.database]
    modes = ["on", "off"] if args.wakeups == "both" else [args.wakeups]
    load = os.getloadavg()[0]
    results = []
    for kind in kinds:
        for mode in modes:
            figures = run(kind, mode, signups=args.signups, seconds=args.seconds, seed=args.seed)
            results.append((kind, mode, figures))
            inbox = figures["to_inbox"]
            print(f"{kind} wake-ups {mode}: p95 {inbox['p95']:.0f} ms to inbox", file=sys.stderr)
    print(
        f"\n{args.signups} signups over {args.seconds:.0f} s each run, default scheduler "
        f"(5 s tick), {os.cpu_count()} CPUs, load average {load:.2f} at the start\n"
    )
    print(
        f"{'database':<12}{'wake-ups':<10}"
        + "".join(f"{f'{p} ms':>9}" for p in ("p50", "p95", "p99", "max"))
        + "   answer p50/p99 ms"
    )
    failed = []
    for kind, mode, figures in results:
        inbox, answer = figures["to_inbox"], figures["answer"]
        print(
            f"{kind:<12}{mode:<10}"
            + "".join(f"{inbox[p]:>9.0f}" for p in ("p50", "p95", "p99", "max"))
            + f"   {answer['p50']:.0f}/{answer['p99']:.0f}"
        )
        if mode == "on" and inbox["p95"] >= GOAL_P95_MS:
            failed.append(kind)
    print(
        f"\ngoal (with the wake-up, p95 to inbox < {GOAL_P95_MS} ms):",
        f"NOT met for {', '.join(failed)}" if failed else "met",
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
