"""Signup throughput under gunicorn, against GET /healthz under the same load in the same run.

    .venv/bin/python bench/signup.py [--connections 32] [--duration 15] [--database sqlite|postgresql]

Starts gunicorn on loopback with a fresh database (SQLite file by default) and the signup
rate limit raised (every client shares one address), then drives it with wrk (Debian
package `wrk`): first GET /healthz, then POST /subscribe with a unique address per request.
Prints requests/s, p50/p99 latency and errors for each, their ratio, and checks that every
accepted signup is in the database. Goal: signup >= 0.35 x healthz throughput, p99 < 100 ms
at 32 connections, no errors.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import sqlalchemy as sa

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from common import fresh_database, gunicorn  # noqa: E402

REPORT_LUA = """
done = function(summary, latency, requests)
  local codes = {}
  for _, thread in ipairs(threads) do
    local bad = thread:get("bad") or 0
    local good = thread:get("good") or 0
    codes.bad = (codes.bad or 0) + bad
    codes.good = (codes.good or 0) + good
  end
  io.write(string.format(
    "RESULT {\\"requests\\": %d, \\"seconds\\": %f, \\"p50_ms\\": %f, \\"p99_ms\\": %f, " ..
    "\\"socket_errors\\": %d, \\"good\\": %d, \\"bad\\": %d}\\n",
    summary.requests, summary.duration / 1e6,
    latency:percentile(50) / 1000, latency:percentile(99) / 1000,
    summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout,
    codes.good, codes.bad))
end
"""

THREADS_LUA = """
threads = {}
local counter = 1
setup = function(thread)
  thread:set("id", counter)
  counter = counter + 1
  table.insert(threads, thread)
end
init = function(args)
  good = 0
  bad = 0
  sent = 0
end
"""

HEALTHZ_LUA = (
    THREADS_LUA
    + """
response = function(status, headers, body)
  if status == 200 then good = good + 1 else bad = bad + 1 end
end
"""
    + REPORT_LUA
)

SIGNUP_LUA = (
    THREADS_LUA
    + """
request = function()
  sent = sent + 1
  local body = "email=bench-" .. id .. "-" .. sent .. "%40example.com" ..
               "&first_name=Bench&time_zone=Europe%2FBerlin&source=bench"
  return wrk.format("POST", "/subscribe",
    {["Content-Type"] = "application/x-www-form-urlencoded"}, body)
end
response = function(status, headers, body)
  if status == 303 then good = good + 1 else bad = bad + 1 end
end
"""
    + REPORT_LUA
)


def run_wrk(script: str, url: str, *, connections: int, duration: int, threads: int) -> dict:
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as handle:
        handle.write(script)
    try:
        output = subprocess.run(
            ["wrk", f"-t{threads}", f"-c{connections}", f"-d{duration}s", "-s", handle.name, url],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    finally:
        os.unlink(handle.name)
    line = next(line for line in output.splitlines() if line.startswith("RESULT "))
    result = json.loads(line.removeprefix("RESULT "))
    result["rps"] = result["requests"] / result["seconds"]
    result["errors"] = result["bad"] + result["socket_errors"]
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--duration", type=int, default=15, help="seconds per endpoint")
    parser.add_argument("--wrk-threads", type=int, default=2)
    parser.add_argument("--workers", type=int, help="gunicorn workers (default: gunicorn.conf.py)")
    parser.add_argument("--worker-class", help="gunicorn worker class (same)")
    parser.add_argument("--database", choices=["sqlite", "postgresql"], default="sqlite")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("wrk is not installed: apt-get install wrk")

    workdir = Path(tempfile.mkdtemp(prefix="signup-bench-"))
    database_url = fresh_database(args.database, workdir, "newsletter_bench_signup")
    with gunicorn(
        "wsgi:app",
        database_url=database_url,
        workdir=workdir,
        settings={"SIGNUP_RATE_LIMIT": "1000000 per minute"},
        args=[
            *(["--workers", str(args.workers)] if args.workers else []),
            *(["--worker-class", args.worker_class] if args.worker_class else []),
        ],
    ) as port:
        base = f"http://127.0.0.1:{port}"
        load = {
            "connections": args.connections,
            "duration": args.duration,
            "threads": args.wrk_threads,
        }
        run_wrk(HEALTHZ_LUA, base + "/healthz", **{**load, "duration": 2})  # warm up
        healthz = run_wrk(HEALTHZ_LUA, base + "/healthz", **load)
        signup = run_wrk(SIGNUP_LUA, base + "/subscribe", **load)

    engine = sa.create_engine(database_url)
    with engine.connect() as connection:
        stored = connection.exec_driver_sql(
            "SELECT count(*) FROM subscribers WHERE source = 'bench'"
        ).scalar()
        queued = connection.exec_driver_sql(
            "SELECT count(*) FROM outbox WHERE kind = 'confirm'"
        ).scalar()
    engine.dispose()

    layout = f"{args.workers or 'default'} {args.worker_class or 'default'} workers"
    print(
        f"\n{args.database}, gunicorn {layout} (gunicorn.conf.py), wrk {args.connections} "
        f"connections, {args.duration}s per endpoint, {os.cpu_count()} CPUs\n"
    )
    print(f"{'endpoint':<16}{'req/s':>10}{'p50 ms':>10}{'p99 ms':>10}{'errors':>10}")
    for name, result in (("GET /healthz", healthz), ("POST /subscribe", signup)):
        print(
            f"{name:<16}{result['rps']:>10.0f}{result['p50_ms']:>10.1f}"
            f"{result['p99_ms']:>10.1f}{result['errors']:>10d}"
        )
    ratio = signup["rps"] / healthz["rps"]
    print(f"\nsignup / healthz throughput: {ratio:.2f}  (goal >= 0.35)")
    print(f"signup p99: {signup['p99_ms']:.1f} ms  (goal < 100 ms)")
    # wrk stops counting at its deadline; requests then in flight (at most one per
    # connection) are still answered, and stored, by the server.
    in_flight = stored - signup["good"]
    print(
        f"accepted signups: {signup['good']}, subscribers stored: {stored} "
        f"({in_flight} answered after wrk stopped counting), confirmations queued: {queued}"
    )
    ok = (
        ratio >= 0.35
        and signup["p99_ms"] < 100
        and signup["errors"] == 0
        and healthz["errors"] == 0
        and 0 <= in_flight <= args.connections
        and stored == queued
    )
    print("goal met" if ok else "GOAL NOT MET")
    shutil.rmtree(workdir, ignore_errors=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
