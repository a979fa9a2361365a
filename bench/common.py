"""What the benchmarks share: a free port, and a fresh, migrated database of either kind."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import sqlalchemy as sa

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from service import migrate  # noqa: E402

POSTGRES_ADMIN_URL = os.environ.get(
    "TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def fresh_database(kind: str, workdir: Path, name: str) -> str:
    """A new, migrated database: a SQLite file in `workdir`, or PostgreSQL database `name`
    (dropped first if a previous run left it)."""
    if kind == "sqlite":
        url = f"sqlite:///{workdir / f'{name}.db'}"
    else:
        admin = sa.create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT")
        with admin.connect() as connection:
            connection.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            connection.exec_driver_sql(f'CREATE DATABASE "{name}"')
        admin.dispose()
        url = sa.engine.make_url(POSTGRES_ADMIN_URL).set(database=name).render_as_string(False)
    migrate.upgrade(url)
    return url


def wait_until_up(url: str, server: subprocess.Popen, timeout: float = 30) -> None:
    """Wait for a server just started (gunicorn) to answer 200 at `url`."""
    deadline = time.monotonic() + timeout
    while True:
        if server.poll() is not None:
            sys.exit(f"gunicorn exited with status {server.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            if time.monotonic() > deadline:
                raise
        time.sleep(0.2)


@contextlib.contextmanager
def gunicorn(
    app: str, *, database_url: str, workdir: Path, settings: dict[str, str], args: list[str]
) -> Iterator[int]:
    """gunicorn with gunicorn.conf.py serving `app` on a free loopback port, with a
    development configuration on `database_url` and `settings` on top; yields the port once
    /healthz answers, and stops it afterwards."""
    port = free_port()
    env = {
        **os.environ,
        "DOTENV_PATH": "",
        "APP_ENV": "development",
        "DATABASE_URL": database_url,
        "INSTANCE_DIR": str(workdir),
        "BASE_URL": f"http://127.0.0.1:{port}",
        "MAIL_URL": "console:",
        "LOG_LEVEL": "WARNING",
        **settings,
    }
    server = subprocess.Popen(
        [
            str(Path(sys.executable).parent / "gunicorn"),
            "--config",
            str(ROOT / "gunicorn.conf.py"),
            "--bind",
            f"127.0.0.1:{port}",
            "--access-logfile",
            "/dev/null",
            *args,
            app,
        ],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_until_up(f"http://127.0.0.1:{port}/healthz", server)
        yield port
    finally:
        server.terminate()
        server.wait(timeout=30)
