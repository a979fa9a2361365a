"""What is kept of a bounce or complaint, and for how long: the raw report is emptied
FEEDBACK_PAYLOAD_DAYS after it came (what was done stays), and so are the unreadable
messages `bounces receive` kept for the owner. The scheduler's hourly housekeeping calls
these."""

from __future__ import annotations

import contextlib
from datetime import datetime, timedelta
from pathlib import Path

from sqlalchemy import update
from sqlalchemy.orm import Session

from ..models import FeedbackEvent


def forget_payloads(session: Session, *, now: datetime, days: int) -> int:
    """Empty the raw payloads of events older than `days` (what was done stays)."""
    result = session.execute(
        update(FeedbackEvent)
        .where(
            FeedbackEvent.payload.is_not(None),
            FeedbackEvent.received_at < now - timedelta(days=days),
        )
        .values(payload=None)
        .execution_options(synchronize_session=False)
    )
    return result.rowcount or 0


def unparseable_folder(instance_dir: str) -> Path:
    """Where `bounces receive` keeps a message it cannot read, for the owner to look at."""
    return Path(instance_dir) / "unparseable-bounces"


def forget_unparseable(folder: Path, *, now: datetime, days: int) -> int:
    """Delete the kept messages older than `days`, as raw payloads are forgotten."""
    cutoff = (now - timedelta(days=days)).timestamp()
    forgotten = 0
    for path in folder.glob("*.eml"):
        with contextlib.suppress(FileNotFoundError):
            if path.stat().st_mtime < cutoff:
                path.unlink()
                forgotten += 1
    return forgotten
