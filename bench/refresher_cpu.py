"""CPU per refresh of tokenward's refresher beside the floor, and its growth with store size.

    .venv/bin/python -m bench.refresher_cpu [--kinds redis,postgres,sqlite] [--refreshes 3000]
        [--growth 10000,100000,1000000] [--touch 20000]

Each measurement runs in its own process against a fresh store namespace seeded with
`--refreshes` credentials that are all due now, and a minimal rotating token endpoint
(bench/tokenprovider.py) in another process. The figure is the refresher process's CPU time
(user + system, every thread) from its first claim to its last stored refresh, divided by the
refreshes stored: it does not depend on how fast or busy the machine is the way throughput
does. `floor` is bench/floor.py (the unavoidable work, hand-written); `ratio` is tokenward's
CPU per refresh over the floor's, on the same store in the same run.

Growth: the store first holds N credentials (seeded straight into Redis / PostgreSQL, most of
them due far in the future), then `--refreshes` of them fall due; reported per N: the claim's
cost (median wall time of one 64-key claim, in the refresher's client) and the refresher's CPU
per refresh, plus bytes per credential in the store. `--touch` refreshes that many credentials
in one process and reports its RSS growth per 100,000 touched (per-credential state would show
here).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import httpx2

from bench.common import ROOT, machine, rss_mb

REDIS_URL = os.environ.get("TOKENWARD_BENCH_REDIS", "redis://127.0.0.1:6379/0")
POSTGRES_URL = os.environ.get(
    "TOKENWARD_BENCH_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test"
)
LIFETIME = 3600  # the provider's answers: refreshed credentials are not due again in the run
SEED_BATCH = 10_000
KINDS = ("redis", "postgres", "sqlite")
#: The floor and `AsyncRefresher` (what `tokenward refresher` runs).
IMPLS = ("floor", "tokenward")


# -- the store under test ------------------------------------------------------------------------
def store_url(kind: str, tag: str, tmp: str) -> str:
    """A tokenward store URL for a fresh namespace named `tag`."""
    if kind == "redis":
        return f"{REDIS_URL}?prefix=bench-{tag}:"
    if kind == "postgres":
        return f"{POSTGRES_URL}?schema=bench_{tag}"
    return f"sqlite://{tmp}/bench-{tag}.db"


def seed(url: str, total: int, due: int) -> None:
    """`total` credentials, the first `due` of them due now, the rest in an hour or more.

    Bulk writes (Redis pipeline, PostgreSQL COPY) with the exact record JSON tokenward's stores
    write; the store is opened once first so its schema exists."""
    from tokenward.stores import open_store
    from tokenward.stores.base import Record, due_time

    store = open_store(url)
    store.load("bench:schema")  # creates the schema / migrates
    now = time.time()

    def rows(start: int, stop: int) -> Iterator[tuple[str, dict[str, Any], float]]:
        for i in range(start, stop):
            expires = now - 1.0 if i < due else now + 3600 + i % 3600
            record = Record(
                f"bench:{i}",
                version=1,
                access_token=f"seed-at-{i}",
                expires_at=expires,
                refresh_token=f"seed-{uuid.uuid4().hex}",
                obtained_at=expires - 3600,
                updated_at=now,
            )
            yield record.key, record.to_dict(), due_time(record) or now

    kind = url.split(":", 1)[0]
    for start in range(0, total, SEED_BATCH):
        batch = list(rows(start, min(start + SEED_BATCH, total)))
        if kind == "redis":
            _seed_redis(store, batch)
        elif kind.startswith("postgres"):
            _seed_postgres(store, batch)
        else:
            _seed_sqlite(store, batch)
    store.close()


def _seed_redis(store: Any, batch: list[tuple[str, dict[str, Any], float]]) -> None:
    pipe = store._client.pipeline(transaction=False)
    for key, data, due in batch:
        text = json.dumps(data, separators=(",", ":"), sort_keys=True)
        pipe.hset(f"{store.prefix}record:{key}", mapping={"version": 1, "data": text})
        pipe.zadd(f"{store.prefix}keys", {key: 0})
        pipe.zadd(f"{store.prefix}due", {key: due})
    pipe.execute()


def _seed_postgres(store: Any, batch: list[tuple[str, dict[str, Any], float]]) -> None:
    import psycopg
    from psycopg.types.json import Jsonb

    with psycopg.connect(POSTGRES_URL, autocommit=True) as conn, conn.cursor() as cur:
        table = f"{store.schema}.records"
        with cur.copy(f"COPY {table} (key, version, data, updated_at, due_at) FROM STDIN") as copy:
            for key, data, due in batch:
                copy.write_row((key, 1, Jsonb(data), data["updated_at"], due))


def _seed_sqlite(store: Any, batch: list[tuple[str, dict[str, Any], float]]) -> None:
    import sqlite3

    conn = sqlite3.connect(store.path)
    with conn:
        conn.executemany(
            "INSERT INTO records (key, version, data, updated_at, due_at) VALUES (?, 1, ?, ?, ?)",
            [
                (
                    key,
                    json.dumps(data, separators=(",", ":"), sort_keys=True),
                    data["updated_at"],
                    due,
                )
                for key, data, due in batch
            ],
        )
    conn.close()


def drop(kind: str, url: str) -> None:
    """Remove a namespace the run made."""
    if kind == "redis":
        import redis

        client = redis.Redis.from_url(REDIS_URL)
        prefix = url.split("prefix=", 1)[1]
        for chunk in _chunks(client.scan_iter(f"{prefix}*", count=10_000), 10_000):
            client.unlink(*chunk)
        client.close()
    elif kind == "postgres":
        import psycopg

        schema = url.split("schema=", 1)[1]
        with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")


def _chunks(items: Iterator[bytes], size: int) -> Iterator[list[bytes]]:
    chunk: list[bytes] = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def bytes_per_credential(kind: str, url: str, total: int) -> float | None:
    """The store's size for this namespace over its credential count."""
    if kind == "redis":
        import redis

        client = redis.Redis.from_url(REDIS_URL)
        prefix = url.split("prefix=", 1)[1]
        sample = [
            client.memory_usage(f"{prefix}record:bench:{i}") or 0
            for i in range(0, total, max(total // 200, 1))
        ]
        # The two sorted sets (index and due-queue) hold every key once each.
        zsets = (client.memory_usage(f"{prefix}keys") or 0) + (
            client.memory_usage(f"{prefix}due") or 0
        )
        client.close()
        return statistics.fmean(sample) + zsets / total
    if kind == "postgres":
        import psycopg

        schema = url.split("schema=", 1)[1]
        with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
            row = conn.execute(f"SELECT pg_total_relation_size('{schema}.records')").fetchone()
        return None if row is None else row[0] / total
    return None


# -- the provider --------------------------------------------------------------------------------
@contextmanager
def provider() -> Iterator[str]:
    """The minimal token endpoint in its own process: its base URL."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), *sys.path]))
    process = subprocess.Popen(
        [sys.executable, "-m", "bench.tokenprovider", str(LIFETIME)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        env=env,
    )
    assert process.stdout is not None and process.stdin is not None
    try:
        yield f"http://127.0.0.1:{int(process.stdout.readline())}"
    finally:
        process.stdin.close()
        process.wait(10)


def counters(base: str) -> dict[str, Any]:
    result: dict[str, Any] = httpx2.get(f"{base}/counters").json()
    return result


# -- the measured process --------------------------------------------------------------------------
def worker(impl: str, url: str, token_url: str, count: int) -> dict[str, Any]:
    """Run `impl` until `count` refreshes are stored; CPU and RSS of this process."""
    if impl == "floor":
        return asyncio.run(_floor(url, token_url, count))
    return asyncio.run(_tokenward_async(url, token_url, count))


async def _tokenward_async(url: str, token_url: str, count: int) -> dict[str, Any]:
    """`AsyncRefresher`, the refresher `tokenward refresher` runs."""
    from tokenward import RefreshTokenGrant
    from tokenward.refresher import AsyncRefresher
    from tokenward.stores import open_store

    store = open_store(url)
    source = RefreshTokenGrant(token_url, "bench-app", "bench-secret")
    refresher = AsyncRefresher(store, lambda key: source, poll_interval=0.05)

    warm: dict[str, float] = {}  # RSS once a quarter of the refreshes are done (warmed up)

    async def watch() -> None:
        while True:
            stats = refresher.stats.snapshot()
            done = stats["refreshed"] + stats["failed"] + stats["needs_reauth"]
            if done >= count // 4 and not warm:
                warm.update(rss=rss_mb(), done=done)
            if done >= count:
                refresher.stop()
                return
            await asyncio.sleep(0.02)

    rss = rss_mb()
    cpu, wall = time.process_time(), time.monotonic()
    watcher = asyncio.create_task(watch())
    await refresher.run()
    cpu, wall = time.process_time() - cpu, time.monotonic() - wall
    watcher.cancel()
    stats = refresher.stats.snapshot()
    grown = rss_mb() - rss
    await store.aclose()
    failed = stats["failed"] + stats["needs_reauth"]
    return {
        "refreshed": stats["refreshed"],
        "failed": failed,
        "cpu_s": cpu,
        "wall_s": wall,
        "rss_growth_mb": grown,
        # Growth after warming up, per credential touched meanwhile (per-credential state).
        "rss_warm_growth_mb": rss_mb() - warm.get("rss", rss),
        "touched_after_warm": stats["refreshed"] - int(warm.get("done", 0)),
    }


async def _floor(url: str, token_url: str, count: int) -> dict[str, Any]:
    from bench import floor

    store: floor.FloorStore
    if url.startswith("redis"):
        store = floor.RedisFloor(REDIS_URL, url.split("prefix=", 1)[1])
    elif url.startswith("postgres"):
        store = floor.PostgresFloor(POSTGRES_URL, url.split("schema=", 1)[1])
        await store.open()
    else:
        store = floor.SQLiteFloor(url.split("://", 1)[1])
    rss = rss_mb()
    cpu, wall = time.process_time(), time.monotonic()
    outcome = await floor.run(store, token_url, count)
    cpu, wall = time.process_time() - cpu, time.monotonic() - wall
    await store.close()
    return {**outcome, "cpu_s": cpu, "wall_s": wall, "rss_growth_mb": rss_mb() - rss}


def measure(impl: str, url: str, token_url: str, count: int) -> dict[str, Any]:
    """`worker` in a fresh process (its own CPU clock and GIL)."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), *sys.path]))
    command = [
        sys.executable,
        "-m",
        "bench.refresher_cpu",
        "--worker",
        impl,
        url,
        token_url,
        str(count),
    ]
    result = subprocess.run(
        command, capture_output=True, text=True, env=env, cwd=ROOT, timeout=1800
    )
    if result.returncode != 0:
        raise RuntimeError(f"{impl} worker failed: {result.stderr[-2000:]}")
    outcome: dict[str, Any] = json.loads(result.stdout.strip().splitlines()[-1])
    done = max(outcome["refreshed"], 1)
    outcome["cpu_ms_per_refresh"] = round(outcome["cpu_s"] * 1000 / done, 3)
    return outcome


def claim_cost(url: str, rounds: int = 30) -> float:
    """Median wall seconds of one 64-key claim (claim TTL 0: the keys stay due)."""
    from tokenward.stores import open_store

    store = open_store(url)
    samples = []
    for _ in range(rounds):
        started = time.perf_counter()
        store.claim_due(time.time(), 64, "bench-claims", 0.0)
        samples.append(time.perf_counter() - started)
    store.close()
    return statistics.median(samples)


# -- the report ------------------------------------------------------------------------------------
def side_by_side(
    kinds: list[str], refreshes: int, tmp: str, say: Callable[[str], None]
) -> dict[str, Any]:
    results: dict[str, Any] = {}
    with provider() as base:
        for kind in kinds:
            row: dict[str, Any] = {}
            for impl in IMPLS:
                url = store_url(kind, uuid.uuid4().hex[:10], tmp)
                seed(url, refreshes, refreshes)
                before = counters(base)
                row[impl] = measure(impl, url, f"{base}/token", refreshes)
                after = counters(base)
                done = max(after["refreshes"] - before["refreshes"], 1)
                row[impl]["provider_cpu_ms_per_refresh"] = round(
                    (after["cpu_s"] - before["cpu_s"]) * 1000 / done, 3
                )
                row[impl]["invalid_grant"] = after["invalid_grant"] - before["invalid_grant"]
                drop(kind, url)
            row["ratio"] = round(
                row["tokenward"]["cpu_ms_per_refresh"] / row["floor"]["cpu_ms_per_refresh"], 2
            )
            floor_ms = row["floor"]["cpu_ms_per_refresh"]
            ours_ms = row["tokenward"]["cpu_ms_per_refresh"]
            say(
                f"{kind}: CPU/refresh: floor {floor_ms} ms, tokenward {ours_ms} ms, {row['ratio']}x"
            )
            results[kind] = row
    return results


def growth(
    kinds: list[str], sizes: list[int], refreshes: int, tmp: str, say: Callable[[str], None]
) -> dict[str, Any]:
    results: dict[str, Any] = {}
    with provider() as base:
        for kind in [k for k in kinds if k in ("redis", "postgres")]:
            rows = []
            for size in sizes:
                url = store_url(kind, uuid.uuid4().hex[:10], tmp)
                started = time.monotonic()
                seed(url, size, refreshes)
                seeded = time.monotonic() - started
                row: dict[str, Any] = {
                    "credentials": size,
                    "seed_s": round(seeded, 1),
                    "bytes_per_credential": round(bytes_per_credential(kind, url, size) or 0),
                    "claim_ms": round(claim_cost(url) * 1000, 3),
                    "tokenward": measure("tokenward", url, f"{base}/token", refreshes),
                }
                drop(kind, url)
                cpu_ms = row["tokenward"]["cpu_ms_per_refresh"]
                say(
                    f"{kind} {size:>9,}: claim {row['claim_ms']} ms, {cpu_ms} ms CPU per refresh, "
                    f"{row['bytes_per_credential']} B per credential"
                )
                rows.append(row)
            results[kind] = rows
    return results


def touch(kind: str, count: int, tmp: str, say: Callable[[str], None]) -> dict[str, Any]:
    with provider() as base:
        url = store_url(kind, uuid.uuid4().hex[:10], tmp)
        seed(url, count, count)
        outcome = measure("tokenward", url, f"{base}/token", count)
        drop(kind, url)
    per = outcome["rss_warm_growth_mb"] * 100_000 / max(outcome["touched_after_warm"], 1)
    grown, touched = outcome["rss_growth_mb"], outcome["refreshed"]
    warm = outcome["rss_warm_growth_mb"]
    say(
        f"{kind}: RSS +{grown:.1f} MB over {touched:,} credentials, +{warm:.1f} MB after the "
        f"first quarter: {per:.1f} MB per 100,000"
    )
    return {
        "kind": kind,
        "touched": outcome["refreshed"],
        "rss_growth_mb": round(outcome["rss_growth_mb"], 1),
        "rss_warm_growth_mb": round(warm, 1),
        "touched_after_warm": outcome["touched_after_warm"],
        "mb_per_100k": round(per, 1),
    }


def available(kind: str) -> str | None:
    """None when the store answers, else why not (the kind is then left out and named)."""
    try:
        if kind == "redis":
            import redis

            redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2).ping()
        elif kind == "postgres":
            import psycopg

            psycopg.connect(POSTGRES_URL, connect_timeout=2).close()
    except Exception as exc:  # any failure to connect: not measured, and said why
        return f"{type(exc).__name__}: {exc}"
    return None


def run(
    kinds: tuple[str, ...] = KINDS,
    *,
    refreshes: int = 3000,
    sizes: list[int] | None = None,
    touched: int = 0,
    say: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Every part for the stores in `kinds` that answer; the others are named in `skipped`."""
    skipped = {kind: why for kind in kinds if (why := available(kind)) is not None}
    for kind, why in skipped.items():
        say(f"  refresher {kind}: skipped ({why})")
    ready = [kind for kind in kinds if kind not in skipped]
    out: dict[str, Any] = {"machine": machine(), "refreshes": refreshes, "skipped": skipped}
    with tempfile.TemporaryDirectory() as tmp:
        out["side_by_side"] = side_by_side(ready, refreshes, tmp, say)
        if sizes:
            out["growth"] = growth(ready, sizes, refreshes, tmp, say)
        if touched and ready:
            out["rss"] = touch("redis" if "redis" in ready else ready[0], touched, tmp, say)
    return out


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "--worker":
        impl, url, token_url, count = argv[1:5]
        print(json.dumps(worker(impl, url, token_url, int(count))))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kinds", default="redis,postgres,sqlite")
    parser.add_argument("--refreshes", type=int, default=3000)
    parser.add_argument("--growth", default="")
    parser.add_argument("--touch", type=int, default=0)
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.growth.split(",") if s]
    kinds = tuple(args.kinds.split(","))
    result = run(kinds, refreshes=args.refreshes, sizes=sizes, touched=args.touch)
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
