"""Faults on the model's side: queueing and taking faults and holds, and the provider expiring
or revoking tokens behind the clients' backs (an administrator, a clock)."""

from __future__ import annotations

from collections import deque
from typing import TypeVar

from .holds import Fault, Hold
from .shapes import ENDPOINTS, FAULTS, HOLD_STAGES
from .state import ProviderState

_Queued = TypeVar("_Queued", Fault, Hold)


def _use_one(queue: deque[_Queued] | None) -> _Queued | None:
    """Spend one use of the queue's first entry (dropped once used up); None when empty."""
    if not queue:
        return None
    head = queue[0]
    head.remaining -= 1
    if head.remaining <= 0:
        queue.popleft()
    return head


class FaultsModel(ProviderState):
    """Faults, holds, expiry and revocation a test injects (each method takes the lock)."""

    def inject(
        self,
        fault: str,
        *,
        times: int = 1,
        endpoint: str = "token",
        retry_after: float | None = None,
        delay: float | None = None,
    ) -> None:
        """Queue a fault for the next ``times`` requests to ``endpoint`` (token, api, session).

        Faults queued for one endpoint are consumed in order. ``retry_after`` sets the
        Retry-After header (429 defaults to 1); ``delay`` overrides :attr:`fault_delay`.
        """
        if endpoint not in ENDPOINTS:
            raise ValueError(f"unknown endpoint {endpoint!r}; use one of {sorted(ENDPOINTS)}")
        if fault not in FAULTS:
            raise ValueError(f"unknown fault {fault!r}; use one of {sorted(FAULTS)}")
        if fault not in ENDPOINTS[endpoint]:
            raise ValueError(f"fault {fault!r} does not apply to endpoint {endpoint!r}")
        if times < 1:
            raise ValueError("times must be at least 1")
        if fault == "429" and retry_after is None:
            retry_after = 1
        with self._lock:
            self._faults[endpoint].append(Fault(fault, times, retry_after, delay))

    def clear_faults(self) -> None:
        """Drop every queued fault."""
        with self._lock:
            for queue in self._faults.values():
                queue.clear()

    def pending_faults(self, endpoint: str = "token") -> list[tuple[str, int]]:
        """Queued faults for an endpoint as (name, remaining uses)."""
        with self._lock:
            return [(f.name, f.remaining) for f in self._faults[endpoint]]

    def take_fault(self, endpoint: str) -> Fault | None:
        """Consume one use of the next queued fault for ``endpoint`` (HTTP layer)."""
        with self._lock:
            head = _use_one(self._faults[endpoint])
            if head is None:
                return None
            self._counters["faults_injected"] += 1
            return Fault(head.name, 1, head.retry_after, head.delay)

    def hold(self, endpoint: str = "token", *, stage: str = "received", times: int = 1) -> Hold:
        """Stall the next ``times`` requests to ``endpoint`` at ``stage`` until released.

        ``stage`` is ``received`` (the request has arrived, nothing is processed yet) or
        ``answered`` (processed, e.g. a refresh token already rotated, the answer not yet sent).
        The returned :class:`Hold` tells the test when a request got there (``arrived``), so
        tests act at an exact instant of a request instead of sleeping; a server shutdown
        releases every hold.
        """
        if endpoint not in ENDPOINTS:
            raise ValueError(f"unknown endpoint {endpoint!r}; use one of {sorted(ENDPOINTS)}")
        if stage not in HOLD_STAGES:
            raise ValueError(f"unknown stage {stage!r}; use one of {sorted(HOLD_STAGES)}")
        if times < 1:
            raise ValueError("times must be at least 1")
        held = Hold(endpoint, stage, times)
        with self._lock:
            self._holds.setdefault((endpoint, stage), deque()).append(held)
        return held

    def take_hold(self, endpoint: str, stage: str) -> Hold | None:
        """Consume one use of the next hold at ``endpoint``/``stage`` (HTTP layer)."""
        with self._lock:
            return _use_one(self._holds.get((endpoint, stage)))

    def expire_access_tokens(self) -> None:
        """Make every access token issued so far expired (refresh tokens stay valid)."""
        with self._lock:
            now = self.now()
            for record in self._access.values():
                record.expires_at = min(record.expires_at, now)

    def revoke_access_tokens(self) -> int:
        """An administrator's revocation (a password change, "log out everywhere"): every
        access token issued so far stops working at once; refresh tokens stay valid, so a
        refresh yields a working token again. Returns how many were revoked."""
        with self._lock:
            live = [record for record in self._access.values() if not record.revoked]
            for record in live:
                record.revoked = True
            self._counters["admin_revocations"] += 1
            return len(live)

    def expire_session_token(self, session_id: str) -> bool:
        """Make the token of one open session expired now (the session stays open upstream,
        as a session that outlives its token does). False when no such session is open."""
        with self._lock:
            session = self._sessions.get(session_id)
            record = self._session_tokens.get(session.token) if session else None
            if record is None:
                return False
            record.expires_at = min(record.expires_at, self.now())
            return True
