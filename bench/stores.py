"""Store throughput (get, compare-and-set, lease) and loading 100,000 credentials.

Single-threaded operation rates, each measured for a fixed time on one key: `get` is `load`,
`cas` is one `compare_and_set` to the next version (durable: fsync / commit), a lease cycle is
`acquire_lease` + `release_lease`. Loading: `count` credentials written with `compare_and_set`
by a pool of threads (the time a product takes to import its accounts), then all read back by
as many threads (`keys()`, then `load` for each: a broker replica warming up), held in a dict:
the client's RSS growth, and the size the store takes (file size, Redis `used_memory` growth,
PostgreSQL table size).
"""

from __future__ import annotations

import concurrent.futures
import os
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tokenward.stores.base import Record, Store

from .common import rss_mb

REDIS_URL = os.environ.get("TOKENWARD_BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
POSTGRES_URL = os.environ.get(
    "TOKENWARD_BENCH_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"
)
KINDS = ["memory", "dotenv", "file", "sqlite", "redis", "postgres"]
LOAD_KINDS = ["memory", "sqlite", "redis", "postgres"]


def _record(key: str, version: int = 1) -> Record:
    now = time.time()
    return Record(
        key,
        version,
        access_token="APP_USR-" + uuid.uuid4().hex * 2,
        refresh_token="TG-" + uuid.uuid4().hex * 2,
        expires_at=now + 21600,
        obtained_at=now,
        scope="offline_access read write",
    )


@contextmanager
def open_kind(kind: str, directory: Path) -> Iterator[tuple[Store, Callable[[], int]]]:
    """A fresh, empty store of `kind` and a function giving its size in bytes; dropped after."""
    unique = "bench_" + uuid.uuid4().hex[:10]
    if kind == "memory":
        from tokenward.stores.memory import MemoryStore

        yield MemoryStore(), lambda: 0
    elif kind == "file":
        from tokenward.stores.file import JsonFileStore

        path = directory / f"{unique}.json"
        store: Store = JsonFileStore(path)
        yield store, lambda: path.stat().st_size if path.exists() else 0
        store.close()
    elif kind == "dotenv":
        from tokenward.stores.dotenv import DotenvStore

        path = directory / f"{unique}.env"
        store = DotenvStore(path)
        yield store, lambda: path.stat().st_size if path.exists() else 0
        store.close()
    elif kind == "sqlite":
        from tokenward.stores.sqlite import SQLiteStore

        path = directory / f"{unique}.db"
        store = SQLiteStore(path)

        def size() -> int:
            return sum(p.stat().st_size for p in directory.glob(f"{unique}.db*"))

        yield store, size
        store.close()
    elif kind == "redis":
        import redis

        from tokenward.stores.redis import RedisStore

        admin = redis.Redis.from_url(REDIS_URL)
        base = int(admin.info("memory")["used_memory"])
        store = RedisStore(REDIS_URL, prefix=unique + ":")
        try:
            yield store, lambda: int(admin.info("memory")["used_memory"]) - base
        finally:
            store.close()
            for name in admin.scan_iter(match=unique + ":*", count=10000):
                admin.delete(name)
            admin.close()
    elif kind == "postgres":
        import psycopg

        from tokenward.stores.postgres import PostgresStore

        store = PostgresStore(POSTGRES_URL, schema=unique)

        def size() -> int:
            with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
                row = conn.execute(
                    "SELECT pg_total_relation_size(%s)", (f"{unique}.records",)
                ).fetchone()
                return int(row[0]) if row and row[0] is not None else 0

        try:
            yield store, size
        finally:
            store.close()
            with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
                conn.execute(f'DROP SCHEMA IF EXISTS "{unique}" CASCADE')
    else:
        raise ValueError(f"unknown store kind {kind!r}")


def _rate(operation: Callable[[], Any], seconds: float) -> float:
    """Operations per second of `operation` run back to back for about `seconds`."""
    count, start = 0, time.perf_counter()
    deadline = start + seconds
    while True:
        for _ in range(10):
            operation()
        count += 10
        now = time.perf_counter()
        if now >= deadline:
            return count / (now - start)


def measure_ops(kind: str, seconds: float, directory: Path) -> dict[str, Any]:
    with open_kind(kind, directory) as (store, _):
        key = "bench-ops"
        current = [_record(key)]
        store.compare_and_set(current[0], 0)

        def cas() -> None:
            new = current[0].successor(access_token="APP_USR-" + uuid.uuid4().hex)
            if not store.compare_and_set(new, current[0].version):
                raise RuntimeError("compare-and-set lost against nobody")
            current[0] = new

        def lease() -> None:
            if not store.acquire_lease(key, "bench-owner", 30.0):
                raise RuntimeError("lease refused")
            store.release_lease(key, "bench-owner")

        return {
            "store": kind,
            "get_per_s": _rate(lambda: store.load(key), seconds),
            "cas_per_s": _rate(cas, seconds),
            "lease_cycles_per_s": _rate(lease, seconds),
        }


def measure_load(kind: str, count: int, directory: Path, writers: int = 8) -> dict[str, Any]:
    with open_kind(kind, directory) as (store, size):
        keys = [f"account-{i:07d}" for i in range(count)]

        def write(chunk: list[str]) -> None:
            for key in chunk:
                if not store.compare_and_set(_record(key), 0):
                    raise RuntimeError("unexpected conflict while loading")

        chunks = [keys[i::writers] for i in range(writers)]
        start = time.perf_counter()
        with concurrent.futures.ThreadPoolExecutor(writers) as pool:
            list(pool.map(write, chunks))
        write_s = time.perf_counter() - start
        stored = size()
        rss_before = rss_mb()
        start = time.perf_counter()
        names = store.keys("account-")

        def read(chunk: list[str]) -> list[tuple[str, Record | None]]:
            return [(name, store.load(name)) for name in chunk]

        with concurrent.futures.ThreadPoolExecutor(writers) as pool:
            parts = list(pool.map(read, [names[i::writers] for i in range(writers)]))
        held = {name: record for part in parts for name, record in part}
        read_s = time.perf_counter() - start
        rss_after = rss_mb()
        if len(held) != count or any(record is None for record in held.values()):
            raise RuntimeError(f"{kind}: loaded {len(held)} of {count} records")
        del held
        return {
            "store": kind,
            "count": count,
            "writers": writers,
            "write_s": write_s,
            "writes_per_s": count / write_s,
            "read_all_s": read_s,
            "reads_per_s": count / read_s,
            "client_rss_growth_mb": rss_after - rss_before,
            "store_size_mb": stored / 1e6,
        }


def available(kind: str) -> bool:
    """Whether the server a network store needs answers (so a missing server skips, not fails)."""
    try:
        if kind == "redis":
            import redis

            redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2).ping()
        elif kind == "postgres":
            import psycopg

            psycopg.connect(POSTGRES_URL, connect_timeout=2).close()
    except Exception:
        return False
    return True


def run(
    seconds: float = 1.0,
    count: int = 100_000,
    kinds: list[str] | None = None,
    load_kinds: list[str] | None = None,
    progress: Callable[[str], None] = print,
) -> dict[str, Any]:
    kinds = [kind for kind in (kinds or KINDS) if available(kind)]
    load_kinds = [kind for kind in (load_kinds or LOAD_KINDS) if available(kind)]
    ops, loads = [], []
    with tempfile.TemporaryDirectory(prefix="tokenward-bench-stores-") as tmp:
        for kind in kinds:
            row = measure_ops(kind, seconds, Path(tmp))
            progress(
                f"  stores {kind:9} get {row['get_per_s']:9.0f}/s  cas {row['cas_per_s']:8.0f}/s  "
                f"lease {row['lease_cycles_per_s']:8.0f}/s"
            )
            ops.append(row)
        for kind in load_kinds:
            row = measure_load(kind, count, Path(tmp))
            progress(
                f"  stores {kind:9} load {count}: write {row['write_s']:.1f}s, read all "
                f"{row['read_all_s']:.1f}s, client RSS +{row['client_rss_growth_mb']:.0f} MB"
            )
            loads.append(row)
    return {"seconds_per_op": seconds, "count": count, "ops": ops, "load": loads}
