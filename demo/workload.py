"""The demo's paced workload and the pieces `bench/` reuses from it.

`Schedule` paces requests (request k is due k / rate seconds after the start), so every
contender meets the same load. `NaiveApproach` is the single-process, no-cooldown refresher that
`bench/peers.py` races as its "hand-made" peer; the demo itself races `handmade.py`, the
refresher teams actually ship.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

import httpx2

from tokenward.rules import ExpiryRule

__all__ = ["ML_EXPIRY_RULE", "NaiveApproach", "Schedule", "Tally"]

#: MercadoLibre answers an expired token with 401 `{"message": "invalid_token", ...}`.
ML_EXPIRY_RULE = ExpiryRule(json_fields={"message": "invalid_token"})
HTTP_TIMEOUT = 10.0

SyncCall = Callable[[int, int], bool]
AsyncCall = Callable[[int, int], Awaitable[bool]]


def _request_args(worker: int, seq: int) -> tuple[str, str, dict[str, Any] | None]:
    """A small, pipeline-like mix: three POSTs with a JSON body, then one GET."""
    if seq % 4 == 3:
        return "GET", f"/orders/{worker}-{seq - 1}", None
    order = {"worker": worker, "seq": seq, "item": f"MLA{1000 + seq % 97}", "quantity": 1 + seq % 3}
    return "POST", "/orders", order


def _bearer(token: str | None) -> dict[str, str] | None:
    return {"Authorization": f"Bearer {token}"} if token else None


def _send(client: httpx2.Client, worker: int, seq: int, token: str | None = None) -> int:
    method, path, body = _request_args(worker, seq)
    return client.request(method, path, json=body, headers=_bearer(token)).status_code


async def _asend(
    client: httpx2.AsyncClient, worker: int, seq: int, token: str | None = None
) -> int:
    method, path, body = _request_args(worker, seq)
    return (await client.request(method, path, json=body, headers=_bearer(token))).status_code


@dataclass(frozen=True)
class Schedule:
    """Fixed pacing: request number k (worker k % workers) is due `k / rate` seconds after the
    start, up to and including `duration`, so the run spans at least `duration` whatever the
    latency, and both approaches see the same load."""

    start: float
    duration: float
    rate: float
    workers: int

    def due(self, worker: int, seq: int) -> float | None:
        """When the worker's `seq`-th request is due (monotonic), or None: the run is over."""
        offset = (seq * self.workers + worker) / self.rate
        return None if offset > self.duration + 1e-9 else self.start + offset

    @property
    def total(self) -> int:
        """How many requests are due in all."""
        return math.floor(self.duration * self.rate + 1e-9) + 1


class Tally:
    """Thread-safe request counters (measurement only: not part of either approach)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.ok = 0
        self.failed = 0
        self.errors: Counter[str] = Counter()
        self.last_done = 0.0

    def record(self, ok: bool, error: str | None = None) -> None:
        with self._lock:
            if ok:
                self.ok += 1
            else:
                self.failed += 1
            if error is not None:
                self.errors[error] += 1
            self.last_done = time.monotonic()

    @property
    def done(self) -> int:
        return self.ok + self.failed


def _attempt(call: SyncCall, worker: int, seq: int, tally: Tally) -> None:
    try:
        ok = call(worker, seq)
    except Exception as exc:  # a failed request is a result to count, not a crash
        tally.record(False, type(exc).__name__)
    else:
        tally.record(ok)


async def _drain() -> None:
    """Let tasks the library spawned on this loop (a background refresh) finish before the
    loop closes: cancelling a refresh in flight could lose a rotated refresh token."""
    for _ in range(50):
        pending = asyncio.all_tasks() - {asyncio.current_task()}
        if not pending:
            return
        await asyncio.wait(pending, timeout=0.2)


class _Server(Protocol):
    token_url: str
    api_url: str


class ProviderLike(Protocol):
    """What `NaiveApproach` needs from a provider: its URLs, a client, a login."""

    server: _Server
    client_id: str
    client_secret: str

    def login(self) -> str: ...


class NaiveApproach:
    """The hand-made refresher found in many pipelines: a shared global token pair; each request
    reads the access token once; on any 401 the worker calls the token endpoint itself with the
    current refresh token and updates the globals. No lock, no coordination, no proactive
    refresh, no "someone already refreshed" check: nothing tokenward does."""

    name = "hand-made"

    def __init__(self, provider: ProviderLike) -> None:
        self._provider = provider
        self._api_url = provider.server.api_url
        self._client = httpx2.Client(base_url=self._api_url, timeout=HTTP_TIMEOUT)
        # The shared globals.
        self.access_token: str | None = None
        self.refresh_token_value: str = provider.login()
        self.generation = 0
        self._recovered = 0
        self._count_lock = threading.Lock()  # guards the demo's counter only

    def _form(self) -> dict[str, str]:
        return {
            "grant_type": "refresh_token",
            "refresh_token": self.refresh_token_value,
            "client_id": self._provider.client_id,
            "client_secret": self._provider.client_secret,
        }

    def _adopt(self, response: httpx2.Response) -> bool:
        if response.status_code != 200:
            return False
        body = response.json()
        self.access_token = body["access_token"]
        self.refresh_token_value = body.get("refresh_token") or self.refresh_token_value
        self.generation += 1
        return True

    def _refresh(self) -> bool:
        token_url = self._provider.server.token_url
        return self._adopt(self._client.post(token_url, data=self._form()))

    async def _arefresh(self, client: httpx2.AsyncClient) -> bool:
        token_url = self._provider.server.token_url
        return self._adopt(await client.post(token_url, data=self._form()))

    def _count_recovered(self, ok: bool) -> bool:
        if ok:
            with self._count_lock:
                self._recovered += 1
        return ok

    def warm_up(self) -> None:
        self._refresh()

    def settle(self) -> None:
        """Nothing runs in the background here: every refresh happens inside a request."""

    def call(self, worker: int, seq: int) -> bool:
        status = _send(self._client, worker, seq, self.access_token)
        if status != 401:
            return status == 200
        if not self._refresh():
            return False
        return self._count_recovered(_send(self._client, worker, seq, self.access_token) == 200)

    @contextlib.asynccontextmanager
    async def async_caller(self) -> AsyncIterator[AsyncCall]:
        async with httpx2.AsyncClient(base_url=self._api_url, timeout=HTTP_TIMEOUT) as client:

            async def acall(worker: int, seq: int) -> bool:
                status = await _asend(client, worker, seq, self.access_token)
                if status != 401:
                    return status == 200
                if not await self._arefresh(client):
                    return False
                replayed = await _asend(client, worker, seq, self.access_token)
                return self._count_recovered(replayed == 200)

            yield acall

    def version(self) -> int:
        return self.generation

    def recovered(self) -> int:
        return self._recovered

    def refresh_token(self) -> str | None:
        return self.refresh_token_value

    def close(self) -> None:
        self._client.close()
