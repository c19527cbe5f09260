"""Broker sessions: the open sessions of this replica, their quotas, and honest stops.

Each broker session wraps one `tokenward.sessions.AsyncSession`: a token minted for it alone,
the upstream session started by the credential's session calls (HeyGen: `streaming.new` +
`streaming.start`), stopped and forgotten on delete, when idle too long, when its token turns
out expired, or when the broker shuts down.

A stop that fails is never reported as done: the session stays, marked `stop_pending` (it
still holds an upstream slot, so it still counts against the client's quota), and the reaper
tries again with backoff until the provider confirms or `STOP_ATTEMPTS` is reached.

Sessions live in this replica's memory, on purpose: a session token must never be stored (a
store would make it reusable), and the upstream session's client is bound to the process that
opened it. Behind a load balancer, route `/v1/sessions/{id}` requests to the replica that
created the session (sticky sessions), or a keepalive/delete elsewhere answers 404 and the
session is reaped as idle by its own replica.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from ..sessions import AsyncSession, Sessions, StopFailed
from .auth import BrokerError
from .config import ClientEntry

__all__ = ["STOP_ATTEMPTS", "BrokerSession", "SessionRegistry", "StopOutcome"]

#: How many times a failing upstream stop is tried before the session is given up on.
STOP_ATTEMPTS = 8


@dataclass
class BrokerSession:
    """One open session: who opened it, for which credential, and when it was last used."""

    id: str
    client: str
    credential: str
    session: AsyncSession
    last_seen: float  # time.monotonic()
    #: Kept for the audit line of a session closed or reaped (its token is gone by then).
    fingerprint: str = "-"
    #: The upstream stop failed and will be tried again (at `retry_at`, monotonic).
    stop_pending: bool = False
    stop_attempts: int = 0
    retry_at: float = 0.0
    #: Why the session is ending (for the audit line): delete, idle, expired, shutdown.
    ending: str = ""

    @property
    def expires_at(self) -> float | None:
        return self.session.token.expires_at


@dataclass
class StopOutcome:
    """What ending a session did upstream: `stopped`, `pending` (will be retried) or
    `failed` (nothing can stop it: it ends at the provider's own timeout)."""

    session: BrokerSession
    result: str
    reason: str = ""


class SessionRegistry:
    """The open sessions of this replica, with per-client quotas."""

    def __init__(
        self, idle_timeout: float, on_stop_failed: Callable[[StopOutcome], None] | None = None
    ) -> None:
        self.idle_timeout = idle_timeout
        self._open: dict[str, BrokerSession] = {}
        self._pending: dict[str, int] = {}  # opens in progress, counted against the quota
        self._lock = asyncio.Lock()
        self._on_stop_failed = on_stop_failed

    def count(self, client: str) -> int:
        held = sum(1 for s in self._open.values() if s.client == client)
        return held + self._pending.get(client, 0)

    async def open(self, client: ClientEntry, credential: str, sessions: Sessions) -> BrokerSession:
        """Mint a token and start the upstream session, within the client's quota."""
        quota = client.policy.max_sessions
        if quota <= 0:
            raise BrokerError(403, "forbidden", f"client {client.name!r} may not open sessions")
        async with self._lock:  # reserve a slot before the slow part, so a burst cannot overrun
            if self.count(client.name) >= quota:
                raise BrokerError(
                    429,
                    "session_quota",
                    f"client {client.name!r} already holds its {quota} concurrent session(s)",
                )
            self._pending[client.name] = self._pending.get(client.name, 0) + 1
        try:
            session = await sessions.aopen()
            opened = BrokerSession(
                secrets.token_urlsafe(16),
                client.name,
                credential,
                session,
                time.monotonic(),
                session.token.fingerprint,
            )
            self._open[opened.id] = opened
            return opened
        finally:
            self._pending[client.name] -= 1

    def get(self, session_id: str, client: ClientEntry) -> BrokerSession:
        """The client's own session, or 404 (another client's session is not even named)."""
        found = self._open.get(session_id)
        if found is None or found.client != client.name:
            raise BrokerError(404, "not_found", "no such session (closed, reaped, or elsewhere)")
        return found

    def usable(self, session_id: str, client: ClientEntry) -> BrokerSession:
        """`get`, refusing a session that is being stopped (410: start a new one)."""
        found = self.get(session_id, client)
        if found.stop_pending or found.session.closed:
            raise BrokerError(
                410,
                "session_ended",
                "the session is ending (its upstream stop is being retried): start a new "
                "session with POST /v1/sessions",
            )
        return found

    async def keepalive(
        self,
        session_id: str,
        client: ClientEntry,
        call: Callable[[AsyncSession], Awaitable[None]],
    ) -> BrokerSession:
        """Tell the upstream the session is in use (through `call`) and reset the idle clock."""
        found = self.usable(session_id, client)
        found.last_seen = time.monotonic()
        await call(found.session)
        return found

    async def close(self, session_id: str, client: ClientEntry) -> StopOutcome:
        """Stop the session upstream (a pending stop: one more attempt now)."""
        found = self.get(session_id, client)
        found.ending = found.ending or "delete"
        return await self.end(found)

    async def end(self, found: BrokerSession) -> StopOutcome:
        """Stop `found` upstream and forget it, or keep it as `stop_pending` when the stop
        failed transiently (the reaper retries it)."""
        found.stop_attempts += 1
        try:
            await found.session.aclose()  # stops upstream (bounded, retried), forgets the token
        except StopFailed as exc:
            last = found.stop_attempts >= STOP_ATTEMPTS
            if exc.pending and not last:
                found.stop_pending = True
                found.retry_at = time.monotonic() + min(2.0**found.stop_attempts, 60.0)
                outcome = StopOutcome(found, "pending", exc.reason)
            else:
                self._open.pop(found.id, None)
                outcome = StopOutcome(found, "failed", exc.reason)
            if self._on_stop_failed is not None:
                self._on_stop_failed(outcome)
            return outcome
        self._open.pop(found.id, None)
        return StopOutcome(found, "stopped")

    async def reap(self) -> list[StopOutcome]:
        """End sessions idle longer than the timeout, and retry pending stops that are due."""
        now = time.monotonic()
        due = []
        for s in list(self._open.values()):
            if s.stop_pending and now >= s.retry_at:
                due.append(s)
            elif not s.stop_pending and now - s.last_seen > self.idle_timeout:
                s.ending = "idle"
                due.append(s)
        return [await self.end(session) for session in due]

    async def close_all(self) -> list[StopOutcome]:
        """Stop every session (broker shutdown), concurrently; pending ones get their last
        attempts now."""
        sessions = list(self._open.values())
        for session in sessions:
            session.ending = session.ending or "shutdown"
            session.stop_attempts = max(session.stop_attempts, STOP_ATTEMPTS - 1)
        return list(await asyncio.gather(*(self.end(s) for s in sessions)))

    def open_sessions(self) -> list[BrokerSession]:
        return list(self._open.values())

    def __len__(self) -> int:
        return len(self._open)
