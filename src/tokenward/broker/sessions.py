"""Broker sessions: `POST /v1/sessions`, keepalive, delete, and the idle reaper.

Each broker session wraps one `tokenward.sessions.AsyncSession`: a token minted for it alone,
the upstream session started by the credential's hooks (HeyGen: `streaming.new` +
`streaming.start`), stopped and forgotten on delete or when idle too long.

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

from ..sessions import AsyncSession, Sessions
from .auth import BrokerError
from .config import ClientEntry

__all__ = ["BrokerSession", "SessionRegistry"]


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

    @property
    def expires_at(self) -> float | None:
        return self.session.token.expires_at


class SessionRegistry:
    """The open sessions of this replica, with per-client quotas."""

    def __init__(self, idle_timeout: float) -> None:
        self.idle_timeout = idle_timeout
        self._open: dict[str, BrokerSession] = {}
        self._pending: dict[str, int] = {}  # opens in progress, counted against the quota
        self._lock = asyncio.Lock()

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

    async def keepalive(
        self,
        session_id: str,
        client: ClientEntry,
        call: Callable[[AsyncSession], Awaitable[None]],
    ) -> BrokerSession:
        """Tell the upstream the session is in use (through `call`) and reset the idle clock."""
        found = self.get(session_id, client)
        found.last_seen = time.monotonic()
        await call(found.session)
        return found

    async def close(self, session_id: str, client: ClientEntry) -> BrokerSession:
        found = self.get(session_id, client)
        self._open.pop(session_id, None)
        await found.session.aclose()  # stops upstream (bounded), forgets the token
        return found

    async def reap(self) -> list[BrokerSession]:
        """Close sessions idle longer than the timeout; returns them (for the audit log)."""
        now = time.monotonic()
        idle = [s for s in self._open.values() if now - s.last_seen > self.idle_timeout]
        for session in idle:
            self._open.pop(session.id, None)
            await session.session.aclose()
        return idle

    async def close_all(self) -> None:
        sessions, self._open = list(self._open.values()), {}
        for session in sessions:
            await session.session.aclose()

    def __len__(self) -> int:
        return len(self._open)
