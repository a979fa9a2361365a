"""What is written down about a subscriber: consent records (the proof of opt-in: when,
from where, the exact wording) and events (their history, and the dashboard's counts).
Pure domain: adds rows in the caller's transaction."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy.orm import Session

from .db import insert_row
from .models import ConsentRecord, Event

MAX_USER_AGENT_LENGTH = 512


@dataclass(frozen=True)
class Origin:
    """Where a request came from, for the consent record."""

    ip: str | None
    user_agent: str | None

    def __post_init__(self) -> None:
        if self.user_agent is not None:
            object.__setattr__(self, "user_agent", self.user_agent[:MAX_USER_AGENT_LENGTH])


def consent_version(text: str) -> str:
    """A short, stable fingerprint of a consent wording."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:12]


def record_consent(
    session: Session,
    subscriber_id: int,
    *,
    action: str,
    origin: Origin,
    source: str,
    consent_text: str,
    now: datetime,
) -> None:
    insert_row(
        session,
        ConsentRecord.__table__,
        {
            "subscriber_id": subscriber_id,
            "action": action,
            "at": now,
            "ip": origin.ip,
            "user_agent": origin.user_agent,
            "source": source,
            "text": consent_text,
            "text_version": consent_version(consent_text),
        },
    )


def record_event(
    session: Session,
    subscriber_id: int | None,
    kind: str,
    *,
    now: datetime,
    detail: dict[str, Any] | None = None,
) -> None:
    """Add an entry to a subscriber's history."""
    insert_row(
        session,
        Event.__table__,
        {"subscriber_id": subscriber_id, "kind": kind, "at": now, "detail": detail},
    )
