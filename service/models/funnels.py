"""Funnels: which lead magnets each reader asked for, and the tags readers carry."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import ForeignKey, Index, String
from sqlalchemy.orm import Mapped, mapped_column

from ..db import Base
from .columns import UTCDateTime


class MagnetRequest(Base):
    """A reader asked for a lead magnet. A pending reader's requests wait for their
    confirmation; each is delivered (its incentive email queued, its sequence started)
    once, ever."""

    __tablename__ = "magnet_requests"
    __table_args__ = (Index("ix_magnet_requests_magnet", "magnet", "requested_at"),)

    subscriber_id: Mapped[int] = mapped_column(
        ForeignKey("subscribers.id", ondelete="CASCADE"), primary_key=True
    )
    magnet: Mapped[str] = mapped_column(String(64), primary_key=True)
    requested_at: Mapped[datetime] = mapped_column(UTCDateTime)
    delivered_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    source: Mapped[str] = mapped_column(String(100), default="")


class SubscriberTag(Base):
    """A tag on a reader: from the magnet they asked for (`magnet:<id>`), an import, the
    owner, or a sequence they finished (`finished:<sequence>`). Never from the public
    signup: a reader does not tag themselves."""

    __tablename__ = "subscriber_tags"
    # Newsletters and the subscriber list find readers by tag.
    __table_args__ = (Index("ix_subscriber_tags_tag", "tag", "subscriber_id"),)

    subscriber_id: Mapped[int] = mapped_column(
        ForeignKey("subscribers.id", ondelete="CASCADE"), primary_key=True
    )
    tag: Mapped[str] = mapped_column(String(100), primary_key=True)
    added_at: Mapped[datetime] = mapped_column(UTCDateTime)
    # magnet, import, owner, sequence
    added_by: Mapped[str] = mapped_column(String(16))
