"""Proactive refresh of many credentials, shared by any number of processes.

Every store write puts the record's refresh-due time in the store's due-queue (a Redis sorted
set, an indexed PostgreSQL or SQLite column). A refresher claims the due keys in batches, with
their records (`Store.claim_due_records`: atomic, so two workers never get the same key at once,
and a claim held by a dead worker lapses after `claim_ttl`), refreshes each through the one
refresh protocol (`flow.refresh_flow`, started from the claimed record), and the store files its
next due time with the new record. Run as many refresher processes as you like against one
store: they split the work without a scheduler, and because each refresh still goes through the
lease and compare-and-set, a key claimed twice (a lapsed claim, a clock skew) is still refreshed
once: the second worker adopts the first one's token.

`AsyncRefresher` is the implementation: one event loop, one shared `httpx2.AsyncClient`, the
store's native async operations (local stores run inline on the loop: a worker-thread hop per
operation would cost more CPU than the operation). With the stores' compound operations a
refresh costs a share of one claim, one `begin_refresh`, the token request and one
`finish_refresh` (docs/scale.md, "Store round trips per refresh"). Nothing is kept per
credential between refreshes, so memory stays flat however many credentials pass through.
`Refresher` is the same for programs without an event loop: `run()` blocks, running an
`AsyncRefresher` on a private loop.

Stopping drains: `stop()` (SIGTERM in `tokenward refresher`) stops claiming and waits for every
refresh in flight. A refresh task is never cancelled, not even when the task running `run()`
is: a provider's answer may hold the only valid refresh token (invariant 2).

Idle credentials are kept alive: a credential that has not been refreshed for
`keepalive_after` seconds is refreshed even if its access token has no expiry, so a refresh
token that lapses when unused (many providers: 30 days to 6 months) never does.

    refresher = AsyncRefresher(store, lambda key: sources[key.split(":", 1)[0]])
    await refresher.run()                # until refresher.stop()

`ConfiguredRefreshers` runs one `Refresher` per store for the credentials of a configuration:
what `tokenward refresher` runs (the command only parses its options and prints the counters).
It lives here, a little past ~500 lines, because it is the refresher's entry point and the
layers put this module above the configuration.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, cast

import httpx2

from . import events
from .driver import run_async
from .errors import CredentialNotSeeded, ReauthorizationRequired, StoreError
from .flow import FlowContext, refresh_flow
from .manager import RefreshPolicy
from .retry import RetryPolicy
from .sources.base import Source
from .stores.base import DUE_FRACTION, DUE_MAX, Record, Store, due_time
from .transport import DEFAULT_TIMEOUT, longest_request

if TYPE_CHECKING:
    from .config import Config, CredentialConfig

__all__ = [
    "KEEPALIVE_AFTER",
    "AsyncRefresher",
    "ConfiguredRefreshers",
    "Lateness",
    "Refresher",
    "RefresherStats",
    "add_up",
]

#: Default keep-alive period: a credential idle this long is refreshed anyway.
KEEPALIVE_AFTER = 30 * 86400.0


@dataclass
class RefresherStats:
    """Counts since the refresher started (one object, updated under a lock)."""

    claimed: int = 0
    refreshed: int = 0
    rescheduled: int = 0
    skipped: int = 0
    failed: int = 0
    needs_reauth: int = 0
    store_errors: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def add(self, name: str, amount: int = 1) -> None:
        with self._lock:
            setattr(self, name, getattr(self, name) + amount)

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return {k: v for k, v in vars(self).items() if not k.startswith("_")}


#: Upper bounds (seconds) of the lateness histogram: how long after its due time a claimed
#: credential was picked up.
LATENESS_BUCKETS = (0.1, 0.5, 1.0, 5.0, 30.0, 300.0, float("inf"))


def add_up(stats: Iterable[RefresherStats]) -> dict[str, int]:
    """Several refreshers' counters added up (one `tokenward refresher` runs one per store)."""
    summed: dict[str, int] = {}
    for one in stats:
        for name, value in one.snapshot().items():
            summed[name] = summed.get(name, 0) + value
    return summed


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
        self._bind()
        ends = None if duration is None else time.monotonic() + duration
        async with self._http() as client:
            try:
                await self._claim_loop(client, ends)
            finally:
                self._stopping = True
                await self._drain()

    async def run_once(self, now: float | None = None) -> int:
        """Claim what is due at `now` (up to `concurrency` keys), refresh it and wait: the
        number of keys handled."""
        self._bind()
        claimed: list[Record] = []
        async with self._http() as client:
            try:
                at = time.time() if now is None else now
                claimed = await self._store.aclaim_due_records(
                    at, self.concurrency, self.owner, self.claim_ttl
                )
                self.stats.add("claimed", len(claimed))
                for record in claimed:
                    self._start(client, record, at)
            finally:
                await self._drain()
        return len(claimed)

    def _bind(self) -> None:
        """Attach to the running loop (`stop()` reaches it from other threads)."""
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()

    def _http(self) -> httpx2.AsyncClient:
        limits = httpx2.Limits(
            max_connections=self.concurrency, max_keepalive_connections=self.concurrency
        )
        return httpx2.AsyncClient(timeout=self._timeout, limits=limits)

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


class Refresher:
    """`AsyncRefresher` for programs without an event loop: `run()` blocks.

    Takes the same options (`concurrency` defaults to 8). `run(stop)` returns when the
    `threading.Event` `stop` is set, `stop()` is called or `duration` passes, after the
    refreshes in flight are stored."""

    def __init__(
        self,
        store: Store,
        source_for_key: Callable[[str], Source | None],
        *,
        concurrency: int = 8,
        **options: Any,
    ) -> None:
        self._inner = AsyncRefresher(store, source_for_key, concurrency=concurrency, **options)
        self.store = store
        self.stats = self._inner.stats
        self.lateness = self._inner.lateness
        self.owner = self._inner.owner

    def due_at(self, record: Record) -> float | None:
        """When this refresher wants `record` refreshed next (None: never)."""
        return self._inner.due_at(record)

    @property
    def in_flight(self) -> int:
        """Refreshes running now."""
        return self._inner.in_flight

    def run(self, stop: threading.Event | None = None, duration: float | None = None) -> None:
        """Claim and refresh until `stop` is set, `stop()` is called or `duration` passes."""
        finished = threading.Event()

        def relay() -> None:  # `stop` is a threading.Event: hand it to the loop when set
            while stop is not None and not finished.is_set():
                if stop.wait(0.1):
                    self._inner.stop()
                    return

        watcher = threading.Thread(target=relay, name="tokenward-refresher-stop", daemon=True)
        watcher.start()
        try:
            asyncio.run(self._inner.run(duration))
        finally:
            finished.set()
            watcher.join()

    def run_once(self, now: float | None = None) -> int:
        """Claim what is due now (up to `concurrency` keys), refresh it, and wait: the number
        of keys handled."""
        return asyncio.run(self._inner.run_once(now))

    def stop(self) -> None:
        """Stop claiming (from any thread); `run()` returns once refreshes in flight are stored."""
        self._inner.stop()

    def close(self) -> None:
        """Stop (the store is yours: close it yourself)."""
        self.stop()

    def __enter__(self) -> Refresher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def backfill(self, prefixes: Iterable[str] = ("",)) -> int:
        """Put every record under `prefixes` in the due-queue (records written before the
        store had one, e.g. after upgrading a PostgreSQL schema). Returns how many."""
        count = 0
        for prefix in prefixes:
            for key in self.store.keys(prefix):
                record = self.store.load(key)
                if record is not None:
                    self.store.schedule(key, self.due_at(record))
                    count += 1
        return count


def _sources_by_name(members: list[CredentialConfig]) -> Callable[[str], Source | None]:
    """`source_for_key` for configured credentials: keys `NAME` and `NAME:anything` use
    credential NAME's source, built on first use (an idle credential's secret may be unset)."""
    by_name = {settings.name: settings for settings in members}
    cache: dict[str, Source] = {}

    def source_for_key(key: str) -> Source | None:
        name = key.split(":", 1)[0]
        if name not in by_name:
            return None
        if name not in cache:
            cache[name] = by_name[name].source()
        return cache[name]

    return source_for_key


class ConfiguredRefreshers:
    """Refreshers for the credentials of a configuration (what `tokenward refresher` runs):
    one `Refresher` per store, each on its own thread. `names` picks credentials (default:
    all); `options` go to every `Refresher` (`concurrency`, `keepalive_after`, `claim_ttl`...).

        with ConfiguredRefreshers(tokenward.config.load_config()) as refreshers:
            refreshers.run(stop_event)
        print(refreshers.totals())
    """

    def __init__(self, config: Config, names: Iterable[str] = (), **options: Any) -> None:
        chosen = [config.credential_config(name) for name in names]
        chosen = chosen or list(config.credentials.values())
        self.credentials = [settings.name for settings in chosen]
        groups: dict[int, list[CredentialConfig]] = {}
        for settings in chosen:
            groups.setdefault(id(config.store_for(settings)), []).append(settings)
        #: (refresher, the credential names it serves), one per store.
        self.refreshers = [
            (
                Refresher(config.store_for(members[0]), _sources_by_name(members), **options),
                sorted(settings.name for settings in members),
            )
            for members in groups.values()
        ]

    def backfill(self) -> list[tuple[int, list[str]]]:
        """Queue every record already stored (`Refresher.backfill`): (count, names) per store."""
        return [(worker.backfill(names), names) for worker, names in self.refreshers]

    def run(self, stop: threading.Event, duration: float | None = None) -> None:
        """Run until `stop` is set, `duration` passes or every refresher ends. Waits in short
        joins so the calling (main) thread still gets Ctrl-C; any exit sets `stop` and waits
        for the refreshes in flight to be stored (their answers may carry the only valid
        refresh tokens)."""
        threads = [
            threading.Thread(target=worker.run, args=(stop, duration), daemon=True)
            for worker, _names in self.refreshers
        ]
        for thread in threads:
            thread.start()
        try:
            while any(thread.is_alive() for thread in threads):
                for thread in threads:
                    thread.join(timeout=0.5)
        finally:
            stop.set()
            for thread in threads:  # the drain: refreshes in flight reach the store
                while thread.is_alive():
                    thread.join(timeout=0.5)

    def totals(self) -> dict[str, int]:
        """Every refresher's `RefresherStats`, added up."""
        return add_up(worker.stats for worker, _names in self.refreshers)

    def close(self) -> None:
        """Stop every refresher (`Refresher.close`); the stores stay open."""
        for worker, _names in self.refreshers:
            worker.close()

    def __enter__(self) -> ConfiguredRefreshers:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
