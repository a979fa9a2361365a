"""Importing subscribers from a CSV file: what each row would do, then doing it.

`read_rows` reads a file as it streams in (any size, in flat memory) and checks each row
on its own; `compare_with_the_list` says what would happen to the valid ones (new,
updated, unchanged, skipped); `apply_plan` carries a plan out in the caller's transaction.
`read_plan` puts these together for a file held in memory. Large files go through
service.imports, which stages the checked rows in the database and imports them in
batches. Where consent came from is required: it becomes each new subscriber's consent
record. New subscribers are either confirmed already (consent given elsewhere) or sent a
confirmation email (double opt-in), as the owner chooses; unsubscribed and bounced people
in the file are imported as such and never mailed.

The file may be our own export: its apostrophe-defused cells, status, dates and tags come
back as they went out.

Tags: a `tags` column (tags separated by ';' or ',') and the tags the owner chose for the
whole file are added to each row's reader, new or already on the list (added, never
removed: a reader keeps the tags they had). A row with a cell that is not a tag is
invalid, and reported, like any other; the other rows import.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from . import erasure, journal, kinds, outbox, sequences, signup_input, subscriptions, tags

# ImportProblem, decoded_lines and MAX_LINE_CHARACTERS are the importer's to its callers.
from .csv_input import MAX_LINE_CHARACTERS as MAX_LINE_CHARACTERS
from .csv_input import ImportProblem as ImportProblem
from .csv_input import decoded_lines as decoded_lines
from .csv_input import header_map, records, undefused, when
from .db import insert_ignoring_conflicts
from .models import Subscriber, SubscriberStatus
from .plain_input import clean_name, normalized_email

MAX_IMPORT_BYTES = 50 * 1024 * 1024
MAX_ISSUES_SHOWN = 200
IMPORT_SOURCE = "import"
TAG_SEPARATORS = re.compile(r"[;,]")
LEFT = (SubscriberStatus.UNSUBSCRIBED, SubscriberStatus.BOUNCED)


class Mode(enum.StrEnum):
    CONFIRMED = "confirmed"  # they opted in elsewhere: confirmed now, with that consent
    CONFIRM = "confirm"  # send each a confirmation email first (double opt-in)


class Outcome(enum.StrEnum):
    NEW = "new"
    UPDATED = "updated"
    UNCHANGED = "unchanged"
    INVALID = "invalid"
    DUPLICATE = "duplicate"
    SKIPPED = "skipped"  # erased on request, or complained: never imported again


@dataclass
class Row:
    line: int
    outcome: Outcome
    email: str = ""
    first_name: str | None = None
    time_zone: str = ""
    source: str = IMPORT_SOURCE
    status: SubscriberStatus | None = None
    signed_up: datetime | None = None
    confirmed: datetime | None = None
    unsubscribed: datetime | None = None
    reason: str = ""
    existing_id: int | None = None
    tags: list[str] = field(default_factory=list)


@dataclass
class Plan:
    rows: list[Row] = field(default_factory=list)
    columns: dict[str, str] = field(default_factory=dict)  # field -> header in the file

    def count(self, outcome: Outcome) -> int:
        return sum(1 for row in self.rows if row.outcome is outcome)

    @property
    def counts(self) -> dict[str, int]:
        return {outcome.value: self.count(outcome) for outcome in Outcome}

    @property
    def issues(self) -> list[Row]:
        """Rows that will not be imported, with why, in file order."""
        problems = (Outcome.INVALID, Outcome.DUPLICATE, Outcome.SKIPPED)
        return [row for row in self.rows if row.outcome in problems]


def read_rows(
    lines: Iterable[str], *, default_time_zone: str
) -> tuple[dict[str, str], Iterator[Row]]:
    """The columns found (field -> header in the file) and every row, checked on its own:
    NEW, or INVALID with the reason. ImportProblem for a file that cannot be read at all,
    raised here for its header and while iterating for a broken line further on."""
    in_file = records(lines)
    try:
        _, header = next(in_file)
    except StopIteration:
        raise ImportProblem("The file is empty.") from None
    columns = header_map(header)
    if "email" not in columns:
        raise ImportProblem(
            "No email column: the first line must name the columns, one of them 'email' "
            f"(found: {', '.join(h for h in header if h.strip())[:300] or 'nothing'})."
        )
    found = {name: header[index] for name, index in columns.items()}
    return found, _checked_rows(in_file, columns, default_time_zone)


def _checked_rows(
    records: Iterator[tuple[int, list[str]]], columns: dict[str, int], default_time_zone: str
) -> Iterator[Row]:
    known_zones = signup_input.known_time_zones()
    for line, cells in records:
        if not any(cell.strip() for cell in cells):
            continue  # blank lines are not rows
        given = {
            name: undefused(cells[index]) if index < len(cells) else ""
            for name, index in columns.items()
        }
        cell = given.get
        row = Row(line=line, outcome=Outcome.NEW)
        try:
            row.email = cell("email", "")[:320]  # as typed, for the preview if it is invalid
            row.email = normalized_email(row.email)
            row.first_name = clean_name(cell("first_name", ""))
            zone = cell("time_zone", "")
            if zone and zone not in known_zones:
                raise ValueError(f"time zone {zone[:64]!r} is not one we know")
            row.time_zone = zone or default_time_zone
            source = cell("source", "") or IMPORT_SOURCE
            if not signup_input.SOURCE_PATTERN.fullmatch(source):
                raise ValueError(f"source {source[:100]!r} may only hold letters, digits and ._:/-")
            row.source = source
            status = cell("status", "").lower()
            if status and status not in SubscriberStatus._value2member_map_:
                raise ValueError(f"status {status[:20]!r} is not one of pending, confirmed, ...")
            row.status = SubscriberStatus(status) if status else None
            row.signed_up = when(cell("signed_up", ""), "signed up")
            row.confirmed = when(cell("confirmed", ""), "confirmed")
            row.unsubscribed = when(cell("unsubscribed", ""), "unsubscribed")
            listed = cell("tags", "")
            row.tags = tags.clean_all(TAG_SEPARATORS.split(listed)) if listed else []
        except tags.InvalidTag as exc:
            row.outcome = Outcome.INVALID
            row.reason = f"tags: {exc}"[:300]
        except ValueError as exc:
            row.outcome = Outcome.INVALID
            row.reason = (str(exc) or "not a valid row")[:300]
        yield row


def read_plan(session: Session, data: bytes, *, default_time_zone: str) -> Plan:
    """What importing `data`, a file held in memory, would do, row by row; ImportProblem
    if it cannot be read."""
    if len(data) > MAX_IMPORT_BYTES:
        raise ImportProblem(
            f"The file is {len(data) / 1e6:.0f} MB; the most that can be imported at once is "
            f"{MAX_IMPORT_BYTES / 1e6:.0f} MB. Split it and import the parts."
        )
    columns, rows = read_rows(decoded_lines([data]), default_time_zone=default_time_zone)
    plan = Plan(columns=columns)
    seen: dict[str, int] = {}
    for row in rows:
        plan.rows.append(row)
        if row.outcome is not Outcome.NEW:
            continue
        key = signup_input.email_key(row.email)
        if key in seen:
            row.outcome = Outcome.DUPLICATE
            row.reason = f"the same address as line {seen[key]}"
            continue
        seen[key] = row.line
    compare_with_the_list(session, plan.rows)
    return plan


# Why a suppressed address is not imported, by the suppression's reason.
SKIPPED_BECAUSE = {
    "erased": "erased on their request; they can only sign up again themselves",
    "complaint": "reported an email as spam; they can only sign up again themselves",
}


def compare_with_the_list(session: Session, rows: list[Row]) -> None:
    """New or known? Of `rows`, those still NEW become UPDATED (the file adds a first
    name), UNCHANGED, or SKIPPED (erased on their request, or complained), or stay NEW."""
    candidates = {
        signup_input.email_key(row.email): row for row in rows if row.outcome is Outcome.NEW
    }
    keys = list(candidates)
    for start in range(0, len(keys), 500):
        chunk = keys[start : start + 500]
        for subscriber_id, key, first_name in session.execute(
            select(Subscriber.id, Subscriber.email_key, Subscriber.first_name).where(
                Subscriber.email_key.in_(chunk)
            )
        ):
            row = candidates[key]
            row.existing_id = subscriber_id
            adds_name = row.first_name and not first_name
            row.outcome = Outcome.UPDATED if adds_name else Outcome.UNCHANGED
    new = [row for row in candidates.values() if row.outcome is Outcome.NEW]
    suppressed = erasure.suppressed(session, [row.email for row in new])
    for row in new:
        if row.email in suppressed:
            row.outcome = Outcome.SKIPPED
            row.reason = SKIPPED_BECAUSE.get(suppressed[row.email], SKIPPED_BECAUSE["erased"])


def subscriber_values(row: Row, *, mode: Mode, now: datetime) -> dict[str, Any]:
    """The subscriber a new row becomes: confirmed now or pending (the owner's `mode`)
    unless the file says they left; their times from the file where it has them."""
    status = row.status
    if status not in LEFT:
        status = SubscriberStatus.CONFIRMED if mode is Mode.CONFIRMED else SubscriberStatus.PENDING
    return {
        "email": row.email,
        "email_key": signup_input.email_key(row.email),
        "mailbox_key": signup_input.mailbox_key(row.email),
        "first_name": row.first_name,
        "status": status,
        "time_zone": row.time_zone,
        "source": row.source,
        "created_at": row.signed_up or now,
        # Kept from the file even for those who left since: it is their history.
        "confirmed_at": row.confirmed or (now if status is SubscriberStatus.CONFIRMED else None),
        "unsubscribed_at": (row.unsubscribed or now)
        if status is SubscriberStatus.UNSUBSCRIBED
        else None,
        "bounced_at": now if status is SubscriberStatus.BOUNCED else None,
    }


@dataclass
class Applied:
    created: int = 0
    updated: int = 0
    confirmations_queued: int = 0
    enrolled: int = 0
    tagged: int = 0  # readers already on the list given a tag they did not carry


def apply_plan(
    session: Session,
    plan: Plan,
    *,
    consent_text: str,
    mode: Mode,
    join_sequence: bool,
    sequence: str,
    now: datetime,
    tags_for_all: list[str] | None = None,
) -> Applied:
    """Carry out `plan` in the caller's transaction (all rows or, on any error, none).
    Each row's reader, new or already on the list, gets the row's tags and `tags_for_all`."""
    consent_text = " ".join(consent_text.split())
    if not consent_text:
        raise ImportProblem("Say where these people gave their consent; it is kept as proof.")
    done = Applied()
    origin = journal.Origin(ip=None, user_agent=None)
    for row in plan.rows:
        row_tags = list(dict.fromkeys([*row.tags, *(tags_for_all or [])]))
        on_the_list = row.outcome in (Outcome.UPDATED, Outcome.UNCHANGED)
        if on_the_list and row.existing_id is not None and row_tags:
            added = tags.add(session, row.existing_id, row_tags, added_by="import", now=now)
            done.tagged += bool(added)
        if row.outcome is Outcome.UPDATED and row.existing_id is not None:
            subscriber = session.get(Subscriber, row.existing_id)
            if subscriber is not None and not subscriber.first_name:
                subscriber.first_name = row.first_name
                done.updated += 1
            continue
        if row.outcome is not Outcome.NEW:
            continue
        values = subscriber_values(row, mode=mode, now=now)
        status = values["status"]
        subscriber_id = insert_ignoring_conflicts(
            session, Subscriber.__table__, values, returning=Subscriber.id
        )
        if subscriber_id is None:
            continue  # signed up meanwhile: the form's own record stands
        done.created += 1
        tags.add(session, subscriber_id, row_tags, added_by="import", now=now)
        journal.record_consent(
            session,
            subscriber_id,
            action="import",
            origin=origin,
            source=row.source,
            consent_text=consent_text,
            now=now,
        )
        journal.record_event(
            session, subscriber_id, "imported", now=now, detail={"status": status.value}
        )
        if status is SubscriberStatus.PENDING:
            outbox.enqueue(
                session,
                subscriptions.NewSubscriber(subscriber_id, row.email),
                kinds.CONFIRM,
                now=now,
            )
            done.confirmations_queued += 1
        elif status is SubscriberStatus.CONFIRMED and join_sequence:
            stand_in = subscriptions.NewSubscriber(subscriber_id, row.email)
            if sequences.enroll(session, stand_in, now=now, sequence=sequence):
                done.enrolled += 1
    return done
