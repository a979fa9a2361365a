"""Turning an outbox row into the Message its reader gets.

Everything between a queued row and the bytes on the wire is here: the template rendered
once per step or newsletter and filled in per reader (service.emails.Skeleton), each
reader's own links, click tracking, the List-Unsubscribe headers, a Message-ID that is
the same on every attempt of a row (service.message_ids), the headers mailbox providers
sort bulk mail by (List-Id, Feedback-ID, Precedence), the VERP envelope sender and the
DKIM signer. Dispatch composes what it sends with it; the admin's previews
and the CLI's `emails preview` / `send-test` compose samples with the same code, so what
the owner looks at is what readers get.

Two caches live as long as the Composer: rendered skeletons (with their tracked links
already stored) and the content of newsletters being sent (a draft's is read afresh every
time and never kept). A skeleton made in a transaction that rolls back may point at links
that were never stored: whoever owns that transaction calls `forget_rendered()` (the
Dispatcher does), so no cache outlives a rolled-back transaction. A cache must therefore
serve one transaction at a time: each Dispatcher has a Composer of its own (`fresh()`);
`services.composer` serves previews and the CLI, whose links are stored in transactions of
their own.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import re
from collections.abc import Mapping
from datetime import datetime
from email.charset import Charset
from typing import Any

from sqlalchemy import Connection

from . import broadcasts, kinds
from .db import Database
from .emails import PERSONAL_FIELDS, EmailRenderer, Skeleton
from .kinds import ExtraData, Receivers
from .links import Links
from .mail import Message
from .mail.message import Signer
from .message_ids import MessageIds
from .models import Broadcast, OutboxMessage, Subscriber
from .outbox import Claimed, Reader
from .sequences import DripSequence
from .tracking import LinkTracker

# What a sample email (a preview, a test send) is composed for.
SAMPLE_ID = 0
# What a Feedback-ID field may hold: Gmail splits the header at colons.
NOT_A_FEEDBACK_CHARACTER = re.compile(r"[^A-Za-z0-9._-]+")


def list_id_header(site_name: str, list_id: str) -> str:
    """RFC 2919's List-Id: the newsletter's name, then its identifier in angle brackets."""
    if site_name.isascii():
        quoted = site_name.replace("\\", "\\\\").replace('"', '\\"')
        return f'"{quoted}" <{list_id}>'
    return f"{Charset('utf-8').header_encode(site_name)} <{list_id}>"


def feedback_field(value: str) -> str:
    """One field of a Feedback-ID: no colon, no space, nothing Gmail could split at."""
    return NOT_A_FEEDBACK_CHARACTER.sub("-", value).strip("-") or "-"


def sender_id(domain: str) -> str:
    """Gmail's SenderId: 5 to 15 characters, the same for all our mail. A short digest of
    the sending domain: stable, and the same length whatever the domain."""
    return hashlib.sha256(domain.lower().encode()).hexdigest()[:12]


class Composer:
    """Builds Messages from outbox rows for one process (see the module's docstring)."""

    def __init__(
        self,
        database: Database,
        renderer: EmailRenderer,
        links: Links,
        *,
        sequences: Mapping[str, DripSequence],
        sender: str,
        reply_to: str,
        ids: MessageIds,
        site_name: str,
        list_id: str,
        return_path: str = "",
        signer: Signer | None = None,
        tracker: LinkTracker | None = None,
    ) -> None:
        self.database = database
        self.renderer = renderer
        self.links = links
        self.sequences = sequences
        self.sender = sender
        self.reply_to = reply_to
        self.ids = ids
        self.list_id = list_id
        self.return_path = return_path  # MAIL_RETURN_PATH, with {token}; '' for MAIL_FROM
        self.signer = signer
        self.tracker = tracker
        self._list_id_header = list_id_header(site_name, list_id)
        self._feedback_tail = f"{feedback_field(list_id.partition('.')[0])}:{sender_id(ids.domain)}"
        self._marks: dict[tuple[str, str], dict[str, str]] = {}
        self._skeletons: dict[tuple[Any, ...], Skeleton | None] = {}
        self._newsletters: dict[int, broadcasts.Content] = {}

    def fresh(self) -> Composer:
        """A Composer like this one with caches of its own (for one sending loop)."""
        twin = copy.copy(self)
        twin._skeletons = {}
        twin._newsletters = {}
        return twin

    def sequence_of(self, row: OutboxMessage | Claimed) -> DripSequence | None:
        """The sequence a step's row belongs to (None if it is not loaded). A row that
        names no loaded sequence (one from before a rename, when there was only ever one)
        belongs to the default sequence, if that has its step."""
        found = self.sequences.get(row.context.get("sequence", ""))
        if found is None and self.sequences:
            default = next(iter(self.sequences.values()))  # sequence.toml's, loaded first
            if default.step(row.sequence_step or "") is not None:
                found = default
        return found

    def compose(
        self,
        row: OutboxMessage | Claimed,
        subscriber: Subscriber | Reader,
        *,
        now: datetime,
        connection: Connection | None = None,
    ) -> Message:
        """Render the row's template for its subscriber into a Message.

        The email is rendered once for all its readers where the template allows (see
        service.emails.Skeleton), and only the links it shows are signed. Links it tracks
        are stored in `connection`'s transaction when given (the sending loop's).
        """
        rules = kinds.rules_of(row.kind)
        context = dict(row.context)
        if rules.data is ExtraData.SEQUENCE:
            sequence = self.sequence_of(row)
            if sequence is None:
                raise LookupError(f"sequence {row.context.get('sequence')!r} is not loaded")
            context.update(sequence.context())
        elif rules.data is ExtraData.NEWSLETTER:
            context["broadcast"] = self._newsletter(
                row.context["broadcast_id"], fresh=not rules.rendered_once
            )
        tracked = self.tracker is not None and rules.tracked
        skeleton = None
        if rules.rendered_once:
            skeleton = self._skeleton(
                row, context, subscriber, tracked=tracked, now=now, connection=connection
            )
        fields = PERSONAL_FIELDS if skeleton is None else skeleton.fields | {"unsubscribe_url"}
        values = self._personal_values(
            subscriber, fields, now=now, magnet=row.context.get("magnet", "")
        )
        if skeleton is None:
            rendered = self.renderer.render(row.template, {**context, **values})
            if tracked:
                html = self.tracker.rewrite(rendered.html, now=now, connection=connection)
                rendered = dataclasses.replace(rendered, html=html)
        else:
            rendered = skeleton.fill(values)
        if tracked:
            rendered = dataclasses.replace(rendered, html=self.tracker.stamp(rendered.html, row.id))
        # A copy for the owner to look at (a preview, a test send) names no row: nothing that
        # comes back about it may count against a reader or a newsletter.
        one_off = row.id == SAMPLE_ID or rules.receivers is Receivers.OWNER
        return Message(
            sender=self.sender,
            to=row.to_address,
            subject=rendered.subject,
            text=rendered.text,
            html=rendered.html,
            date=now,
            message_id=(
                self.ids.one_off() if one_off else self.ids.message_id(row.id, row.created_at)
            ),
            reply_to=self.reply_to,
            headers={
                # RFC 8058: mailbox providers POST List-Unsubscribe=One-Click to this URL.
                "List-Unsubscribe": f"<{values['unsubscribe_url']}>",
                "List-Unsubscribe-Post": "List-Unsubscribe=One-Click",
                **self._marks_of(row, rules),
            },
            return_path=(
                self.ids.return_path(self.return_path, row.id, row.created_at)
                if self.return_path and not one_off
                else ""
            ),
            signer=self.signer,
        )

    def _marks_of(self, row: OutboxMessage | Claimed, rules: kinds.Rules) -> dict[str, str]:
        """The headers mailbox providers sort and judge mail by, the same for every email of
        one kind and campaign (made once for each)."""
        if rules.bulk and rules.sequence_step:
            campaign = f"step-{row.sequence_step}"
        elif rules.bulk and rules.data is ExtraData.NEWSLETTER:
            campaign = f"newsletter-{row.context.get('broadcast_id')}"
        else:
            campaign = row.kind
        key = (row.kind, campaign)
        marks = self._marks.get(key)
        if marks is None:
            marks = {
                "List-Id": self._list_id_header,
                # Gmail's feedback loop (Postmaster Tools) reports complaints per field:
                # campaign:kind:list:sender, the sender field last and required.
                "Feedback-ID": (
                    f"{feedback_field(campaign)}:{feedback_field(row.kind)}:{self._feedback_tail}"
                ),
            }
            if rules.bulk:
                # RFC 3834: automatic responders (out-of-office replies) leave these alone.
                marks["Precedence"] = "bulk"
                marks["Auto-Submitted"] = "auto-generated"
            self._marks[key] = marks
        return marks

    def sample(
        self,
        kind: str,
        template: str,
        *,
        to: str,
        first_name: str | None,
        now: datetime,
        context: dict[str, Any] | None = None,
        sequence_step: str | None = None,
    ) -> Message:
        """An email as a reader called `first_name` would get it, stored nowhere (the
        admin's previews and test copies, the CLI's). Its links are for no reader and lead
        to 'this link does not work' pages."""
        row = Claimed(
            id=SAMPLE_ID,
            subscriber_id=None,
            to_address=to,
            kind=kind,
            template=template,
            context=context or {},
            sequence_step=sequence_step,
            attempts=0,
            last_error=None,
            created_at=now,
        )
        return self.compose(row, Reader.stand_in(to, first_name or None), now=now)

    def forget_rendered(self) -> None:
        """Drop every rendered skeleton: a transaction that stored their links rolled back."""
        self._skeletons.clear()

    def _skeleton(
        self,
        row: OutboxMessage | Claimed,
        context: dict[str, Any],
        subscriber: Subscriber | Reader,
        *,
        tracked: bool,
        now: datetime,
        connection: Connection | None,
    ) -> Skeleton | None:
        # The row's own context is small; the sequence's part is the same for every row.
        key = (
            row.kind,
            row.template,
            tuple(sorted(row.context.items())),
            bool(subscriber.first_name),
        )
        if key in self._skeletons:
            return self._skeletons[key]
        skeleton = self.renderer.skeleton(
            row.template, context, has_first_name=bool(subscriber.first_name)
        )
        if skeleton is not None and tracked:
            html = self.tracker.rewrite(skeleton.html, now=now, connection=connection)
            skeleton = dataclasses.replace(skeleton, html=html)
        self._skeletons[key] = skeleton
        return skeleton

    def _newsletter(self, broadcast_id: int, *, fresh: bool) -> broadcasts.Content:
        """A newsletter's content, read once for as long as this composer lives (a sending
        newsletter no longer changes). A draft's test copy reads it every time and keeps
        nothing: the draft may change before it is sent."""
        if not fresh and broadcast_id in self._newsletters:
            return self._newsletters[broadcast_id]
        with self.database.read() as session:
            found = session.get(Broadcast, broadcast_id)
            if found is None:
                raise LookupError(f"newsletter {broadcast_id} no longer exists")
            content = broadcasts.content_of(found.subject, found.body, greeting=found.greeting)
        if not fresh:
            self._newsletters[broadcast_id] = content
        return content

    def _personal_values(
        self,
        subscriber: Subscriber | Reader,
        fields: frozenset[str] | tuple[str, ...],
        *,
        now: datetime,
        magnet: str = "",
    ) -> dict[str, Any]:
        makers = {
            "first_name": lambda: subscriber.first_name,
            "confirm_url": lambda: self.links.confirm(subscriber.id, now=now),
            "download_url": lambda: self.links.download(subscriber.id, now=now, magnet=magnet),
            "unsubscribe_url": lambda: self.links.unsubscribe(subscriber.id, now=now),
            "preferences_url": lambda: self.links.preferences(subscriber.id, now=now),
        }
        return {field: makers[field]() for field in fields}
