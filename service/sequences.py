"""Drip sequences: what the sequence is, where each subscriber stands, and what is due.

A sequence is data: `templates/emails/sequence.toml` lists its steps in order, each with
a delay after the previous step (the first counted from confirmation), a template, and
optionally the weekdays it may go out on. Day delays land at the sequence's send hour in
the subscriber's own time zone; hour delays ignore the send hour.

Each subscriber has an enrollment row: the steps passed so far, the step planned next and
when it is due. A scheduler tick turns due enrollments into outbox rows (one per
subscriber and step, unique) in the same transaction that moves the enrollment on, so the
work of a tick is proportional to what is due, found through an index on the due time.

Where a subscriber stands is worked out from the steps they have passed, against the file
as it is now: the next step is the one after the furthest step they have passed. So a step
added after that point reaches them, one inserted before it does not, and a removed step
is simply no longer there to send. Subscribers who finished stay finished.
"""

from __future__ import annotations

import enum
import functools
import logging
import re
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from sqlalchemy import select, text, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from .db import insert_ignoring_conflicts
from .models import (
    ENROLLMENT_DUE_STATES,
    Enrollment,
    EnrollmentStatus,
    OutboxMessage,
    OutboxStatus,
    Subscriber,
    SubscriberStatus,
)

logger = logging.getLogger(__name__)

WEEKDAYS = {"mon": 0, "tue": 1, "wed": 2, "thu": 3, "fri": 4, "sat": 5, "sun": 6}
EVERY_DAY = frozenset(range(7))
STEP_ID = re.compile(r"[a-z0-9][a-z0-9_-]{0,62}")
DELAY = re.compile(r"\s*(\d+)\s*(day|days|hour|hours)\s*")
SEQUENCE_KIND = "sequence"


class SequenceError(ValueError):
    """The sequence file cannot be used; the message says where and why."""


@dataclass(frozen=True)
class Delay:
    """How long after the previous step (or confirmation) a step is due."""

    amount: int
    unit: str  # "days" or "hours"

    @classmethod
    def parse(cls, text: str) -> Delay:
        match = DELAY.fullmatch(text)
        if match is None:
            raise ValueError(f"delay {text!r} is not like '2 days' or '3 hours'")
        unit = "hours" if match.group(2).startswith("hour") else "days"
        return cls(int(match.group(1)), unit)

    @property
    def in_hours(self) -> bool:
        return self.unit == "hours"

    def __str__(self) -> str:
        return f"{self.amount} {self.unit[:-1] if self.amount == 1 else self.unit}"


@dataclass(frozen=True)
class Step:
    id: str
    template: str
    delay: Delay
    weekdays: frozenset[int] = EVERY_DAY
    # Names of owner links the email needs; without them the step is skipped.
    requires: tuple[str, ...] = ()


@dataclass(frozen=True)
class DripSequence:
    """A sequence as loaded from its file."""

    name: str
    send_hour: int
    latest_hour: int
    steps: tuple[Step, ...]
    links: Mapping[str, str] = field(default_factory=dict)
    videos: Mapping[str, Mapping[str, str]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # Looked up for every email sent: a dict, not a scan.
        object.__setattr__(self, "_positions", {step.id: i for i, step in enumerate(self.steps)})

    def position(self, step_id: str) -> int | None:
        return self._positions.get(step_id)

    def step(self, step_id: str) -> Step | None:
        index = self.position(step_id)
        return None if index is None else self.steps[index]

    def lost(self, passed: Sequence[str]) -> bool:
        """True when none of the steps a subscriber passed is in the file any more (a step
        id renamed by mistake, say): where they stand is unknown."""
        return bool(passed) and all(self.position(s) is None for s in passed)

    def next_step(self, passed: Sequence[str]) -> Step | None:
        """The step after the furthest step passed that is still in the file; None at the
        end, or when the subscriber is lost (see `lost`)."""
        positions = [p for p in (self.position(s) for s in passed) if p is not None]
        if not passed:
            return self.steps[0] if self.steps else None
        if not positions:
            return None
        following = max(positions) + 1
        return self.steps[following] if following < len(self.steps) else None

    def missing_links(self, step: Step) -> list[str]:
        return [name for name in step.requires if not self.links.get(name)]

    def context(self) -> dict[str, Any]:
        """What every step's template may use besides the subscriber's own fields."""
        return {"links": dict(self.links), "videos": {k: dict(v) for k, v in self.videos.items()}}


def load(path: Path, *, template_exists: Any = None) -> DripSequence:
    """Read and check a sequence file; SequenceError names the problem and the step."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise SequenceError(f"{path}: no such file") from exc
    except tomllib.TOMLDecodeError as exc:
        raise SequenceError(f"{path}: {exc}") from exc

    def fail(message: str) -> SequenceError:
        return SequenceError(f"{path}: {message}")

    name = data.get("name")
    if not isinstance(name, str) or not STEP_ID.fullmatch(name):
        raise fail("'name' must be a short lower-case name like 'back-pain-tips'")
    send_hour = data.get("send_hour", 8)
    latest_hour = data.get("latest_hour", 20)
    if not (isinstance(send_hour, int) and 0 <= send_hour <= 23):
        raise fail("'send_hour' must be a whole hour from 0 to 23")
    if not (isinstance(latest_hour, int) and send_hour < latest_hour <= 24):
        raise fail("'latest_hour' must be after 'send_hour' and at most 24")
    links = data.get("links", {})
    if not isinstance(links, dict) or not all(isinstance(v, str) for v in links.values()):
        raise fail("[links] must hold text values")
    videos = data.get("videos", {})
    if not isinstance(videos, dict) or not all(isinstance(v, dict) for v in videos.values()):
        raise fail("[videos.NAME] tables must each hold 'url' and 'thumbnail'")

    steps: list[Step] = []
    for number, raw in enumerate(data.get("steps", []), start=1):
        where = f"step {number}"
        if not isinstance(raw, dict):
            raise fail(f"{where} is not a table")
        step_id = raw.get("id")
        if not isinstance(step_id, str) or not STEP_ID.fullmatch(step_id):
            raise fail(f"{where}: 'id' must be lower-case letters, digits, '-' or '_'")
        where = f"step {number} ({step_id})"
        if any(s.id == step_id for s in steps):
            raise fail(f"{where}: the id is used twice")
        template = raw.get("template")
        if not isinstance(template, str) or not template:
            raise fail(f"{where}: 'template' is missing")
        if template_exists is not None and not template_exists(template):
            raise fail(f"{where}: no email template {template}.txt / {template}.html")
        try:
            delay = Delay.parse(str(raw.get("delay", "")))
        except ValueError as exc:
            raise fail(f"{where}: {exc}") from exc
        # Each tick moves a subscriber on at most one step because the next one is always
        # later than now; '0 hours' after a step would break that. ('0 days' is fine: the
        # next allowed day, as two steps never share a day.)
        if steps and delay.in_hours and delay.amount == 0:
            raise fail(f"{where}: a delay after the first step must be at least 1 hour")
        weekdays = raw.get("weekdays")
        allowed = EVERY_DAY
        if weekdays is not None:
            if not isinstance(weekdays, list) or not weekdays:
                raise fail(f"{where}: 'weekdays' must be a list like ['mon', 'wed']")
            try:
                allowed = frozenset(WEEKDAYS[str(d).lower()[:3]] for d in weekdays)
            except KeyError as exc:
                raise fail(f"{where}: unknown weekday {exc.args[0]!r}") from exc
        requires = raw.get("requires", [])
        if isinstance(requires, str):
            requires = [requires]
        unknown = [r for r in requires if r not in links]
        if unknown:
            raise fail(
                f"{where}: requires unknown link(s) {', '.join(unknown)} (add them to [links])"
            )
        steps.append(Step(step_id, template, delay, allowed, tuple(requires)))
    if not steps:
        raise fail("the sequence has no [[steps]]")
    return DripSequence(name, send_hour, latest_hour, tuple(steps), links, videos)


# --- time -----------------------------------------------------------------------------


def zone_of(name: str, default: ZoneInfo) -> ZoneInfo:
    """The reader's zone, or `default` for a name the zone database does not know."""
    return _zone(name) or default


@functools.lru_cache(maxsize=1024)
def _zone(name: str) -> ZoneInfo | None:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        return None


def _at_hour(day: date, hour: int, zone: ZoneInfo) -> datetime:
    # As a UTC instant: a wall time that daylight saving skips (02:30 on the spring-forward
    # night) then becomes the real moment an hour on, and comparisons never see a fiction.
    return datetime.combine(day, time(hour), tzinfo=zone).astimezone(UTC)


def due_time(
    step: Step,
    *,
    base: datetime,
    zone: ZoneInfo,
    send_hour: int,
    previous: datetime | None = None,
) -> datetime:
    """When `step` is due, counted from `base` (the previous step, or confirmation).

    Day delays land on the send hour in the subscriber's zone, on an allowed weekday, and
    never on the same local day as the previous step. Hour delays are counted exactly;
    if that instant falls on a day the step may not go out, it moves to the next allowed
    day's send hour.
    """
    if step.delay.in_hours:
        due = base + timedelta(hours=step.delay.amount)
        if due.astimezone(zone).weekday() in step.weekdays:
            return due
        day = due.astimezone(zone).date() + timedelta(days=1)
    else:
        day = base.astimezone(zone).date() + timedelta(days=step.delay.amount)
        if _at_hour(day, send_hour, zone) <= base:
            day += timedelta(days=1)
        if previous is not None:
            day = max(day, previous.astimezone(zone).date() + timedelta(days=1))
    while day.weekday() not in step.weekdays:
        day += timedelta(days=1)
    return _at_hour(day, send_hour, zone)


def sending_window_opens(
    step: Step, *, now: datetime, zone: ZoneInfo, sequence: DripSequence
) -> datetime | None:
    """None if a due day-delay step may go out now; else when it may.

    A step sent late (the scheduler was down) still goes out at a sensible local hour:
    between the send hour and `latest_hour`, on an allowed weekday.
    """
    if step.delay.in_hours:
        return None
    local = now.astimezone(zone)
    if local.weekday() in step.weekdays and sequence.send_hour <= local.hour < sequence.latest_hour:
        return None
    day = local.date() if local.hour < sequence.send_hour else local.date() + timedelta(days=1)
    while day.weekday() not in step.weekdays:
        day += timedelta(days=1)
    return _at_hour(day, sequence.send_hour, zone)


# --- enrollment -----------------------------------------------------------------------


class Outcome(enum.StrEnum):
    QUEUED = "queued"  # an email for the step is in the outbox
    PLANNED = "planned"  # the next step's time was (re)calculated; nothing sent yet
    SKIPPED = "skipped"  # the step needs a link the owner has not set
    FINISHED = "finished"
    STOPPED = "stopped"  # the subscriber may no longer receive mail


def enroll(session: Session, subscriber: Subscriber, *, now: datetime, sequence: str) -> bool:
    """Start (or, after a new confirmation, restart) a subscriber's place in a sequence.

    The first step is planned by the next scheduler tick, which knows the sequence file.
    A returning subscriber carries on after the steps they already had; someone who
    finished stays finished. True if an enrollment was created or reactivated.
    """
    created = insert_ignoring_conflicts(
        session,
        Enrollment.__table__,
        {
            "subscriber_id": subscriber.id,
            "sequence": sequence,
            "enrolled_at": now,
            "status": EnrollmentStatus.ACTIVE,
            "steps_passed": [],
            "next_due_at": now,
        },
    )
    if created:
        return True
    result = session.execute(
        update(Enrollment)
        .where(
            Enrollment.subscriber_id == subscriber.id,
            Enrollment.sequence == sequence,
            Enrollment.status == EnrollmentStatus.STOPPED,
        )
        .values(
            status=EnrollmentStatus.ACTIVE,
            next_step=None,
            next_due_at=now,
            resumed_at=now,
            last_step_at=now,
        )
        .execution_options(synchronize_session=False)
    )
    return result.rowcount == 1


def _take_back_steps(
    session: Session,
    enrollment: Enrollment,
    *,
    states: tuple[OutboxStatus, ...],
    reason: str,
) -> None:
    """Cancel the enrollment's steps that are in the outbox but not sent, and count them as
    not passed, so they come again if the sequence carries on."""
    taken_back = session.scalars(
        update(OutboxMessage)
        .where(
            OutboxMessage.dedupe_key.startswith(
                _dedupe_key(enrollment.sequence, enrollment.subscriber_id, "")
            ),
            OutboxMessage.status.in_(states),
        )
        .values(status=OutboxStatus.CANCELLED, last_error=reason)
        .returning(OutboxMessage.sequence_step)
        .execution_options(synchronize_session=False)
    ).all()
    if taken_back:
        enrollment.steps_passed = [s for s in enrollment.steps_passed if s not in taken_back]


def stop(session: Session, subscriber_id: int, *, now: datetime, reason: str) -> None:
    """End a subscriber's sequences (they unsubscribed or bounced), including a step
    already claimed for sending. Sent steps stay sent; unsent ones are not counted as
    passed, so a reader who comes back gets them.

    Locking the enrollments first waits for a tick that is moving them on, so a step it
    has just queued is cancelled here too.
    """
    enrollments = session.scalars(
        select(Enrollment)
        .where(
            Enrollment.subscriber_id == subscriber_id,
            Enrollment.status.in_([EnrollmentStatus.ACTIVE, EnrollmentStatus.PAUSED]),
        )
        .with_for_update()
    ).all()
    for enrollment in enrollments:
        _take_back_steps(
            session, enrollment, states=(OutboxStatus.QUEUED, OutboxStatus.SENDING), reason=reason
        )
        enrollment.status = EnrollmentStatus.STOPPED
        enrollment.stopped_at = now
        enrollment.next_due_at = None


def _enrollment(session: Session, subscriber_id: int, sequence: str) -> Enrollment | None:
    return session.scalar(
        select(Enrollment)
        .where(Enrollment.subscriber_id == subscriber_id, Enrollment.sequence == sequence)
        .with_for_update()
    )


def pause(session: Session, subscriber_id: int, *, sequence: str, now: datetime) -> bool:
    """Hold a subscriber's sequence. A step queued but not sent is taken back; one already
    on its way to the mail server goes."""
    enrollment = _enrollment(session, subscriber_id, sequence)
    if enrollment is None or enrollment.status is not EnrollmentStatus.ACTIVE:
        return False
    _take_back_steps(session, enrollment, states=(OutboxStatus.QUEUED,), reason="sequence paused")
    enrollment.status = EnrollmentStatus.PAUSED
    enrollment.paused_at = now
    enrollment.next_due_at = None
    return True


def resume(session: Session, subscriber_id: int, *, sequence: str, now: datetime) -> bool:
    """Carry on with the next step, timed afresh from now: no burst of missed emails."""
    enrollment = _enrollment(session, subscriber_id, sequence)
    if enrollment is None or enrollment.status is not EnrollmentStatus.PAUSED:
        return False
    enrollment.status = EnrollmentStatus.ACTIVE
    enrollment.resumed_at = now
    enrollment.last_step_at = now
    enrollment.next_step = None  # the next tick plans it from `now`
    enrollment.next_due_at = now
    return True


@dataclass
class TickReport:
    """What one pass over due enrollments did."""

    queued: int = 0
    planned: int = 0
    skipped: int = 0
    finished: int = 0
    stopped: int = 0

    def add(self, outcome: Outcome) -> None:
        setattr(self, outcome.value, getattr(self, outcome.value) + 1)

    @property
    def total(self) -> int:
        return self.queued + self.planned + self.skipped + self.finished + self.stopped

    def __str__(self) -> str:
        return ", ".join(
            f"{k} {getattr(self, k)}"
            for k in ("queued", "planned", "skipped", "finished", "stopped")
        )


@dataclass
class _Due:
    enrollment_id: int
    subscriber_id: int
    email: str
    subscriber_status: SubscriberStatus
    time_zone: str
    enrolled_at: datetime
    last_step_at: datetime | None
    next_step: str | None
    passed: list[str]


def due_enrollments(
    session: Session, sequence: DripSequence, *, now: datetime, limit: int
) -> list[_Due]:
    """Enrollments whose next step is due, earliest first (an index range scan).

    On PostgreSQL the rows are locked, skipping rows another scheduler holds.
    """
    statement = (
        select(
            Enrollment.id,
            Subscriber.id,
            Subscriber.email,
            Subscriber.status,
            Subscriber.time_zone,
            Enrollment.enrolled_at,
            Enrollment.last_step_at,
            Enrollment.next_step,
            Enrollment.steps_passed,
        )
        .join(Subscriber, Subscriber.id == Enrollment.subscriber_id)
        .where(
            # The index's own terms, with the table named (the query joins subscribers).
            text(f"enrollments.{ENROLLMENT_DUE_STATES}"),
            Enrollment.next_due_at <= now,
            Enrollment.sequence == sequence.name,
        )
        .order_by(Enrollment.next_due_at)
        .limit(limit)
    )
    if session.get_bind().dialect.name == "postgresql":
        statement = statement.with_for_update(skip_locked=True, of=Enrollment)
    return [_Due(*row[:8], passed=list(row[8] or [])) for row in session.execute(statement)]


def advance_due(
    session: Session,
    sequence: DripSequence,
    *,
    now: datetime,
    default_zone: ZoneInfo,
    limit: int = 500,
) -> TickReport:
    """Move every due enrollment (up to `limit`) one step on, in this transaction.

    Each gets at most one step per call, and never while its previous step is still
    waiting in the outbox: a step is timed from when the previous one actually went out.
    So a scheduler or mail server that was down catches up without sending anyone two
    steps at once.
    """
    report = TickReport()
    due = due_enrollments(session, sequence, now=now, limit=limit)
    previous = _previous_emails(session, sequence, due)
    outbox_rows: list[dict[str, Any]] = []
    updates: list[dict[str, Any]] = []
    for entry in due:
        outcome, changes, email = _advance_one(
            entry,
            sequence,
            previous.get(entry.subscriber_id),
            now=now,
            default_zone=default_zone,
        )
        report.add(outcome)
        updates.append({"id": entry.enrollment_id, **changes})
        if email is not None:
            outbox_rows.append(email)
    _queue_steps(session, outbox_rows, now=now)
    if updates:
        session.execute(update(Enrollment), updates)
    return report


def _dedupe_key(sequence: str, subscriber_id: int, step_id: str) -> str:
    return f"{SEQUENCE_KIND}:{sequence}:{subscriber_id}:{step_id}"


def _previous_emails(
    session: Session, sequence: DripSequence, due: list[_Due]
) -> dict[int, tuple[OutboxStatus, datetime | None]]:
    """The outbox state of each subscriber's last step (one query, by unique key)."""
    keys = {
        _dedupe_key(sequence.name, d.subscriber_id, d.passed[-1]): d.subscriber_id
        for d in due
        if d.passed
    }
    if not keys:
        return {}
    rows = session.execute(
        select(OutboxMessage.dedupe_key, OutboxMessage.status, OutboxMessage.sent_at).where(
            OutboxMessage.dedupe_key.in_(list(keys))
        )
    )
    return {keys[key]: (state, sent_at) for key, state, sent_at in rows}


# How soon to look again at a subscriber whose previous step has not gone out yet.
PREVIOUS_PENDING_RECHECK = timedelta(hours=1)
# ... and at one whose steps are all gone from the file.
LOST_RECHECK = timedelta(days=1)


def _advance_one(
    due: _Due,
    sequence: DripSequence,
    previous_email: tuple[OutboxStatus, datetime | None] | None,
    *,
    now: datetime,
    default_zone: ZoneInfo,
) -> tuple[Outcome, dict[str, Any], dict[str, Any] | None]:
    """Decide what happens to one due enrollment: (outcome, enrollment changes, outbox row)."""
    if due.subscriber_status is not SubscriberStatus.CONFIRMED:
        return (
            Outcome.STOPPED,
            {"status": EnrollmentStatus.STOPPED, "stopped_at": now, "next_due_at": None},
            None,
        )
    if previous_email is not None and previous_email[0] in (
        OutboxStatus.QUEUED,
        OutboxStatus.SENDING,
    ):
        return Outcome.PLANNED, {"next_due_at": now + PREVIOUS_PENDING_RECHECK}, None
    zone = zone_of(due.time_zone, default_zone)
    if sequence.lost(due.passed):
        # Sending nothing beats starting them from the top; look again tomorrow, in case
        # the file is put right.
        logger.warning(
            "subscriber %d passed steps %s, none of which is in the sequence now",
            due.subscriber_id,
            ", ".join(due.passed),
        )
        return Outcome.PLANNED, {"next_step": None, "next_due_at": now + LOST_RECHECK}, None
    step = sequence.next_step(due.passed)
    if step is None:
        return Outcome.FINISHED, _finished(now), None

    # Timed from the later of: the previous step being queued (or a resume), and its
    # actual sending. Recomputed every time, so edits to the file and late sends count.
    sent_at = previous_email[1] if previous_email is not None else None
    moments = [t for t in (due.last_step_at, sent_at) if t is not None]
    base = max(moments) if moments else due.enrolled_at
    previous = base if due.passed else None
    planned = due_time(step, base=base, zone=zone, send_hour=sequence.send_hour, previous=previous)
    if planned > now:
        return Outcome.PLANNED, {"next_step": step.id, "next_due_at": planned}, None
    opens = sending_window_opens(step, now=now, zone=zone, sequence=sequence)
    if opens is not None:
        return Outcome.PLANNED, {"next_step": step.id, "next_due_at": opens}, None

    passed = [*due.passed, step.id]
    following = sequence.next_step(passed)
    changes: dict[str, Any] = {"steps_passed": passed, "last_step_at": now}
    if following is None:
        changes.update(_finished(now))
    else:
        changes.update(
            next_step=following.id,
            next_due_at=due_time(
                following, base=now, zone=zone, send_hour=sequence.send_hour, previous=now
            ),
        )
    missing = sequence.missing_links(step)
    if missing:
        logger.info(
            "step %s skipped for subscriber %d: no %s",
            step.id,
            due.subscriber_id,
            ", ".join(missing),
        )
        outcome = Outcome.FINISHED if following is None else Outcome.SKIPPED
        return outcome, changes, None
    email = {
        "subscriber_id": due.subscriber_id,
        "to_address": due.email,
        "kind": SEQUENCE_KIND,
        "template": step.template,
        "context": {"sequence": sequence.name, "step": step.id},
        "sequence_step": step.id,
        "dedupe_key": _dedupe_key(sequence.name, due.subscriber_id, step.id),
        "status": OutboxStatus.QUEUED,
        "attempts": 0,
        "due_at": now,
        "created_at": now,
    }
    return Outcome.QUEUED, changes, email


def _finished(now: datetime) -> dict[str, Any]:
    return {
        "status": EnrollmentStatus.FINISHED,
        "finished_at": now,
        "next_step": None,
        "next_due_at": None,
    }


def _queue_steps(session: Session, rows: list[dict[str, Any]], *, now: datetime) -> None:
    """One row per (subscriber, step), ever: inserted all at once, a conflict left alone.
    A row cancelled by a pause is revived on resume; a row already sent is never sent
    again."""
    if not rows:
        return
    dialect = session.get_bind().dialect.name
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    session.connection().execute(insert(OutboxMessage.__table__).on_conflict_do_nothing(), rows)
    session.execute(
        update(OutboxMessage)
        .where(
            OutboxMessage.dedupe_key.in_([row["dedupe_key"] for row in rows]),
            OutboxMessage.status == OutboxStatus.CANCELLED,
        )
        .values(
            status=OutboxStatus.QUEUED, attempts=0, due_at=now, claimed_by=None, last_error=None
        )
        .execution_options(synchronize_session=False)
    )


@dataclass
class StepStatus:
    step: Step
    waiting: int = 0  # active subscribers whose next step this is
    due_soon: int = 0  # ... and due within the window
    sent: int = 0


@dataclass
class SequenceStatus:
    steps: list[StepStatus]
    by_status: dict[str, int]
    due_soon: int
    elsewhere: int  # active, waiting for a step no longer in the file (planned again when due)


def status(
    session: Session, sequence: DripSequence, *, now: datetime, window: timedelta
) -> SequenceStatus:
    """How many subscribers wait for each step, how many are due within `window`, and
    how many received each step."""
    from sqlalchemy import case, func

    rows = {s.id: StepStatus(s) for s in sequence.steps}
    soon = now + window
    waiting = session.execute(
        select(
            Enrollment.next_step,
            func.count(),
            func.sum(case((Enrollment.next_due_at <= soon, 1), else_=0)),
        )
        .where(Enrollment.sequence == sequence.name, Enrollment.status == EnrollmentStatus.ACTIVE)
        .group_by(Enrollment.next_step)
    ).all()
    elsewhere = 0
    due_soon = 0
    for step_id, count, due in waiting:
        due_soon += int(due or 0)
        if step_id in rows:
            rows[step_id].waiting = count
            rows[step_id].due_soon = int(due or 0)
        else:
            elsewhere += count
    for step_id, count in session.execute(
        select(OutboxMessage.sequence_step, func.count())
        .where(OutboxMessage.kind == SEQUENCE_KIND, OutboxMessage.status == OutboxStatus.SENT)
        .group_by(OutboxMessage.sequence_step)
    ):
        if step_id in rows:
            rows[step_id].sent = count
    by_status = {
        str(state.value if hasattr(state, "value") else state): count
        for state, count in session.execute(
            select(Enrollment.status, func.count())
            .where(Enrollment.sequence == sequence.name)
            .group_by(Enrollment.status)
        )
    }
    return SequenceStatus(list(rows.values()), by_status, due_soon, elsewhere)
