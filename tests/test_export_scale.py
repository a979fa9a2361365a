"""A million subscribers exported by the CLI, in a process of its own: every row arrives,
and memory stays flat (peak RSS measured by the kernel)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import sqlalchemy as sa

from tests.conftest import TEST_SECRET

pytestmark = pytest.mark.slow

ROWS = 1_000_000
MAX_RSS_MB = 100
# A bare Python forks and execs the export, then reports the child's peak RSS: a child
# forked from pytest itself would count pytest's memory as its own.
MEASURE = """
import os, sys
pid = os.fork()
if pid == 0:
    os.execvp(sys.argv[1], sys.argv[1:])
_, status, usage = os.wait4(pid, 0)
print(usage.ru_maxrss, os.waitstatus_to_exitcode(status))
"""


def run_cli_measured(sqlite_url: str, tmp_path: Path, *args: str) -> tuple[float, str, str]:
    """`flask --app wsgi ARGS` in a process of its own on the database: (its peak RSS in
    MB, its standard output, its standard error); fails the test if it fails."""
    env = {
        **os.environ,
        "DOTENV_PATH": "",
        "APP_ENV": "testing",
        "SECRET_KEY": TEST_SECRET,
        "DATABASE_URL": sqlite_url,
        "INSTANCE_DIR": str(tmp_path / "instance"),
        "MAIL_URL": "console:",
        "LOG_LEVEL": "WARNING",
    }
    flask = str(Path(sys.executable).with_name("flask"))
    result = subprocess.run(
        [sys.executable, "-S", "-c", MEASURE, flask, "--app", "wsgi", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=Path(__file__).resolve().parent.parent,
        timeout=600,
        check=False,
    )
    # MEASURE's line comes last, after whatever the command printed.
    output, _, last = result.stdout.rstrip("\n").rpartition("\n")
    max_rss_kb, code = (int(v) for v in last.split())
    assert code == 0, result.stderr
    return max_rss_kb / 1024, output, result.stderr


def test_a_million_row_export_streams_in_flat_memory(sqlite_url, tmp_path):
    engine = sa.create_engine(sqlite_url)
    with engine.begin() as connection:
        connection.exec_driver_sql(
            f"""
            WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < {ROWS})
            INSERT INTO subscribers
                (id, email, email_key, first_name, status, time_zone, source, created_at)
            SELECT i, 'r' || i || '@example.com', 'r' || i || '@example.com',
                   CASE i % 3 WHEN 0 THEN '=1+1' WHEN 1 THEN 'Zoë, "Z"' ELSE NULL END,
                   'confirmed', 'UTC', 'form', '2026-01-01 00:00:00.000000'
            FROM n
            """
        )
    engine.dispose()
    target = tmp_path / "all.csv"
    max_rss_mb, _, errors = run_cli_measured(
        sqlite_url, tmp_path, "subscribers", "export", "-o", str(target)
    )
    assert f"{ROWS} subscribers written" in errors
    with target.open("rb") as file:
        # Line by line: a CRLF may fall across the boundary of two fixed-size reads.
        lines = sum(1 for line in file if line.endswith(b"\r\n"))
    # The header, then one line per subscriber (no name holds a line break here).
    assert lines == ROWS + 1
    with target.open(encoding="utf-8") as file:
        file.readline()
        assert file.readline().startswith('"r1@example.com","Zoë, ""Z""",confirmed,')
        assert file.readline().startswith('"r2@example.com","",confirmed,')
        assert file.readline().startswith('"r3@example.com","\'=1+1",confirmed,')
    assert max_rss_mb < MAX_RSS_MB
