"""The owner's view of the list: finding subscribers and counting them (one subscriber's
record is service.subscriber_record).

Lists are paged by keyset (`id < cursor`, newest first), never OFFSET: page 2,000 costs
what page 1 costs. The CSV export of the same list is service.export.
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta, tzinfo
from typing import Any

from sqlalchemy import ColumnElement, Integer, Select, column, func, or_, select, table
from sqlalchemy.orm import Session

from . import tags
from .models import (
    Enrollment,
    EnrollmentStatus,
    Subscriber,
    SubscriberStatus,
    SubscriberTag,
)

PAGE_SIZE = 50
COUNT_CAP = 10_000  # the list counts its matches up to here
MAX_QUERY_LENGTH = 200
MIN_INDEXED_QUERY = 3  # characters: the search index holds trigrams

# SQLite's search index of addresses and first names (FTS5, trigrams; migration 0006),
# kept in step with `subscribers` by triggers. Its rowid is the subscriber's id.
_search_index = table("subscriber_search", column("rowid", Integer), column("subscriber_search"))

# Sequence positions a filter can ask for besides a step id.
FINISHED = "finished"
NOT_ENROLLED = "none"


class InvalidFilter(ValueError):
    """A filter value that makes no sense; the message says which and why."""


@dataclass(frozen=True)
class SubscriberFilter:
    """What the owner is looking for. Empty fields do not filter."""

    query: str = ""  # part of the email address or first name
    status: SubscriberStatus | None = None
    source: str = ""
    signed_up_from: date | None = None
    signed_up_to: date | None = None  # inclusive
    step: str = ""  # a step id, FINISHED or NOT_ENROLLED
    sequence: str = ""  # the sequence `step` refers to
    tags: tuple[str, ...] = ()  # readers carrying any of these
    zone: tzinfo = UTC  # whose days `signed_up_from` and `signed_up_to` are

    @classmethod
    def parse(cls, args: Any, *, sequence: str, zone: tzinfo = UTC) -> SubscriberFilter:
        """From a query string (or any mapping of str); InvalidFilter if a value is bad.
        Dates are days in `zone` (the owner's, on the admin pages; UTC for the CLI)."""

        def day(name: str) -> date | None:
            raw = (args.get(name) or "").strip()
            if not raw:
                return None
            try:
                value = date.fromisoformat(raw)
            except ValueError:
                raise InvalidFilter(f"{name}: {raw!r} is not a date (YYYY-MM-DD)") from None
            if not 1900 <= value.year <= 9000:
                raise InvalidFilter(f"{name}: {raw!r} is too far from today")
            return value

        raw_tags = args.getlist("tag") if hasattr(args, "getlist") else args.get("tag") or ()
        try:
            wanted_tags = tags.clean_all([raw_tags] if isinstance(raw_tags, str) else raw_tags)
        except tags.InvalidTag as exc:
            raise InvalidFilter(f"tag: {exc}") from None
        raw_status = (args.get("status") or "").strip()
        try:
            status = SubscriberStatus(raw_status) if raw_status else None
        except ValueError:
            raise InvalidFilter(f"status: {raw_status!r} is not a subscriber status") from None
        return cls(
            query=_searchable(args.get("q") or "")[:MAX_QUERY_LENGTH],
            status=status,
            source=_searchable(args.get("source") or "")[:100],
            signed_up_from=day("from"),
            signed_up_to=day("to"),
            step=_searchable(args.get("step") or "")[:64],
            sequence=sequence,
            tags=tuple(wanted_tags),
            zone=zone,
        )

    def as_args(self) -> dict[str, str | list[str]]:
        """The filter as query-string arguments (for links to the next page and exports)."""
        args: dict[str, str | list[str]] = {
            "q": self.query,
            "status": self.status.value if self.status else "",
            "source": self.source,
            "from": self.signed_up_from.isoformat() if self.signed_up_from else "",
            "to": self.signed_up_to.isoformat() if self.signed_up_to else "",
            "step": self.step,
            "tag": list(self.tags),
        }
        return {name: value for name, value in args.items() if value}

    def apply(self, statement: Select, dialect: str) -> tuple[Select, ColumnElement[int]]:
        """`statement` (over subscribers, with enrollments outer-joined) narrowed down, and
        the column to order and page it by: the subscriber's id, or on SQLite, when the
        search index finds them, the index's own rowid (the same number, but SQLite walks
        the index in order, and keeps to a range, only by that column).

        The index folds case as SQLite's FTS5 does, which differs from Python's lower()
        for a few letters (the Turkish dotted I, the Greek final sigma, Georgian capitals);
        the list and the export both use it, so the file holds what the list shows."""
        key: ColumnElement[int] = Subscriber.id
        if self.query and dialect == "sqlite" and len(self.query) >= MIN_INDEXED_QUERY:
            phrase = '"' + self.query.replace('"', '""') + '"'  # the text as it is, anywhere
            statement = statement.join(_search_index, _search_index.c.rowid == Subscriber.id)
            statement = statement.where(_search_index.c.subscriber_search.op("MATCH")(phrase))
            key = _search_index.c.rowid
        elif self.query:
            # pg_trgm indexes serve these on PostgreSQL (migration 0006).
            needle = self.query.lower()
            lower = func.lower
            if dialect == "sqlite" and not needle.isascii():
                lower = func.unicode_lower  # see service.db: SQLite's lower() is ASCII only
            statement = statement.where(
                or_(
                    Subscriber.email_key.contains(needle, autoescape=True),  # lowered already
                    lower(Subscriber.first_name).contains(needle, autoescape=True),
                )
            )
        if self.status is not None:
            statement = statement.where(Subscriber.status == self.status)
        if self.source:
            statement = statement.where(Subscriber.source == self.source)
        if self.signed_up_from:
            start = _midnight(self.signed_up_from, self.zone)
            statement = statement.where(Subscriber.created_at >= start)
        if self.signed_up_to:
            next_day = _midnight(self.signed_up_to + timedelta(days=1), self.zone)
            statement = statement.where(Subscriber.created_at < next_day)
        if self.tags:
            # Along the (tag, subscriber) index; EXISTS, so a reader with two of them is
            # one row.
            statement = statement.where(
                select(SubscriberTag.subscriber_id)
                .where(
                    SubscriberTag.subscriber_id == Subscriber.id,
                    # Not IN, as below.
                    or_(*(SubscriberTag.tag == tag for tag in self.tags)),
                )
                .exists()
            )
        if self.step == NOT_ENROLLED:
            statement = statement.where(Enrollment.id.is_(None))
        elif self.step == FINISHED:
            statement = statement.where(Enrollment.status == EnrollmentStatus.FINISHED)
        elif self.step:
            statement = statement.where(
                Enrollment.next_step == self.step,
                # Not IN: an expanding parameter, which a PreparedStatement cannot run.
                or_(
                    Enrollment.status == EnrollmentStatus.ACTIVE,
                    Enrollment.status == EnrollmentStatus.PAUSED,
                ),
            )
        return statement, key


def _searchable(text: str) -> str:
    """A search as typed, with runs of white space made one space and control characters
    (which no address or name holds, and a NUL would end the search index's query) gone."""
    return " ".join("".join(c for c in text if unicodedata.category(c) != "Cc").split())


def _midnight(day: date, zone: tzinfo) -> datetime:
    return datetime.combine(day, time(), tzinfo=zone).astimezone(UTC)


def _with_enrollment(statement: Select, sequence: str) -> Select:
    return statement.outerjoin(
        Enrollment,
        (Enrollment.subscriber_id == Subscriber.id) & (Enrollment.sequence == sequence),
    )


@dataclass(frozen=True)
class ListedSubscriber:
    id: int
    email: str
    first_name: str | None
    status: SubscriberStatus
    source: str
    created_at: datetime
    enrollment_status: EnrollmentStatus | None
    next_step: str | None


@dataclass(frozen=True)
class Page:
    rows: list[ListedSubscriber]
    next_cursor: int | None  # pass as `before` for the next page; None on the last


def find(
    session: Session, wanted: SubscriberFilter, *, before: int | None = None, size: int = PAGE_SIZE
) -> Page:
    """One page of subscribers matching `wanted`, newest first, starting below `before`."""
    statement = _with_enrollment(
        select(
            Subscriber.id,
            Subscriber.email,
            Subscriber.first_name,
            Subscriber.status,
            Subscriber.source,
            Subscriber.created_at,
            Enrollment.status,
            Enrollment.next_step,
        ),
        wanted.sequence,
    )
    statement, key = wanted.apply(statement, session.get_bind().dialect.name)
    statement = statement.order_by(key.desc()).limit(size + 1)
    if before is not None:
        statement = statement.where(key < before)
    rows = [ListedSubscriber(*row) for row in session.execute(statement)]
    more = len(rows) > size
    rows = rows[:size]
    return Page(rows, rows[-1].id if more and rows else None)


def count(session: Session, wanted: SubscriberFilter) -> int:
    """How many match `wanted`, counting no further than COUNT_CAP + 1: past it the list
    says "more than", and the count costs a few milliseconds at a million rows (an exact
    one took up to 0.3 s on SQLite)."""
    statement = _with_enrollment(select(Subscriber.id), wanted.sequence)
    statement, _ = wanted.apply(statement, session.get_bind().dialect.name)
    capped = statement.limit(COUNT_CAP + 1).subquery()
    return session.scalar(select(func.count()).select_from(capped))


def sources(session: Session) -> list[str]:
    """Every signup source on the list, for the filter's menu."""
    return list(session.scalars(select(Subscriber.source).distinct().order_by(Subscriber.source)))
