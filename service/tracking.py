"""Click tracking: links in the kinds of email that track them (service.kinds: sequence
steps and newsletters) go through our own redirect.

Each external link's target is stored once (table `links`) and the email carries
`/l/<link id>/<email id>.<signature>` instead. The redirect looks the target up by id, so
it can only ever send a reader where one of our emails pointed (never an open redirect),
and counts the click for that email (the signature stops anyone counting clicks for an
email that is not theirs). Links to the service itself (confirm, download, unsubscribe)
are left alone. Opens are not tracked.

Email link scanners that fetch every link count as clicks too; the counts are an upper
bound for that reason.
"""

from __future__ import annotations

import hashlib
import hmac
import html
import re
from datetime import datetime

from sqlalchemy import Connection, select
from sqlalchemy.orm import Session

from .db import Database, insert_ignoring_conflicts, insert_row
from .models import Click, OutboxMessage, TrackedLink

CLICK_PATH = "/l/"
# Stands in for "<email id>.<signature>" in an email rendered once for all its readers.
EMAIL_MARKER = "\x1bemail\x1b"
_HREF = re.compile(r'href="(https?://[^"]+)"')
MAX_URL_LENGTH = 2000


def url_hash(url: str) -> str:
    return hashlib.sha256(url.encode()).hexdigest()


class LinkTracker:
    """Rewrites an email's links to the redirect, and checks what the redirect is given."""

    def __init__(self, database: Database, *, base_url: str, secret_key: str) -> None:
        self.database = database
        self.base_url = base_url.rstrip("/")
        self._key = hashlib.sha256(f"clicks:{secret_key}".encode()).digest()
        self._ids: dict[str, int] = {}

    def signature(self, outbox_id: int) -> str:
        return hmac.new(self._key, str(outbox_id).encode(), "sha256").hexdigest()[:16]

    def valid(self, outbox_id: int, signature: str) -> bool:
        # compare_digest refuses str with non-ASCII characters: such a signature is wrong.
        return signature.isascii() and hmac.compare_digest(self.signature(outbox_id), signature)

    def link_id(self, url: str, *, now: datetime, connection: Connection | None = None) -> int:
        """The id of the stored link to `url`, storing it the first time: in `connection`'s
        transaction if one is given (the dispatcher's), else in a transaction of its own.

        Only ids known to be committed are remembered: one stored in the caller's
        transaction is gone if that transaction rolls back (and its number may then go to
        another link)."""
        if url in self._ids:
            return self._ids[url]
        if connection is not None:
            with Session(bind=connection) as session:
                return self._store(session, url, now)
        with self.database.begin() as session:
            link_id = self._store(session, url, now)
        self._ids[url] = link_id
        return link_id

    @staticmethod
    def _store(session: Session, url: str, now: datetime) -> int:
        digest = url_hash(url)
        row = {"url": url, "url_hash": digest, "created_at": now}
        insert_ignoring_conflicts(session, TrackedLink.__table__, row)
        return session.scalar(select(TrackedLink.id).where(TrackedLink.url_hash == digest))

    def rewrite(self, body: str, *, now: datetime, connection: Connection | None = None) -> str:
        """`body` (HTML) with each external link pointing at the redirect; the email's own
        id is left as EMAIL_MARKER, for `stamp`."""

        def tracked(match: re.Match[str]) -> str:
            url = html.unescape(match.group(1))
            if url.startswith(self.base_url + "/") or len(url) > MAX_URL_LENGTH:
                return match.group(0)
            return f'href="{self.base_url}{CLICK_PATH}{self.link_id(url, now=now, connection=connection)}/{EMAIL_MARKER}"'

        return _HREF.sub(tracked, body)

    def stamp(self, body: str, outbox_id: int) -> str:
        """`body` with this email's id and signature where `rewrite` left the marker."""
        return body.replace(EMAIL_MARKER, f"{outbox_id}.{self.signature(outbox_id)}")


def target(session: Session, link_id: int) -> str | None:
    return session.scalar(select(TrackedLink.url).where(TrackedLink.id == link_id))


def record_click(session: Session, link_id: int, outbox_id: int | None, *, now: datetime) -> None:
    """Count a click on `link_id` in email `outbox_id` (None: the email is unknown)."""
    subscriber_id = None
    if outbox_id is not None:
        email = session.execute(
            select(OutboxMessage.subscriber_id).where(OutboxMessage.id == outbox_id)
        ).first()
        if email is None:
            outbox_id = None  # deleted since: the click still counts for the link
        else:
            subscriber_id = email.subscriber_id
    insert_row(
        session,
        Click.__table__,
        {"link_id": link_id, "outbox_id": outbox_id, "subscriber_id": subscriber_id, "at": now},
    )
