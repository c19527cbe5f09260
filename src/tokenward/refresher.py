"""`Refresher`: proactive refresh of many credentials, shared by any number of processes.

Every store write puts the record's refresh-due time in the store's due-queue
(`Store.claim_due`: a Redis sorted set, an indexed PostgreSQL or SQLite column). A refresher
loop claims the keys that are due (atomically: two workers never get the same key at once, and
a claim held by a dead worker lapses after `claim_ttl`), refreshes each through a per-key
`TokenManager` on a bounded thread pool, and puts it back in the queue at its next due time.
Run as many refresher processes as you like against one store: they split the work without a
scheduler, and because the refresh itself still goes through the manager's lease and
compare-and-set, a key that is claimed twice (a lapsed claim, a clock skew) is still refreshed
once: the second worker adopts the first one's token.

Idle credentials are kept alive: a credential that has not been refreshed for
`keepalive_after` seconds is refreshed even if its access token has no expiry, so a refresh
token that lapses when unused (many providers: 30 days to 6 months) never does.

    refresher = Refresher(store, lambda key: sources[key.split(":", 1)[0]])
    refresher.run(stop_event)            # or run_once() from your own loop
"""

from __future__ import annotations

import collections
import concurrent.futures
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import httpx2

from . import events
from .errors import CredentialNotSeeded, ReauthorizationRequired, StoreError
from .manager import RefreshPolicy, TokenManager
from .retry import RetryPolicy
from .sources.base import Source
from .stores.base import DUE_FRACTION, DUE_MAX, Record, Store, due_time
from .transport import DEFAULT_TIMEOUT

__all__ = ["KEEPALIVE_AFTER", "Refresher", "RefresherStats"]

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


class Refresher:
    """Claims due credentials from `store` and refreshes them, `concurrency` at a time.

    `source_for_key(key)` returns the source for a store key (e.g. every `ml:*` key uses the
    `ml` credential's client), or None for a key this refresher does not handle (it is left to
    another refresher and offered again after `claim_ttl`).

    Due times: `lead_fraction` of a token's lifetime before its expiry (at most `max_lead`
    seconds), and at the latest `keepalive_after` seconds after its last refresh. With
    `proactive=False` only the keep-alive refresh happens (callers refresh on demand). Stores
    file the default due times (`stores.base.due_time`) on every write and a refresher can only
    postpone them: a lead larger than the default, or a keep-alive period under one day, takes
    effect from the second refresh on.
    """

    def __init__(
        self,
        store: Store,
        source_for_key: Callable[[str], Source | None],
        *,
        concurrency: int = 8,
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
        max_managers: int = 100_000,
        owner: str | None = None,
        timeout: httpx2.Timeout | float = DEFAULT_TIMEOUT,
    ) -> None:
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        self.store = store
        self.source_for_key = source_for_key
        self.concurrency = concurrency
        self.claim_ttl = claim_ttl
        self.poll_interval = poll_interval
        self.keepalive_after = keepalive_after
        self.proactive = proactive
        self.lead_fraction = lead_fraction
        self.max_lead = max_lead
        self.failure_pause = failure_pause
        self.owner = owner or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.stats = RefresherStats()
        self._manager_options: dict[str, Any] = {
            "lease_ttl": lease_ttl,
            "lease_wait": lease_wait,
            "retry": retry,
            "policy": policy,
        }
        self._max_managers = max_managers
        self._managers: collections.OrderedDict[str, TokenManager] = collections.OrderedDict()
        self._managers_lock = threading.Lock()
        # One connection pool (and one TLS context) for every credential's token requests.
        limits = httpx2.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
        self._client = httpx2.Client(timeout=timeout, limits=limits)
        self._pool = concurrent.futures.ThreadPoolExecutor(
            concurrency, thread_name_prefix="tokenward-refresher"
        )
        self._in_flight = 0
        self._changed = threading.Condition()
        self._stop = threading.Event()

    # -- policy ---------------------------------------------------------------------------------
    def due_at(self, record: Record) -> float | None:
        """When this refresher wants `record` refreshed next (None: never)."""
        return due_time(
            record,
            fraction=self.lead_fraction,
            max_lead=self.max_lead,
            keepalive_after=self.keepalive_after,
            proactive=self.proactive,
        )

    # -- running --------------------------------------------------------------------------------
    def run(self, stop: threading.Event | None = None, duration: float | None = None) -> None:
        """Claim and refresh until `stop` is set, `stop()` is called or `duration` passes."""
        stop = stop or self._stop
        ends = None if duration is None else time.monotonic() + duration
        pause = self.poll_interval
        while not (stop.is_set() or self._stop.is_set()):
            if ends is not None and time.monotonic() >= ends:
                break
            try:
                started = self._claim_and_submit()
            except StoreError as exc:
                self.stats.add("store_errors")
                events.emit("refresher.store_error", "*", detail=str(exc))
                stop.wait(pause)
                pause = min(pause * 2, 2.0)  # the store is down: back off, keep trying
                continue
            pause = self.poll_interval
            if not started:
                with self._changed:
                    # Woken early when a worker finishes (a free slot may claim more).
                    self._changed.wait(self.poll_interval)
        self.wait_idle()

    def run_once(self, now: float | None = None) -> int:
        """Claim what is due now (up to `concurrency` keys), refresh it, and wait: the number
        of keys handled."""
        keys = self.store.claim_due(
            time.time() if now is None else now, self.concurrency, self.owner, self.claim_ttl
        )
        self.stats.add("claimed", len(keys))
        list(self._pool.map(self.process, keys))
        return len(keys)

    def stop(self) -> None:
        self._stop.set()
        with self._changed:
            self._changed.notify_all()

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Wait until no refresh is in flight."""
        ends = None if timeout is None else time.monotonic() + timeout
        with self._changed:
            while self._in_flight:
                left = None if ends is None else ends - time.monotonic()
                if left is not None and left <= 0:
                    return False
                self._changed.wait(left)
        return True

    def close(self) -> None:
        """Stop, wait for refreshes in flight, close the HTTP client (the store is yours)."""
        self.stop()
        self._pool.shutdown(wait=True)
        with self._managers_lock:
            managers = list(self._managers.values())
            self._managers.clear()
        for manager in managers:
            manager.close()
        self._client.close()

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

    # -- one key --------------------------------------------------------------------------------
    def _claim_and_submit(self) -> int:
        with self._changed:
            free = self.concurrency - self._in_flight
        if free <= 0:
            return 0
        keys = self.store.claim_due(time.time(), free, self.owner, self.claim_ttl)
        if not keys:
            return 0
        self.stats.add("claimed", len(keys))
        with self._changed:
            self._in_flight += len(keys)
        for key in keys:
            self._pool.submit(self._work, key)
        return len(keys)

    def _work(self, key: str) -> None:
        try:
            self.process(key)
        finally:
            with self._changed:
                self._in_flight -= 1
                self._changed.notify_all()

    def process(self, key: str) -> str:
        """Handle one claimed key; returns what happened (a `RefresherStats` field name)."""
        outcome = self._process(key)
        self.stats.add(outcome)
        return outcome

    def _process(self, key: str) -> str:
        try:
            record = self.store.load(key)
            if record is None:
                return "skipped"
            source = self.source_for_key(key)
            if source is None:
                return "skipped"  # another refresher's key: its claim lapses after claim_ttl
            due = self.due_at(record)
            if due is None or due > time.time():
                # Refreshed meanwhile (or waiting for re-authorization): file its next due time.
                self.store.schedule(key, due)
                return "rescheduled"
            manager = self._manager(key, source)
            current = record.token()
            # "Newer than what I just read": if another worker refreshed since, this adopts its
            # token (versions, not timing, decide), so a double claim never refreshes twice.
            token = manager.invalidate(current) if current is not None else manager.token()
            # The compare-and-set filed the store's default due time; when this refresher's
            # policy says otherwise (a longer keep-alive period, ...), file its own.
            stored = Record(key, expires_at=token.expires_at, obtained_at=token.obtained_at)
            if (due := self.due_at(stored)) != due_time(stored):
                self.store.schedule(key, due)
            return "refreshed"
        except ReauthorizationRequired:
            return "needs_reauth"  # the store already took it out of the queue
        except CredentialNotSeeded:
            # No refresh token to use (an access token stored by hand): nothing to refresh
            # until the next write files it again.
            self._schedule_quietly(key, None)
            return "skipped"
        except Exception as exc:  # transient, store down, misconfigured: try again later
            events.emit("refresher.failed", key, detail=f"{type(exc).__name__}: {exc}")
            self._schedule_quietly(key, time.time() + self.failure_pause)
            return "failed"

    def _schedule_quietly(self, key: str, due: float | None) -> None:
        try:
            self.store.schedule(key, due)
        except Exception:  # the store is down: the claim lapses after claim_ttl instead
            self.stats.add("store_errors")

    def _manager(self, key: str, source: Source) -> TokenManager:
        with self._managers_lock:
            manager = self._managers.get(key)
            if manager is not None and manager.source is source:
                self._managers.move_to_end(key)
                return manager
            manager = TokenManager(
                key, source, self.store, http_client=self._client, **self._manager_options
            )
            self._managers[key] = manager
            evicted = []
            while len(self._managers) > self._max_managers:
                evicted.append(self._managers.popitem(last=False)[1])
        for old in evicted:
            old.close()
        return manager
