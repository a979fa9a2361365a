"""The owner's accounts and signed-in browsers."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import (
    ForeignKey,
    String,
)
from sqlalchemy.orm import Mapped, mapped_column

from ..db import Base
from .columns import UTCDateTime


class AdminUser(Base):
    """Someone who runs the list from /admin."""

    __tablename__ = "admin_users"

    id: Mapped[int] = mapped_column(primary_key=True)
    email: Mapped[str] = mapped_column(String(320))
    email_key: Mapped[str] = mapped_column(String(320), unique=True)
    password_hash: Mapped[str] = mapped_column(String(255))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    password_changed_at: Mapped[datetime] = mapped_column(UTCDateTime)
    last_login_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # When every session was last ended (a new password, "sign out everywhere"): device
    # cookies made before it no longer count (service.web.devices).
    sessions_reset_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # The IANA zone the admin pages show times in; None: DEFAULT_TIME_ZONE.
    time_zone: Mapped[str | None] = mapped_column(String(64))


class AdminSession(Base):
    """A signed-in browser. Its cookie holds a random token, stored here only as a hash: a
    session is valid while its row exists and was seen within ADMIN_SESSION_HOURS, so
    signing out (deleting the row) ends it for any copy of the cookie."""

    __tablename__ = "admin_sessions"

    id: Mapped[int] = mapped_column(primary_key=True)
    admin_id: Mapped[int] = mapped_column(
        ForeignKey("admin_users.id", ondelete="CASCADE"), index=True
    )
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)  # SHA-256 of the token
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    last_seen_at: Mapped[datetime] = mapped_column(UTCDateTime)
    ip: Mapped[str | None] = mapped_column(String(45))
    user_agent: Mapped[str | None] = mapped_column(String(200))
