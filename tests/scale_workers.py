"""Code that runs in other processes for test_scale.py: `python tests/scale_workers.py <command>
'<json config>'`. Each command prints `ready` when set up, waits for a line on stdin (`go` or a
start time), does its work and prints one JSON line with its results (fingerprints only).

Commands: `storm` (asyncio tasks meet one expired token), `refresher` (a refresher process for
a while), `slow-refresh` (forces one refresh; the parent SIGKILLs it mid-request). Also imported
by test_scale.py and bench/scale.py: seeding many credentials and reading the provider's log.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import sys
import threading
import time
import traceback
from typing import Any

import httpx2

from tokenward.manager import TokenManager
from tokenward.refresher import AsyncRefresher
from tokenward.sources.oauth2 import RefreshTokenGrant
from tokenward.stores.base import Record, Store
from tokenward.testing import TEST_CLIENT_ID, TEST_CLIENT_SECRET, fingerprint


def open_store(cfg: dict[str, Any]) -> Store:
    if cfg["kind"] == "redis":
        from tokenward.stores.redis import RedisStore

        return RedisStore(cfg["url"], prefix=cfg["prefix"])
    if cfg["kind"] == "postgres":
        from tokenward.stores.postgres import PostgresStore

        return PostgresStore(cfg["url"], schema=cfg["schema"], max_size=cfg.get("pool", 10))
    raise ValueError(f"unknown store kind {cfg['kind']!r}")


def source(cfg: dict[str, Any]) -> RefreshTokenGrant:
    return RefreshTokenGrant(cfg["token_url"], TEST_CLIENT_ID, TEST_CLIENT_SECRET)


def manager(cfg: dict[str, Any], store: Store) -> TokenManager:
    return TokenManager(
        cfg["key"], source(cfg), store, lease_ttl=cfg.get("lease_ttl", 5.0), lease_wait=30.0
    )


def _ready() -> str:
    print("ready", flush=True)
    return sys.stdin.readline().strip()


def storm(cfg: dict[str, Any]) -> dict[str, Any]:
    """`tasks` asyncio tasks call `atoken()` at the same instant, then use the token once."""
    store = open_store(cfg)
    mgr = manager(cfg, store)
    results: list[dict[str, Any]] = []

    async def caller(index: int, client: httpx2.AsyncClient, at: float) -> None:
        await asyncio.sleep(max(0.0, at - time.time()))
        try:
            token = await mgr.atoken()
            response = await client.get(
                f"{cfg['api_url']}/scale/{os.getpid()}/{index}",
                headers={"Authorization": f"Bearer {token.access_token}"},
            )
            results.append(
                {"version": token.version, "fp": token.fingerprint, "status": response.status_code}
            )
        except Exception as exc:
            results.append({"error": f"{type(exc).__name__}: {exc}"})

    async def main(at: float) -> None:
        limits = httpx2.Limits(max_connections=cfg["tasks"])
        async with httpx2.AsyncClient(timeout=30, limits=limits) as client:
            await asyncio.gather(*(caller(i, client, at) for i in range(cfg["tasks"])))

    at = float(_ready())
    try:
        asyncio.run(main(at))
    finally:
        mgr.close()
        store.close()
    return {"pid": os.getpid(), "results": results}


def refresher(cfg: dict[str, Any]) -> dict[str, Any]:
    """A refresher process: claims and refreshes from the start time until the parent writes
    `stop` (the parent decides from the provider's log, not from a clock), or `duration` seconds
    at the most. `AsyncRefresher`, what `tokenward refresher` runs."""
    store = open_store(cfg)
    grant = source(cfg)
    worker = AsyncRefresher(
        store,
        lambda _key: grant,
        concurrency=cfg.get("concurrency", 16),
        claim_ttl=cfg.get("claim_ttl", 10.0),
        poll_interval=cfg.get("poll_interval", 0.05),
        lease_ttl=cfg.get("lease_ttl", 5.0),
    )
    at = float(_ready())

    def stop_on_request() -> None:
        if sys.stdin.readline().strip() == "stop":  # end of input alone is no request
            worker.stop()

    threading.Thread(target=stop_on_request, daemon=True).start()
    time.sleep(max(0.0, at - time.time()))
    try:
        asyncio.run(worker.run(duration=cfg["duration"]))
    finally:
        store.close()
    return {"pid": os.getpid(), "stats": worker.stats.snapshot()}


def slow_refresh(cfg: dict[str, Any]) -> dict[str, Any]:
    """Force one refresh (the emulator is slow): the parent kills this process meanwhile."""
    store = open_store(cfg)
    mgr = manager(cfg, store)
    _ready()
    token = mgr.refresh()
    return {"pid": os.getpid(), "version": token.version}


def seed_many(store: Store, emu: Any, count: int, lifetime: float) -> tuple[dict[str, str], float]:
    """`count` credentials whose first expiries are spread over one lifetime, starting one
    lifetime after the seeding ends: key -> fingerprint of its seed refresh token, and that
    start. (Written twice: first not due, so that no refresh starts while seeding goes on.)"""
    seeds: dict[str, str] = {}
    records: list[Record] = []
    first_pass = time.time()
    for i in range(count):
        key = f"ml:seller-{i:05d}"
        refresh_token = emu.issue_refresh_token(TEST_CLIENT_ID)
        record = Record(
            key,
            1,
            access_token=f"seed-{i}",
            expires_at=time.time() + 3600,
            obtained_at=time.time(),
            refresh_token=refresh_token,
        )
        assert store.compare_and_set(record, 0)
        records.append(record)
        seeds[key] = fingerprint(refresh_token)
    base = time.time() + 0.5 + (time.time() - first_pass)  # the second pass takes as long
    for i, record in enumerate(records):
        expires_at = base + lifetime * (1 + i / count)
        assert store.compare_and_set(
            record.successor(expires_at=expires_at, obtained_at=expires_at - lifetime), 1
        )
    return seeds, base


def chains(seeds: dict[str, str], log: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Each credential's rotation chain in the provider's refresh log, from its seed token."""
    by_old = {entry["old"]: entry for entry in log}
    found: dict[str, list[dict[str, Any]]] = {}
    for key, seed in seeds.items():
        chain: list[dict[str, Any]] = []
        old = seed
        while old in by_old and len(chain) <= len(log):
            chain.append(by_old[old])
            old = by_old[old]["new"]
        found[key] = chain
    return found


def timeline(
    chains: dict[str, list[dict[str, Any]]], base: float, lifetime: float, ended: float
) -> dict[str, Any]:
    """What the provider's log says of timing, for credentials seeded by `seed_many`: `twice`
    (two refreshes for one expiry: the next is due 80 % of a lifetime after the previous one
    was sent, so half a lifetime apart leaves a request 30 % of a lifetime in transit), `late`
    (refreshed only after the token it replaced had expired; `worst` seconds at most), `missed`
    (an expiry before `ended` - 0.5 s that got no refresh)."""
    twice, late, missed, worst = 0, 0, 0, 0.0
    count = len(chains)
    for key, chain in chains.items():
        i = int(key.rsplit("-", 1)[1])
        times = [entry["time"] for entry in chain]
        twice += sum(1 for a, b in itertools.pairwise(times) if b - a < lifetime / 2)
        deadlines = [base + lifetime * (1 + i / count)] + [t + lifetime for t in times]
        for t, deadline in zip(times, deadlines, strict=False):
            if t > deadline:
                late += 1
                worst = max(worst, t - deadline)
        if deadlines[len(times)] < ended - 0.5:
            missed += 1
    return {"twice": twice, "late": late, "worst_late": worst, "missed": missed}


COMMANDS = {"storm": storm, "refresher": refresher, "slow-refresh": slow_refresh}


def main(argv: list[str]) -> int:
    command, cfg = argv[1], json.loads(argv[2])
    try:
        print(json.dumps(COMMANDS[command](cfg)), flush=True)
    except BaseException:
        traceback.print_exc()
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
