"""A CSV import near the upload limit, as the owner runs it: uploaded through the web app
under gunicorn, then checked and imported by `python -m scheduler --once`.

    .venv/bin/python bench/import.py [--rows 1350000] [--database sqlite|postgresql]

The default is the outside probe's file: 1,350,000 rows, 49 MB, which used to run past
gunicorn's 30 s worker timeout at a peak of ~956 MB. Prints, for each step, the seconds it
took and the peak RSS of the process that did it (the gunicorn worker for the upload, the
scheduler for checking and importing), and checks that every row is on the list. Goal: the
upload answers well inside the worker timeout, and no process peaks above 150 MB.
"""

from __future__ import annotations

import argparse
import http.client
import os
import re
import subprocess
import sys
import tempfile
import time
import urllib.parse
from pathlib import Path

import sqlalchemy as sa

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from common import free_port, fresh_database  # noqa: E402

PASSWORD = "a bench password nobody guesses"
MAX_RSS_MB = 150
WORKER_TIMEOUT_S = 30
# Reports the peak RSS of the command it runs (fork, exec, wait4), not its own.
MEASURE = """
import os, sys
pid = os.fork()
if pid == 0:
    os.execvp(sys.argv[1], sys.argv[1:])
_, status, usage = os.wait4(pid, 0)
print("RSS", usage.ru_maxrss, os.waitstatus_to_exitcode(status))
"""


def write_file(path: Path, rows: int) -> None:
    with path.open("w") as file:
        file.write("email,first_name,time_zone\n")
        for n in range(rows):
            file.write(f"reader{n}@example.com,Annabel,UTC\n")


def request(host, method, path, *, body=b"", headers=None, cookie=""):
    """One request; the session cookie it carries back (or the one it was given)."""
    connection = http.client.HTTPConnection(host, timeout=600)
    connection.request(method, path, body=body, headers={**(headers or {}), "Cookie": cookie})
    response = connection.getresponse()
    text = response.read().decode()
    connection.close()
    for value in response.msg.get_all("Set-Cookie") or []:
        if value.startswith("session="):
            cookie = value.split(";")[0]
    return response.status, response.getheader("Location"), text, cookie


def csrf(text: str) -> str:
    return re.search(r'name="csrf_token" value="([^"]+)"', text)[1]


def form(fields: dict[str, str]) -> tuple[bytes, dict[str, str]]:
    return urllib.parse.urlencode(fields).encode(), {
        "Content-Type": "application/x-www-form-urlencoded"
    }


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def run_scheduler_once(env: dict[str, str]) -> tuple[float, float]:
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-S", "-c", MEASURE, sys.executable, "-m", "scheduler", "--once"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    seconds = time.monotonic() - started
    rss_kb, code = result.stdout.rsplit("RSS", 1)[1].split()
    if int(code) != 0:
        sys.exit(f"the scheduler failed:\n{result.stderr[-2000:]}")
    return seconds, int(rss_kb) / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=1_350_000)
    parser.add_argument("--database", choices=["sqlite", "postgresql"], default="sqlite")
    args = parser.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="import-bench-"))
    database_url = fresh_database(args.database, workdir, "newsletter_bench_import")
    csv_path = workdir / "list.csv"
    write_file(csv_path, args.rows)
    size_mb = csv_path.stat().st_size / 1e6
    port = free_port()
    host = f"127.0.0.1:{port}"
    env = {
        **os.environ,
        "DOTENV_PATH": "",
        "APP_ENV": "development",
        "DATABASE_URL": database_url,
        "INSTANCE_DIR": str(workdir),
        "BASE_URL": f"http://{host}",
        "MAIL_URL": "console:",
        "LOG_LEVEL": "WARNING",
        "ADMIN_PASSWORD": PASSWORD,
    }
    flask = [str(Path(sys.executable).with_name("flask")), "--app", "wsgi"]
    subprocess.run([*flask, "admin", "create", "owner@example.com"], cwd=ROOT, env=env, check=True)
    gunicorn = subprocess.Popen(
        [
            str(Path(sys.executable).with_name("gunicorn")),
            "--config",
            str(ROOT / "gunicorn.conf.py"),
            "--bind",
            host,
            "--workers",
            "1",
            "--access-logfile",
            "/dev/null",
            "wsgi:app",
        ],
        cwd=ROOT,
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        while "Booting worker" not in gunicorn.stderr.readline():
            if gunicorn.poll() is not None:
                sys.exit("gunicorn did not start")
        worker_pid = int(
            subprocess.check_output(["pgrep", "-P", str(gunicorn.pid)], text=True).split()[0]
        )
        _, _, page, cookie = request(host, "GET", "/admin/login")
        body, headers = form(
            {"email": "owner@example.com", "password": PASSWORD, "csrf_token": csrf(page)}
        )
        status, _, _, cookie = request(
            host, "POST", "/admin/login", body=body, headers=headers, cookie=cookie
        )
        assert status == 303, status
        _, _, page, cookie = request(host, "GET", "/admin/subscribers/import", cookie=cookie)
        token = csrf(page)
        boundary = "benchboundary7d3f"
        upload = (
            (
                f'--{boundary}\r\nContent-Disposition: form-data; name="csrf_token"\r\n\r\n{token}\r\n'
                f'--{boundary}\r\nContent-Disposition: form-data; name="file"; '
                'filename="list.csv"\r\nContent-Type: text/csv\r\n\r\n'
            ).encode()
            + csv_path.read_bytes()
            + f"\r\n--{boundary}--\r\n".encode()
        )
        started = time.monotonic()
        status, location, _, cookie = request(
            host,
            "POST",
            "/admin/subscribers/import",
            body=upload,
            headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
            cookie=cookie,
        )
        upload_s = time.monotonic() - started
        assert status == 303, status
        upload_rss = peak_rss_mb(worker_pid)

        check_s, check_rss = run_scheduler_once(env)
        _, _, page, cookie = request(host, "GET", location, cookie=cookie)
        assert f"<dt>New</dt><dd>{args.rows:,}</dd>" in page, page[:2000]
        body, headers = form(
            {
                "csrf_token": csrf(page),
                "import_id": location.rsplit("/", 1)[1],
                "consent": "Signed up on the old newsletter form",
                "mode": "confirmed",
            }
        )
        status, _, _, cookie = request(
            host,
            "POST",
            "/admin/subscribers/import/apply",
            body=body,
            headers=headers,
            cookie=cookie,
        )
        assert status == 303, status
        import_s, import_rss = run_scheduler_once(env)
    finally:
        gunicorn.terminate()
        gunicorn.wait(timeout=30)

    engine = sa.create_engine(database_url)
    with engine.connect() as connection:
        stored = connection.exec_driver_sql("SELECT count(*) FROM subscribers").scalar()
    engine.dispose()

    print(f"\n{args.database}, {args.rows:,} rows, {size_mb:.1f} MB, {os.cpu_count()} CPUs\n")
    print(f"{'step':<40}{'seconds':>9}{'rows/s':>10}{'peak RSS MB':>13}")
    for step, seconds, rss in (
        ("upload (gunicorn worker)", upload_s, upload_rss),
        ("check (python -m scheduler --once)", check_s, check_rss),
        ("import (python -m scheduler --once)", import_s, import_rss),
    ):
        print(f"{step:<40}{seconds:>9.1f}{args.rows / seconds:>10,.0f}{rss:>13.0f}")
    print(f"\nsubscribers stored: {stored:,} of {args.rows:,}")
    met = (
        stored == args.rows
        and upload_s < WORKER_TIMEOUT_S / 2
        and max(upload_rss, check_rss, import_rss) < MAX_RSS_MB
    )
    print(
        f"goal: upload under {WORKER_TIMEOUT_S // 2} s, every process under {MAX_RSS_MB} MB, "
        f"every row stored: {'met' if met else 'NOT MET'}"
    )


if __name__ == "__main__":
    main()
