"""What the owner sees at a glance: growth per day, the funnel, each step's results, where
readers stand in the sequence, and whether mail is flowing."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta, tzinfo
from typing import Any

from sqlalchemy import Date, and_, case, cast, distinct, func, select, text
from sqlalchemy.orm import Session

from . import health
from .kinds import SEQUENCE_STEP
from .magnets import DEFAULT_MAGNET, LeadMagnet
from .models import (
    OUTBOX_DUE_STATES,
    Click,
    Enrollment,
    EnrollmentStatus,
    Event,
    MagnetRequest,
    OutboxMessage,
    OutboxStatus,
    Subscriber,
    SubscriberStatus,
    TrackedLink,
)
from .sequences import DripSequence, Step

DAILY_KINDS = ("signed_up", "imported", "confirmed", "unsubscribed")
PERIODS = (30, 90, 365)  # the dashboard's choice of days


@dataclass(frozen=True)
class Day:
    day: date
    counts: dict[str, int]


def daily_counts(session: Session, *, now: datetime, zone: tzinfo, days: int = 90) -> list[Day]:
    """Signups through the forms, imports, confirmations and unsubscribes per day in `zone`
    (the owner's), oldest first, zeros included.

    An event's local day is its UTC time shifted by the zone's UTC offset, which is the same
    for every event between two changes of offset (summer time). So the range is cut into
    spans of one offset (one or two in a year) and each is counted with one grouped query
    along the (kind, at) index, shifting `at` by that offset in SQL: exact for any zone,
    half-hour offsets included, and a handful of queries whatever the list's size."""
    first = now.astimezone(zone).date() - timedelta(days=days - 1)
    start = datetime.combine(first, time(), tzinfo=zone).astimezone(UTC)
    found: dict[date, Counter[str]] = {}
    for begin, end, offset in _offset_spans(zone, start, now):
        if session.get_bind().dialect.name == "postgresql":
            day = cast(func.timezone("UTC", Event.at) + offset, Date)
        else:  # stored as naive UTC text
            # Whole seconds: date() rounds 23:59:59.9995 up to the next day.
            at = func.substr(Event.at, 1, 19)
            day = func.date(at, f"{int(offset.total_seconds() // 60):+d} minutes")
        rows = session.execute(
            select(day, Event.kind, func.count())
            .where(Event.kind.in_(DAILY_KINDS), Event.at >= begin, Event.at < end)
            .group_by(day, Event.kind)
        ).all()
        for when, kind, count in rows:
            when = date.fromisoformat(when) if isinstance(when, str) else when
            found.setdefault(when, Counter())[kind] += count
    return [
        Day(
            first + timedelta(days=n),
            {k: found.get(first + timedelta(days=n), Counter())[k] for k in DAILY_KINDS},
        )
        for n in range(days)
    ]


def _offset_spans(
    zone: tzinfo, start: datetime, now: datetime
) -> Iterator[tuple[datetime, datetime, timedelta]]:
    """[begin, end) spans covering `start` to just past `now`, each with the zone's one UTC
    offset in it: a day at a time, and to the second where the offset changes."""

    def offset(at: datetime) -> timedelta:
        return at.astimezone(zone).utcoffset() or timedelta()

    end = now + timedelta(seconds=1)
    begin = start
    while begin < end:
        current = offset(begin)
        day_end = begin
        while day_end < end and offset(min(day_end + timedelta(days=1), end)) == current:
            day_end = min(day_end + timedelta(days=1), end)
        if day_end >= end:
            yield begin, end, current
            return
        # The change lies within the next day: find its second.
        low, high = 0, int(min(timedelta(days=1), end - day_end).total_seconds())
        while high - low > 1:
            middle = (low + high) // 2
            if offset(day_end + timedelta(seconds=middle)) == current:
                low = middle
            else:
                high = middle
        change = day_end + timedelta(seconds=high)
        yield begin, change, current
        begin = change


@dataclass(frozen=True)
class Stage:
    name: str
    count: int
    of_previous: float | None  # share of the stage before, None for the first
    of_signups: float | None
    ways: dict[str, int] | None = None  # the first stage: how they came


def funnel(session: Session, *, sequence: str) -> list[Stage]:
    """Signed up -> confirmed -> downloaded the guide -> finished the sequence: everyone on
    the list now, since the start. Those who signed up are told apart as the daily counts
    tell them: through a form (or the API), or imported."""
    signed_up = session.scalar(select(func.count()).select_from(Subscriber))
    # One "imported" event per subscriber an import added; none for the erased.
    imported = session.scalar(
        select(func.count()).where(Event.kind == "imported", Event.subscriber_id.is_not(None))
    )
    confirmed = session.scalar(
        select(func.count()).select_from(Subscriber).where(Subscriber.confirmed_at.is_not(None))
    )
    downloaded = session.scalar(
        select(func.count(distinct(Event.subscriber_id))).where(
            Event.kind == "downloaded", Event.subscriber_id.is_not(None)
        )
    )
    finished = session.scalar(
        select(func.count())
        .select_from(Enrollment)
        .where(Enrollment.sequence == sequence, Enrollment.status == EnrollmentStatus.FINISHED)
    )
    stages = []
    previous = None
    for name, count in (
        ("Signed up", signed_up),
        ("Confirmed", confirmed),
        ("Downloaded the guide", downloaded),
        ("Finished the sequence", finished),
    ):
        stages.append(
            Stage(
                name,
                count,
                None if previous is None else _share(count, previous),
                None if previous is None else _share(count, signed_up),
                None if previous is not None else {"forms": count - imported, "imported": imported},
            )
        )
        previous = count
    return stages


def _share(part: int, whole: int) -> float | None:
    return part / whole if whole else None


@dataclass
class StepResults:
    step_id: str
    template: str
    sent: int = 0
    failed: int = 0
    unsubscribed_after: int = 0
    clicks: int = 0


def step_results(session: Session, sequence: DripSequence) -> list[StepResults]:
    """Per step: emails sent and failed, and readers who unsubscribed with it as their last."""
    results = {step.id: StepResults(step.id, step.template) for step in sequence.steps}
    # This sequence's rows only (each step's row names its sequence).
    of_sequence = OutboxMessage.context["sequence"].as_string() == sequence.name
    for step_id, status, count in session.execute(
        select(OutboxMessage.sequence_step, OutboxMessage.status, func.count())
        .where(
            of_sequence,
            OutboxMessage.kind == SEQUENCE_STEP,
            OutboxMessage.status.in_([OutboxStatus.SENT, OutboxStatus.FAILED]),
        )
        .group_by(OutboxMessage.sequence_step, OutboxMessage.status)
    ):
        if step_id in results:
            if status is OutboxStatus.SENT:
                results[step_id].sent = count
            else:
                results[step_id].failed = count
    for step_id, count in session.execute(
        select(OutboxMessage.sequence_step, func.count(Click.id))
        .join(Click, Click.outbox_id == OutboxMessage.id)
        .where(of_sequence, OutboxMessage.kind == SEQUENCE_STEP)
        .group_by(OutboxMessage.sequence_step)
    ):
        if step_id in results:
            results[step_id].clicks = count
    # Readers who left mid-sequence: their last step is the one that preceded leaving.
    left = session.scalars(
        select(Enrollment.steps_passed)
        .join(Subscriber, Subscriber.id == Enrollment.subscriber_id)
        .where(
            Enrollment.sequence == sequence.name,
            Enrollment.status == EnrollmentStatus.STOPPED,
            Subscriber.status == SubscriberStatus.UNSUBSCRIBED,
        )
    )
    for passed in left:
        if passed and passed[-1] in results:
            results[passed[-1]].unsubscribed_after += 1
    return list(results.values())


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


def sequence_status(
    session: Session, sequence: DripSequence, *, now: datetime, window: timedelta
) -> SequenceStatus:
    """How many subscribers wait for each step, how many are due within `window`, and
    how many received each step (`flask sequence status`)."""
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
        .where(OutboxMessage.kind == SEQUENCE_STEP, OutboxMessage.status == OutboxStatus.SENT)
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


@dataclass
class OutboxHealth:
    queued: int = 0
    due: int = 0
    retrying: int = 0
    sending: int = 0
    failed_24h: int = 0
    last_tick_at: datetime | None = None
    seconds_since_tick: float | None = None
    late: bool = True


def outbox_health(session: Session, *, now: datetime, late_after: timedelta) -> OutboxHealth:
    report = OutboxHealth()

    def how_many(*conditions) -> Any:
        return func.coalesce(func.sum(case((and_(*conditions), 1), else_=0)), 0)

    queued = OutboxMessage.status == OutboxStatus.QUEUED
    row = session.execute(
        select(
            how_many(queued),
            how_many(queued, OutboxMessage.due_at <= now),
            how_many(queued, OutboxMessage.attempts > 0),
            how_many(OutboxMessage.status == OutboxStatus.SENDING),
        ).where(text(OUTBOX_DUE_STATES))
    ).one()
    report.queued, report.due, report.retrying, report.sending = (int(n) for n in row)
    report.failed_24h = session.scalar(
        select(func.count())
        .select_from(OutboxMessage)
        .where(
            OutboxMessage.status == OutboxStatus.FAILED,
            OutboxMessage.created_at >= now - timedelta(hours=24),
        )
    )
    last = health.last_tick(session)
    report.last_tick_at = last
    if last is not None:
        report.seconds_since_tick = max(0.0, (now - last).total_seconds())
        report.late = report.seconds_since_tick > late_after.total_seconds()
    return report


def link_clicks(session: Session, *, broadcast_id: int | None = None) -> list[tuple[str, int, int]]:
    """(target, clicks, distinct readers) per link, most clicked first; for one newsletter
    if `broadcast_id` is given."""
    query = (
        select(TrackedLink.url, func.count(Click.id), func.count(distinct(Click.subscriber_id)))
        .join(Click, Click.link_id == TrackedLink.id)
        .group_by(TrackedLink.url)
        .order_by(func.count(Click.id).desc())
        .limit(50)
    )
    if broadcast_id is not None:
        query = query.join(OutboxMessage, OutboxMessage.id == Click.outbox_id).where(
            OutboxMessage.broadcast_id == broadcast_id
        )
    return [(url, clicks, readers) for url, clicks, readers in session.execute(query)]


@dataclass(frozen=True)
class MagnetFunnel:
    """One lead magnet's readers: asked for it, had it delivered, downloaded it, and (if it
    starts a sequence) in that sequence now or finished it."""

    magnet: str
    title: str
    asked: int
    delivered: int
    downloaded: int
    in_sequence: int | None
    finished: int | None


def magnet_funnels(session: Session, magnets: Mapping[str, LeadMagnet]) -> list[MagnetFunnel]:
    """A MagnetFunnel for each of `magnets`, in their order, from a few grouped counts."""
    requests = {
        magnet: (asked, delivered)
        for magnet, asked, delivered in session.execute(
            select(
                MagnetRequest.magnet,
                func.count(),
                func.count(MagnetRequest.delivered_at),
            ).group_by(MagnetRequest.magnet)
        )
    }
    # Downloads before there were several magnets say nothing: they were the default one.
    downloaded_magnet = func.coalesce(Event.detail["magnet"].as_string(), DEFAULT_MAGNET)
    downloads = dict(
        session.execute(
            select(downloaded_magnet, func.count(distinct(Event.subscriber_id)))
            .where(Event.kind == "downloaded")
            .group_by(downloaded_magnet)
        ).all()
    )
    sequences = {magnet.sequence for magnet in magnets.values() if magnet.sequence}
    standing: dict[str, Counter[str]] = {name: Counter() for name in sequences}
    if sequences:
        for name, status, count in session.execute(
            select(Enrollment.sequence, Enrollment.status, func.count())
            .where(Enrollment.sequence.in_(sequences))
            .group_by(Enrollment.sequence, Enrollment.status)
        ):
            standing[name][EnrollmentStatus(status).value] += count
    funnels = []
    for magnet in magnets.values():
        asked, delivered = requests.get(magnet.id, (0, 0))
        in_it = standing.get(magnet.sequence or "")
        funnels.append(
            MagnetFunnel(
                magnet=magnet.id,
                title=magnet.title,
                asked=asked,
                delivered=delivered,
                downloaded=downloads.get(magnet.id, 0),
                in_sequence=in_it["active"] + in_it["paused"] if in_it is not None else None,
                finished=in_it["finished"] if in_it is not None else None,
            )
        )
    return funnels
