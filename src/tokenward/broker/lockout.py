"""Failed-authentication limits: per source address and across all addresses.

Why: a wrong client key costs a hash and an audit line; unlimited, it lets anyone guess keys
and flood the log at line rate. Each source address may fail `auth_failure_burst` times, then
once per `1 / auth_failure_rate` seconds; while its budget is spent, its requests are answered
429 (with Retry-After) *before* any key is looked at, so a guess in that time learns nothing.
Across all addresses, `auth_failure_global_burst` failures, refilled at
`auth_failure_global_rate` per second, bound a distributed attack: once that budget is spent,
every address with a recent failure is refused the same way, while addresses without failures
(the real clients) go on untouched.

Per replica and in memory, like the client rate buckets. Behind a reverse proxy every request
comes from the proxy's address: put the limit there, or give the broker its own listener.
"""

from __future__ import annotations

import collections

from .auth import BrokerError, TokenBucket
from .config import Limits

__all__ = ["FailedAuthLimiter"]

#: How many source addresses are remembered (least recently failed ones are forgotten first).
_REMEMBER = 10_000


class FailedAuthLimiter:
    """Decides whether a source address may try a key now, and records its failures."""

    def __init__(self, limits: Limits) -> None:
        self._rate = limits.auth_failure_rate
        self._burst = limits.auth_failure_burst
        self._global = TokenBucket(
            limits.auth_failure_global_rate, limits.auth_failure_global_burst
        )
        self._sources: collections.OrderedDict[str, TokenBucket] = collections.OrderedDict()

    def check(self, source: str) -> None:
        """Raise 429 when `source` has spent its failure budget (or, after failures of its
        own, when all sources together have spent theirs)."""
        bucket = self._sources.get(source)
        if bucket is None:
            return
        wait = bucket.wait()
        if bucket.full():  # no failure left to remember: forget the address
            del self._sources[source]
            return
        if wait <= 0:
            wait = self._global.wait()
        if wait > 0:
            raise _throttled(wait)

    def failed(self, source: str) -> None:
        """Count one failed attempt from `source`."""
        bucket = self._sources.get(source)
        if bucket is None:
            bucket = self._sources[source] = TokenBucket(self._rate, self._burst)
            while len(self._sources) > _REMEMBER:
                self._sources.popitem(last=False)
        else:
            self._sources.move_to_end(source)
        bucket.take()
        self._global.take()

    def __len__(self) -> int:
        return len(self._sources)


def _throttled(wait: float) -> BrokerError:
    seconds = max(1, int(wait + 0.999))
    return BrokerError(
        429,
        "auth_throttled",
        f"too many failed authentication attempts; retry in {seconds} s",
        {"Retry-After": str(seconds)},
    )
