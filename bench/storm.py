"""Refresh storm: many callers, 1-second access tokens, single-use rotating refresh tokens.

One provider emulator (bench/provider.py, its own process) with RFC 9700 reuse detection (a
rotated refresh token presented again revokes the whole family, as in `make demo`) and a 25 ms
token endpoint. Each run: a fresh login; the parent obtains the first access token (not
counted); then the workers call the API on the demo's fixed schedule (`demo.Schedule`,
200 requests/s in all, spread evenly over the workers) for `duration` seconds. Counted: failed
requests (anything but 200 after what the peer does on its own), refreshes (the emulator's
count) per lifetime elapsed, and whether the refresh token the peer ends with is still valid.

Configurations: asyncio tasks on one event loop, threads sharing one client, and processes
(each with a few threads; tokenward's share one SQLite store, the peers each keep their own
copy of the starting token, which is what they offer).
"""

from __future__ import annotations

import asyncio
import json
import multiprocessing
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx2

from demo import Schedule, Tally, _attempt, _drain

from .common import ProviderInfo, ProviderProcess
from .peers import KEY, PEERS, Peer, TokenwardPeer

LIFETIME = 1.0
TOKEN_LATENCY = 0.025
#: Requests/s, all workers together, in every configuration. The emulator and the clients share
#: the machine: at 1,000 requests/s a 2-core machine answers later than the 1-second token
#: lifetime, and then every client fails (the token expires in flight, its replay too).
RATE = 200.0

CONFIGS: list[tuple[str, int]] = [
    ("async", 1),
    ("async", 10),
    ("async", 100),
    ("async", 1000),
    ("threads", 8),
    ("threads", 64),
    ("processes", 4),
    ("processes", 8),
]
THREADS_PER_PROCESS = 4
#: A request still not sent this long after the run's end is counted as failed, not sent: a
#: client stuck behind a lock or a timeout must not stretch the run (and `make bench`).
GRACE = 2.0
NOT_SENT = "not sent (run over time)"


def provider_settings(lifetime: float = LIFETIME) -> dict[str, Any]:
    return {
        "access_lifetime": lifetime,
        "refresh_rotation": True,
        "revoke_family_on_reuse": True,
        "latency": TOKEN_LATENCY * lifetime,
    }


def _first_token(info: ProviderInfo, refresh_token: str) -> dict[str, Any]:
    """The starting access token (one refresh grant by the harness, before the counters)."""
    form = {
        "grant_type": "refresh_token",
        "refresh_token": refresh_token,
        "client_id": info.client_id,
        "client_secret": info.client_secret,
    }
    answer = httpx2.post(info.token_url, data=form, timeout=30).json()
    return {
        "access_token": answer["access_token"],
        "refresh_token": answer["refresh_token"],
        "expires_at": time.time() + float(answer["expires_in"]),
    }


def _seed_store(info: ProviderInfo, path: str, token: dict[str, Any]) -> None:
    from tokenward.manager import TokenManager
    from tokenward.sources.oauth2 import RefreshTokenGrant
    from tokenward.stores.sqlite import SQLiteStore

    store = SQLiteStore(path)
    source = RefreshTokenGrant(info.token_url, info.client_id, info.client_secret)
    with TokenManager(KEY, source, store) as manager:
        manager.seed(
            access_token=token["access_token"],
            refresh_token=token["refresh_token"],
            expires_in=token["expires_at"] - time.time(),
        )
    store.close()


def settle_store(path: str, quiet_for: float = 0.3, limit: float = 5.0) -> str | None:
    """Wait until no refresh is running on the store (lease free, version still), then return
    the stored refresh token. A worker may have started a background refresh at the very end."""
    from tokenward.stores.sqlite import SQLiteStore

    store = SQLiteStore(path)
    try:

        def version() -> int:
            record = store.load(KEY)
            return record.version if record else 0

        deadline = time.monotonic() + limit
        seen, since = version(), time.monotonic()
        while time.monotonic() < deadline:
            time.sleep(0.05)
            free = store.acquire_lease(KEY, "bench-settle", 1.0)
            if free:
                store.release_lease(KEY, "bench-settle")
            now = version()
            if now != seen or not free:
                seen, since = now, time.monotonic()
            elif time.monotonic() - since >= quiet_for:
                break
        record = store.load(KEY)
        return record.refresh_token if record else None
    finally:
        store.close()


def _start_spec(peer: str, info: ProviderInfo, refresh_token: str, store: str) -> dict[str, Any]:
    token = _first_token(info, refresh_token)
    if peer == "tokenward":
        _seed_store(info, store, token)
        return {"store": store, **token}
    return token


def _thread_worker(schedule: Schedule, worker: int, call: Any, tally: Tally) -> None:
    """`demo._thread_worker` with a cut-off (see GRACE)."""
    cutoff = schedule.start + schedule.duration + GRACE
    seq = 0
    while (due := schedule.due(worker, seq)) is not None:
        now = time.monotonic()
        if now > cutoff:
            tally.record(False, NOT_SENT)
        else:
            time.sleep(max(due - now, 0.0))
            _attempt(call, worker, seq, tally)
        seq += 1


async def _task_worker(schedule: Schedule, worker: int, call: Any, tally: Tally) -> None:
    cutoff = schedule.start + schedule.duration + GRACE
    seq = 0
    while (due := schedule.due(worker, seq)) is not None:
        now = time.monotonic()
        if now > cutoff:
            tally.record(False, NOT_SENT)
        else:
            await asyncio.sleep(max(due - now, 0.0))
            try:
                ok = await call(worker, seq)
            except Exception as exc:  # a failed request is a result to count, not a crash
                tally.record(False, type(exc).__name__)
            else:
                tally.record(ok)
        seq += 1


async def _async_side(peer: Peer, schedule: Schedule, workers: range, tally: Tally) -> None:
    async with peer.async_caller() as call:
        await asyncio.gather(*(_task_worker(schedule, w, call, tally) for w in workers))
    await _drain()


def _run_threads(peer: Peer, schedule: Schedule, workers: range, tally: Tally) -> None:
    threads = [
        threading.Thread(target=_thread_worker, args=(schedule, w, peer.call, tally), daemon=True)
        for w in workers
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


def _wait_for(path: Path, limit: float = 120.0) -> dict[str, Any]:
    deadline = time.monotonic() + limit
    while not path.exists():
        if time.monotonic() > deadline:
            raise RuntimeError("the parent never wrote the start file")
        time.sleep(0.005)
    data: dict[str, Any] = json.loads(path.read_text())
    return data


def _child(
    peer_name: str,
    info: ProviderInfo,
    start_file: str,
    index: int,
    threads: int,
    lifetime: float,
    barrier: Any,
    results: Any,
) -> None:
    """One storm process: build the peer once the start file exists, run its threads."""
    import bench.peers  # noqa: F401 - import the peers' libraries before the clock starts

    barrier.wait()
    spec = _wait_for(Path(start_file))
    peer = PEERS[peer_name](info, spec["start"], lifetime)
    schedule = Schedule(spec["t0"], spec["duration"], spec["rate"], spec["workers"])
    tally = Tally()
    _run_threads(peer, schedule, range(index * threads, (index + 1) * threads), tally)
    results.put(
        {
            "ok": tally.ok,
            "failed": tally.failed,
            "errors": dict(tally.errors),
            "refresh_tokens": peer.refresh_tokens(),
            "last_done": tally.last_done,
        }
    )
    peer.close()


def run_case(
    provider: ProviderProcess,
    peer_name: str,
    kind: str,
    n: int,
    duration: float,
    lifetime: float = LIFETIME,
) -> dict[str, Any]:
    """One peer, one configuration. Returns counts only (never a secret)."""
    info = provider.info
    workers = n * THREADS_PER_PROCESS if kind == "processes" else n
    rate = RATE
    with tempfile.TemporaryDirectory(prefix="tokenward-bench-") as tmp:
        store = str(Path(tmp) / "tokens.db")
        refresh_token = provider.login()
        tally = Tally()
        child_results: list[dict[str, Any]] = []
        peer: Peer | None = None
        if kind == "processes":
            context = multiprocessing.get_context("spawn")
            barrier = context.Barrier(n + 1)
            results = context.Queue()
            start_file = Path(tmp) / "start.json"
            procs = [
                context.Process(
                    target=_child,
                    args=(peer_name, info, str(start_file), i, THREADS_PER_PROCESS, lifetime),
                    kwargs={"barrier": barrier, "results": results},
                )
                for i in range(n)
            ]
            for proc in procs:
                proc.start()
            barrier.wait(timeout=120)
            start = _start_spec(peer_name, info, refresh_token, store)
            obtained, obtained_mono = time.time(), time.monotonic()
            before = provider.counters()
            t0 = time.monotonic() + 0.2
            spec = {
                "start": start,
                "t0": t0,
                "duration": duration,
                "rate": rate,
                "workers": workers,
            }
            (Path(tmp) / "start.tmp").write_text(json.dumps(spec))
            (Path(tmp) / "start.tmp").rename(start_file)
            child_results = [results.get(timeout=duration + 120) for _ in procs]
            for proc in procs:
                proc.join(30)
            last_done = max((result["last_done"] for result in child_results), default=0.0)
        else:
            start = _start_spec(peer_name, info, refresh_token, store)
            obtained, obtained_mono = time.time(), time.monotonic()
            peer = PEERS[peer_name](info, start, lifetime)
            before = provider.counters()
            t0 = time.monotonic() + 0.05
            schedule = Schedule(t0, duration, rate, workers)
            if kind == "threads":
                _run_threads(peer, schedule, range(workers), tally)
            else:
                asyncio.run(_async_side(peer, schedule, range(workers), tally))
            last_done = tally.last_done
        if peer_name == "tokenward":
            if isinstance(peer, TokenwardPeer):
                peer.manager.stop()
            final = [settle_store(store)]
        elif peer is not None:
            final = peer.refresh_tokens()
        else:
            final = [token for result in child_results for token in result["refresh_tokens"]]
        after = provider.counters()
        if peer is not None:
            peer.close()
    for result in child_results:
        tally.ok += result["ok"]
        tally.failed += result["failed"]
        tally.errors.update(result["errors"])
    # From the first token to the last answer (not to the end of the teardown).
    ended = obtained + max(last_done - obtained_mono, 0.0)
    lifetimes = (ended - obtained) / lifetime
    refreshes = after["refreshes"] - before["refreshes"]
    return {
        "peer": peer_name,
        "kind": kind,
        "concurrency": n,
        "workers": workers,
        "duration": duration,
        "requests": tally.ok + tally.failed,
        "not_sent": tally.errors.get(NOT_SENT, 0),
        "ok": tally.ok,
        "failed": tally.failed,
        "failure_rate": tally.failed / max(tally.ok + tally.failed, 1),
        "lifetimes": round(lifetimes, 2),
        "refreshes": refreshes,
        "refreshes_per_expiry": refreshes / lifetimes if lifetimes else float("nan"),
        "token_calls": after["token_requests"] - before["token_requests"],
        "invalid_grant": after["invalid_grant"] - before["invalid_grant"],
        "expired_answers": after["api_401"] - before["api_401"],
        "refresh_token_valid": any(provider.accepts(token) for token in final if token),
        "errors": dict(tally.errors),
    }


def run(
    duration: float = 5.0,
    configs: list[tuple[str, int]] | None = None,
    peers: list[str] | None = None,
    progress: Any = print,
) -> dict[str, Any]:
    configs = configs or CONFIGS
    peers = peers or list(PEERS)
    rows = []
    with ProviderProcess(**provider_settings()) as provider:
        for kind, n in configs:
            for name in peers:
                if kind == "async" and not PEERS[name].supports_async:
                    continue
                row = run_case(provider, name, kind, n, duration)
                progress(
                    f"  storm {kind:9} {n:5} {name:20} failed {row['failed']:6}/"
                    f"{row['requests']:<6} refreshes/expiry {row['refreshes_per_expiry']:.2f} "
                    f"valid RT {'yes' if row['refresh_token_valid'] else 'NO'}"
                )
                rows.append(row)
    return {
        "duration": duration,
        "lifetime": LIFETIME,
        "token_latency": TOKEN_LATENCY * LIFETIME,
        "rate": RATE,
        "threads_per_process": THREADS_PER_PROCESS,
        "rows": rows,
    }
