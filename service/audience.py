"""The owner's view of the list: finding subscribers, their history, their data, exports.

Lists are paged by keyset (`id < cursor`, newest first), never OFFSET: page 2,000 costs
what page 1 costs. Exports read in keyset chunks, each in its own short transaction, so
a million rows stream in flat memory and no transaction stays open for the whole file.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Select,
    String,
    and_,
    bindparam,
    case,
    func,
    literal,
    or_,
    select,
    type_coerce,
)
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
EXPORT_CHUNK = 5000
MAX_QUERY_LENGTH = 200

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
            query=" ".join((args.get("q") or "").split())[:MAX_QUERY_LENGTH],
            status=status,
            source=(args.get("source") or "").strip()[:100],
            signed_up_from=day("from"),
            signed_up_to=day("to"),
            step=(args.get("step") or "").strip()[:64],
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

    def apply(self, statement: Select, dialect: str) -> Select:
        """`statement` (over subscribers, with enrollments outer-joined) narrowed down."""
        if self.query:
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
                Enrollment.status.in_([EnrollmentStatus.ACTIVE, EnrollmentStatus.PAUSED]),
            )
        return statement


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
    dialect = session.get_bind().dialect.name
    statement = wanted.apply(statement, dialect).order_by(Subscriber.id.desc()).limit(size + 1)
    if before is not None:
        statement = statement.where(Subscriber.id < before)
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
    return History(
        subscriber=subscriber,
        consents=list(
            session.scalars(
                select(ConsentRecord)
                .where(ConsentRecord.subscriber_id == subscriber_id)
                .order_by(ConsentRecord.id)
            )
        ),
        events=list(
            session.scalars(
                select(Event).where(Event.subscriber_id == subscriber_id).order_by(Event.id)
            )
        ),
        emails=list(
            session.scalars(
                select(OutboxMessage)
                .where(OutboxMessage.subscriber_id == subscriber_id)
                .order_by(OutboxMessage.id)
            )
        ),
        enrollments=list(
            session.scalars(
                select(Enrollment)
                .where(Enrollment.subscriber_id == subscriber_id)
                .order_by(Enrollment.id)
            )
        ),
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


def neutralize(cell: str) -> str:
    """A cell a spreadsheet shows as text, never runs as a formula."""
    return "'" + cell if cell.startswith(FORMULA_STARTS) else cell


# The export does its formatting in SQL: the rows arrive as the strings the file needs, and
# Python only writes them. Converting each value to a datetime or an enum and back would
# cost more than everything else together (see bench/export.py).


def _defused(text: ColumnElement[Any], dialect: str) -> ColumnElement[str]:
    """`text` as neutralize() would return it, computed by the database."""
    # One position lookup in a string of the formula characters: cheaper than an IN list
    # or six comparisons, each of which would take the first character again.
    position = func.strpos if dialect == "postgresql" else func.instr
    first = func.substr(text, 1, 1)
    starts_a_formula = and_(text != "", position(literal("".join(FORMULA_STARTS)), first) > 0)
    return case((starts_a_formula, literal("'", String) + text), else_=text)


def _utc_text(column: Any, dialect: str) -> ColumnElement[str]:
    """A UTC datetime as `YYYY-MM-DD HH:MM:SS` (ISO 8601 with a space, which Excel and
    LibreOffice both read as a date and time), or ''."""
    if dialect == "postgresql":
        text = func.to_char(func.timezone("UTC", column), "YYYY-MM-DD HH24:MI:SS")
    else:  # stored as 'YYYY-MM-DD HH:MM:SS.ffffff' in UTC
        text = func.substr(type_coerce(column, String), 1, 19)
    return func.coalesce(text, "")


def _step_text() -> ColumnElement[str]:
    """Where the subscriber is in the sequence: the next step (paused or not), finished,
    stopped, or '' if they never joined."""
    next_step = func.coalesce(Enrollment.next_step, "starting")
    return case(
        (Enrollment.status == EnrollmentStatus.ACTIVE, next_step),
        (Enrollment.status == EnrollmentStatus.PAUSED, next_step + literal(" (paused)", String)),
        else_=func.coalesce(type_coerce(Enrollment.status, String), ""),
    )


def _quoted(text: ColumnElement[Any]) -> ColumnElement[str]:
    """A CSV field in double quotes, quotes inside doubled (RFC 4180): safe for any text,
    commas and line breaks included."""
    return literal('"', String) + func.replace(text, '"', '""') + literal('"', String)


def _export_statement(wanted: SubscriberFilter, dialect: str) -> Select:
    """(id, the subscriber's whole CSV line) for subscribers after id `:after`. The line is
    built by the database: handing Python one string per row instead of twelve halves the
    export's time."""

    def latest_consent(column: Any) -> ColumnElement[Any]:
        # A scalar subquery per value: an index lookup per row on both databases (a join
        # on the latest id let PostgreSQL hash every consent there is, for every chunk).
        return (
            select(column)
            .where(ConsentRecord.subscriber_id == Subscriber.id)
            .order_by(ConsentRecord.id.desc())
            .limit(1)
            .scalar_subquery()
        )

    # Not max(): ORDER BY ... LIMIT 1 reads one entry of ix_outbox_subscriber_sent.
    last_sent = (
        select(OutboxMessage.sent_at)
        .where(OutboxMessage.subscriber_id == Subscriber.id, OutboxMessage.sent_at.is_not(None))
        .order_by(OutboxMessage.sent_at.desc())
        .limit(1)
        .scalar_subquery()
    )
    # In EXPORT_COLUMNS order. Free text is defused and quoted; the rest is made of
    # letters, digits and "-:/_+ ()" only (dates, states, zone names, step ids, hex).
    fields = [
        _quoted(_defused(Subscriber.email, dialect)),
        _quoted(_defused(func.coalesce(Subscriber.first_name, ""), dialect)),
        type_coerce(Subscriber.status, String),
        _quoted(_defused(Subscriber.source, dialect)),
        Subscriber.time_zone,
        _utc_text(Subscriber.created_at, dialect),
        _utc_text(Subscriber.confirmed_at, dialect),
        _utc_text(Subscriber.unsubscribed_at, dialect),
        # Both consent fields from one lookup. The IP comes from a header a misconfigured
        # proxy may pass through: defused like the rest.
        func.coalesce(
            latest_consent(
                _quoted(_defused(func.coalesce(ConsentRecord.ip, ""), dialect))
                + literal(",", String)
                + ConsentRecord.text_version
            ),
            literal('"",', String),
        ),
        _step_text(),
        _utc_text(last_sent, dialect),
    ]
    line = fields[0]
    for field_ in fields[1:]:
        line = line + literal(",", String) + field_
    after = bindparam("after")
    statement = (
        select(Subscriber.id, line)
        .outerjoin(
            Enrollment,
            (Enrollment.subscriber_id == Subscriber.id)
            & (Enrollment.sequence == wanted.sequence)
            # Implied by the line above, but PostgreSQL's merge join would otherwise read
            # the enrollments from the first one for every chunk.
            & (Enrollment.subscriber_id > after),
        )
        .where(Subscriber.id > after)
    )
    return wanted.apply(statement, dialect).order_by(Subscriber.id)


def export_chunks(
    read: Callable[[], Any], wanted: SubscriberFilter, *, chunk: int | None = None
) -> Iterator[list[str]]:
    """The filtered subscribers as CSV lines (no line end), oldest first, `chunk` at a time.

    `read` opens a read-only session (Database.read); each chunk gets its own, walking the
    list by id (keyset), so no transaction stays open for the whole export.
    """
    size = chunk or EXPORT_CHUNK
    after = 0
    prepared: PreparedStatement | None = None
    while True:
        with read() as session:
            connection = session.connection()
            if prepared is None:
                dialect = connection.dialect
                statement = _export_statement(wanted, dialect.name).limit(size)
                # Compiled once and read straight from the driver: the line is text already.
                prepared = PreparedStatement(statement, dialect, server_side_prepare=False)
            rows = prepared.rows(connection, {"after": after})
        if rows:
            yield [line for _, line in rows]
        if len(rows) < size:
            return
        after = rows[-1][0]


def csv_chunks(chunks: Iterator[list[str]], *, bom: bool = False) -> Iterator[str]:
    """CSV text (RFC 4180, CRLF line ends): the header at once, then one piece per chunk."""
    header = ",".join(EXPORT_COLUMNS) + "\r\n"
    yield ("\ufeff" + header) if bom else header  # the BOM makes Excel read UTF-8
    for lines in chunks:
        yield "\r\n".join(lines) + "\r\n"
