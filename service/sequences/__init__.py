"""Drip sequences: what the sequence is, where each subscriber stands, and what is due.

- `definition`: the sequence file, checked (DripSequence, Step, `load`, SequenceError);
- `timing`: when a step is due in the reader's zone, and the window a late step may go in;
- `enrollments`: a subscriber's place in a sequence started, stopped, paused, resumed;
- `engine`: a scheduler tick's work, moving due enrollments a step on into the outbox;
- `daily_cap`: no reader gets more than so many sequence emails on a local day;
- `outcomes`: what a tick did (Outcome, TickReport).

The names the rest of the service uses are all here, so callers import the package.
"""

from __future__ import annotations

from .definition import EVERY_DAY, Delay, DripSequence, SequenceError, Step, load
from .engine import advance_due, due_enrollments
from .enrollments import enroll, excluded, hold, pause, resume, start, stop
from .outcomes import Outcome, TickReport
from .timing import due_time, sending_window_opens, zone_of

__all__ = [
    "EVERY_DAY",
    "Delay",
    "DripSequence",
    "Outcome",
    "SequenceError",
    "Step",
    "TickReport",
    "advance_due",
    "due_enrollments",
    "due_time",
    "enroll",
    "excluded",
    "hold",
    "load",
    "pause",
    "resume",
    "sending_window_opens",
    "start",
    "stop",
    "zone_of",
]
