"""The owner's view of the list: finding subscribers, their history, their data, exports.

Lists are paged by keyset (`id < cursor`, newest first), never OFFSET: page 2,000 costs
what page 1 costs. Exports read ranges of ids, each in its own short transaction, so a
million rows stream in flat memory and no transaction stays open for the whole file.
"""

from __future__ import annotations

import unicodedata
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Integer,
    Select,
    String,
    and_,
    any_,
    bindparam,
    case,
    column,
    func,
    literal,
    or_,
    select,
    table,
    type_coerce,
)
from sqlalchemy.dialects.postgresql import array, distinct_on
from sqlalchemy.orm import Session

from .db import PreparedStatement
from .models import (
    Click,
    ConsentRecord,
    Enrollment,
    EnrollmentStatus,
    Event,
    OutboxMessage,
    Subscriber,
    SubscriberStatus,
    TrackedLink,
)

PAGE_SIZE = 50
EXPORT_SPAN = 5_000  # subscriber ids per piece of an export
EXPORT_READERS = 2  # pieces of an export read at once
MAX_QUERY_LENGTH = 200
MIN_INDEXED_QUERY = 3  # characters: the search index holds trigrams

# SQLite's search index of addresses and first names (FTS5, trigrams; migration 0006),
# kept in step with `subscribers` by triggers. Its rowid is the subscriber's id.
_search_index = table("subscriber_search", column("rowid", Integer), column("subscriber_search"))

# Sequence positions a filter can ask for besides a step id.
FINISHED = "finished"
NOT_ENROLLED = "none"

# A cell a spreadsheet would run as a formula starts with one of these (OWASP, "CSV
# injection"); a leading apostrophe makes Excel and LibreOffice show it as text.
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


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

    @classmethod
    def parse(cls, args: Any, *, sequence: str) -> SubscriberFilter:
        """From a query string (or any mapping of str); InvalidFilter if a value is bad."""

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
        )

    def as_args(self) -> dict[str, str]:
        """The filter as query-string arguments (for links to the next page and exports)."""
        args = {
            "q": self.query,
            "status": self.status.value if self.status else "",
            "source": self.source,
            "from": self.signed_up_from.isoformat() if self.signed_up_from else "",
            "to": self.signed_up_to.isoformat() if self.signed_up_to else "",
            "step": self.step,
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
            statement = statement.where(Subscriber.created_at >= _midnight(self.signed_up_from))
        if self.signed_up_to:
            next_day = _midnight(self.signed_up_to + timedelta(days=1))
            statement = statement.where(Subscriber.created_at < next_day)
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


def _midnight(day: date) -> datetime:
    return datetime.combine(day, time(), tzinfo=UTC)


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


def sources(session: Session) -> list[str]:
    """Every signup source on the list, for the filter's menu."""
    return list(session.scalars(select(Subscriber.source).distinct().order_by(Subscriber.source)))


# --- one subscriber ---------------------------------------------------------------------


@dataclass
class History:
    """Everything we hold about one subscriber, for their page and their data export."""

    subscriber: Subscriber
    consents: list[ConsentRecord]
    events: list[Event]
    emails: list[OutboxMessage]
    enrollments: list[Enrollment] = field(default_factory=list)
    clicks: list[tuple[str, datetime]] = field(default_factory=list)  # (link target, when)


def history(session: Session, subscriber_id: int) -> History | None:
    subscriber = session.get(Subscriber, subscriber_id)
    if subscriber is None:
        return None

    def rows_of(model: Any) -> list[Any]:
        """The subscriber's rows of a table with a `subscriber_id`, oldest first."""
        statement = select(model).where(model.subscriber_id == subscriber_id).order_by(model.id)
        return list(session.scalars(statement))

    return History(
        subscriber=subscriber,
        consents=rows_of(ConsentRecord),
        events=rows_of(Event),
        emails=rows_of(OutboxMessage),
        enrollments=rows_of(Enrollment),
        clicks=[
            (url, at)
            for url, at in session.execute(
                select(TrackedLink.url, Click.at)
                .join(Click, Click.link_id == TrackedLink.id)
                .where(Click.subscriber_id == subscriber_id)
                .order_by(Click.id)
            )
        ],
    )


def _stamp(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


def personal_data(record: History) -> dict[str, Any]:
    """What we hold about a subscriber, as JSON-ready data (a GDPR access request)."""
    subscriber = record.subscriber
    return {
        "subscriber": {
            "email": subscriber.email,
            "first_name": subscriber.first_name,
            "status": subscriber.status.value,
            "time_zone": subscriber.time_zone,
            "source": subscriber.source,
            "signed_up_at": _stamp(subscriber.created_at),
            "confirmed_at": _stamp(subscriber.confirmed_at),
            "unsubscribed_at": _stamp(subscriber.unsubscribed_at),
            "bounced_at": _stamp(subscriber.bounced_at),
        },
        "consents": [
            {
                "action": consent.action,
                "at": _stamp(consent.at),
                "ip": consent.ip,
                "user_agent": consent.user_agent,
                "source": consent.source,
                "text": consent.text,
                "text_version": consent.text_version,
            }
            for consent in record.consents
        ],
        "events": [
            {"kind": event.kind, "at": _stamp(event.at), "detail": event.detail}
            for event in record.events
        ],
        "emails": [
            {
                "kind": email.kind,
                "template": email.template,
                "sequence_step": email.sequence_step,
                "status": email.status.value,
                "queued_at": _stamp(email.created_at),
                "sent_at": _stamp(email.sent_at),
            }
            for email in record.emails
        ],
        "clicks": [{"link": url, "at": _stamp(at)} for url, at in record.clicks],
        "sequences": [
            {
                "sequence": enrollment.sequence,
                "status": enrollment.status.value,
                "enrolled_at": _stamp(enrollment.enrolled_at),
                "steps_received": list(enrollment.steps_passed),
                "next_step": enrollment.next_step,
                "next_due_at": _stamp(enrollment.next_due_at),
            }
            for enrollment in record.enrollments
        ],
    }


# --- CSV export -------------------------------------------------------------------------

EXPORT_COLUMNS = (
    "email",
    "first_name",
    "status",
    "source",
    "time_zone",
    "signed_up_utc",
    "confirmed_utc",
    "unsubscribed_utc",
    "consent_ip",
    "consent_text_version",
    "sequence_step",
    "last_email_sent_utc",
)
# Free text, which people type: quoted and defused.
_TEXT_COLUMNS = ("email", "first_name", "source", "consent_ip")
# Names and ids the service checks before storing them (zone names, hex versions, step
# ids): quoted too, so that a value put into the database by hand cannot break a row.
_NAME_COLUMNS = ("time_zone", "consent_text_version", "sequence_step")
# The subscriber's status and the dates are written as they are.
_DATE_COLUMNS = ("signed_up_utc", "confirmed_utc", "unsubscribed_utc", "last_email_sent_utc")


def neutralize(cell: str) -> str:
    """A cell a spreadsheet shows as text, never runs as a formula."""
    return "'" + cell if cell.startswith(FORMULA_STARTS) else cell


# The database writes the CSV. On SQLite each row arrives as its line, made by one printf()
# call; on PostgreSQL, COPY writes the rows as CSV and hands over bytes. Converting each
# value to a datetime or an enum and back in Python, or gluing a line together with two
# dozen `||`, would cost more than everything else together (see bench/export.py).

# The characters that start a formula, as a GLOB class ('-' first, so it is not a range)
# and as the code points PostgreSQL's ascii() returns.
_FORMULA_GLOB = "[-" + "".join(c for c in FORMULA_STARTS if c != "-") + "]*"
_FORMULA_CODES = [ord(c) for c in FORMULA_STARTS]


def _csv_line(values: dict[str, Any]) -> ColumnElement[str]:
    """SQLite: the values (by EXPORT_COLUMNS name) as one CSV line, without its line end.
    NULL is written as ''."""
    template: list[str] = []
    arguments: list[Any] = []
    for name, value in values.items():
        if name in _TEXT_COLUMNS:
            # printf's %w doubles the quotes inside (RFC 4180) but writes NULL as '(NULL)'.
            starts_a_formula = value.op("GLOB")(literal(_FORMULA_GLOB))  # '' matches nothing
            template.append('"%s%w"')
            arguments += [
                case((starts_a_formula, literal("'", String)), else_=""),
                func.coalesce(value, ""),
            ]
        elif name in _NAME_COLUMNS:
            template.append('"%w"')
            arguments.append(func.coalesce(value, ""))
        elif name in _DATE_COLUMNS:
            # Stored as 'YYYY-MM-DD HH:MM:SS.ffffff' in UTC: the first 19 characters.
            template.append("%.19s")
            arguments.append(type_coerce(value, String))
        else:
            template.append("%s")
            arguments.append(value)
    return func.printf(literal(",".join(template), String), *arguments, type_=String)


def _csv_columns(values: dict[str, Any]) -> list[ColumnElement[Any]]:
    """PostgreSQL: the values as the columns COPY writes (FORCE_QUOTE quotes the text and
    name ones; NULL, which it would leave bare, becomes '' first, as on SQLite)."""
    columns = []
    for name, value in values.items():
        if name in _TEXT_COLUMNS:
            text = func.coalesce(value, "")
            starts_a_formula = func.ascii(text) == any_(array(_FORMULA_CODES))  # ascii('') is 0
            value = case((starts_a_formula, literal("'", String) + text), else_=text)
        elif name in _NAME_COLUMNS:
            value = func.coalesce(value, "")
        elif name in _DATE_COLUMNS:
            # Written as `YYYY-MM-DD HH:MM:SS` in the ISO DateStyle (set for each range).
            value = func.date_trunc("second", func.timezone("UTC", value))
        columns.append(value.label(name))
    return columns


_COPY_OPTIONS = f"FORMAT csv, FORCE_QUOTE ({', '.join(_TEXT_COLUMNS + _NAME_COLUMNS)})"


def _step_text() -> ColumnElement[str]:
    """Where the subscriber is in the sequence: the next step (paused or not), finished,
    stopped, or NULL if they never joined."""
    next_step = func.coalesce(Enrollment.next_step, "starting")
    return case(
        (Enrollment.status == EnrollmentStatus.ACTIVE, next_step),
        (Enrollment.status == EnrollmentStatus.PAUSED, next_step + literal(" (paused)", String)),
        else_=type_coerce(Enrollment.status, String),
    )


def _export_statement(wanted: SubscriberFilter, dialect: str) -> Select:
    """The filtered subscribers with `:after` < id <= `:upto`, in id order: on SQLite one
    CSV line each, on PostgreSQL the columns for COPY.

    Each statement covers a bounded range of ids, so whatever plan the database picks,
    a chunk costs what its range holds, not what the table holds.
    """
    after, upto = bindparam("after"), bindparam("upto")

    def in_range(column: Any) -> ColumnElement[bool]:
        return and_(column > after, column <= upto)

    if dialect == "postgresql":
        # Joined as whole ranges: PostgreSQL merges them with the subscribers in one pass,
        # where a subquery per row costs it a sub-plan each time (bench/export.py).
        consent = (
            select(ConsentRecord.subscriber_id, ConsentRecord.ip, ConsentRecord.text_version)
            .where(in_range(ConsentRecord.subscriber_id))
            .order_by(ConsentRecord.subscriber_id, ConsentRecord.id.desc())
            .ext(distinct_on(ConsentRecord.subscriber_id))
            .subquery("latest_consent")
        )
        consent_joined = consent.c.subscriber_id == Subscriber.id
        sent = (
            select(
                OutboxMessage.subscriber_id,
                func.max(OutboxMessage.sent_at).label("last_sent"),
            )
            .where(in_range(OutboxMessage.subscriber_id), OutboxMessage.sent_at.is_not(None))
            .group_by(OutboxMessage.subscriber_id)
            .subquery("last_sent")
        )
        last_sent = sent.c.last_sent
    else:
        # SQLite runs a subquery per row as one index lookup: faster there than the joins.
        consent = ConsentRecord.__table__.alias("latest_consent")
        consent_joined = consent.c.id == (
            select(ConsentRecord.id)
            .where(ConsentRecord.subscriber_id == Subscriber.id)
            .order_by(ConsentRecord.id.desc())
            .limit(1)
            .scalar_subquery()
        )
        sent = None
        # Not max(): ORDER BY ... LIMIT 1 reads one entry of ix_outbox_subscriber_sent.
        last_sent = (
            select(OutboxMessage.sent_at)
            .where(OutboxMessage.subscriber_id == Subscriber.id, OutboxMessage.sent_at.is_not(None))
            .order_by(OutboxMessage.sent_at.desc())
            .limit(1)
            .scalar_subquery()
        )
    values = dict(
        zip(
            EXPORT_COLUMNS,
            [
                Subscriber.email,
                Subscriber.first_name,
                type_coerce(Subscriber.status, String),
                Subscriber.source,
                Subscriber.time_zone,
                Subscriber.created_at,
                Subscriber.confirmed_at,
                Subscriber.unsubscribed_at,
                # From a header a misconfigured proxy may pass through: free text.
                consent.c.ip,
                consent.c.text_version,
                _step_text(),
                last_sent,
            ],
            strict=True,
        )
    )
    columns = _csv_columns(values) if dialect == "postgresql" else [_csv_line(values)]
    statement = (
        select(*columns)
        .select_from(Subscriber)
        .outerjoin(
            Enrollment,
            (Enrollment.subscriber_id == Subscriber.id)
            & (Enrollment.sequence == wanted.sequence)
            & in_range(Enrollment.subscriber_id),  # implied, but it bounds the merge join
        )
        .outerjoin(consent, consent_joined)
    )
    if sent is not None:
        statement = statement.outerjoin(sent, sent.c.subscriber_id == Subscriber.id)
    statement, key = wanted.apply(statement, dialect)
    return statement.where(in_range(key)).order_by(key)


@dataclass(frozen=True)
class ExportPiece:
    """A piece of the CSV file: `rows` subscribers in `data` (UTF-8, CRLF line ends)."""

    rows: int
    data: bytes


def export_csv(
    read: Callable[[], Any],
    wanted: SubscriberFilter,
    *,
    bom: bool = False,
    span: int | None = None,
) -> Iterator[ExportPiece]:
    """The filtered subscribers as a CSV file (RFC 4180), oldest first: the header at once,
    then one piece per range of ids holding `span` subscribers (before filtering).

    `read` opens a read-only session (Database.read); each range gets its own, so no
    transaction stays open for the whole export. EXPORT_READERS ranges are read at once,
    each on its own connection: the database does most of the work, and this way it does
    it on more than one core. A piece may hold no rows (a filter that matches little): it
    comes all the same, so the caller hears from the export at a steady pace. Subscribers
    who sign up while the export runs are not in it.
    """
    header = ",".join(EXPORT_COLUMNS) + "\r\n"
    # The byte order mark makes Excel read the file as UTF-8.
    yield ExportPiece(0, (("\ufeff" if bom else "") + header).encode())
    size = span or EXPORT_SPAN
    with read() as session:
        last = session.scalar(select(func.max(Subscriber.id)))
        dialect = session.get_bind().dialect
    if last is None:
        return
    # Compiled once and run straight on the driver: the database writes the CSV itself.
    statement = _export_statement(wanted, dialect.name)
    prepared = PreparedStatement(statement, dialect, server_side_prepare=False)

    def piece(after: int, upto: int) -> ExportPiece:
        values = {"after": after, "upto": upto}
        with read() as session:
            connection = session.connection()
            if dialect.name == "postgresql":
                # COPY sends its bytes in the client encoding, and its dates in DateStyle.
                connection.exec_driver_sql(
                    "SELECT set_config('client_encoding', 'UTF8', true),"
                    " set_config('DateStyle', 'ISO, YMD', true)"
                )
                rows, data = prepared.copy_out(connection, values, options=_COPY_OPTIONS)
                return ExportPiece(rows, _with_crlf(data, rows))
            lines = [line for (line,) in prepared.rows(connection, values)]
        text = "\r\n".join(lines) + "\r\n" if lines else ""
        return ExportPiece(len(lines), text.encode())

    pool = ThreadPoolExecutor(max_workers=EXPORT_READERS, thread_name_prefix="export")
    coming: deque[Future[ExportPiece]] = deque()
    try:
        for after, upto in _id_ranges(read, last, size):
            coming.append(pool.submit(piece, after, upto))
            if len(coming) > EXPORT_READERS:
                yield coming.popleft().result()
        while coming:
            yield coming.popleft().result()
    finally:  # the reader went away (or a range failed): read no further
        for future in coming:
            future.cancel()
        pool.shutdown(wait=True)


def _id_ranges(read: Callable[[], Any], last: int, size: int) -> Iterator[tuple[int, int]]:
    """Ranges of ids (after, upto] up to `last`, each holding `size` subscribers (the last
    range fewer): gaps in the ids (erasures, numbers a sequence skipped) cost nothing."""
    boundary = (
        select(Subscriber.id)
        .where(Subscriber.id > bindparam("after"), Subscriber.id <= last)
        .order_by(Subscriber.id)
        .offset(size - 1)  # walks `size` entries of the primary key
        .limit(1)
    )
    after = 0
    while after < last:
        with read() as session:
            upto = session.scalar(boundary, {"after": after})
        upto = last if upto is None else upto
        yield after, upto
        after = upto


def _with_crlf(data: bytes, rows: int) -> bytes:
    """COPY's CSV, whose rows end with LF, with rows ending in CRLF as RFC 4180 says."""
    if data.count(b"\n") == rows:  # no line break inside a field: each LF ends a row
        return data.replace(b"\n", b"\r\n")
    # A field holds a line break (none of our forms lets one in, but the data may have
    # come from elsewhere): an LF ends a row only after an even number of quotes.
    written = bytearray()
    quotes = 0
    for line in data.split(b"\n")[:-1]:  # the data ends with the last row's LF
        quotes += line.count(b'"')
        written += line + (b"\n" if quotes % 2 else b"\r\n")
    return bytes(written)
