"""The owner's subscriber list with a million subscribers: how long one page takes.

    .venv/bin/python bench/subscriber_list.py [--subscribers 1000000] [--database sqlite|postgresql|both]

Fills a database with N subscribers (one SQL statement), then prints the median time of
service.audience.find for the first page, a page deep in the list (keyset), a status
filter, searches that match many, one or nobody (served by the search index of migration
0006), the same with a status filter, a two-letter search (too short for the index: it
reads the whole table, the reference for the others), and a date filter that matches
nobody.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

import sqlalchemy as sa

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from common import fresh_database  # noqa: E402

from service import audience  # noqa: E402
from service.db import Database  # noqa: E402
from service.models import SubscriberStatus  # noqa: E402

SEQUENCE = "back-pain-tips"
ROWS = """
SELECT i, 'r' || i || '@example.com', 'r' || i || '@example.com',
       CASE i %% 3 WHEN 0 THEN 'Ann' ELSE 'Bob' END,
       CASE i %% 3 WHEN 0 THEN 'confirmed' WHEN 1 THEN 'pending' ELSE 'unsubscribed' END,
       'UTC', 'form', '2026-01-01 00:00:00'
"""
INSERT = "INSERT INTO subscribers (id, email, email_key, first_name, status, time_zone, source, created_at) "


def fill(url: str, kind: str, count: int) -> None:
    engine = sa.create_engine(url)
    with engine.begin() as connection:
        if kind == "sqlite":
            rows = ROWS.replace("%%", "%")
            connection.exec_driver_sql(
                "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < "
                f"{count}) {INSERT}{rows} FROM n"
            )
        else:
            connection.exec_driver_sql(f"{INSERT}{ROWS} FROM generate_series(1, {count}) i")
        connection.exec_driver_sql("ANALYZE")
    engine.dispose()


def measure(kind: str, count: int) -> None:
    workdir = Path(tempfile.mkdtemp(prefix="list-bench-"))
    url = fresh_database(kind, workdir, "newsletter_bench_list")
    fill(url, kind, count)
    database = Database.connect(url)

    def median_ms(wanted: audience.SubscriberFilter, before: int | None) -> tuple[float, int]:
        times = []
        for _ in range(7):
            started = time.perf_counter()
            with database.read() as session:
                page = audience.find(session, wanted, before=before)
            times.append((time.perf_counter() - started) * 1000)
        return statistics.median(times), len(page.rows)

    cases = [
        ("first page", audience.SubscriberFilter(sequence=SEQUENCE), None),
        ("a page halfway (keyset)", audience.SubscriberFilter(sequence=SEQUENCE), count // 2),
        (
            "status confirmed",
            audience.SubscriberFilter(status=SubscriberStatus.CONFIRMED, sequence=SEQUENCE),
            None,
        ),
        (
            "search an address part",
            audience.SubscriberFilter(query="r999", sequence=SEQUENCE),
            None,
        ),
        ("search a name", audience.SubscriberFilter(query="ann", sequence=SEQUENCE), None),
        (
            "search matching one",
            audience.SubscriberFilter(query=f"r{count // 3}@", sequence=SEQUENCE),
            None,
        ),
        (
            "search matching nobody",
            audience.SubscriberFilter(query="nobody", sequence=SEQUENCE),
            None,
        ),
        (
            "search + status, nobody",
            audience.SubscriberFilter(
                query="nobody", status=SubscriberStatus.BOUNCED, sequence=SEQUENCE
            ),
            None,
        ),
        (
            "search many + status, nobody",
            audience.SubscriberFilter(
                query="ann", status=SubscriberStatus.BOUNCED, sequence=SEQUENCE
            ),
            None,
        ),
        (
            "2 letters matching nobody",
            audience.SubscriberFilter(query="zq", sequence=SEQUENCE),
            None,
        ),
        (
            "signup date matching nobody",
            audience.SubscriberFilter(signed_up_from=date(2026, 5, 1), sequence=SEQUENCE),
            None,
        ),
    ]
    print(f"\n{kind}: {count} subscribers")
    for label, wanted, before in cases:
        ms, rows = median_ms(wanted, before)
        print(f"  {label:<30}{ms:>9.1f} ms  ({rows} rows)")
    database.dispose()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subscribers", type=int, default=1_000_000)
    parser.add_argument("--database", choices=["sqlite", "postgresql", "both"], default="both")
    args = parser.parse_args()
    for kind in ["sqlite", "postgresql"] if args.database == "both" else [args.database]:
        measure(kind, args.subscribers)
    return 0


if __name__ == "__main__":
    sys.exit(main())
