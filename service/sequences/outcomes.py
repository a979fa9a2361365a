"""What a scheduler tick did with the due enrollments: an Outcome for each, and their
counts (TickReport)."""

from __future__ import annotations

import enum
from dataclasses import dataclass


class Outcome(enum.StrEnum):
    """What a tick did with one due enrollment."""

    QUEUED = "queued"  # an email for the step is in the outbox
    PLANNED = "planned"  # the next step's time was (re)calculated; nothing sent yet
    SKIPPED = "skipped"  # the step needs a link the owner has not set
    DEFERRED = "deferred"  # the reader had their sequence emails for the day: next morning
    FINISHED = "finished"
    STOPPED = "stopped"  # the subscriber may no longer receive mail


@dataclass
class TickReport:
    """What one pass over due enrollments did."""

    queued: int = 0
    planned: int = 0
    skipped: int = 0
    deferred: int = 0
    finished: int = 0
    stopped: int = 0

    def add(self, outcome: Outcome) -> None:
        setattr(self, outcome.value, getattr(self, outcome.value) + 1)

    @property
    def total(self) -> int:
        return (
            self.queued + self.planned + self.skipped + self.deferred + self.finished + self.stopped
        )

    def __str__(self) -> str:
        return ", ".join(
            f"{k} {getattr(self, k)}"
            for k in ("queued", "planned", "skipped", "deferred", "finished", "stopped")
        )
