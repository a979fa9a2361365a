"""Who a newsletter is for: confirmed readers who want newsletters and have not paused
their email, narrowed by the owner's choices (a source, the drip sequence finished or not,
tags included and excluded), as one query the send turns into outbox rows and the compose
page counts."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Select, func, or_, select
from sqlalchemy.orm import Session

from . import tags
from .models import (
    Broadcast,
    Enrollment,
    EnrollmentStatus,
    Subscriber,
    SubscriberStatus,
    SubscriberTag,
)

SEQUENCE_CHOICES = {
    "": "everyone confirmed",
    "finished": "only those who finished the sequence",
    "not_finished": "only those still in the sequence (or never in it)",
}
SEQUENCE_IN_WORDS = {
    "finished": "who finished the drip sequence",
    "not_finished": "who are still in the drip sequence, or never were in it",
}
TAGS_MATCH = {"any": "any of these tags", "all": "all of these tags"}


@dataclass(frozen=True)
class TagChoice:
    """Tags to include (any or all of them) and to exclude, checked."""

    include: list[str]
    exclude: list[str]
    match: str


def checked_tags(
    session: Session,
    include: Iterable[str],
    exclude: Iterable[str],
    match: str,
    *,
    saved: Iterable[str] = (),
) -> TagChoice:
    """The owner's tag choice, cleaned; ValueError (tags.InvalidTag among them) naming a
    tag that cannot be one or that no reader carries, or a tag both included and excluded.
    A tag the draft holds already (`saved`) stays allowed when its last reader lost it:
    saving the draft again must not drop it, and widen the audience, unseen."""
    include, exclude = tags.clean_all(include), tags.clean_all(exclude)
    if match not in TAGS_MATCH:
        raise ValueError(f"Choose whether readers need any or all of the tags, not {match!r}.")
    both = sorted(set(include) & set(exclude))
    if both:
        raise ValueError(f"The tag {both[0]!r} is both included and excluded.")
    chosen = {*include, *exclude}
    known = set(
        session.scalars(select(SubscriberTag.tag).where(SubscriberTag.tag.in_(chosen)).distinct())
    )
    unknown = sorted(chosen - known - set(saved))
    if unknown:
        raise ValueError(f"No reader carries the tag {unknown[0]!r}.")
    return TagChoice(include=include, exclude=exclude, match=match)


def _carries(chosen: list[str]):
    """EXISTS: the reader carries one of `chosen` (along the (tag, subscriber) index)."""
    return (
        select(SubscriberTag.subscriber_id)
        .where(SubscriberTag.subscriber_id == Subscriber.id, SubscriberTag.tag.in_(chosen))
        .exists()
    )


def _tag_conditions(broadcast: Broadcast) -> list:
    conditions = []
    include = broadcast.include_tags or []
    if include and broadcast.tags_match == "all":
        conditions.extend(_carries([tag]) for tag in include)
    elif include:
        conditions.append(_carries(include))
    if broadcast.exclude_tags:
        conditions.append(~_carries(broadcast.exclude_tags))
    return conditions


def recipients(broadcast: Broadcast, sequence: str, *, now: datetime) -> Select:
    """Subscribers the broadcast is for at `now`, as (subscriber id, address) rows."""
    query = select(Subscriber.id, Subscriber.email).where(
        Subscriber.status == SubscriberStatus.CONFIRMED,
        # The reader's own choices (the preference centre) come before the owner's.
        Subscriber.wants_newsletters.is_(True),
        or_(Subscriber.paused_until.is_(None), Subscriber.paused_until <= now),
        *_tag_conditions(broadcast),
    )
    if broadcast.audience_source:
        query = query.where(Subscriber.source == broadcast.audience_source)
    if broadcast.audience_sequence:
        finished = (
            select(Enrollment.id)
            .where(
                Enrollment.subscriber_id == Subscriber.id,
                Enrollment.sequence == sequence,
                Enrollment.status == EnrollmentStatus.FINISHED,
            )
            .exists()
        )
        query = query.where(finished if broadcast.audience_sequence == "finished" else ~finished)
    return query


def size(session: Session, broadcast: Broadcast, *, sequence: str, now: datetime) -> int:
    """How many would get it if it went at `now`."""
    return session.scalar(
        select(func.count()).select_from(recipients(broadcast, sequence, now=now).subquery())
    )


def in_words(broadcast: Broadcast) -> list[str]:
    """The owner's narrowing of the audience, one phrase each (none: everyone confirmed),
    for the pages that ask before sending."""
    phrases = []
    if broadcast.audience_source:
        phrases.append(f"who came from the source {broadcast.audience_source}")
    if broadcast.audience_sequence:
        phrases.append(SEQUENCE_IN_WORDS[broadcast.audience_sequence])
    if broadcast.include_tags:
        phrases.append(
            f"with {TAGS_MATCH[broadcast.tags_match]}: {', '.join(broadcast.include_tags)}"
        )
    if broadcast.exclude_tags:
        phrases.append(f"without any of these tags: {', '.join(broadcast.exclude_tags)}")
    return phrases
