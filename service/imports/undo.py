"""Taking an all-or-nothing import back after it failed (or was stopped) half-way: the
readers it created go with everything written about them, the first names it added are
emptied again, and the tags it gave readers already on the list come off.

The batches marked each staged row with what they did (service.imports.batch), so the
undo reads the rows, not the list, and goes a few thousand lines per transaction: on
SQLite one transaction for a million rows would hold the write lock for seconds.
"""

from __future__ import annotations

from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session

from ..db import Database
from ..models import Import, ImportRow, OutboxMessage, Subscriber, SubscriberTag
from .batch import CREATED, NAMED

UNDO_ROWS = 2000


def take_back(database: Database, import_id: int) -> int:
    """Undo what the import's batches did to the list; how many readers it removed. Tags
    an import gave since this one was uploaded are taken as its own."""
    with database.read() as session:
        job = session.get(Import, import_id)
        if job is None or not job.applied:  # no batch was written
            return 0
        since = job.created_at
    removed = 0
    after = 0
    while True:
        with database.begin() as session:
            window = session.execute(
                select(ImportRow.line, ImportRow.email_key, ImportRow.outcome)
                .where(
                    ImportRow.import_id == import_id,
                    ImportRow.line > after,
                    ImportRow.email_key.is_not(None),
                )
                .order_by(ImportRow.line)
                .limit(UNDO_ROWS)
            ).all()
            if not window:
                return removed
            after = window[-1].line
            created = [key for _, key, outcome in window if outcome == CREATED]
            named = [key for _, key, outcome in window if outcome == NAMED]
            others = [key for _, key, outcome in window if outcome != CREATED]
            removed += _remove(session, created)
            if named:
                session.execute(
                    update(Subscriber)
                    .where(
                        Subscriber.email_key.in_(named),
                        Subscriber.first_name
                        == select(ImportRow.first_name)
                        .where(
                            ImportRow.import_id == import_id,
                            ImportRow.email_key == Subscriber.email_key,
                        )
                        .scalar_subquery(),
                    )
                    .values(first_name=None)
                    .execution_options(synchronize_session=False)
                )
            if others:
                session.execute(
                    delete(SubscriberTag).where(
                        SubscriberTag.added_by == "import",
                        SubscriberTag.added_at >= since,
                        SubscriberTag.subscriber_id.in_(
                            select(Subscriber.id).where(Subscriber.email_key.in_(others))
                        ),
                    )
                )


def _remove(session: Session, keys: list[str]) -> int:
    """Delete the readers with these addresses and every row about them; how many."""
    if not keys:
        return 0
    ids = list(session.scalars(select(Subscriber.id).where(Subscriber.email_key.in_(keys))))
    if not ids:
        return 0
    # Mail queued for them (a sequence's first step, a newsletter) goes; mail already
    # sent stays, without them, as it does when a reader is deleted.
    session.execute(
        delete(OutboxMessage).where(
            OutboxMessage.subscriber_id.in_(ids), OutboxMessage.sent_at.is_(None)
        )
    )
    for table in Subscriber.metadata.sorted_tables:
        for key in table.foreign_keys:
            if key.column is not Subscriber.__table__.c.id:
                continue
            column = key.parent
            # Their history goes too: the list, and its counts, as before the import.
            if key.ondelete == "CASCADE" or table.name == "events":
                session.execute(delete(table).where(column.in_(ids)))
            else:
                session.execute(update(table).where(column.in_(ids)).values({column.name: None}))
    session.execute(delete(Subscriber).where(Subscriber.id.in_(ids)))
    return len(ids)
