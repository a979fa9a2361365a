"""Delivering lead magnets: what a reader gets when a magnet they asked for is theirs.

A request is a `magnet_requests` row, written when the reader asks (service.subscriptions).
It is delivered when they confirm, or at once when they had confirmed already: the
magnet's incentive email (once per reader and magnet, ever), its tags, and its sequence,
unless the sequence leaves out readers of another they are in or finished. Finishing a
sequence tags the reader `finished:<sequence>` and starts the one it names `then`
(service.sequences.engine).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from . import kinds, outbox, sequences, tags
from .db import insert_ignoring_conflicts, insert_row
from .magnets import DEFAULT_MAGNET, LeadMagnet
from .models import MagnetRequest, Subscriber
from .outbox.queue import Recipient
from .sequences import DripSequence


@dataclass(frozen=True)
class Funnels:
    """The magnets and sequences a request may lead to."""

    magnets: Mapping[str, LeadMagnet]
    sequences: Mapping[str, DripSequence] = field(default_factory=dict)

    @property
    def default(self) -> LeadMagnet:
        return self.magnets[DEFAULT_MAGNET]


def email_context(magnet: LeadMagnet | None) -> dict[str, str]:
    """What an email about a magnet (its confirmation, delivery, link again) is told of it:
    its id (for the download link) and its name as a sentence says it."""
    if magnet is None:
        return {}
    name = magnet.title.removeprefix("The ").removeprefix("the ")
    return {"magnet": magnet.id, "magnet_name": name, "magnet_short_name": magnet.short_name}


def incentive_key(magnet_id: str, subscriber_id: int) -> str:
    """The dedupe key of a magnet's incentive email to a subscriber: one, ever."""
    return f"{kinds.WELCOME}:{magnet_id}:{subscriber_id}"


def record_request(
    session: Session,
    subscriber_id: int,
    magnet_id: str,
    *,
    source: str,
    now: datetime,
    first: bool = False,
) -> bool:
    """Note that a reader asked for a magnet; False if they had asked for it before.
    `first`: the reader is new, so nothing can be in the way (a plain INSERT, the signup
    path's cheapest statement)."""
    row = {
        "subscriber_id": subscriber_id,
        "magnet": magnet_id,
        "requested_at": now,
        "delivered_at": None,
        "source": source,
    }
    if first:
        insert_row(session, MagnetRequest.__table__, row)
        return True
    return insert_ignoring_conflicts(session, MagnetRequest.__table__, row)


def requested(session: Session, subscriber_id: int) -> dict[str, datetime | None]:
    """The magnets a reader asked for, in the order asked, with when each was delivered
    (None: not yet)."""
    return dict(
        session.execute(
            select(MagnetRequest.magnet, MagnetRequest.delivered_at)
            .where(MagnetRequest.subscriber_id == subscriber_id)
            .order_by(MagnetRequest.requested_at)
        ).all()
    )


def deliver(
    session: Session,
    subscriber: Recipient,
    magnet: LeadMagnet,
    *,
    sequence: DripSequence | None,
    now: datetime,
) -> None:
    """Give a confirmed reader a magnet: its email, its tags, its sequence. Safe to repeat:
    the email goes once ever, and a sequence left or finished is not started again (one
    stopped by an unsubscribe is carried on, as a returning reader's is)."""
    outbox.enqueue(
        session,
        subscriber,
        kinds.WELCOME,
        template=magnet.incentive_template,
        context=email_context(magnet),
        now=now,
        dedupe_key=incentive_key(magnet.id, subscriber.id),
    )
    tags.add(session, subscriber.id, magnet.all_tags, added_by="magnet", now=now)
    if sequence is not None:
        started = sequences.start(session, subscriber, sequence, now=now)
    elif magnet.sequence is not None:
        started = sequences.enroll(session, subscriber, now=now, sequence=magnet.sequence)
    else:
        started = False
    paused_until = getattr(subscriber, "paused_until", None)
    if started and paused_until is not None and paused_until > now:
        # They paused their email: the new sequence waits for the pause's end too.
        sequences.hold(session, subscriber.id, until=paused_until, reason="paused by the reader")
    session.execute(
        update(MagnetRequest)
        .where(
            MagnetRequest.subscriber_id == subscriber.id,
            MagnetRequest.magnet == magnet.id,
            MagnetRequest.delivered_at.is_(None),
        )
        .values(delivered_at=now)
        .execution_options(synchronize_session=False)
    )


def deliver_requested(
    session: Session, subscriber: Subscriber, funnels: Funnels, *, now: datetime
) -> list[str]:
    """On confirmation: every magnet the reader asked for (the default one if the request
    came before magnets were recorded, an import's say); the ids delivered."""
    asked = requested(session, subscriber.id) or {DEFAULT_MAGNET: None}
    delivered = []
    # In the magnets' listing order, so that a sequence's `exclude` always sees the same
    # ones started before it, whichever the reader happened to ask for first.
    listed = list(funnels.magnets)
    for magnet_id in sorted(asked, key=lambda m: listed.index(m) if m in listed else len(listed)):
        magnet = funnels.magnets.get(magnet_id)
        if magnet is None:  # its folder was removed since
            continue
        deliver(
            session,
            subscriber,
            magnet,
            sequence=funnels.sequences.get(magnet.sequence or ""),
            now=now,
        )
        delivered.append(magnet_id)
    return delivered
