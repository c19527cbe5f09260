"""Refresher processes on the network stores: how late refreshes come (issue 5's scale case).

Three refresher processes (tests/scale_workers.py `refresher`) share `--count` credentials on
Redis and on PostgreSQL for `--duration` seconds; the first expiries are spread over one
`--lifetime`. From the provider's refresh log: refreshes per second, `late` (a refresh that
reached the provider only after the token it replaced had expired, and the worst such delay),
`missed` (an expiry inside the run that got no refresh at all), `twice` (two refreshes for one
expiry) and the provider's invalid_grant / reuse counts. On a quiet machine the target is 0 late
and 0 missed; `tests/test_scale.py` checks the parts that hold whatever the load (no token
presented twice, no double refresh, none left behind), so this figure lives here:

    .venv/bin/python -m bench.scale [--kinds redis,postgres] [--count 600] [--lifetime 4]
        [--duration 10]

The issue's full size is `--count 10000 --lifetime 3 --duration 20`. Exit status 1 when a
refresh was late or missed, or a refresh token was refused.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from typing import Any

from bench.common import ROOT, machine
from tokenward.testing import TEST_API_KEY, TEST_CLIENT_ID, TEST_CLIENT_SECRET
from tokenward.testing.emulator import Emulator
from tokenward.testing.server import EmulatorServer

TESTS = ROOT / "tests"
sys.path.insert(0, str(TESTS))  # the workers, the seeding and the log reading tests use

import scale_workers  # noqa: E402

REDIS_URL = os.environ.get("TOKENWARD_BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
POSTGRES_URL = os.environ.get(
    "TOKENWARD_BENCH_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"
)


def _config(kind: str) -> dict[str, Any]:
    name = "tw_bench_scale_" + uuid.uuid4().hex[:12]
    if kind == "redis":
        return {"kind": kind, "url": REDIS_URL, "prefix": name + ":"}
    return {"kind": kind, "url": POSTGRES_URL, "schema": name}


def _drop(cfg: dict[str, Any]) -> None:
    if cfg["kind"] == "redis":
        import redis

        client = redis.Redis.from_url(cfg["url"])
        keys = list(client.scan_iter(match=cfg["prefix"] + "*", count=1000))
        for start in range(0, len(keys), 1000):
            client.delete(*keys[start : start + 1000])
        client.close()
    else:
        import psycopg
        from psycopg import sql

        with psycopg.connect(cfg["url"], autocommit=True) as conn:
            name = sql.Identifier(cfg["schema"])
            conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(name))


def _spawn(cfg: dict[str, Any]) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [sys.executable, str(TESTS / "scale_workers.py"), "refresher", json.dumps(cfg)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None and proc.stderr is not None
    line = proc.stdout.readline().strip()
    if line != "ready":
        proc.kill()
        raise RuntimeError(f"refresher worker did not start: {line!r} {proc.stderr.read()}")
    return proc


def measure(
    kind: str, count: int, lifetime: float, duration: float, refreshers: int = 3
) -> dict[str, Any]:
    """One run on one store: the figures of the module docstring."""
    emu = Emulator(access_lifetime=lifetime)
    emu.add_client(TEST_CLIENT_ID, TEST_CLIENT_SECRET)
    emu.add_api_key(TEST_API_KEY)
    server = EmulatorServer(emu).start()
    cfg = {
        **_config(kind),
        "token_url": server.token_url,
        "duration": duration,
        "concurrency": 16,
        "pool": 20,
    }
    store = scale_workers.open_store(cfg)
    procs: list[subprocess.Popen[str]] = []
    load_before = os.getloadavg()[0]
    try:
        procs = [_spawn(cfg) for _ in range(refreshers)]
        seeds, base = scale_workers.seed_many(store, emu, count, lifetime)
        started = time.time()
        for proc in procs:
            assert proc.stdin is not None
            proc.stdin.write(f"{started}\n")
            proc.stdin.flush()
        stats = []
        for proc in procs:
            out, err = proc.communicate(timeout=duration + 120)
            if proc.returncode != 0:
                raise RuntimeError(f"refresher worker failed: {err}")
            stats.append(json.loads(out.strip().splitlines()[-1])["stats"])
        log = emu.refresh_log
        counters = emu.counters
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
        store.close()
        _drop(cfg)
        server.stop()
    times = scale_workers.timeline(
        scale_workers.chains(seeds, log), base, lifetime, started + duration
    )
    return {
        "store": kind,
        "count": count,
        "lifetime": lifetime,
        "duration": duration,
        "refreshers": refreshers,
        "refreshes": len(log),
        "refreshes_per_s": len(log) / duration,
        **times,
        "invalid_grant": counters["invalid_grant"],
        "refresh_reuse": counters["refresh_reuse"],
        "per_process": [row["refreshed"] for row in stats],
        "failed": sum(row["failed"] for row in stats),
        "load_average_before": round(load_before, 2),
    }


def run(
    kinds: tuple[str, ...] = ("redis", "postgres"),
    count: int = 600,
    lifetime: float = 4.0,
    duration: float = 10.0,
    progress: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Every store in `kinds` that answers (the others are named in `skipped`)."""
    rows, skipped = [], {}
    for kind in kinds:
        try:
            row = measure(kind, count, lifetime, duration)
        except Exception as exc:  # a store that does not answer: say so, measure the rest
            skipped[kind] = f"{type(exc).__name__}: {exc}"
            progress(f"  scale {kind}: skipped ({skipped[kind]})")
            continue
        rows.append(row)
        progress(
            f"  scale {kind}: {row['refreshes']} refreshes ({row['refreshes_per_s']:.0f}/s), "
            f"late={row['late']} (worst {row['worst_late']:.2f}s), missed={row['missed']}, "
            f"twice={row['twice']}, invalid_grant={row['invalid_grant']}, "
            f"reuse={row['refresh_reuse']}, per process={row['per_process']}"
        )
    return {"machine": machine(), "rows": rows, "skipped": skipped}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.scale", description=__doc__)
    parser.add_argument("--kinds", default="redis,postgres")
    parser.add_argument("--count", type=int, default=600)
    parser.add_argument("--lifetime", type=float, default=4.0)
    parser.add_argument("--duration", type=float, default=10.0)
    args = parser.parse_args(argv)
    kinds = tuple(kind.strip() for kind in args.kinds.split(",") if kind.strip())
    result = run(kinds, args.count, args.lifetime, args.duration)
    bad = [
        row
        for row in result["rows"]
        if row["late"] or row["missed"] or row["twice"] or row["invalid_grant"]
    ]
    return 1 if bad or not result["rows"] else 0


if __name__ == "__main__":
    sys.exit(main())
