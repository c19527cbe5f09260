"""A JSON file store, plus the file plumbing the dotenv store shares with it.

Why a sidecar lock file and `fcntl.flock`: the data file is replaced by `os.replace` on every
write (that is what makes a write atomic), so it cannot carry the lock itself: a process waiting
on the old inode would wake up holding a lock on a file nobody reads any more. The lock lives on
`<path>.lock`, which is never replaced. `flock` is released by the kernel when its holder dies,
so a crashed process never leaves the store locked.

Why temp file + fsync + `os.replace` + directory fsync: a crash at any instant leaves either the
old document or the new one (invariant 7), and once `compare_and_set` returns the new refresh
token is on disk before anyone uses it (invariant 2).

Why leases in a sidecar (`<path>.leases`) rather than in the document: leases change far more
often than records and are worth nothing after a crash (every holder is dead then), so they are
written atomically but without fsync, and the credentials file is only rewritten when a record
changes. A lost or unreadable lease file only means "no leases"; it never touches a record.
"""

from __future__ import annotations

import json
import logging
import math
import os
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

from ..errors import StoreCorrupted
from .base import Claim, Record, Store, check_successor

__all__ = ["JsonFileStore"]

log = logging.getLogger(__name__)

#: Version of the JSON document layout; a newer file is refused rather than misread.
FORMAT_VERSION = 1
FILE_MODE = 0o600
DIR_MODE = 0o700

_NONE = type(None)
_NUMBER = (int, float)
#: Record fields and the JSON types each may hold (bool is rejected separately where an int is
#: expected). Fields missing from a document take the Record default, except REQUIRED ones.
FIELD_TYPES: dict[str, tuple[type, ...]] = {
    "key": (str,),
    "version": (int,),
    "access_token": (str, _NONE),
    "token_type": (str,),
    "expires_at": (*_NUMBER, _NONE),
    "refresh_token": (str, _NONE),
    "scope": (str, _NONE),
    "obtained_at": (*_NUMBER, _NONE),
    "extra": (dict,),
    "state": (str,),
    "last_error": (str, _NONE),
    "refresh_count": (int,),
    "updated_at": _NUMBER,
}
REQUIRED_FIELDS = ("key", "version")
STATES = ("ok", "needs_reauth")


# --- shared helpers for file-backed stores (also used by dotenv.py and sqlite.py) ------------


def record_from_data(location: str, data: Any, where: str) -> Record:
    """Validate a decoded record and build it; anything off raises `StoreCorrupted`.

    Messages name fields and types, never values: a value may be a secret.
    """
    if not isinstance(data, dict):
        raise StoreCorrupted(location, f"{where} is a {type(data).__name__}, not an object")
    for name in REQUIRED_FIELDS:
        if name not in data:
            raise StoreCorrupted(location, f"{where} has no {name!r} field")
    for name, value in data.items():
        _check_field(location, where, name, value)
    return Record.from_dict(data)


def _check_field(location: str, where: str, name: str, value: Any) -> None:
    types = FIELD_TYPES.get(name)
    if types is None:
        return  # written by a newer tokenward: ignored, as Record.from_dict does
    wrong_type = not isinstance(value, types) or (isinstance(value, bool) and bool not in types)
    if wrong_type:
        raise StoreCorrupted(
            location, f"{where}: field {name!r} is a {type(value).__name__}, not {_names(types)}"
        )
    if isinstance(value, float) and not math.isfinite(value):
        raise StoreCorrupted(location, f"{where}: field {name!r} is not a finite number")
    if name == "version" and value < 1:
        raise StoreCorrupted(location, f"{where}: field 'version' is {value}, below 1")
    if name == "state" and value not in STATES:
        raise StoreCorrupted(location, f"{where}: field 'state' is not one of {STATES}")


def _names(types: tuple[type, ...]) -> str:
    return " or ".join("null" if t is _NONE else t.__name__ for t in types)


def make_private_dir(directory: Path) -> None:
    """Create `directory` (and parents) readable by the owner only, if it does not exist."""
    if not directory.exists():
        os.makedirs(directory, mode=DIR_MODE, exist_ok=True)


def fsync_dir(directory: Path) -> None:
    """Make a rename in `directory` durable."""
    fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path, data: bytes, *, mode: int = FILE_MODE, durable: bool = True) -> None:
    """Replace `path` with `data` so that readers and crashes see the old or the new bytes.

    The temp file is created 0600 by `mkstemp` (never world-readable, even briefly) and only then
    given `mode`. With `durable`, the data and the rename are fsync'ed before returning.
    """
    path = Path(os.path.realpath(path))  # through a symlink: keep the link, replace its target
    make_private_dir(path.parent)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fchmod(handle.fileno(), mode)
            if durable:
                os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with suppress(OSError):
            os.unlink(tmp)
        raise
    if durable:
        fsync_dir(path.parent)


def sweep_temp_files(path: Path, older_than: float = 60.0) -> int:
    """Remove temp files `atomic_write` left behind when a writer was killed mid-write (they
    hold secrets). Only old ones: a fresh one may belong to a write in progress."""
    path = Path(os.path.realpath(path))
    cutoff = time.time() - older_than
    removed = 0
    for stale in path.parent.glob(f".{path.name}.*.tmp"):
        with suppress(OSError):
            if stale.stat().st_mtime < cutoff:
                stale.unlink()
                removed += 1
    return removed


def read_bytes(path: Path) -> bytes | None:
    """The file's bytes, or None when it does not exist."""
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return None


class FileLock:
    """An exclusive lock across threads (a `threading.Lock`) and processes (`flock` on a sidecar
    file that is never replaced). Not reentrant."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._thread_lock = threading.Lock()

    @contextmanager
    def hold(self) -> Iterator[None]:
        import fcntl  # POSIX only; imported here so that importing tokenward works everywhere

        with self._thread_lock:
            make_private_dir(self.path.parent)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, FILE_MODE)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                yield
            finally:
                os.close(fd)  # closing the descriptor releases the flock


class SidecarLeases:
    """Leases kept as `{key: {"owner": ..., "expires_at": ..., "holder": ...}}` in a JSON
    sidecar file (in-flight records use the same shape, plus a `fp`, under reserved names).

    Every method must be called while holding the store's `FileLock`. Expiry uses the wall clock
    (`time.time()`) because leases are compared across processes.
    """

    def __init__(self, path: Path) -> None:
        self.path = path

    def acquire(self, key: str, owner: str, ttl: float, holder: str | None = None) -> bool:
        now = time.time()
        leases = self._read(now)
        held = leases.get(key)
        if held and held["owner"] != owner:
            return False
        leases[key] = _entry(owner, now + ttl, holder)
        self._write(leases)
        return True

    def renew(self, key: str, owner: str, ttl: float) -> bool:
        now = time.time()
        leases = self._read(now)
        held = leases.get(key)
        if not held or held["owner"] != owner:
            return False
        held["expires_at"] = now + ttl
        self._write(leases)
        return True

    def take_over(self, key: str, dead_owner: str, entry: dict[str, Any]) -> bool:
        """Replace the entry of `key` with `entry` iff `dead_owner` holds it."""
        leases = self._read(time.time())
        held = leases.get(key)
        if not held or held["owner"] != dead_owner:
            return False
        leases[key] = entry
        self._write(leases)
        return True

    def put(self, key: str, entry: dict[str, Any]) -> None:
        leases = self._read(time.time())
        leases[key] = entry
        self._write(leases)

    def get(self, key: str) -> Claim | None:
        now = time.time()
        held = self._read(now).get(key)
        if held is None:
            return None
        return Claim(held["owner"], held["expires_at"] - now, held.get("holder"), held.get("fp"))

    def release(self, key: str, owner: str) -> bool:
        leases = self._read(None)
        held = leases.get(key)
        if not held or held["owner"] != owner:
            return False
        del leases[key]
        self._write(leases)
        return True

    def drop(self, key: str) -> None:
        leases = self._read(None)
        if leases.pop(key, None) is not None:
            self._write(leases)

    def _read(self, now: float | None) -> dict[str, dict[str, Any]]:
        """Current entries; with `now`, expired ones are left out (so anyone may take them)."""
        raw = read_bytes(self.path)
        if not raw:
            return {}
        try:
            data = json.loads(raw)
            leases = {k: _entry(**v) for k, v in data.items()}
        except (ValueError, TypeError, KeyError, AttributeError):
            log.warning("lease file %s is unreadable; treating it as holding no lease", self.path)
            return {}
        return {k: v for k, v in leases.items() if now is None or v["expires_at"] > now}

    def _write(self, leases: dict[str, dict[str, Any]]) -> None:
        data = {k: {n: v for n, v in e.items() if v is not None} for k, e in sorted(leases.items())}
        # No fsync: after a power loss every lease holder is dead anyway.
        atomic_write(self.path, json.dumps(data).encode(), durable=False)


#: Prefix of the lease file's in-flight entries (a NUL: no credential key starts with one).
IN_FLIGHT = "\x00in-flight:"


def _entry(
    owner: str,
    expires_at: float,
    holder: str | None = None,
    fp: str | None = None,
    **_newer: Any,  # fields a newer tokenward wrote: ignored
) -> dict[str, Any]:
    """One sidecar entry, type-checked (a malformed file raises TypeError/ValueError)."""
    if not isinstance(owner, str) or not isinstance(holder, str | None):
        raise TypeError("malformed lease entry")
    return {"owner": owner, "expires_at": float(expires_at), "holder": holder, "fp": fp}


def sidecar(path: Path, suffix: str) -> Path:
    """`<path><suffix>`, e.g. `tokens.json.lock`."""
    return path.with_name(path.name + suffix)


# --- stores kept in one file ------------------------------------------------------------------


class SidecarFileStore(Store):
    """Base of the stores kept in one file at `path`: writers serialize on an `flock` of
    `<path>.lock` (never the data file, which is replaced on every write), and leases live in
    `<path>.leases`, since losing a lease loses no data."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.location = str(path)
        self._lock = FileLock(sidecar(self.path, ".lock"))
        self._leases = SidecarLeases(sidecar(self.path, ".leases"))
        sweep_temp_files(self.path)

    def acquire_lease(self, key: str, owner: str, ttl: float) -> bool:
        with self._lock.hold():
            return self._leases.acquire(key, owner, ttl, self._holder())

    def renew_lease(self, key: str, owner: str, ttl: float) -> bool:
        with self._lock.hold():
            return self._leases.renew(key, owner, ttl)

    def release_lease(self, key: str, owner: str) -> bool:
        with self._lock.hold():
            return self._leases.release(key, owner)

    def lease_holder(self, key: str) -> Claim | None:
        with self._lock.hold():
            return self._leases.get(key)

    def take_over_lease(self, key: str, dead_owner: str, owner: str, ttl: float) -> bool:
        entry = _entry(owner, time.time() + ttl, self._holder())
        with self._lock.hold():
            return self._leases.take_over(key, dead_owner, entry)

    # In-flight records share the lease file under reserved names: no other file beside the
    # user's, and to an older tokenward they read as leases on keys nobody uses.
    def mark_in_flight(self, key: str, owner: str, fingerprint: str, ttl: float) -> None:
        entry = _entry(owner, time.time() + ttl, self._holder(), fingerprint)
        with self._lock.hold():
            self._leases.put(IN_FLIGHT + key, entry)

    def in_flight(self, key: str) -> Claim | None:
        with self._lock.hold():
            return self._leases.get(IN_FLIGHT + key)

    def clear_in_flight(self, key: str, owner: str) -> bool:
        with self._lock.hold():
            return self._leases.release(IN_FLIGHT + key, owner)

    def _drop_leases(self, key: str) -> None:
        """The lease and in-flight record of a deleted credential (hold the lock)."""
        self._leases.drop(key)
        self._leases.drop(IN_FLIGHT + key)


# --- the JSON file store ---------------------------------------------------------------------


class JsonFileStore(SidecarFileStore):
    """All records in one JSON document at `path`; leases in the sidecar `<path>.leases`.

    Layout: `{"tokenward": 1, "records": {key: record_fields}}`. Writers hold an exclusive
    `flock` on `<path>.lock` for the whole read-compare-write, so `compare_and_set` is atomic
    across threads and processes. Readers take no lock: they always see a complete document.
    The file is written with mode 0600; a missing file is an empty store, a corrupt one raises
    `StoreCorrupted` and is never overwritten. POSIX only (`fcntl`).
    """

    def load(self, key: str) -> Record | None:
        return self._read().get(key)

    def compare_and_set(self, record: Record, expected_version: int) -> bool:
        check_successor(record, expected_version)
        with self._lock.hold():
            records = self._read()
            current = records.get(record.key)
            if (current.version if current else 0) != expected_version:
                return False
            records[record.key] = record
            self._write(records)
            return True

    def delete(self, key: str) -> bool:
        with self._lock.hold():
            records = self._read()
            self._drop_leases(key)
            if records.pop(key, None) is None:
                return False
            self._write(records)
            return True

    def keys(self, prefix: str = "") -> list[str]:
        return sorted(k for k in self._read() if k.startswith(prefix))

    def _read(self) -> dict[str, Record]:
        raw = read_bytes(self.path)
        if raw is None:
            return {}
        try:
            doc = json.loads(raw)
        except (UnicodeDecodeError, ValueError) as exc:
            raise StoreCorrupted(self.location, f"not valid JSON ({_json_error(exc)})") from None
        return self._records_of(doc)

    def _records_of(self, doc: Any) -> dict[str, Record]:
        if not isinstance(doc, dict) or not isinstance(doc.get("records"), dict):
            raise StoreCorrupted(self.location, 'expected an object with a "records" object')
        version = doc.get("tokenward", FORMAT_VERSION)
        if not isinstance(version, int) or version > FORMAT_VERSION:
            raise StoreCorrupted(
                self.location,
                f"format version {version!r} is not one this tokenward reads (up to "
                f"{FORMAT_VERSION}); upgrade tokenward",
            )
        records: dict[str, Record] = {}
        for key, data in doc["records"].items():
            record = record_from_data(self.location, data, f"record {key!r}")
            if record.key != key:
                raise StoreCorrupted(self.location, f"record {key!r} holds key {record.key!r}")
            records[key] = record
        return records

    def _write(self, records: dict[str, Record]) -> None:
        doc = {
            "tokenward": FORMAT_VERSION,
            "records": {k: records[k].to_dict() for k in sorted(records)},
        }
        data = json.dumps(doc, indent=2, sort_keys=True).encode() + b"\n"
        atomic_write(self.path, data, mode=FILE_MODE)


def _json_error(exc: Exception) -> str:
    """Where the JSON broke, without quoting the document (it may hold secrets)."""
    if isinstance(exc, json.JSONDecodeError):
        return f"{exc.msg} at line {exc.lineno} column {exc.colno}"
    return type(exc).__name__
