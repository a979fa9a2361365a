"""When a step is due, in the reader's own time.

Day delays land at the sequence's send hour in the subscriber's time zone, on a weekday
the step allows; hour delays are counted exactly and ignore the send hour. A step that
comes due late (the scheduler was down) still goes out only in the sending window.
"""

from __future__ import annotations

import functools
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from .definition import DripSequence, Step


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


def first_morning(step: Step, day: date, *, zone: ZoneInfo, send_hour: int) -> datetime:
    """The send hour of `day`, or of the first day after it that the step allows."""
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
