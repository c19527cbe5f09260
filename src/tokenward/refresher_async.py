"""`AsyncRefresher`: proactive refresh of many credentials on one event loop.

One loop, one shared `httpx2.AsyncClient`, the store's native async operations, and claims in
batches that come with their records (`Store.claim_due_records`). Each claimed credential goes
through the one refresh protocol (`flow.refresh_flow`, started from the claimed record so it
needs no first load) driven by the async driver; with the store's compound operations a
refresh costs a share of one claim, one `begin_refresh`, the token request and one
`finish_refresh` (docs/scale.md, "Store round trips per refresh"). Nothing is kept per
credential between refreshes, so memory stays flat however many credentials pass through.

Stopping drains: `stop()` (SIGTERM in `tokenward refresher`) stops claiming and waits for every
refresh in flight. A refresh task is never cancelled, not even when the task running `run()`
is: a provider's answer may hold the only valid refresh token (invariant 2). Keys claimed but
not started are handed back to the due-queue at once.

The thread-based `tokenward.refresher.Refresher` remains for programs without an event loop; it
costs more CPU per refresh (a thread per refresh in flight, a `TokenManager` per credential).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, cast

import httpx2

from . import events
from .errors import CredentialNotSeeded, ReauthorizationRequired, StoreError
from .flow import FlowContext, refresh_flow, run_async
from .manager import RefreshPolicy
from .refresher import KEEPALIVE_AFTER, RefresherStats
from .retry import RetryPolicy
from .sources.base import Source
from .stores.base import DUE_FRACTION, DUE_MAX, Record, Store, due_time
from .transport import DEFAULT_TIMEOUT, longest_request

__all__ = ["AsyncRefresher", "Lateness"]

#: Upper bounds (seconds) of the lateness histogram: how long after its due time a claimed
#: credential was picked up.
LATENESS_BUCKETS = (0.1, 0.5, 1.0, 5.0, 30.0, 300.0, float("inf"))


@dataclass
class Lateness:
    """How late claimed credentials were picked up (a histogram, for `/metrics`)."""

    counts: list[int] = field(default_factory=lambda: [0] * len(LATENESS_BUCKETS))
    total: float = 0.0

    def add(self, seconds: float) -> None:
        seconds = max(seconds, 0.0)
        self.total += seconds
        for i, bound in enumerate(LATENESS_BUCKETS):
            if seconds <= bound:
                self.counts[i] += 1
                return


class _Inline:
    """A local store (SQLite, a file, memory) whose async operations run on the loop's own
    thread: a refresher's loop does nothing but refresh, a local transaction takes about a
    millisecond, and SQLite lets one writer in at a time anyway, while a worker-thread hop per
    operation costs more CPU than the operation itself (bench/refresher_cpu.py)."""

    def __init__(self, store: Store) -> None:
        self._store = store

    def __getattr__(self, name: str) -> Any:
        sync = getattr(self._store, name[1:], None) if name.startswith("a") else None
        if sync is None or not callable(sync):
            return getattr(self._store, name)

        async def inline(*args: Any, **kwargs: Any) -> Any:
            return sync(*args, **kwargs)

        return inline


class AsyncRefresher:
    """Claims due credentials from `store` and refreshes up to `concurrency` at once.

    `source_for_key(key)` returns the source for a store key, or None for a key this refresher
    does not handle (its claim lapses after `claim_ttl` and another refresher takes it). Due
    times and keep-alive as in `tokenward.refresher.Refresher`.
    """

    def __init__(
        self,
        store: Store,
        source_for_key: Callable[[str], Source | None],
        *,
        concurrency: int = 64,
        batch: int = 64,
        claim_ttl: float = 60.0,
        poll_interval: float = 0.25,
        keepalive_after: float | None = KEEPALIVE_AFTER,
        proactive: bool = True,
        lead_fraction: float = DUE_FRACTION,
        max_lead: float = DUE_MAX,
        failure_pause: float = 30.0,
        lease_ttl: float = 30.0,
        lease_wait: float = 60.0,
        retry: RetryPolicy | None = None,
        policy: RefreshPolicy | None = None,
        owner: str | None = None,
        timeout: httpx2.Timeout | float = DEFAULT_TIMEOUT,
    ) -> None:
        if concurrency < 1 or batch < 1:
            raise ValueError("concurrency and batch must be at least 1")
        self.store = store
        #: What the loop drives: `store` itself when its async operations are native (Redis,
        #: PostgreSQL), else `store` run inline (see `_Inline`).
        self._store = store if store.native_async else cast(Store, _Inline(store))
        self.source_for_key = source_for_key
        self.concurrency = concurrency
        self.batch = batch
        self.claim_ttl = claim_ttl
        self.poll_interval = poll_interval
        self.keepalive_after = keepalive_after
        self.proactive = proactive
        self.lead_fraction = lead_fraction
        self.max_lead = max_lead
        self.failure_pause = failure_pause
        self.lease_ttl = lease_ttl
        self.lease_wait = lease_wait
        self.retry = retry or RetryPolicy()
        self.policy = policy or RefreshPolicy()
        self.owner = owner or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.stats = RefresherStats()
        self.lateness = Lateness()
        self._timeout = timeout
        self._tasks: set[asyncio.Task[None]] = set()
        self._stopping = False
        self._wake: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    # -- policy -------------------------------------------------------------------------------
    def due_at(self, record: Record) -> float | None:
        """When this refresher wants `record` refreshed next (None: never)."""
        return due_time(
            record,
            fraction=self.lead_fraction,
            max_lead=self.max_lead,
            keepalive_after=self.keepalive_after,
            proactive=self.proactive,
        )

    # -- running ------------------------------------------------------------------------------
    async def run(self, duration: float | None = None) -> None:
        """Claim and refresh until `stop()` is called or `duration` seconds pass; then wait for
        the refreshes in flight (always, even when this task is cancelled)."""
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        ends = None if duration is None else time.monotonic() + duration
        limits = httpx2.Limits(
            max_connections=self.concurrency, max_keepalive_connections=self.concurrency
        )
        async with httpx2.AsyncClient(timeout=self._timeout, limits=limits) as client:
            try:
                await self._claim_loop(client, ends)
            finally:
                self._stopping = True
                await self._drain()

    def stop(self) -> None:
        """Stop claiming; `run()` returns once the refreshes in flight are stored. Safe to call
        from any thread or a signal handler."""
        self._stopping = True
        loop, wake = self._loop, self._wake
        if loop is not None and wake is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                loop.call_soon_threadsafe(wake.set)

    @property
    def in_flight(self) -> int:
        return len(self._tasks)

    async def _claim_loop(self, client: httpx2.AsyncClient, ends: float | None) -> None:
        pause = self.poll_interval
        while not self._stopping and (ends is None or time.monotonic() < ends):
            free = min(self.batch, self.concurrency - len(self._tasks))
            claimed: list[Record] = []
            if free > 0:
                try:
                    claimed = await self._store.aclaim_due_records(
                        time.time(), free, self.owner, self.claim_ttl
                    )
                    pause = self.poll_interval
                except StoreError as exc:
                    self.stats.add("store_errors")
                    events.emit("refresher.store_error", "*", detail=str(exc))
                    pause = min(pause * 2, 2.0)  # the store is down: back off, keep trying
            self.stats.add("claimed", len(claimed))
            now = time.time()
            for record in claimed:
                self._start(client, record, now)
            if not claimed or len(self._tasks) >= self.concurrency:
                await self._idle(pause)

    async def _idle(self, pause: float) -> None:
        """Wait `pause`, or less when a refresh finishes (a free slot) or `stop()` is called."""
        assert self._wake is not None
        self._wake.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), pause)

    def _start(self, client: httpx2.AsyncClient, record: Record, now: float) -> None:
        due = due_time(record)
        if due is not None:
            self.lateness.add(now - due)
        task = asyncio.get_running_loop().create_task(self._work(client, record))
        self._tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if self._wake is not None:
            self._wake.set()

    async def _drain(self) -> None:
        """Wait for every refresh in flight; a cancellation of the caller waits all the same."""
        while self._tasks:
            pending = set(self._tasks)
            try:
                await asyncio.shield(asyncio.gather(*pending, return_exceptions=True))
            except asyncio.CancelledError:
                continue  # cancelled again: the refreshes still run, wait for them anyway

    async def _work(self, client: httpx2.AsyncClient, record: Record) -> None:
        outcome = await self.process(client, record)
        self.stats.add(outcome)

    # -- one credential -----------------------------------------------------------------------
    async def process(self, client: httpx2.AsyncClient, record: Record) -> str:
        """Handle one claimed record; returns what happened (a `RefresherStats` field name)."""
        key = record.key
        try:
            source = self.source_for_key(key)
            if source is None:
                return "skipped"  # another refresher's key: its claim lapses after claim_ttl
            due = self.due_at(record)
            if due is None or due > time.time():
                # Refreshed meanwhile (or waiting for re-authorization): file its next due time.
                await self._store.aschedule(key, due)
                return "rescheduled"
            context = self._context(key, source)
            flow = refresh_flow(context, record.token(), force=True, known=record)
            token = await run_async(flow, self._store, client)
            # The compare-and-set filed the store's default due time; when this refresher's
            # policy says otherwise (a longer keep-alive period, ...), file its own.
            stored = Record(key, expires_at=token.expires_at, obtained_at=token.obtained_at)
            if (mine := self.due_at(stored)) != due_time(stored):
                await self._store.aschedule(key, mine)
            return "refreshed"
        except ReauthorizationRequired:
            return "needs_reauth"  # the store already took it out of the queue
        except CredentialNotSeeded:
            await self._schedule_quietly(key, None)
            return "skipped"
        except Exception as exc:  # transient, store down, misconfigured: try again later
            events.emit("refresher.failed", key, detail=f"{type(exc).__name__}: {exc}")
            await self._schedule_quietly(key, time.time() + self.failure_pause)
            return "failed"

    def _context(self, key: str, source: Source) -> FlowContext:
        policy = self.policy
        return FlowContext(
            key=key,
            source=source,
            store=self._store,
            owner=self.owner,
            fresh=lambda token: time.time() < policy.refresh_at(token),
            retry=self.retry,
            lease_ttl=self.lease_ttl,
            lease_wait=self.lease_wait,
            request_deadline=longest_request(self._timeout) + 1.0,
        )

    async def _schedule_quietly(self, key: str, due: float | None) -> None:
        try:
            await self._store.aschedule(key, due)
        except Exception:  # the store is down: the claim lapses after claim_ttl instead
            self.stats.add("store_errors")
