"""The public archive: newsletters the owner chose to show on the web, at /archive/<slug>.

A newsletter is listed when it is public and has gone out: `sent`, or `sending` (its
emails are queued; readers have the first of them already). A draft, a scheduled, paused
or cancelled one is never listed, ticked or not. Its slug is given the first time it is
made public and never changes afterwards, so a link to it keeps working (a draft's subject
may still change; the slug stays as first given). What the archive shows is the
newsletter's own content: the same Markdown -> HTML as the email, with the same link
filtering, but none of what is added per reader (greeting, tracked links, unsubscribe).
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Collection
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import exists, select
from sqlalchemy.orm import Session

from . import newsletter_markdown
from .broadcasts import BroadcastError
from .models import Broadcast, BroadcastStatus

# A listed newsletter has gone out to its readers.
LISTED_STATUSES = (BroadcastStatus.SENT, BroadcastStatus.SENDING)
# broadcasts.slug is 120 characters; room for a "-123" suffix.
MAX_SLUG_BASE = 100
FALLBACK_SLUG = "newsletter"
_NOT_SLUG = re.compile(r"[^a-z0-9]+")
# What slug_for makes: lower-case words joined by '-', a numeric suffix at most.
SLUG = re.compile(r"[a-z0-9][a-z0-9-]{0,119}")


@dataclass(frozen=True)
class Entry:
    """A newsletter as the archive shows it: nothing about any reader."""

    slug: str
    subject: str
    body: str  # Markdown
    published: datetime
    updated: datetime

    @property
    def body_html(self) -> str:
        """The body as HTML, with the email's link filtering and the targets as written
        (and none of the email's parts: its coloured links, its plain text)."""
        return newsletter_markdown.to_html(self.body)


def slug_for(subject: str, taken: Collection[str]) -> str:
    """An ASCII slug from the subject ("Foam rolling, week 2" -> "foam-rolling-week-2"),
    with "-2", "-3"... added when it is already in `taken`."""
    ascii_subject = unicodedata.normalize("NFKD", subject).encode("ascii", "ignore").decode()
    base = _NOT_SLUG.sub("-", ascii_subject.lower()).strip("-")[:MAX_SLUG_BASE].rstrip("-")
    base = base or FALLBACK_SLUG
    slug, number = base, 1
    while slug in taken:
        number += 1
        slug = f"{base}-{number}"
    return slug


def _taken_slugs(session: Session, base: str) -> set[str]:
    # A slug holds only [a-z0-9-], so LIKE's wildcards cannot be in `base`.
    return set(
        session.scalars(
            select(Broadcast.slug).where(
                (Broadcast.slug == base) | Broadcast.slug.like(f"{base}-%")
            )
        )
    )


def publish(session: Session, broadcast_id: int, public: bool, *, now: datetime) -> Broadcast:
    """Show the newsletter in the archive (once it has gone out) or hide it. The slug is
    given on the first publish and kept: hiding and showing again keeps the same link."""
    broadcast = session.get(Broadcast, broadcast_id)
    if broadcast is None:
        raise BroadcastError("No such newsletter.")
    if public and broadcast.slug is None:
        base = slug_for(broadcast.subject, ())
        broadcast.slug = slug_for(broadcast.subject, _taken_slugs(session, base))
    if broadcast.public != public:
        broadcast.public = public
        broadcast.updated_at = now
    session.flush()
    return broadcast


def _listed():
    return (
        Broadcast.public.is_(True),
        Broadcast.slug.is_not(None),
        Broadcast.status.in_(LISTED_STATUSES),
        Broadcast.started_at.is_not(None),
    )


def _entry_of(broadcast: Broadcast) -> Entry:
    assert broadcast.slug is not None and broadcast.started_at is not None  # _listed()
    return Entry(
        slug=broadcast.slug,
        subject=broadcast.subject,
        body=broadcast.body,
        published=broadcast.started_at,
        # What readers got never changes after it went out: finishing the send is no update.
        updated=broadcast.started_at,
    )


def entries(session: Session, limit: int = 50) -> list[Entry]:
    """The listed newsletters, newest first (by when they went out)."""
    rows = session.scalars(
        select(Broadcast)
        .where(*_listed())
        .order_by(Broadcast.started_at.desc(), Broadcast.id.desc())
        .limit(limit)
    )
    return [_entry_of(row) for row in rows]


def entry(session: Session, slug: str) -> Entry | None:
    """The listed newsletter with this slug; None for any other (unknown, hidden, unsent,
    or not shaped like a slug at all, which is never looked up)."""
    if not SLUG.fullmatch(slug):
        return None
    broadcast = session.scalar(select(Broadcast).where(Broadcast.slug == slug, *_listed()))
    return _entry_of(broadcast) if broadcast is not None else None


def has_entries(session: Session) -> bool:
    """Whether anything is listed (one EXISTS, for the landing page's link)."""
    return bool(session.scalar(select(exists().where(*_listed()))))
