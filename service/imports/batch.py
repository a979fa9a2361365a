"""One batch of an import's staged rows carried out with a handful of set-based
statements, whatever the batch's size (no statement per row).

`read_batch` reads the next batch and works out, in Python, the subscriber each row would
become; it only reads, so on SQLite it runs outside the write lock. `apply_batch`, in the
caller's write transaction, compares the batch with the list afresh (someone may have
signed up, been erased or complained since the preview) and writes it: readers already
on the list get the first name the file adds and their tags; the others are inserted in
one multi-row INSERT, and their consent records, "imported" events, tags and sequence
enrollments follow in one INSERT ... SELECT each. Only double opt-in still queues its
confirmation emails one by one (service.outbox owns that row's layout).

With `mark_for_undo`, the staged rows say what the batch did to the list (a reader
created, a first name added), so that `service.imports.undo` can take an import back
whole after a failure half-way (the CLI's all-or-nothing import).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    ColumnElement,
    and_,
    cast,
    insert,
    literal,
    null,
    or_,
    select,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from .. import erasure, importer, journal, kinds, outbox, signup_input, subscriptions
from ..importer import Outcome, Row
from ..models import (
    ConsentRecord,
    Enrollment,
    EnrollmentStatus,
    Event,
    Import,
    ImportRow,
    Subscriber,
    SubscriberStatus,
    SubscriberTag,
    Suppression,
)
from ..models.columns import UTCDateTime

# What a batch did to a staged row's reader, written over its outcome for the undo (the
# preview's figures live on the job, not in these rows, and a row is read once).
CREATED = "created"
NAMED = "named"


@dataclass
class Staged:
    """A staged row as a batch needs it."""

    line: int
    key: str
    email: str
    first_name: str | None
    tags: list[str]
    subscriber: dict[str, Any]  # the reader it becomes if it is new
    suppression_hash: str


@dataclass
class Batch:
    after_line: int  # the job's checkpoint it follows
    last_line: int  # the checkpoint once it is applied
    rows: list[Staged] = field(default_factory=list)


def to_apply(tags_for_all: bool) -> ColumnElement[bool]:
    """The staged rows an import's batch has work for: new and updated readers, and those
    already on the list when they get a tag (the file's, or one for every row)."""
    changes = ImportRow.outcome.in_([Outcome.NEW.value, Outcome.UPDATED.value])
    unchanged = ImportRow.outcome == Outcome.UNCHANGED.value
    if not tags_for_all:
        unchanged = and_(unchanged, ImportRow.tags.is_not(None))
    return or_(changes, unchanged)


def read_batch(session: Session, job: Import, *, size: int, now: datetime) -> Batch | None:
    """The next `size` staged rows after the job's checkpoint that have work to do, each
    with the subscriber it would become; None when there are none left."""
    staged = session.execute(
        select(
            ImportRow.line,
            ImportRow.email,
            ImportRow.first_name,
            ImportRow.time_zone,
            ImportRow.source,
            ImportRow.status,
            ImportRow.signed_up,
            ImportRow.confirmed,
            ImportRow.unsubscribed,
            ImportRow.tags,
        )
        .where(
            ImportRow.import_id == job.id,
            ImportRow.line > job.applied_line,
            to_apply(bool(job.tags)),
        )
        .order_by(ImportRow.line)
        .limit(size)
    ).all()
    if not staged:
        return None
    mode = importer.Mode(job.mode)
    batch = Batch(after_line=job.applied_line, last_line=staged[-1].line)
    for line, email, first_name, zone, source, status, signed_up, confirmed, left, tags in staged:
        row = Row(
            line=line,
            outcome=Outcome.NEW,
            email=email,
            first_name=first_name,
            time_zone=zone,
            source=source,
            status=SubscriberStatus(status) if status else None,
            signed_up=signed_up,
            confirmed=confirmed,
            unsubscribed=left,
        )
        batch.rows.append(
            Staged(
                line=line,
                key=signup_input.email_key(email),
                email=email,
                first_name=first_name,
                tags=tags.split(";") if tags else [],
                subscriber=importer.subscriber_values(row, mode=mode, now=now),
                suppression_hash=erasure.suppression_hash(email),
            )
        )
    return batch


def _insert(session: Session, table: Any) -> Any:
    dialect = postgresql if session.get_bind().dialect.name == "postgresql" else sqlite
    return dialect.insert(table).on_conflict_do_nothing()


def _json(session: Session, value: Any) -> Any:
    """A JSON value to INSERT ... SELECT: PostgreSQL wants it cast; SQLite keeps the text
    (its CAST to JSON would turn it into a number)."""
    bound = literal(value, JSON())
    return cast(bound, JSON) if session.get_bind().dialect.name == "postgresql" else bound


def apply_batch(
    session: Session, job: Import, batch: Batch, *, now: datetime, mark_for_undo: bool
) -> importer.Applied:
    """Carry `batch` out in the caller's transaction, as `importer.apply_plan` would row
    by row; what it did."""
    done = importer.Applied()
    rows = {row.key: row for row in batch.rows}
    on_the_list = {
        key: (subscriber_id, first_name)
        for subscriber_id, key, first_name in session.execute(
            select(Subscriber.id, Subscriber.email_key, Subscriber.first_name).where(
                Subscriber.email_key.in_(list(rows))
            )
        )
    }
    naming = [key for key, (_, name) in on_the_list.items() if rows[key].first_name and not name]
    if naming:
        done.updated = session.execute(
            update(Subscriber)
            .where(
                Subscriber.email_key.in_(naming),
                or_(Subscriber.first_name.is_(None), Subscriber.first_name == ""),
            )
            .values(
                first_name=select(ImportRow.first_name)
                .where(ImportRow.import_id == job.id, ImportRow.email_key == Subscriber.email_key)
                .scalar_subquery()
            )
            .execution_options(synchronize_session=False)
        ).rowcount
    # Afresh: erased on request, or complained, since the preview: never imported.
    newcomers = [row for key, row in rows.items() if key not in on_the_list]
    suppressed = set(
        session.scalars(
            select(Suppression.email_hash).where(
                Suppression.email_hash.in_([row.suppression_hash for row in newcomers])
            )
        )
    )
    newcomers = [row for row in newcomers if row.suppression_hash not in suppressed]
    created: dict[str, int] = {}
    if newcomers:
        # Ignoring conflicts: someone who signed up a moment ago keeps the form's record.
        created = dict(
            session.execute(
                _insert(session, Subscriber.__table__).returning(
                    Subscriber.email_key, Subscriber.id
                ),
                [row.subscriber for row in newcomers],
            ).all()
        )
    done.created = len(created)
    tagged = [
        {"subscriber_id": subscriber_id, "tag": tag, "added_at": now, "added_by": "import"}
        for key, subscriber_id in [
            *((key, found[0]) for key, found in on_the_list.items()),
            *created.items(),
        ]
        for tag in dict.fromkeys([*rows[key].tags, *job.tags])
    ]
    if tagged:
        given = set(
            session.execute(
                _insert(session, SubscriberTag.__table__).returning(SubscriberTag.subscriber_id),
                tagged,
            ).scalars()
        )
        done.tagged = len(given - set(created.values()))
    if created:
        _record_the_newcomers(session, job, rows, created, now=now, done=done)
    if mark_for_undo:
        for outcome, keys in ((CREATED, list(created)), (NAMED, naming)):
            if keys:
                session.execute(
                    update(ImportRow)
                    .where(ImportRow.import_id == job.id, ImportRow.email_key.in_(keys))
                    .values(outcome=outcome)
                    .execution_options(synchronize_session=False)
                )
    return done


def _record_the_newcomers(
    session: Session,
    job: Import,
    rows: dict[str, Staged],
    created: dict[str, int],
    *,
    now: datetime,
    done: importer.Applied,
) -> None:
    """Each new reader's consent record and "imported" event, a confirmation email for
    those pending, and the sequence for those confirmed when the owner chose it."""
    consent_text = job.consent_text or ""
    at = literal(now, UTCDateTime())
    new_readers = list(created.values())
    session.execute(
        insert(ConsentRecord).from_select(
            ["subscriber_id", "action", "at", "ip", "user_agent", "source", "text", "text_version"],
            select(
                Subscriber.id,
                literal("import"),
                at,
                null(),
                null(),
                Subscriber.source,
                literal(consent_text),
                literal(journal.consent_version(consent_text)),
            ).where(Subscriber.id.in_(new_readers)),
        )
    )
    by_status: dict[SubscriberStatus, list[int]] = {}
    for key, subscriber_id in created.items():
        by_status.setdefault(rows[key].subscriber["status"], []).append(subscriber_id)
    for status, ids in by_status.items():
        session.execute(
            insert(Event).from_select(
                ["subscriber_id", "kind", "at", "detail"],
                select(
                    Subscriber.id,
                    literal("imported"),
                    at,
                    _json(session, {"status": status.value}),
                ).where(Subscriber.id.in_(ids)),
            )
        )
    for key, subscriber_id in created.items():
        if rows[key].subscriber["status"] is SubscriberStatus.PENDING:
            outbox.enqueue(
                session,
                subscriptions.NewSubscriber(subscriber_id, rows[key].email),
                kinds.CONFIRM,
                now=now,
            )
            done.confirmations_queued += 1
    confirmed = by_status.get(SubscriberStatus.CONFIRMED, [])
    if job.join_sequence and confirmed:
        # Readers this batch created have no enrollment yet: a plain insert, as
        # sequences.enroll's first try is.
        session.execute(
            insert(Enrollment).from_select(
                [
                    "subscriber_id",
                    "sequence",
                    "enrolled_at",
                    "status",
                    "steps_passed",
                    "next_due_at",
                ],
                select(
                    Subscriber.id,
                    literal(job.sequence or ""),
                    at,
                    literal(EnrollmentStatus.ACTIVE, Enrollment.__table__.c.status.type),
                    _json(session, []),
                    at,
                ).where(Subscriber.id.in_(confirmed)),
            )
        )
        done.enrolled = len(confirmed)
