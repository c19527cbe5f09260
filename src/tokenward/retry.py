"""Backoff policy for transient token-endpoint failures.

Hand-written rather than taken from `stamina`/`tenacity` because the policy must be sans-I/O:
the refresh flow asks "how long until the next attempt, if any?" and the sync or async driver
does the sleeping. It also has to honor `Retry-After` within a cap and stop at a deadline.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

__all__ = ["RetryPolicy"]


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Exponential backoff with jitter, bounded by a deadline.

    The n-th retry waits `initial * multiplier**(n-1)` seconds, capped at `maximum`, then
    reduced by up to `jitter` (a fraction) at random so that many clients do not retry in
    lockstep. A `Retry-After` from the provider replaces the computed delay, capped at
    `retry_after_cap`. No retry starts once `deadline` seconds have passed since the first
    attempt.
    """

    initial: float = 0.2
    multiplier: float = 2.0
    maximum: float = 10.0
    jitter: float = 0.5
    deadline: float = 30.0
    retry_after_cap: float = 60.0

    def delay(
        self,
        retry: int,
        elapsed: float,
        retry_after: float | None = None,
        rng: random.Random | None = None,
    ) -> float | None:
        """Seconds to wait before retry number `retry` (1-based), or None to give up."""
        if retry_after is not None:
            wait = min(max(retry_after, 0.0), self.retry_after_cap)
        else:
            base = min(self.initial * self.multiplier ** (retry - 1), self.maximum)
            wait = base * (1.0 - self.jitter * (rng or random).random())
        if elapsed + wait > self.deadline:
            return None
        return wait
