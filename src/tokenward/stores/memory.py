"""In-process store: a dict behind a lock. For tests and single-process programs that do not
need the token to survive a restart."""

from __future__ import annotations

import threading
import time

from .base import Claim, Record, Store, check_successor

__all__ = ["MemoryStore"]


class MemoryStore(Store):
    """Records and leases in memory; safe across threads, not shared between processes."""

    location = "memory"

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._records: dict[str, Record] = {}
        self._leases: dict[str, tuple[str, float]] = {}
        #: key -> (owner, fingerprint, deadline)
        self._in_flight: dict[str, tuple[str, str, float]] = {}

    def load(self, key: str) -> Record | None:
        return self._records.get(key)

    def compare_and_set(self, record: Record, expected_version: int) -> bool:
        check_successor(record, expected_version)
        with self._lock:
            current = self._records.get(record.key)
            if (current.version if current else 0) != expected_version:
                return False
            self._records[record.key] = record
        self._forget_due(record.key)  # the due-queue follows the new record
        return True

    def delete(self, key: str) -> bool:
        self._forget_due(key)
        with self._lock:
            self._leases.pop(key, None)
            self._in_flight.pop(key, None)
            return self._records.pop(key, None) is not None

    def keys(self, prefix: str = "") -> list[str]:
        return sorted(k for k in list(self._records) if k.startswith(prefix))

    def acquire_lease(self, key: str, owner: str, ttl: float) -> bool:
        now = time.time()
        with self._lock:
            held = self._leases.get(key)
            if held and held[0] != owner and held[1] > now:
                return False
            self._leases[key] = (owner, now + ttl)
            return True

    def renew_lease(self, key: str, owner: str, ttl: float) -> bool:
        now = time.time()
        with self._lock:
            held = self._leases.get(key)
            if not held or held[0] != owner or held[1] <= now:
                return False
            self._leases[key] = (owner, now + ttl)
            return True

    def release_lease(self, key: str, owner: str) -> bool:
        with self._lock:
            held = self._leases.get(key)
            if not held or held[0] != owner:
                return False
            del self._leases[key]
            return True

    def lease_holder(self, key: str) -> Claim | None:
        now = time.time()
        held = self._leases.get(key)
        if held is None or held[1] <= now:
            return None
        return Claim(held[0], held[1] - now, self._holder())

    def take_over_lease(self, key: str, dead_owner: str, owner: str, ttl: float) -> bool:
        with self._lock:
            held = self._leases.get(key)
            if held is None or held[0] != dead_owner:
                return False
            self._leases[key] = (owner, time.time() + ttl)
            return True

    def mark_in_flight(self, key: str, owner: str, fingerprint: str, ttl: float) -> None:
        with self._lock:
            self._in_flight[key] = (owner, fingerprint, time.time() + ttl)

    def in_flight(self, key: str) -> Claim | None:
        now = time.time()
        held = self._in_flight.get(key)
        if held is None or held[2] <= now:
            return None
        return Claim(held[0], held[2] - now, self._holder(), held[1])

    def clear_in_flight(self, key: str, owner: str) -> bool:
        with self._lock:
            held = self._in_flight.get(key)
            if held is None or held[0] != owner:
                return False
            del self._in_flight[key]
            return True
