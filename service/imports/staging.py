"""Staging checked rows in `import_rows`, a batch at a time, for the preview and the
import: duplicates found by the table's unique index, each row compared with the list by
one UPDATE, the preview's figures and issues read back.

`prepare` does the work a row needs in Python (its keys, its suppression hash, its values
as the driver takes them) before the write transaction; `stage` writes the batch in it
with a few statements whatever its size. The rows go in as one multi-row INSERT written
out for the driver: SQLAlchemy's own multi-row insert spent ~10 us a row processing
parameters, a third of the time a million-row import took.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import case, exists, or_, select, update
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import Session

from .. import erasure, importer, signup_input
from ..importer import Outcome, Row
from ..models import Import, ImportRow, Subscriber, Suppression

COLUMNS = (
    "import_id",
    "line",
    "outcome",
    "email",
    "email_key",
    "mailbox_key",
    "suppression_hash",
    "first_name",
    "time_zone",
    "source",
    "status",
    "signed_up",
    "confirmed",
    "unsubscribed",
    "tags",
)
EMAIL_KEY = COLUMNS.index("email_key")
# SQLite takes at most 32,766 parameters a statement.
ROWS_PER_INSERT = 32_000 // len(COLUMNS)


@dataclass
class Prepared:
    rows: list[Row]
    keyed: list[tuple[Row, tuple[Any, ...]]] = field(default_factory=list)
    unkeyed: list[tuple[Any, ...]] = field(default_factory=list)


def _converters(dialect: Dialect) -> dict[str, Callable[[Any], Any]]:
    """The driver's form of each date column (SQLite keeps text)."""
    table = ImportRow.__table__
    converters = {}
    for name in ("signed_up", "confirmed", "unsubscribed"):
        process = table.c[name].type.bind_processor(dialect)
        converters[name] = process or (lambda value: value)
    return converters


def prepare(dialect: Dialect, job_id: int, rows: list[Row]) -> Prepared:
    """Duplicates within the batch marked; each row's values for the INSERT."""
    first_seen: dict[str, int] = {}
    prepared = Prepared(rows=rows)
    dates = _converters(dialect)

    def values(row: Row, key: str | None) -> tuple[Any, ...]:
        return (
            job_id,
            row.line,
            row.outcome.value,
            row.email,
            key,
            signup_input.mailbox_key(row.email) if key else None,
            erasure.suppression_hash(row.email) if key else None,
            row.first_name,
            row.time_zone,
            row.source,
            row.status.value if row.status else None,
            dates["signed_up"](row.signed_up) if row.signed_up else None,
            dates["confirmed"](row.confirmed) if row.confirmed else None,
            dates["unsubscribed"](row.unsubscribed) if row.unsubscribed else None,
            ";".join(row.tags) or None,
        )

    for row in rows:
        if row.outcome is not Outcome.NEW:
            prepared.unkeyed.append(values(row, None))
            continue
        key = signup_input.email_key(row.email)
        if key in first_seen:
            row.outcome = Outcome.DUPLICATE
            row.reason = f"the same address as line {first_seen[key]}"
            prepared.unkeyed.append(values(row, None))
            continue
        first_seen[key] = row.line
        prepared.keyed.append((row, values(row, key)))
    return prepared


def _insert_many(
    session: Session, rows: list[tuple[Any, ...]], *, ignoring_duplicates: bool
) -> set[int]:
    """Insert staged rows, a few thousand per statement. With `ignoring_duplicates`, an
    address staged earlier in the file is left out: the lines left out."""
    connection = session.connection()
    sqlite = connection.dialect.name == "sqlite"
    mark = "?" if connection.dialect.paramstyle == "qmark" else "%s"
    one = "(" + ", ".join([mark] * len(COLUMNS)) + ")"
    left_out: set[int] = set()
    for start in range(0, len(rows), ROWS_PER_INSERT):
        chunk = rows[start : start + ROWS_PER_INSERT]
        statement = f"INSERT INTO import_rows ({', '.join(COLUMNS)}) VALUES " + ", ".join(
            [one] * len(chunk)
        )
        if ignoring_duplicates:
            statement += " ON CONFLICT (import_id, email_key) DO NOTHING"
            # SQLite counts what it inserted; rows are read back only when some were left
            # out. (A RETURNING row at a time hands the GIL to the checking thread and
            # waits up to 5 ms to get it back: a thousand rows took 40 ms that way.)
            statement += "" if sqlite else " RETURNING line"
        parameters = tuple(value for row in chunk for value in row)
        result = connection.exec_driver_sql(statement, parameters)
        if not ignoring_duplicates:
            continue
        lines = {row[1] for row in chunk}
        if not sqlite:
            left_out |= lines - set(result.scalars().all())
        elif result.rowcount != len(chunk):
            staged = connection.execute(
                select(ImportRow.line).where(
                    ImportRow.import_id == chunk[0][0],
                    ImportRow.line.between(min(lines), max(lines)),
                    ImportRow.email_key.is_not(None),
                )
            )
            left_out |= lines - set(staged.scalars().all())
    return left_out


def _compare(job_id: int, first: int, last: int) -> Any:
    """New or known? One UPDATE for the batch's staged rows: UNCHANGED or UPDATED (the
    file adds a first name) when on the list, SKIPPED when erased or complained."""
    reader = select(Subscriber.first_name).where(Subscriber.email_key == ImportRow.email_key)
    on_the_list = exists(reader)
    named = exists(reader.where(Subscriber.first_name.is_not(None), Subscriber.first_name != ""))
    no_name = or_(ImportRow.first_name.is_(None), ImportRow.first_name == "")
    suppressed = exists(
        select(Suppression.email_hash).where(Suppression.email_hash == ImportRow.suppression_hash)
    )
    return (
        update(ImportRow)
        .where(
            ImportRow.import_id == job_id,
            ImportRow.line.between(first, last),
            ImportRow.outcome == Outcome.NEW.value,
            ImportRow.email_key.is_not(None),
        )
        .values(
            outcome=case(
                (on_the_list & (no_name | named), Outcome.UNCHANGED.value),
                (on_the_list, Outcome.UPDATED.value),
                (suppressed, Outcome.SKIPPED.value),
                else_=Outcome.NEW.value,
            )
        )
        .execution_options(synchronize_session=False)
    )


def stage(session: Session, job: Import, prepared: Prepared) -> None:
    """Stage the batch, compare it with the list, and add it to the preview."""
    rows = prepared.rows
    if prepared.keyed:
        left_out = _insert_many(
            session, [values for _, values in prepared.keyed], ignoring_duplicates=True
        )
        # Duplicates of rows in earlier batches: found by the unique index itself (the
        # insert skips them), not by a lookup a planner could get wrong on a table that
        # grows by thousands of rows a second.
        earlier = [(row, values) for row, values in prepared.keyed if row.line in left_out]
        if earlier:
            first_lines = dict(
                session.execute(
                    select(ImportRow.email_key, ImportRow.line).where(
                        ImportRow.import_id == job.id,
                        ImportRow.email_key.in_({values[EMAIL_KEY] for _, values in earlier}),
                    )
                ).all()
            )
            for row, values in earlier:
                row.outcome = Outcome.DUPLICATE
                row.reason = f"the same address as line {first_lines[values[EMAIL_KEY]]}"
            prepared.unkeyed.extend(
                (*values[:2], Outcome.DUPLICATE.value, values[3], None, None, None, *values[7:])
                for _, values in earlier
            )
        first, last = prepared.keyed[0][0].line, prepared.keyed[-1][0].line
        session.execute(_compare(job.id, first, last))
        found = session.execute(
            select(ImportRow.line, ImportRow.outcome, Suppression.reason)
            .outerjoin(Suppression, Suppression.email_hash == ImportRow.suppression_hash)
            .where(
                ImportRow.import_id == job.id,
                ImportRow.line.between(first, last),
                ImportRow.email_key.is_not(None),
                ImportRow.outcome != Outcome.NEW.value,
            )
        ).all()
        by_line = {row.line: row for row, _ in prepared.keyed}
        for line, outcome, reason in found:
            row = by_line[line]
            row.outcome = Outcome(outcome)
            if row.outcome is Outcome.SKIPPED:
                row.reason = importer.SKIPPED_BECAUSE.get(
                    reason or "", importer.SKIPPED_BECAUSE["erased"]
                )
    if prepared.unkeyed:
        _insert_many(session, prepared.unkeyed, ignoring_duplicates=False)
    counts = dict(job.counts)
    for row in rows:
        counts[row.outcome.value] = counts.get(row.outcome.value, 0) + 1
    job.counts = counts
    room = importer.MAX_ISSUES_SHOWN - len(job.issues)
    problems = (Outcome.INVALID, Outcome.DUPLICATE, Outcome.SKIPPED)
    issues = [
        {"line": row.line, "email": row.email, "outcome": row.outcome.value, "reason": row.reason}
        for row in sorted(rows, key=lambda row: row.line)
        if row.outcome in problems
    ]
    if room > 0 and issues:
        job.issues = [*job.issues, *issues[:room]]
