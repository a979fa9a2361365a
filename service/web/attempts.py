"""Budgets of password attempts: counted before the password is checked, given back when it
was right.

Counting only failures after the fact (Flask-Limiter's `deduct_when`) lets attempts that
arrive together all pass the check before any of them is counted: with several gunicorn
workers, 13 of 40 simultaneous wrong passwords were checked against a limit of 10. Here
each attempt takes its place in every bucket first, atomically in the shared counters,
and is refunded only if the password was right, so the owner signing in costs nothing
and no burst gets past the limit. Counters live in the limiter's storage.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from flask_limiter import Limiter
from limits import RateLimitItem, parse_many


@dataclass
class Attempt:
    """One attempt's places in its buckets, to give back if the password was right."""

    budget: AttemptBudget
    places: list[tuple[RateLimitItem, str, str]] = field(default_factory=list)

    def refund(self) -> None:
        storage = self.budget.limiter.storage
        for item, scope, key in self.places:
            counter = item.key_for(scope, key)
            # Not below nothing: a window that ended meanwhile starts at 0, not -1 (the
            # database storage checks this itself, in the same statement).
            if storage.get(counter) > 0:
                storage.incr(counter, item.get_expiry(), amount=-1)


class AttemptBudget:
    """`limits` (Flask-Limiter syntax, "10 per minute;50 per hour") for each bucket an
    attempt is counted in; None or "" for no limit."""

    def __init__(self, limiter: Limiter, limits: str | None) -> None:
        self.limiter = limiter
        self._items = parse_many(limits) if limits else []

    def forget(self, scope: str, key: str) -> None:
        """Empty a bucket: the account's password was just reset by its operator."""
        for item in self._items:
            self.limiter.storage.clear(item.key_for(scope, key))

    def spend(self, *buckets: tuple[str, str]) -> Attempt | None:
        """Count an attempt in each (scope, key) bucket; None if any is over its limit."""
        attempt = Attempt(self)
        within = True
        strategy = self.limiter.limiter
        for scope, key in buckets:
            for item in self._items:
                within = strategy.hit(item, scope, key) and within
                attempt.places.append((item, scope, key))
        return attempt if within else None
