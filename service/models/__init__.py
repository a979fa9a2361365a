"""The tables, a module per part of the service; every one is imported here, so that
`Base.metadata` holds them all (Alembic compares it with the migrations).

Every datetime is stored as UTC and comes back timezone-aware, on SQLite too.
"""

from __future__ import annotations

from ..db import Base
from .admins import AdminSession, AdminUser
from .columns import UTCDateTime
from .feedback import FeedbackEvent, FeedbackType, WebhookToken
from .funnels import MagnetRequest, SubscriberTag
from .imports import Import, ImportChunk, ImportRow, ImportStatus
from .newsletters import Broadcast, BroadcastStatus, Click, TrackedLink
from .sending import (
    ENROLLMENT_DUE_STATES,
    OUTBOX_DUE_STATES,
    Enrollment,
    EnrollmentStatus,
    OutboxMessage,
    OutboxStatus,
    SchedulerHeartbeat,
)
from .subscribers import ConsentRecord, Event, Subscriber, SubscriberStatus, Suppression

__all__ = [
    "ENROLLMENT_DUE_STATES",
    "OUTBOX_DUE_STATES",
    "AdminSession",
    "AdminUser",
    "Base",
    "Broadcast",
    "BroadcastStatus",
    "Click",
    "ConsentRecord",
    "Enrollment",
    "EnrollmentStatus",
    "Event",
    "FeedbackEvent",
    "FeedbackType",
    "Import",
    "ImportChunk",
    "ImportRow",
    "ImportStatus",
    "MagnetRequest",
    "OutboxMessage",
    "OutboxStatus",
    "SchedulerHeartbeat",
    "Subscriber",
    "SubscriberStatus",
    "SubscriberTag",
    "Suppression",
    "TrackedLink",
    "UTCDateTime",
    "WebhookToken",
]
