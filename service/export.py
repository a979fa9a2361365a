"""The subscriber list as a CSV file, in the columns our importer reads back, with every
cell a spreadsheet would run as a formula defused.

Exports read ranges of ids, each in its own short transaction, so a million rows stream
in flat memory and no transaction stays open for the whole file. Which subscribers go in
is service.audience's filter, the same one the list on screen uses.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from sqlalchemy import (
    ColumnElement,
    LargeBinary,
    Select,
    String,
    and_,
    any_,
    bindparam,
    case,
    cast,
    func,
    literal,
    literal_column,
    select,
    type_coerce,
)
from sqlalchemy.dialects.postgresql import aggregate_order_by, array, distinct_on

from .audience import SubscriberFilter
from .models import (
    ConsentRecord,
    Enrollment,
    EnrollmentStatus,
    OutboxMessage,
    Subscriber,
    SubscriberTag,
)
from .prepared import PreparedStatement

EXPORT_SPAN = 5_000  # subscriber ids per piece of an export
EXPORT_READERS = 2  # pieces of an export read at once

# A cell a spreadsheet would run as a formula starts with one of these (OWASP, "CSV
# injection"); a leading apostrophe makes Excel and LibreOffice show it as text. The
# importer (service.importer) takes the apostrophe off again when our export comes back.
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")

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
    "tags",  # separated by ';', as the importer reads them
)
# Free text, which people type: quoted and defused.
_TEXT_COLUMNS = ("email", "first_name", "source", "consent_ip")
# Names and ids the service checks before storing them (zone names, hex versions, step
# ids): quoted too, so that a value put into the database by hand cannot break a row.
_NAME_COLUMNS = ("time_zone", "consent_text_version", "sequence_step", "tags")
# The subscriber's status and the dates are written as they are.
_DATE_COLUMNS = ("signed_up_utc", "confirmed_utc", "unsubscribed_utc", "last_email_sent_utc")


def neutralize(cell: str) -> str:
    """A cell a spreadsheet shows as text, never runs as a formula."""
    return "'" + cell if cell.startswith(FORMULA_STARTS) else cell


# The database writes the CSV. On SQLite each row is its line, made by one printf() call,
# and a range's lines arrive as one piece of bytes; on PostgreSQL, COPY writes the rows as
# CSV and hands over bytes. Converting each value to a datetime or an enum and back in
# Python, or gluing a line together with two dozen `||`, would cost more than everything
# else together (see bench/export.py).

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
    row, (how many, their CSV lines joined by CRLF), on PostgreSQL the columns for COPY.

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
        tagged = (
            select(
                SubscriberTag.subscriber_id,
                func.string_agg(
                    SubscriberTag.tag, aggregate_order_by(literal_column("';'"), SubscriberTag.tag)
                ).label("tags"),
            )
            .where(in_range(SubscriberTag.subscriber_id))
            .group_by(SubscriberTag.subscriber_id)
            .subquery("tagged")
        )
        reader_tags = tagged.c.tags
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
        tagged = None
        # Read along the primary key (subscriber, tag): in tag order.
        reader_tags = (
            select(func.group_concat(SubscriberTag.tag, literal_column("';'")))
            .where(SubscriberTag.subscriber_id == Subscriber.id)
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
                reader_tags,
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
    if tagged is not None:
        statement = statement.outerjoin(tagged, tagged.c.subscriber_id == Subscriber.id)
    statement, key = wanted.apply(statement, dialect)
    statement = statement.where(in_range(key)).order_by(key)
    if dialect == "postgresql":
        return statement
    # The range's lines as one piece of UTF-8: a row per subscriber through the driver,
    # each a str to encode, cost a quarter of the export (bench/export.py). SQLite never
    # flattens a subquery with ORDER BY into an aggregate, so group_concat() takes the
    # lines in id order. No lines: NULL.
    lines = statement.subquery("lines")
    crlf = literal("\r\n", String)
    return select(func.count(), cast(func.group_concat(lines.c[0], crlf) + crlf, LargeBinary))


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
            ((rows, data),) = prepared.rows(connection, values)
        return ExportPiece(rows, data or b"")

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
