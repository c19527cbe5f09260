"""The default store: one SQLite database file, shared safely by threads and processes.

Why SQLite: it gives atomic, durable compare-and-set across processes with nothing but the
standard library. WAL mode lets readers run while a writer commits; `synchronous=FULL` makes a
commit reach the disk before `compare_and_set` returns, so a rotated refresh token is durable
before the new access token is used (invariant 2); `busy_timeout` makes writers queue instead of
failing when another process holds the write lock.

Why `BEGIN IMMEDIATE` for writes: a deferred transaction that reads and then writes can fail
with SQLITE_BUSY without waiting; an immediate one takes the write lock up front and waits.

Why a connection per thread (`threading.local`): a sqlite3 connection must not run statements
from two threads at once, and one connection behind a lock would serialize every reader of the
process. Per-thread connections read in parallel and let SQLite's own locking arbitrate writes,
exactly as it does between processes. A connection is dropped (and closed) with its thread, is
never reused after a fork, and `close()` closes them all.

Schema version 3 adds the holder identity of each lease (`leases.holder`) and the `in_flight`
table (a refresh token sent and not yet answered: owner, fingerprint, deadline, holder); older
files are upgraded in place on open. The due-queue is the indexed column `records.due_at`
(schema version 2), set by every compare-and-set; `claim_due` selects and moves the due
rows inside one `BEGIN IMMEDIATE` transaction, so two processes never claim the same row at once.

A file that is not a SQLite database, or a database without our schema (or with a newer schema
version), raises `StoreCorrupted` and is never written to.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ..errors import StoreCorrupted, StoreError
from .base import Begun, Claim, InFlightMark, Record, Store, check_successor, due_time, may_mark
from .disk import FILE_MODE, make_private_dir
from .record import record_from_data

__all__ = ["SQLiteStore"]

SCHEMA_VERSION = 3
_IN_FLIGHT = (
    "CREATE TABLE in_flight (key TEXT PRIMARY KEY, owner TEXT NOT NULL, fingerprint TEXT NOT NULL, "
    "deadline REAL NOT NULL, holder TEXT)"
)
TABLES = {
    "meta": "CREATE TABLE meta (name TEXT PRIMARY KEY, value TEXT NOT NULL)",
    "records": (
        "CREATE TABLE records (key TEXT PRIMARY KEY, version INTEGER NOT NULL, "
        "data TEXT NOT NULL, updated_at REAL NOT NULL, due_at REAL, claimed_by TEXT)"
    ),
    "leases": (
        "CREATE TABLE leases (key TEXT PRIMARY KEY, owner TEXT NOT NULL, expires_at REAL NOT NULL, "
        "holder TEXT)"
    ),
    "in_flight": _IN_FLIGHT,
}
#: Tables every schema version has (what makes a file ours).
BASE_TABLES = {"meta", "records", "leases"}
#: Upgrades from each older schema version to the next (version 1 had no due-queue, version 2
#: no holder identities or in-flight records).
UPGRADES: dict[int, list[str]] = {
    1: [
        "ALTER TABLE records ADD COLUMN due_at REAL",
        "ALTER TABLE records ADD COLUMN claimed_by TEXT",
    ],
    2: ["ALTER TABLE leases ADD COLUMN holder TEXT", _IN_FLIGHT],
}
INDEXES = ["CREATE INDEX IF NOT EXISTS records_due_at ON records (due_at) WHERE due_at IS NOT NULL"]
_ACQUIRE = (
    "INSERT INTO leases (key, owner, expires_at, holder) VALUES (?, ?, ?, ?) "
    "ON CONFLICT (key) DO UPDATE SET owner = excluded.owner, expires_at = excluded.expires_at, "
    "holder = excluded.holder WHERE leases.owner = excluded.owner OR leases.expires_at <= ?"
)


class _Connection(sqlite3.Connection):
    """A connection that can be weakly referenced (the base class cannot) and knows the process
    that opened it: a connection inherited through `fork` is left alone, never used or closed."""

    pid: int = 0

    def close_if_mine(self) -> None:
        if self.pid == os.getpid():
            self.close()


class _ThreadConnection:
    """One thread's connection, kept in `threading.local`. When the thread ends, Python drops
    this holder at once (no reference cycle) and the finalizer closes the connection, rather
    than leaving it open until the cyclic garbage collector finds it."""

    __slots__ = ("__weakref__", "conn", "pid")

    def __init__(self, conn: _Connection) -> None:
        self.conn = conn
        self.pid = conn.pid
        weakref.finalize(self, conn.close_if_mine)


class SQLiteStore(Store):
    """Records and leases in a SQLite database at `path` (created 0600, parent dir 0700).

    `timeout` is how long a writer waits for another writer (SQLite's busy timeout).
    """

    def __init__(self, path: str | os.PathLike[str], *, timeout: float = 10.0) -> None:
        self.path = Path(path)
        self.location = str(path)
        self._timeout = timeout
        self._local = threading.local()
        self._connections: weakref.WeakSet[_Connection] = weakref.WeakSet()
        self._guard = threading.Lock()
        self._closed = False
        self._create_file()
        try:
            self._init_schema(self._conn())
        except BaseException:
            self.close()
            raise

    def load(self, key: str) -> Record | None:
        with self._errors("read"):
            row = (
                self._conn()
                .execute("SELECT version, data FROM records WHERE key = ?", (key,))
                .fetchone()
            )
        return None if row is None else self._record_of(key, row[0], row[1])

    def compare_and_set(self, record: Record, expected_version: int) -> bool:
        check_successor(record, expected_version)
        with self._transaction("compare-and-set") as conn:
            return self._write(conn, record, expected_version)

    @staticmethod
    def _write(conn: _Connection, record: Record, expected_version: int) -> bool:
        """The compare-and-set's statement, inside the caller's transaction."""
        data = json.dumps(record.to_dict(), separators=(",", ":"), sort_keys=True)
        due = due_time(record)
        if expected_version == 0:
            cursor = conn.execute(
                "INSERT INTO records (key, version, data, updated_at, due_at) "
                "VALUES (?, ?, ?, ?, ?) ON CONFLICT (key) DO NOTHING",
                (record.key, record.version, data, record.updated_at, due),
            )
        else:
            cursor = conn.execute(
                "UPDATE records SET version = ?, data = ?, updated_at = ?, due_at = ?, "
                "claimed_by = NULL WHERE key = ? AND version = ?",
                (record.version, data, record.updated_at, due, record.key, expected_version),
            )
        return cursor.rowcount == 1

    def delete(self, key: str) -> bool:
        with self._transaction("delete") as conn:
            conn.execute("DELETE FROM leases WHERE key = ?", (key,))
            conn.execute("DELETE FROM in_flight WHERE key = ?", (key,))
            return conn.execute("DELETE FROM records WHERE key = ?", (key,)).rowcount == 1

    def keys(self, prefix: str = "") -> list[str]:
        with self._errors("list keys"):
            rows = self._conn().execute(
                "SELECT key FROM records WHERE substr(key, 1, ?) = ?", (len(prefix), prefix)
            )
            return sorted(row[0] for row in rows)

    def acquire_lease(self, key: str, owner: str, ttl: float) -> bool:
        now = time.time()
        return self._change("acquire lease", _ACQUIRE, (key, owner, now + ttl, self._holder(), now))

    def renew_lease(self, key: str, owner: str, ttl: float) -> bool:
        now = time.time()
        return self._change(
            "renew lease",
            "UPDATE leases SET expires_at = ? WHERE key = ? AND owner = ? AND expires_at > ?",
            (now + ttl, key, owner, now),
        )

    def release_lease(self, key: str, owner: str) -> bool:
        return self._change(
            "release lease", "DELETE FROM leases WHERE key = ? AND owner = ?", (key, owner)
        )

    def lease_holder(self, key: str) -> Claim | None:
        now = time.time()
        with self._errors("read lease"):
            row = (
                self._conn()
                .execute(
                    "SELECT owner, expires_at, holder FROM leases WHERE key = ? AND expires_at > ?",
                    (key, now),
                )
                .fetchone()
            )
        return None if row is None else Claim(row[0], row[1] - now, row[2])

    def take_over_lease(self, key: str, dead_owner: str, owner: str, ttl: float) -> bool:
        return self._change(
            "take over lease",
            "UPDATE leases SET owner = ?, expires_at = ?, holder = ? WHERE key = ? AND owner = ?",
            (owner, time.time() + ttl, self._holder(), key, dead_owner),
        )

    def mark_in_flight(self, key: str, owner: str, fingerprint: str, ttl: float) -> None:
        self._change(
            "mark in flight",
            "INSERT OR REPLACE INTO in_flight (key, owner, fingerprint, deadline, holder) "
            "VALUES (?, ?, ?, ?, ?)",
            (key, owner, fingerprint, time.time() + ttl, self._holder()),
        )

    def in_flight(self, key: str) -> Claim | None:
        now = time.time()
        with self._errors("read in-flight record"):
            row = (
                self._conn()
                .execute(
                    "SELECT owner, deadline, holder, fingerprint FROM in_flight "
                    "WHERE key = ? AND deadline > ?",
                    (key, now),
                )
                .fetchone()
            )
        return None if row is None else Claim(row[0], row[1] - now, row[2], row[3])

    def clear_in_flight(self, key: str, owner: str) -> bool:
        return self._change(
            "clear in flight", "DELETE FROM in_flight WHERE key = ? AND owner = ?", (key, owner)
        )

    def schedule(self, key: str, due_at: float | None) -> None:
        self._change("schedule", "UPDATE records SET due_at = ? WHERE key = ?", (due_at, key))

    def claim_due(self, now: float, limit: int, owner: str, ttl: float) -> list[str]:
        if limit <= 0:
            return []
        with self._transaction("claim due keys") as conn:
            rows = conn.execute(
                "SELECT key FROM records WHERE due_at <= ? ORDER BY due_at LIMIT ?",
                (now, limit),
            ).fetchall()
            keys = [row[0] for row in rows]
            conn.executemany(
                "UPDATE records SET due_at = ?, claimed_by = ? WHERE key = ?",
                [(now + ttl, owner, key) for key in keys],
            )
        return keys

    def begin_refresh(
        self, key: str, owner: str, ttl: float, mark: InFlightMark | None = None
    ) -> Begun:
        now, holder = time.time(), self._holder()
        with self._transaction("begin refresh") as conn:
            acquired = conn.execute(_ACQUIRE, (key, owner, now + ttl, holder, now)).rowcount == 1
            row = conn.execute("SELECT version, data FROM records WHERE key = ?", (key,)).fetchone()
            record = None if row is None else self._record_of(key, row[0], row[1])
            if not acquired:
                return Begun(False, record)
            found = conn.execute(
                "SELECT owner, deadline, holder, fingerprint FROM in_flight "
                "WHERE key = ? AND deadline > ?",
                (key, now),
            ).fetchone()
            current = None if found is None else Claim(found[0], found[1] - now, *found[2:])
            marked = may_mark(mark, record, current, owner)
            if marked and mark is not None:
                conn.execute(
                    "INSERT OR REPLACE INTO in_flight (key, owner, fingerprint, deadline, holder) "
                    "VALUES (?, ?, ?, ?, ?)",
                    (key, owner, mark.fingerprint, now + mark.ttl, holder),
                )
            return Begun(True, record, current, marked)

    def finish_refresh(
        self, record: Record, expected_version: int, owner: str, clear_in_flight: bool = True
    ) -> bool:
        check_successor(record, expected_version)
        with self._transaction("finish refresh") as conn:
            if not self._write(conn, record, expected_version):
                return False
            if clear_in_flight:
                conn.execute(
                    "DELETE FROM in_flight WHERE key = ? AND owner = ?", (record.key, owner)
                )
            conn.execute("DELETE FROM leases WHERE key = ? AND owner = ?", (record.key, owner))
            return True

    def claim_due_records(self, now: float, limit: int, owner: str, ttl: float) -> list[Record]:
        if limit <= 0:
            return []
        with self._transaction("claim due keys") as conn:
            rows = conn.execute(
                "SELECT key, version, data FROM records WHERE due_at <= ? ORDER BY due_at LIMIT ?",
                (now, limit),
            ).fetchall()
            conn.executemany(
                "UPDATE records SET due_at = ?, claimed_by = ? WHERE key = ?",
                [(now + ttl, owner, row[0]) for row in rows],
            )
        return [self._record_of(key, version, data) for key, version, data in rows]

    def close(self) -> None:
        with self._guard:
            self._closed = True
            connections = list(self._connections)
            self._connections.clear()
        for conn in connections:
            conn.close_if_mine()

    # --- connections --------------------------------------------------------------------------

    def _create_file(self) -> None:
        """Create the database file 0600 before SQLite does (SQLite would use 0644)."""
        make_private_dir(self.path.parent)
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)
        except FileExistsError:
            return
        os.close(fd)

    def _conn(self) -> _Connection:
        held: _ThreadConnection | None = getattr(self._local, "held", None)
        if held is not None and held.pid == os.getpid() and not self._closed:
            return held.conn
        with self._guard:
            if self._closed:
                raise StoreError(f"token store {self.location} is closed")
            with self._errors("open"):
                conn = self._connect()
            self._connections.add(conn)
        self._local.held = _ThreadConnection(conn)
        return conn

    def _connect(self) -> _Connection:
        conn = sqlite3.connect(
            self.path,
            timeout=self._timeout,
            isolation_level=None,  # we issue BEGIN IMMEDIATE / COMMIT ourselves
            check_same_thread=False,  # used by one thread; only close() crosses threads
            factory=_Connection,
        )
        conn.pid = os.getpid()
        conn.execute("PRAGMA synchronous = FULL")
        return conn

    # --- schema -------------------------------------------------------------------------------

    def _init_schema(self, conn: _Connection) -> None:
        """Check (or create, in an empty file) the schema, then switch to WAL.

        Nothing is written before the file is known to be ours: WAL mode is set last.
        """
        with self._errors("open"):
            if not self._tables(conn):
                self._create_schema(conn)
            if self._check_schema(conn) < SCHEMA_VERSION:
                self._upgrade_schema(conn)
            conn.execute("PRAGMA journal_mode = WAL")

    def _tables(self, conn: _Connection) -> set[str]:
        rows = conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
        return {row[0] for row in rows}

    def _create_schema(self, conn: _Connection) -> None:
        conn.execute("BEGIN IMMEDIATE")
        try:
            if not self._tables(conn):  # another process may have created it meanwhile
                for statement in [*TABLES.values(), *INDEXES]:
                    conn.execute(statement)
                conn.execute(
                    "INSERT INTO meta (name, value) VALUES ('schema_version', ?)",
                    (str(SCHEMA_VERSION),),
                )
            conn.execute("COMMIT")
        finally:
            if conn.in_transaction:
                conn.execute("ROLLBACK")

    def _upgrade_schema(self, conn: _Connection) -> None:
        """Bring an older schema up to date, once, under the write lock."""
        conn.execute("BEGIN IMMEDIATE")
        try:
            version = self._check_schema(conn)  # another process may have upgraded meanwhile
            while version < SCHEMA_VERSION:
                for statement in UPGRADES[version]:
                    conn.execute(statement)
                version += 1
            for statement in INDEXES:
                conn.execute(statement)
            conn.execute(
                "UPDATE meta SET value = ? WHERE name = 'schema_version'", (str(SCHEMA_VERSION),)
            )
            conn.execute("COMMIT")
        finally:
            if conn.in_transaction:
                conn.execute("ROLLBACK")

    def _check_schema(self, conn: _Connection) -> int:
        tables = self._tables(conn)
        if not tables >= BASE_TABLES:
            found = ", ".join(sorted(tables)) or "none"
            raise StoreCorrupted(self.location, f"not a tokenward database (tables: {found})")
        row = conn.execute("SELECT value FROM meta WHERE name = 'schema_version'").fetchone()
        version = int(row[0]) if row is not None and str(row[0]).isdigit() else None
        if version is None:
            raise StoreCorrupted(self.location, "the meta table has no schema version")
        if version > SCHEMA_VERSION:
            raise StoreCorrupted(
                self.location,
                f"schema version {version} is newer than this tokenward supports "
                f"({SCHEMA_VERSION}); upgrade tokenward",
            )
        return version

    # --- statements ---------------------------------------------------------------------------

    def _record_of(self, key: str, version: int, text: str) -> Record:
        where = f"record {key!r}"
        try:
            data = json.loads(text)
        except (TypeError, ValueError):
            raise StoreCorrupted(self.location, f"{where}: data is not valid JSON") from None
        record = record_from_data(self.location, data, where)
        if record.key != key or record.version != version:
            raise StoreCorrupted(self.location, f"{where}: data disagrees with its row")
        return record

    def _change(self, action: str, sql: str, params: tuple[object, ...]) -> bool:
        """Run one writing statement (atomic on its own); True when it changed a row."""
        with self._errors(action):
            return self._conn().execute(sql, params).rowcount == 1

    @contextmanager
    def _transaction(self, action: str) -> Iterator[_Connection]:
        with self._errors(action):
            conn = self._conn()
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
                conn.execute("COMMIT")
            finally:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")

    @contextmanager
    def _errors(self, action: str) -> Iterator[None]:
        """Translate sqlite3 errors: busy/locked/IO → StoreError, not-a-database → corrupt."""
        try:
            yield
        except sqlite3.OperationalError as exc:
            raise StoreError(f"token store {self.location}: {action} failed: {exc}") from exc
        except sqlite3.DatabaseError as exc:
            raise StoreCorrupted(self.location, f"not a usable SQLite database ({exc})") from exc
