"""The outbox: emails waiting to go, claimed under a lease, and what became of them.

Rows are written by domain functions in the caller's transaction (so an email exists if and
only if what caused it was committed) and moved along by the scheduler's dispatch pass.
The package owns the row's layout:
- `queue`: everything that queues an email goes through `enqueue`, `enqueue_for_each` or
  `enqueue_steps`;
- `claims`: claims under a lease, renewed before each email, and the outcomes.
Callers import the package.
"""

from __future__ import annotations

from .claims import (
    Claimed,
    Reader,
    Sent,
    claim,
    claim_ids,
    mark_cancelled,
    mark_failed,
    mark_sent,
    may_receive,
    readers_of,
    release,
    renew_claim,
    retry_delay,
    retry_later,
    sent_since,
)
from .queue import (
    PENDING_STATES,
    Owner,
    Recipient,
    cancel_for_subscriber,
    enqueue,
    enqueue_for_each,
    enqueue_steps,
    step_row,
)

__all__ = [
    "PENDING_STATES",
    "Claimed",
    "Owner",
    "Reader",
    "Recipient",
    "Sent",
    "cancel_for_subscriber",
    "claim",
    "claim_ids",
    "enqueue",
    "enqueue_for_each",
    "enqueue_steps",
    "mark_cancelled",
    "mark_failed",
    "mark_sent",
    "may_receive",
    "readers_of",
    "release",
    "renew_claim",
    "retry_delay",
    "retry_later",
    "sent_since",
    "step_row",
]
