"""Tags on readers: what they are called, adding and removing them, who carries which.

A tag is a short lower-case name (`magnet:glute-guide`, `finished:back-pain-tips`,
`topic:foam-rolling`, `vip`). Readers get them from the magnet they asked for, an import,
the owner, or a sequence they finished; never from the public signup.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from datetime import datetime

from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from . import journal
from .db import insert_ignoring_conflicts
from .models import SubscriberTag

# Room for `magnet:` and `finished:` before the longest magnet id or sequence name (64).
TAG = re.compile(r"[a-z0-9][a-z0-9:._-]{0,99}")


class InvalidTag(ValueError):
    """Not a tag name; the message says what one looks like."""


def clean(name: str) -> str:
    """The tag as stored: trimmed and lower-case; InvalidTag if it cannot be one."""
    tag = name.strip().lower()
    if not TAG.fullmatch(tag):
        raise InvalidTag(
            f"{name.strip()[:110]!r} is not a tag: up to 100 lower-case letters, digits and"
            " ':', '.', '_' or '-', starting with a letter or digit"
        )
    return tag


def clean_all(names: Iterable[str]) -> list[str]:
    """Each tag cleaned, duplicates dropped, in the order given."""
    return list(dict.fromkeys(clean(name) for name in names if name.strip()))


def magnet_tag(magnet_id: str) -> str:
    return f"magnet:{magnet_id}"


def finished_tag(sequence: str) -> str:
    return f"finished:{sequence}"


def add(
    session: Session,
    subscriber_id: int,
    tags: Iterable[str],
    *,
    added_by: str,
    now: datetime,
) -> list[str]:
    """Tag a reader; the tags they did not carry yet. InvalidTag for a name that cannot
    be one (the callers clean what people type; this guards the rest)."""
    added = []
    for tag in tags:
        if not TAG.fullmatch(tag):
            raise InvalidTag(f"{tag[:110]!r} is not a tag")
        if insert_ignoring_conflicts(
            session,
            SubscriberTag.__table__,
            {"subscriber_id": subscriber_id, "tag": tag, "added_at": now, "added_by": added_by},
        ):
            added.append(tag)
    return added


def remove(session: Session, subscriber_id: int, tag: str) -> bool:
    """Take a tag off a reader; whether they carried it."""
    result = session.execute(
        delete(SubscriberTag).where(
            SubscriberTag.subscriber_id == subscriber_id, SubscriberTag.tag == tag
        )
    )
    return result.rowcount == 1


def of(session: Session, subscriber_id: int) -> list[str]:
    """A reader's tags, by name."""
    return list(
        session.scalars(
            select(SubscriberTag.tag)
            .where(SubscriberTag.subscriber_id == subscriber_id)
            .order_by(SubscriberTag.tag)
        )
    )


def in_use(session: Session) -> list[tuple[str, int]]:
    """Every tag carried by at least one reader, with how many carry it."""
    return [
        (tag, count)
        for tag, count in session.execute(
            select(SubscriberTag.tag, func.count())
            .group_by(SubscriberTag.tag)
            .order_by(SubscriberTag.tag)
        )
    ]


def add_by_owner(session: Session, subscriber_id: int, name: str, *, now: datetime) -> bool:
    """The owner tags a reader (their page), written in the reader's history; whether the
    reader did not carry it yet. InvalidTag for a name that cannot be one."""
    tag = clean(name)
    if not add(session, subscriber_id, [tag], added_by="owner", now=now):
        return False
    journal.record_event(
        session, subscriber_id, "tag_added", now=now, detail={"tag": tag, "by": "owner"}
    )
    return True


def remove_by_owner(session: Session, subscriber_id: int, tag: str, *, now: datetime) -> bool:
    """The owner takes a tag off a reader, written in the reader's history; whether they
    carried it."""
    try:
        tag = clean(tag)
    except InvalidTag:
        return False  # nobody carries what cannot be a tag
    if not remove(session, subscriber_id, tag):
        return False
    journal.record_event(
        session, subscriber_id, "tag_removed", now=now, detail={"tag": tag, "by": "owner"}
    )
    return True
