"""One batch of an import's staged rows carried out with a handful of set-based
statements, whatever the batch's size: nothing is done a row at a time in Python.

`read_batch` finds the batch (a range of lines, and the tags its rows carry); it only
reads, so on SQLite it runs outside the write lock. `apply_batch`, in the caller's write
transaction, compares the batch with the list afresh (someone may have signed up, been
erased or complained since the preview) and writes it: readers already on the list get
the first name the file adds (one UPDATE); the others go in with one INSERT ... SELECT
from the staged rows, and their consent records, "imported" events, tags and sequence
enrollments with one INSERT ... SELECT each. Only double opt-in still queues its
confirmation emails one by one (service.outbox owns that row's layout).

The staged rows keep what the batch did to the list (a reader CREATED, a first name
NAMED): the later statements find the batch's new readers by it, and
`service.imports.undo` takes an all-or-nothing import back by it after a failure.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    ColumnElement,
    and_,
    case,
    cast,
    exists,
    func,
    insert,
    literal,
    null,
    or_,
    select,
    true,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from .. import importer, journal, kinds, outbox, subscriptions
from ..importer import Outcome
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
from .jobs import on_postgresql

# What a batch did to a staged row's reader, written over its outcome (the preview's
# figures live on the job, not in these rows, and a row is applied once).
CREATED = "created"
NAMED = "named"


@dataclass
class Batch:
    after_line: int  # the job's checkpoint it follows
    last_line: int  # the checkpoint once it is applied
    row_tags: set[str] = field(default_factory=set)  # the tags its rows' own cells name


def to_apply(tags_for_all: bool) -> ColumnElement[bool]:
    """The staged rows an import's batch has work for: new and updated readers, and those
    already on the list when they get a tag (the file's, or one for every row)."""
    changes = ImportRow.outcome.in_([Outcome.NEW.value, Outcome.UPDATED.value])
    unchanged = ImportRow.outcome == Outcome.UNCHANGED.value
    if not tags_for_all:
        unchanged = and_(unchanged, ImportRow.tags.is_not(None))
    return or_(changes, unchanged)


def read_batch(session: Session, job: Import, *, size: int) -> Batch | None:
    """The next `size` staged rows after the job's checkpoint that have work to do; None
    when there are none left."""
    lines = (
        select(ImportRow.line)
        .where(
            ImportRow.import_id == job.id,
            ImportRow.line > job.applied_line,
            to_apply(bool(job.tags)),
        )
        .order_by(ImportRow.line)
        .limit(size)
        .subquery()
    )
    last_line = session.scalar(select(func.max(lines.c.line)))
    if last_line is None:
        return None
    batch = Batch(after_line=job.applied_line, last_line=last_line)
    for cell in session.scalars(
        select(ImportRow.tags)
        .distinct()
        .where(
            ImportRow.import_id == job.id,
            ImportRow.line > batch.after_line,
            ImportRow.line <= batch.last_line,
            ImportRow.tags.is_not(None),
        )
    ):
        batch.row_tags.update(cell.split(";"))
    return batch


def _insert(session: Session, table: Any) -> Any:
    dialect = postgresql if on_postgresql(session) else sqlite
    return dialect.insert(table)


def _json(session: Session, value: Any) -> Any:
    """A JSON value to INSERT ... SELECT: PostgreSQL wants it cast; SQLite keeps the text
    (its CAST to JSON would make a number of it)."""
    bound = literal(value, JSON())
    return cast(bound, JSON) if on_postgresql(session) else bound


def apply_batch(session: Session, job: Import, batch: Batch, *, now: datetime) -> importer.Applied:
    """Carry `batch` out in the caller's transaction, as `importer.apply_plan` does row by
    row; what it did."""
    done = importer.Applied()
    at = literal(now, UTCDateTime())
    in_batch = and_(
        ImportRow.import_id == job.id,
        ImportRow.line > batch.after_line,
        ImportRow.line <= batch.last_line,
    )
    rows = and_(in_batch, or_(to_apply(bool(job.tags)), ImportRow.outcome.in_([NAMED, CREATED])))
    reader = select(Subscriber.id).where(Subscriber.email_key == ImportRow.email_key)
    unnamed = or_(Subscriber.first_name.is_(None), Subscriber.first_name == "")
    gives_a_name = and_(ImportRow.first_name.is_not(None), ImportRow.first_name != "")

    # On the list without a first name, which the file gives.
    session.execute(
        update(ImportRow)
        .where(rows, gives_a_name, exists(reader.where(unnamed)))
        .values(outcome=NAMED)
        .execution_options(synchronize_session=False)
    )
    done.updated = session.execute(
        update(Subscriber)
        .where(
            unnamed,
            Subscriber.email_key.in_(
                select(ImportRow.email_key).where(in_batch, ImportRow.outcome == NAMED)
            ),
        )
        .values(
            first_name=select(ImportRow.first_name)
            .where(ImportRow.import_id == job.id, ImportRow.email_key == Subscriber.email_key)
            .scalar_subquery()
        )
        .execution_options(synchronize_session=False)
    ).rowcount

    # Not on the list, and not erased or complained (checked afresh): new readers.
    suppressed = select(Suppression.email_hash).where(
        Suppression.email_hash == ImportRow.suppression_hash
    )
    session.execute(
        update(ImportRow)
        .where(rows, ~exists(reader), ~exists(suppressed))
        .values(outcome=CREATED)
        .execution_options(synchronize_session=False)
    )
    created = _insert_newcomers(session, job, in_batch, at=at)
    done.created = len(created)

    tagged = _tag(session, job, batch, rows, at=at)
    done.tagged = len(tagged - set(created))
    if created:
        _record_the_newcomers(session, job, in_batch, created, at=at, now=now, done=done)
    return done


def _insert_newcomers(
    session: Session, job: Import, in_batch: ColumnElement[bool], *, at: Any
) -> dict[int, tuple[str, SubscriberStatus]]:
    """Insert the batch's CREATED rows as readers, in file order; each new reader's id,
    address and status. Someone who signed up a moment ago (PostgreSQL: between the
    marking and the insert) keeps the form's record, and their row loses its mark."""
    mode = importer.Mode(job.mode)
    chosen = (
        SubscriberStatus.CONFIRMED if mode is importer.Mode.CONFIRMED else SubscriberStatus.PENDING
    )
    left = ImportRow.status.in_([status.value for status in importer.LEFT])
    status = case((left, ImportRow.status), else_=literal(chosen.value))
    confirmed_at: Any = ImportRow.confirmed
    if chosen is SubscriberStatus.CONFIRMED:
        # Kept from the file even for those who left since: it is their history.
        confirmed_at = case(
            (left, ImportRow.confirmed), else_=func.coalesce(ImportRow.confirmed, at)
        )
    unsubscribed = ImportRow.status == SubscriberStatus.UNSUBSCRIBED.value
    bounced = ImportRow.status == SubscriberStatus.BOUNCED.value
    newcomers = (
        select(
            ImportRow.email,
            ImportRow.email_key,
            ImportRow.mailbox_key,
            ImportRow.first_name,
            status,
            ImportRow.time_zone,
            ImportRow.source,
            func.coalesce(ImportRow.signed_up, at),
            confirmed_at,
            case((unsubscribed, func.coalesce(ImportRow.unsubscribed, at)), else_=null()),
            case((bounced, at), else_=null()),
            true(),
        )
        .where(in_batch, ImportRow.outcome == CREATED)
        .order_by(ImportRow.line)
    )
    columns = [
        "email",
        "email_key",
        "mailbox_key",
        "first_name",
        "status",
        "time_zone",
        "source",
        "created_at",
        "confirmed_at",
        "unsubscribed_at",
        "bounced_at",
        "wants_newsletters",
    ]
    readers = Subscriber.__table__
    statement = (
        _insert(session, readers)
        .from_select(columns, newcomers)
        .on_conflict_do_nothing()
        # Table columns, not the ORM's: the ORM would track each row it returns.
        .returning(readers.c.id, readers.c.email, readers.c.status)
    )
    created = {
        subscriber_id: (email, reader_status)
        for subscriber_id, email, reader_status in session.execute(statement).all()
    }
    marked = session.scalar(
        select(func.count()).select_from(ImportRow).where(in_batch, ImportRow.outcome == CREATED)
    )
    if marked != len(created):
        session.execute(
            update(ImportRow)
            .where(
                in_batch,
                ImportRow.outcome == CREATED,
                ~ImportRow.email_key.in_(
                    select(Subscriber.email_key).where(Subscriber.id.in_(list(created)))
                ),
            )
            .values(outcome=Outcome.NEW.value)
            .execution_options(synchronize_session=False)
        )
    return created


def _tag(
    session: Session, job: Import, batch: Batch, rows: ColumnElement[bool], *, at: Any
) -> set[int]:
    """Give each row's reader, new or on the list, its own tags and the job's; the readers
    given one they did not carry. One INSERT ... SELECT per tag."""
    given: set[int] = set()
    cell = literal(";") + ImportRow.tags + literal(";")
    for tag in sorted(batch.row_tags | set(job.tags)):
        carried = true() if tag in job.tags else cell.contains(f";{tag};", autoescape=True)
        statement = (
            _insert(session, SubscriberTag.__table__)
            .from_select(
                ["subscriber_id", "tag", "added_at", "added_by"],
                select(Subscriber.id, literal(tag), at, literal("import"))
                .join(ImportRow, ImportRow.email_key == Subscriber.email_key)
                .where(rows, carried),
            )
            .on_conflict_do_nothing()
            .returning(SubscriberTag.__table__.c.subscriber_id)
        )
        given.update(session.scalars(statement))
    return given


def _record_the_newcomers(
    session: Session,
    job: Import,
    in_batch: ColumnElement[bool],
    created: dict[int, tuple[str, SubscriberStatus]],
    *,
    at: Any,
    now: datetime,
    done: importer.Applied,
) -> None:
    """Each new reader's consent record and "imported" event, a confirmation email for
    those pending, and the sequence for those confirmed when the owner chose it."""
    consent_text = job.consent_text or ""

    def newcomers(*columns: Any) -> Any:
        return (
            select(*columns)
            .join(ImportRow, ImportRow.email_key == Subscriber.email_key)
            .where(in_batch, ImportRow.outcome == CREATED)
            .order_by(ImportRow.line)
        )

    session.execute(
        insert(ConsentRecord).from_select(
            ["subscriber_id", "action", "at", "ip", "user_agent", "source", "text", "text_version"],
            newcomers(
                Subscriber.id,
                literal("import"),
                at,
                null(),
                null(),
                Subscriber.source,
                literal(consent_text),
                literal(journal.consent_version(consent_text)),
            ),
        )
    )
    statuses = {status for _, status in created.values()}
    for status in sorted(statuses):
        session.execute(
            insert(Event).from_select(
                ["subscriber_id", "kind", "at", "detail"],
                newcomers(
                    Subscriber.id, literal("imported"), at, _json(session, {"status": status.value})
                ).where(Subscriber.status == status),
            )
        )
    for subscriber_id, (email, status) in created.items():
        if status is SubscriberStatus.PENDING:
            outbox.enqueue(
                session, subscriptions.NewSubscriber(subscriber_id, email), kinds.CONFIRM, now=now
            )
            done.confirmations_queued += 1
    if job.join_sequence and SubscriberStatus.CONFIRMED in statuses:
        # Readers just created have no enrollment yet: a plain insert, as
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
                newcomers(
                    Subscriber.id,
                    literal(job.sequence or ""),
                    at,
                    literal(EnrollmentStatus.ACTIVE, Enrollment.__table__.c.status.type),
                    _json(session, []),
                    at,
                ).where(Subscriber.status == SubscriberStatus.CONFIRMED),
            )
        )
        # Counted, not the rowcount: psycopg reports -1 for an INSERT ... SELECT.
        done.enrolled = sum(status is SubscriberStatus.CONFIRMED for _, status in created.values())
