"""A drip sequence as its file describes it: the steps, their delays and weekdays, and
where a subscriber stands among them.

A sequence is data: `templates/emails/sequence.toml` (and each file in
`templates/emails/sequences/`) lists its steps in order, each with
a delay after the previous step (the first counted from confirmation), a template, and
optionally the weekdays it may go out on (service.sequences.timing turns these into
moments). A sequence may name the one a reader starts when they finish it (`then`), and
the ones whose readers it leaves out (`exclude`: in them now, or finished). `load` reads and checks the file; SequenceError says what is wrong and where.

Where a subscriber stands is worked out from the steps they have passed, against the file
as it is now: the next step is the one after the furthest step they have passed. So a step
added after that point reaches them, one inserted before it does not, and a removed step
is simply no longer there to send. Subscribers who finished stay finished.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

WEEKDAYS = {"mon": 0, "tue": 1, "wed": 2, "thu": 3, "fri": 4, "sat": 5, "sun": 6}
EVERY_DAY = frozenset(range(7))
STEP_ID = re.compile(r"[a-z0-9][a-z0-9_-]{0,62}")
DELAY = re.compile(r"\s*(\d+)\s*(day|days|hour|hours)\s*")


class SequenceError(ValueError):
    """The sequence file cannot be used; the message says where and why."""


@dataclass(frozen=True)
class Delay:
    """How long after the previous step (or confirmation) a step is due."""

    amount: int
    unit: str  # "days" or "hours"

    @classmethod
    def parse(cls, text: str) -> Delay:
        match = DELAY.fullmatch(text)
        if match is None:
            raise ValueError(f"delay {text!r} is not like '2 days' or '3 hours'")
        unit = "hours" if match.group(2).startswith("hour") else "days"
        return cls(int(match.group(1)), unit)

    @property
    def in_hours(self) -> bool:
        return self.unit == "hours"

    def __str__(self) -> str:
        return f"{self.amount} {self.unit[:-1] if self.amount == 1 else self.unit}"


@dataclass(frozen=True)
class Step:
    id: str
    template: str
    delay: Delay
    weekdays: frozenset[int] = EVERY_DAY
    # Names of owner links the email needs; without them the step is skipped.
    requires: tuple[str, ...] = ()


@dataclass(frozen=True)
class DripSequence:
    """A sequence as loaded from its file."""

    name: str
    send_hour: int
    latest_hour: int
    steps: tuple[Step, ...]
    links: Mapping[str, str] = field(default_factory=dict)
    videos: Mapping[str, Mapping[str, str]] = field(default_factory=dict)
    # The sequence a reader starts when they finish this one.
    then: str | None = None
    # Readers in (or past the end of) any of these are not started on this one.
    excludes: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        # Looked up for every email sent: a dict, not a scan.
        object.__setattr__(self, "_positions", {step.id: i for i, step in enumerate(self.steps)})

    def position(self, step_id: str) -> int | None:
        return self._positions.get(step_id)

    def step(self, step_id: str) -> Step | None:
        index = self.position(step_id)
        return None if index is None else self.steps[index]

    def lost(self, passed: Sequence[str]) -> bool:
        """True when none of the steps a subscriber passed is in the file any more (a step
        id renamed by mistake, say): where they stand is unknown."""
        return bool(passed) and all(self.position(s) is None for s in passed)

    def next_step(self, passed: Sequence[str]) -> Step | None:
        """The step after the furthest step passed that is still in the file; None at the
        end, or when the subscriber is lost (see `lost`)."""
        positions = [p for p in (self.position(s) for s in passed) if p is not None]
        if not passed:
            return self.steps[0] if self.steps else None
        if not positions:
            return None
        following = max(positions) + 1
        return self.steps[following] if following < len(self.steps) else None

    def missing_links(self, step: Step) -> list[str]:
        return [name for name in step.requires if not self.links.get(name)]

    def context(self) -> dict[str, Any]:
        """What every step's template may use besides the subscriber's own fields."""
        return {"links": dict(self.links), "videos": {k: dict(v) for k, v in self.videos.items()}}


def load(path: Path, *, template_exists: Any = None) -> DripSequence:
    """Read and check a sequence file; SequenceError names the problem and the step."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise SequenceError(f"{path}: no such file") from exc
    except tomllib.TOMLDecodeError as exc:
        raise SequenceError(f"{path}: {exc}") from exc

    def fail(message: str) -> SequenceError:
        return SequenceError(f"{path}: {message}")

    name = data.get("name")
    if not isinstance(name, str) or not STEP_ID.fullmatch(name):
        raise fail("'name' must be a short lower-case name like 'back-pain-tips'")
    send_hour = data.get("send_hour", 8)
    latest_hour = data.get("latest_hour", 20)
    if not (isinstance(send_hour, int) and 0 <= send_hour <= 23):
        raise fail("'send_hour' must be a whole hour from 0 to 23")
    if not (isinstance(latest_hour, int) and send_hour < latest_hour <= 24):
        raise fail("'latest_hour' must be after 'send_hour' and at most 24")
    links = data.get("links", {})
    if not isinstance(links, dict) or not all(isinstance(v, str) for v in links.values()):
        raise fail("[links] must hold text values")
    videos = data.get("videos", {})
    if not isinstance(videos, dict) or not all(isinstance(v, dict) for v in videos.values()):
        raise fail("[videos.NAME] tables must each hold 'url' and 'thumbnail'")

    then = data.get("then")
    if then is not None and (not isinstance(then, str) or not STEP_ID.fullmatch(then)):
        raise fail("'then' must name the sequence to start next, like 'strength-plan'")
    if then == name:
        raise fail("'then' cannot name the sequence itself")
    excludes = data.get("exclude", [])
    if isinstance(excludes, str):
        excludes = [excludes]
    if not isinstance(excludes, list) or not all(
        isinstance(e, str) and STEP_ID.fullmatch(e) for e in excludes
    ):
        raise fail("'exclude' must list sequence names, like ['back-pain-tips']")

    steps: list[Step] = []
    for number, raw in enumerate(data.get("steps", []), start=1):
        where = f"step {number}"
        if not isinstance(raw, dict):
            raise fail(f"{where} is not a table")
        step_id = raw.get("id")
        if not isinstance(step_id, str) or not STEP_ID.fullmatch(step_id):
            raise fail(f"{where}: 'id' must be lower-case letters, digits, '-' or '_'")
        where = f"step {number} ({step_id})"
        if any(s.id == step_id for s in steps):
            raise fail(f"{where}: the id is used twice")
        template = raw.get("template")
        if not isinstance(template, str) or not template:
            raise fail(f"{where}: 'template' is missing")
        if template_exists is not None and not template_exists(template):
            raise fail(f"{where}: no email template {template}.txt / {template}.html")
        try:
            delay = Delay.parse(str(raw.get("delay", "")))
        except ValueError as exc:
            raise fail(f"{where}: {exc}") from exc
        # Each tick moves a subscriber on at most one step because the next one is always
        # later than now; '0 hours' after a step would break that. ('0 days' is fine: the
        # next allowed day, as two steps never share a day.)
        if steps and delay.in_hours and delay.amount == 0:
            raise fail(f"{where}: a delay after the first step must be at least 1 hour")
        weekdays = raw.get("weekdays")
        allowed = EVERY_DAY
        if weekdays is not None:
            if not isinstance(weekdays, list) or not weekdays:
                raise fail(f"{where}: 'weekdays' must be a list like ['mon', 'wed']")
            try:
                allowed = frozenset(WEEKDAYS[str(d).lower()[:3]] for d in weekdays)
            except KeyError as exc:
                raise fail(f"{where}: unknown weekday {exc.args[0]!r}") from exc
        requires = raw.get("requires", [])
        if isinstance(requires, str):
            requires = [requires]
        unknown = [r for r in requires if r not in links]
        if unknown:
            raise fail(
                f"{where}: requires unknown link(s) {', '.join(unknown)} (add them to [links])"
            )
        steps.append(Step(step_id, template, delay, allowed, tuple(requires)))
    if not steps:
        raise fail("the sequence has no [[steps]]")
    return DripSequence(
        name, send_hour, latest_hour, tuple(steps), links, videos, then, tuple(excludes)
    )
