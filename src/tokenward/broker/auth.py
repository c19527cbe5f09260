"""Broker clients: authentication by key hash, per-client token buckets and session counts.

Why these live in memory: a key hash and a policy come from the configuration file, which every
replica reads; rate buckets and session counts are per replica on purpose (a shared bucket
would cost a store round trip per request). With N replicas a client's effective rate is at
most N times its configured rate; docs/broker.md says so.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass

from .config import KEY_PREFIX, ClientEntry, hash_key

__all__ = ["BrokerError", "ClientRegistry", "TokenBucket"]


class BrokerError(Exception):
    """An answer to send instead of doing the work: status, a stable error code, a reason
    (for people; never a secret), and extra headers."""

    def __init__(
        self, status: int, error: str, reason: str, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(reason)
        self.status = status
        self.error = error
        self.reason = reason
        self.headers = headers or {}


@dataclass
class TokenBucket:
    """`rate` tokens per second, at most `burst` saved up. Thread-safe enough for one event
    loop; a lock keeps it correct when called from threads too."""

    rate: float
    burst: int

    def __post_init__(self) -> None:
        self._tokens = float(self.burst)
        self._stamp = time.monotonic()
        self._lock = threading.Lock()

    def _fill(self, now: float) -> None:
        self._tokens = min(self.burst, self._tokens + (now - self._stamp) * self.rate)
        self._stamp = now

    def wait(self) -> float:
        """The seconds until `take` would succeed (0.0: now), without taking anything."""
        with self._lock:
            self._fill(time.monotonic())
            return 0.0 if self._tokens >= 1.0 else (1.0 - self._tokens) / self.rate

    def full(self) -> bool:
        """Whether the bucket has refilled completely (nothing taken is remembered)."""
        with self._lock:
            self._fill(time.monotonic())
            return self._tokens >= self.burst

    def take(self) -> float:
        """0.0 when a request may go now, else the seconds until one may."""
        with self._lock:
            self._fill(time.monotonic())
            if self._tokens >= 1.0:
                self._tokens -= 1.0
                return 0.0
            return (1.0 - self._tokens) / self.rate


class ClientRegistry:
    """Finds the client a presented key belongs to, and holds its rate bucket."""

    def __init__(self, clients: Iterable[ClientEntry]) -> None:
        self.clients = tuple(clients)
        self._buckets = {c.name: TokenBucket(c.policy.rate, c.policy.burst) for c in self.clients}

    def authenticate(self, authorization: str | None) -> ClientEntry:
        """The client whose key is in `Authorization: Bearer twk_...`, or a 401."""
        scheme, _, key = (authorization or "").partition(" ")
        key = key.strip()
        if scheme.lower() != "bearer" or not key:
            raise BrokerError(
                401,
                "unauthorized",
                "send the client key as Authorization: Bearer twk_...",
                {"WWW-Authenticate": 'Bearer realm="tokenward"'},
            )
        presented = hash_key(key)
        found: ClientEntry | None = None
        for client in self.clients:  # every hash is compared: no early exit to time
            if client.matches(presented) and found is None:
                found = client
        if found is None or not key.startswith(KEY_PREFIX):
            raise BrokerError(
                401,
                "unauthorized",
                "unknown client key",
                {"WWW-Authenticate": 'Bearer realm="tokenward", error="invalid_token"'},
            )
        return found

    def throttle(self, client: ClientEntry) -> None:
        """Take one token from the client's bucket, or a 429 with Retry-After."""
        wait = self._buckets[client.name].take()
        if wait > 0:
            seconds = max(1, int(wait + 0.999))
            raise BrokerError(
                429,
                "rate_limited",
                f"client {client.name!r} exceeds {client.policy.rate:g} requests/s",
                {"Retry-After": str(seconds)},
            )

    def origins(self) -> frozenset[str]:
        """Every origin some client allows (for CORS preflights, which carry no key)."""
        return frozenset(o for c in self.clients for o in c.policy.cors_origins)
