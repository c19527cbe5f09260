"""The store contract: versioned credential records with compare-and-set, and leases.

A store keeps one `Record` per credential key. Writers never overwrite blindly: every write is a
compare-and-set against the version the writer read, so two processes cannot both "win" a
refresh. A lease is a short, owner-tagged lock on a key that spans processes: the refresh
leader holds it while it talks to the provider, renews it when slow, and only its owner can
release it; a lease whose owner died simply expires.

Sync methods are the contract; the async ones default to running the sync method in a worker
thread, which is right for file and SQLite stores. Network stores (Redis, PostgreSQL) override
them with native async code.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from abc import ABC, abstractmethod
from dataclasses import dataclass

from ..errors import StoreError
from ..liveness import holder_parts, join_holder, process_alive
from .record import Record, State

__all__ = [
    "DUE_FRACTION",
    "DUE_MAX",
    "IDLE_OFFER_AFTER",
    "Begun",
    "Claim",
    "InFlightMark",
    "Record",
    "State",
    "Store",
    "due_time",
]


@dataclass(frozen=True, slots=True)
class Claim:
    """Who holds a lease, or has a refresh token in flight, as the store sees it now.

    `holder` is the identity the holding process recorded (`tokenward.liveness`), from which
    `Store.holder_alive` tells whether it still runs; `fingerprint` (in-flight records only)
    names the refresh token that was sent, never the token itself."""

    owner: str
    #: Seconds until the lease (or the in-flight request's deadline) runs out, store clock.
    expires_in: float
    holder: str | None = None
    fingerprint: str | None = None


@dataclass(frozen=True, slots=True)
class InFlightMark:
    """Ask `Store.begin_refresh` to record, in the same round trip, that the refresh token named
    by `fingerprint` is about to be sent (`mark_in_flight`), provided the record still has
    `version` and no other owner has that very token in flight."""

    version: int
    fingerprint: str
    #: Seconds until the token request's deadline.
    ttl: float


@dataclass(frozen=True, slots=True)
class Begun:
    """What `Store.begin_refresh` did and saw: the lease (taken or not), the record as it stands
    (read after the lease was taken), the in-flight record before any mark, and the mark."""

    acquired: bool
    record: Record | None = None
    in_flight: Claim | None = None
    marked: bool = False


def may_mark(
    mark: InFlightMark | None, record: Record | None, current: Claim | None, owner: str
) -> bool:
    """`begin_refresh` writes `mark` when the record still has the mark's version and no other
    owner has that very refresh token in flight (`current`, the in-flight record before it).
    The Redis script and the PostgreSQL statement state the same rule in their languages."""
    if mark is None or record is None or record.version != mark.version:
        return False
    return current is None or current.owner == owner or current.fingerprint != mark.fingerprint


#: The due-queue's default refresh-due time: `DUE_FRACTION` of the token's lifetime before its
#: expiry, at most `DUE_MAX` seconds before (earlier than the manager's own 5 % / 5 min window,
#: so a refresher process gets there before callers do), and at the latest `IDLE_OFFER_AFTER`
#: seconds after the last refresh: an idle credential is offered to refreshers once a day, and
#: each refresher applies its own keep-alive period (`tokenward.refresher`, 30 days by default)
#: by rescheduling it, so refresh tokens that lapse when unused are kept alive.
DUE_FRACTION = 0.2
DUE_MAX = 300.0
IDLE_OFFER_AFTER = 86400.0


def due_time(
    record: Record,
    *,
    fraction: float = DUE_FRACTION,
    max_lead: float = DUE_MAX,
    keepalive_after: float | None = IDLE_OFFER_AFTER,
    proactive: bool = True,
) -> float | None:
    """When `record` is next due for a refresh (wall clock), or None when it never is (a
    credential waiting for re-authorization). Stores call this on every compare-and-set to keep
    the due-queue in step with the records; refreshers call it with their own settings."""
    if record.state != "ok":
        return None
    due: float | None = None
    if proactive and record.expires_at is not None:
        obtained = record.obtained_at if record.obtained_at is not None else record.updated_at
        lifetime = max(record.expires_at - obtained, 0.0)
        due = record.expires_at - min(lifetime * fraction, max_lead)
    if keepalive_after is not None:
        last = record.obtained_at if record.obtained_at is not None else record.updated_at
        idle = last + keepalive_after
        due = idle if due is None else min(due, idle)
    return due


def check_successor(record: Record, expected_version: int) -> None:
    """Stores call this first in `compare_and_set`: versions grow by exactly one."""
    if record.version != expected_version + 1:
        raise ValueError(
            f"record {record.key!r} has version {record.version}; a compare-and-set against "
            f"version {expected_version} must write version {expected_version + 1}"
        )


_QUEUE_INIT = threading.Lock()


class Store(ABC):
    """Versioned records plus per-key leases. Implementations must be safe across threads and,
    where the medium allows, across processes."""

    #: A human-readable location for messages (a path or URL without credentials).
    location: str = "memory"
    #: True when the async operations are native (network stores), not the sync ones run in a
    #: worker thread.
    native_async: bool = False

    @abstractmethod
    def load(self, key: str) -> Record | None:
        """The current record for `key`, or None when there is none."""

    @abstractmethod
    def compare_and_set(self, record: Record, expected_version: int) -> bool:
        """Write `record` iff the stored version is `expected_version` (0: no record yet).

        `record.version` must be `expected_version + 1`. Returns False, writing nothing, when
        someone else wrote first. The write is durable when this returns True.
        """

    @abstractmethod
    def delete(self, key: str) -> bool:
        """Remove the record (and any lease) for `key`; True when there was one."""

    @abstractmethod
    def keys(self, prefix: str = "") -> list[str]:
        """Keys of all records starting with `prefix`, sorted."""

    @abstractmethod
    def acquire_lease(self, key: str, owner: str, ttl: float) -> bool:
        """Take the lease on `key` for `ttl` seconds. True when `owner` now holds it (taking a
        lease it already holds renews it); False while another owner holds an unexpired one."""

    @abstractmethod
    def renew_lease(self, key: str, owner: str, ttl: float) -> bool:
        """Extend `owner`'s lease to `ttl` seconds from now; False when `owner` lost it."""

    @abstractmethod
    def release_lease(self, key: str, owner: str) -> bool:
        """Release the lease iff `owner` holds it; True when it did."""

    def close(self) -> None:  # noqa: B027 - optional hook, nothing to do by default
        """Release connections and file handles."""

    # Liveness and in-flight records: optional. The defaults know nothing, so a process waiting
    # for this store's lease waits out its TTL and nothing guards a stalled leader's refresh
    # token beyond the lease (the behaviour before these operations existed). Every store of
    # tokenward implements them; see docs/scale.md, "Process death and stalled leaders".
    def lease_holder(self, key: str) -> Claim | None:
        """The unexpired lease on `key` (owner, time left, holder identity), or None."""
        return None

    def take_over_lease(self, key: str, dead_owner: str, owner: str, ttl: float) -> bool:
        """Give `owner` the lease on `key` for `ttl` seconds iff `dead_owner` still holds it
        (the caller has proved `dead_owner`'s process dead). False when anyone else holds it,
        or nobody: then `acquire_lease` is the way in."""
        return False

    def mark_in_flight(  # noqa: B027 - optional, nothing to record by default
        self, key: str, owner: str, fingerprint: str, ttl: float
    ) -> None:
        """Record, before a refresh token is sent, that `owner` has the refresh token named by
        `fingerprint` in flight until `ttl` seconds from now (the request's deadline)."""

    def in_flight(self, key: str) -> Claim | None:
        """The unexpired in-flight record of `key`, or None."""
        return None

    def clear_in_flight(self, key: str, owner: str) -> bool:
        """Drop `owner`'s in-flight record of `key` (its answer is in); True when there was one."""
        return False

    def holder_alive(self, holder: str | None) -> bool | None:
        """Does the process that recorded `holder` still run? True, False (provably dead) or
        None (this store and host cannot tell). The process signal, when this host can read it,
        is exact; a store's session signal (`_session_alive`) answers otherwise."""
        parts = holder_parts(holder)
        if "p" in parts and (verdict := process_alive(parts["p"])) is not None:
            return verdict
        if "s" in parts:
            return self._session_alive(parts["s"])
        return None

    def _holder(self) -> str | None:
        """The holder identity this process records beside its leases and in-flight records."""
        return join_holder(self._session())

    def _session(self) -> str | None:
        """Network stores: a server-side signal that lives exactly as long as this process."""
        return None

    def _session_alive(self, session: str) -> bool | None:
        """Network stores: whether the session signal `session` is still alive on the server."""
        return None

    # Compound operations: the refresh protocol's store steps in as few round trips as the
    # store allows. The defaults compose the operations above (same effect, more round trips);
    # Redis, PostgreSQL and SQLite do each in one script, statement or transaction.
    def begin_refresh(
        self, key: str, owner: str, ttl: float, mark: InFlightMark | None = None
    ) -> Begun:
        """Take the lease on `key`, read the record and its in-flight record, and (with `mark`,
        only when the lease was taken) mark the refresh token in flight (`may_mark`)."""
        acquired = self.acquire_lease(key, owner, ttl)
        record = self.load(key)
        if not acquired:
            return Begun(False, record)
        current = self.in_flight(key)
        marked = may_mark(mark, record, current, owner)
        if marked and mark is not None:
            self.mark_in_flight(key, owner, mark.fingerprint, mark.ttl)
        return Begun(True, record, current, marked)

    def finish_refresh(
        self, record: Record, expected_version: int, owner: str, clear_in_flight: bool = True
    ) -> bool:
        """`compare_and_set(record, expected_version)`; when it wins, also drop `owner`'s
        in-flight record of the key (unless told not to) and release `owner`'s lease. False
        (nothing else done) when another write came first."""
        if not self.compare_and_set(record, expected_version):
            return False
        if clear_in_flight:
            with contextlib.suppress(StoreError):  # else it lapses at its deadline
                self.clear_in_flight(record.key, owner)
        self.release_lease(record.key, owner)
        return True

    def claim_due_records(self, now: float, limit: int, owner: str, ttl: float) -> list[Record]:
        """`claim_due`, returning the claimed records (keys deleted meanwhile are left out)."""
        claimed = (self.load(key) for key in self.claim_due(now, limit, owner, ttl))
        return [record for record in claimed if record is not None]

    async def abegin_refresh(
        self, key: str, owner: str, ttl: float, mark: InFlightMark | None = None
    ) -> Begun:
        return await asyncio.to_thread(self.begin_refresh, key, owner, ttl, mark)

    async def afinish_refresh(
        self, record: Record, expected_version: int, owner: str, clear_in_flight: bool = True
    ) -> bool:
        return await asyncio.to_thread(
            self.finish_refresh, record, expected_version, owner, clear_in_flight
        )

    async def aclaim_due_records(
        self, now: float, limit: int, owner: str, ttl: float
    ) -> list[Record]:
        return await asyncio.to_thread(self.claim_due_records, now, limit, owner, ttl)

    # Due-queue: optional. The defaults keep the queue in this object's memory and scan the
    # records, which is right for single-process stores (memory, JSON file, dotenv). Shared
    # stores (SQLite, Redis, PostgreSQL) keep it beside the records and claim atomically.
    def schedule(self, key: str, due_at: float | None) -> None:
        """Set when `key` is next due for a refresh (None: never, until its next write).

        Stores that keep a due-queue derive it from every compare-and-set (`due_time`); a
        refresher calls this to apply its own policy or to retry a failed refresh later."""
        with self._queue_lock():
            self._due_overrides()[key] = due_at

    def claim_due(self, now: float, limit: int, owner: str, ttl: float) -> list[str]:
        """Atomically claim up to `limit` keys due at `now` (earliest first) for `owner`: each
        claimed key's due time moves to `now + ttl`, so no other worker gets it meanwhile, and a
        worker that dies holding it only delays it by `ttl`. A claim only hands out work: the
        refresh still goes through the lease and compare-and-set, so a key claimed twice is
        still refreshed once."""
        with self._queue_lock():
            overrides = self._due_overrides()
            due: list[tuple[float, str]] = []
            for key in self.keys():
                if key in overrides:
                    when = overrides[key]
                else:
                    record = self.load(key)
                    when = None if record is None else due_time(record)
                if when is not None and when <= now:
                    due.append((when, key))
            claimed = [key for _when, key in sorted(due)[: max(limit, 0)]]
            for key in claimed:
                overrides[key] = now + ttl
            return claimed

    def _queue_lock(self) -> threading.Lock:
        lock: threading.Lock | None = self.__dict__.get("_tw_queue_lock")
        if lock is None:
            with _QUEUE_INIT:
                lock = self.__dict__.setdefault("_tw_queue_lock", threading.Lock())
        return lock

    def _due_overrides(self) -> dict[str, float | None]:
        overrides: dict[str, float | None] = self.__dict__.setdefault("_tw_due", {})
        return overrides

    def _forget_due(self, key: str) -> None:
        """Single-process stores: a write recomputes the key's due time from the record."""
        with self._queue_lock():
            self._due_overrides().pop(key, None)

    # Async API: worker-thread defaults, overridden by natively async stores.
    async def aload(self, key: str) -> Record | None:
        return await asyncio.to_thread(self.load, key)

    async def acompare_and_set(self, record: Record, expected_version: int) -> bool:
        return await asyncio.to_thread(self.compare_and_set, record, expected_version)

    async def adelete(self, key: str) -> bool:
        return await asyncio.to_thread(self.delete, key)

    async def akeys(self, prefix: str = "") -> list[str]:
        return await asyncio.to_thread(self.keys, prefix)

    async def aacquire_lease(self, key: str, owner: str, ttl: float) -> bool:
        return await asyncio.to_thread(self.acquire_lease, key, owner, ttl)

    async def arenew_lease(self, key: str, owner: str, ttl: float) -> bool:
        return await asyncio.to_thread(self.renew_lease, key, owner, ttl)

    async def arelease_lease(self, key: str, owner: str) -> bool:
        return await asyncio.to_thread(self.release_lease, key, owner)

    async def aclose(self) -> None:
        await asyncio.to_thread(self.close)

    async def alease_holder(self, key: str) -> Claim | None:
        return await asyncio.to_thread(self.lease_holder, key)

    async def atake_over_lease(self, key: str, dead_owner: str, owner: str, ttl: float) -> bool:
        return await asyncio.to_thread(self.take_over_lease, key, dead_owner, owner, ttl)

    async def amark_in_flight(self, key: str, owner: str, fingerprint: str, ttl: float) -> None:
        await asyncio.to_thread(self.mark_in_flight, key, owner, fingerprint, ttl)

    async def ain_flight(self, key: str) -> Claim | None:
        return await asyncio.to_thread(self.in_flight, key)

    async def aclear_in_flight(self, key: str, owner: str) -> bool:
        return await asyncio.to_thread(self.clear_in_flight, key, owner)

    async def aholder_alive(self, holder: str | None) -> bool | None:
        return await asyncio.to_thread(self.holder_alive, holder)

    async def aschedule(self, key: str, due_at: float | None) -> None:
        await asyncio.to_thread(self.schedule, key, due_at)

    async def aclaim_due(self, now: float, limit: int, owner: str, ttl: float) -> list[str]:
        return await asyncio.to_thread(self.claim_due, now, limit, owner, ttl)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.location!r})"
