"""Code that runs in *other* processes for test_multiprocess.py and test_crash.py.

Two ways in, neither of which forks a process that has threads:

- `multiprocessing` with the spawn start method: `storm_worker` (picklable, importable by name;
  spawn hands the parent's `sys.path` to the child, so `import workers` works there too);
- a plain subprocess: `python tests/workers.py <command> '<json config>'` with the commands
  `rotate` (a brand-new process continuing a rotation chain) and `crash-loop` (refreshes in a
  loop until SIGKILLed, publishing what it is doing in a shared-memory phase file).

`run_storm` is shared by the test process and the storm workers, so every process runs exactly
the same callers.
"""

from __future__ import annotations

import asyncio
import json
import mmap
import os
import struct
import sys
import threading
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx2

from tokenward.integrations.httpx import TokenAuth
from tokenward.manager import TokenManager
from tokenward.sources.oauth2 import RefreshTokenGrant
from tokenward.stores.base import Record, Store
from tokenward.stores.dotenv import DotenvStore
from tokenward.stores.file import JsonFileStore
from tokenward.stores.sqlite import SQLiteStore
from tokenward.testing import TEST_CLIENT_ID, TEST_CLIENT_SECRET

# --- shared setup ---------------------------------------------------------------------------


def open_store(kind: str, path: str, mapping: dict[str, dict[str, str]] | None = None) -> Store:
    if kind == "sqlite":
        return SQLiteStore(path)
    if kind == "json":
        return JsonFileStore(path)
    if kind == "dotenv":
        return DotenvStore(path, mapping)
    raise ValueError(f"unknown store kind {kind!r}")


def make_manager(cfg: dict[str, Any], store: Store) -> TokenManager:
    source = RefreshTokenGrant(cfg["token_url"], TEST_CLIENT_ID, TEST_CLIENT_SECRET)
    return TokenManager(
        cfg["key"],
        source,
        store,
        lease_ttl=cfg["lease_ttl"],
        lease_wait=cfg.get("lease_wait", 30.0),
    )


# --- test 1: the storm ----------------------------------------------------------------------


def run_storm(
    manager: TokenManager,
    api_url: str,
    n_threads: int,
    n_tasks: int,
    announce_ready: Callable[[], float],
    started_count: Any = None,
) -> list[dict[str, Any]]:
    """Start `n_threads` threads and `n_tasks` asyncio tasks (one event loop, this thread), each
    holding its HTTP client, then call `announce_ready()` (blocks until the start time is
    known, returns it as a wall-clock time). At that instant every caller calls `token()` /
    `atoken()` and makes one request to the protected API through `TokenAuth(manager)`. Each
    caller adds 1 to `started_count` (a multiprocessing Value('i'), if given) just before it asks,
    so the parent can hold the provider until every caller of every process is asking.

    Returns one dict per caller (never a secret: tokens only as fingerprints)."""
    pid = os.getpid()
    results: list[dict[str, Any]] = []  # list.append is atomic
    armed = threading.Barrier(n_threads + 1)
    start_known = threading.Event()
    start_box: dict[str, float] = {}

    def outcome(kind: str, index: int, started: float, token: Any, response: Any) -> None:
        api_fp = None
        if response.status_code == 200:
            api_fp = response.json().get("token_fingerprint")
        results.append(
            {
                "pid": pid,
                "kind": kind,
                "index": index,
                "started": started,
                "version": token.version,
                "fp": token.fingerprint,
                "status": response.status_code,
                "api_fp": api_fp,
            }
        )

    def count_start() -> None:
        if started_count is not None:
            with started_count.get_lock():
                started_count.value += 1

    def failure(kind: str, index: int, exc: BaseException) -> None:
        results.append({"pid": pid, "kind": kind, "index": index, "error": repr(exc)})

    def thread_caller(index: int) -> None:
        try:
            with httpx2.Client(auth=TokenAuth(manager), timeout=30) as client:
                armed.wait(timeout=60)
                start_known.wait(timeout=60)
                time.sleep(max(0.0, start_box["at"] - time.time()))
                started = time.time()
                count_start()
                token = manager.token()
                response = client.get(f"{api_url}/storm/{pid}/thread/{index}")
                outcome("thread", index, started, token, response)
        except BaseException as exc:
            failure("thread", index, exc)

    async def task_caller(
        index: int, client: httpx2.AsyncClient, start: asyncio.Future[float]
    ) -> None:
        try:
            at = await start
            await asyncio.sleep(max(0.0, at - time.time()))
            started = time.time()
            count_start()
            token = await manager.atoken()
            response = await client.get(f"{api_url}/storm/{pid}/task/{index}")
            outcome("task", index, started, token, response)
        except BaseException as exc:
            failure("task", index, exc)

    async def main() -> None:
        limits = httpx2.Limits(max_connections=n_tasks, max_keepalive_connections=n_tasks)
        async with httpx2.AsyncClient(auth=TokenAuth(manager), timeout=30, limits=limits) as client:
            start: asyncio.Future[float] = asyncio.get_running_loop().create_future()
            tasks = [asyncio.create_task(task_caller(i, client, start)) for i in range(n_tasks)]
            await asyncio.to_thread(armed.wait, 60)  # every thread holds its client
            at = await asyncio.to_thread(announce_ready)
            start_box["at"] = at
            start_known.set()
            start.set_result(at)
            await asyncio.gather(*tasks)

    threads = [threading.Thread(target=thread_caller, args=(i,)) for i in range(n_threads)]
    for thread in threads:
        thread.start()
    try:
        asyncio.run(main())
    finally:
        if not start_known.is_set():  # main() failed early: let the threads run out
            start_box.setdefault("at", time.time())
            start_known.set()
            armed.abort()
        for thread in threads:
            thread.join(timeout=60)
    return results


def storm_worker(
    cfg: dict[str, Any],
    ready: Any,  # multiprocessing Queue: this process is armed
    go: Any,  # multiprocessing Event: the start time is set
    start_at: Any,  # multiprocessing Value('d'): the start time (wall clock)
    out: Any,  # multiprocessing Queue: results
    started_count: Any = None,  # multiprocessing Value('i'): callers that have started
) -> None:
    """A spawn-started process of the storm: its own store connection, its own manager."""
    pid = os.getpid()
    try:
        store = SQLiteStore(cfg["path"])
        manager = make_manager(cfg, store)

        def announce_ready() -> float:
            ready.put(pid)
            if not go.wait(60):
                raise TimeoutError("no start signal")
            return float(start_at.value)

        try:
            results = run_storm(
                manager,
                cfg["api_url"],
                cfg["threads"],
                cfg["tasks"],
                announce_ready,
                started_count,
            )
        finally:
            manager.close()
            store.close()
        out.put({"pid": pid, "results": results})
    except BaseException:
        out.put({"pid": pid, "error": traceback.format_exc()})


# --- test 2: a brand-new process continues the rotation chain -------------------------------


def rotate(cfg: dict[str, Any]) -> dict[str, Any]:
    """Open the store (no seed, no login) and force `count` refreshes."""
    store = SQLiteStore(cfg["path"])
    try:
        start = store.load(cfg["key"])
        with make_manager(cfg, store) as manager:
            tokens = [manager.refresh() for _ in range(cfg["count"])]
        end = store.load(cfg["key"])
    finally:
        store.close()
    assert start is not None and end is not None
    return {
        "pid": os.getpid(),
        "start_version": start.version,
        "versions": [t.version for t in tokens],
        "fingerprints": [t.fingerprint for t in tokens],
        "end_version": end.version,
    }


# --- test 3: refresh in a loop until killed -------------------------------------------------

PHASE_FORMAT = "<ii"  # (phase, committed refreshes)
PHASE_SIZE = struct.calcsize(PHASE_FORMAT)
# What the crash-loop child is doing, as last published before it died.
STARTING, IDLE, ACQUIRING, LEASED, HTTP, COMMITTING, COMMITTED = range(7)
PHASE_NAMES = {
    STARTING: "starting (before the first lease)",
    IDLE: "idle (no lease, between refreshes)",
    ACQUIRING: "acquiring the lease",
    LEASED: "lease held, before the request",
    HTTP: "token request in flight",
    COMMITTING: "inside compare_and_set",
    COMMITTED: "committed, lease not yet released",
}


def read_phase(path: str | os.PathLike[str]) -> tuple[int, int]:
    phase, commits = struct.unpack(PHASE_FORMAT, Path(path).read_bytes()[:PHASE_SIZE])
    return int(phase), int(commits)


class PhaseStore(Store):
    """Delegates to a real store and publishes, in shared memory, the refresh-protocol phase the
    process is in, so that the parent can tell where a SIGKILL landed. Writes to a shared
    mapping land in the page cache at once and survive the writer's death.

    The flow's order is: load, acquire, load, <token request>, compare_and_set, release (with a
    renewal before each retry of the request).
    """

    def __init__(self, inner: Store, phase_file: str) -> None:
        self.inner = inner
        self.location = inner.location
        fd = os.open(phase_file, os.O_RDWR)
        try:
            self._map = mmap.mmap(fd, PHASE_SIZE)
        finally:
            os.close(fd)
        self._commits = 0
        self._phase = STARTING

    def _set(self, phase: int) -> None:
        # One 8-byte copy: `struct.pack_into` would zero the slot first and then write field
        # by field, so a kill in between could publish a state that never existed.
        self._map[:PHASE_SIZE] = struct.pack(PHASE_FORMAT, phase, self._commits)
        self._phase = phase

    def load(self, key: str) -> Record | None:
        record = self.inner.load(key)
        if self._phase == LEASED:
            self._set(HTTP)  # the reload under the lease: the token request comes next
        return record

    def compare_and_set(self, record: Record, expected_version: int) -> bool:
        self._set(COMMITTING)
        done = self.inner.compare_and_set(record, expected_version)
        if done:
            self._commits += 1
            self._set(COMMITTED)
        return done

    def delete(self, key: str) -> bool:
        return self.inner.delete(key)

    def keys(self, prefix: str = "") -> list[str]:
        return self.inner.keys(prefix)

    def acquire_lease(self, key: str, owner: str, ttl: float) -> bool:
        self._set(ACQUIRING)
        held = self.inner.acquire_lease(key, owner, ttl)
        self._set(LEASED if held else IDLE)
        return held

    def renew_lease(self, key: str, owner: str, ttl: float) -> bool:
        held = self.inner.renew_lease(key, owner, ttl)
        if held:
            self._set(HTTP)  # a renewal comes right before a retry of the token request
        return held

    def release_lease(self, key: str, owner: str) -> bool:
        released = self.inner.release_lease(key, owner)
        self._set(IDLE)
        return released

    def close(self) -> None:
        self.inner.close()


def crash_loop(cfg: dict[str, Any]) -> None:
    """Open the store, say `ready`, wait for `go` on stdin, then force refreshes until killed.
    (Nothing is read from the store before `go`.)"""
    store = PhaseStore(open_store(cfg["kind"], cfg["path"], cfg.get("mapping")), cfg["phase_file"])
    manager = make_manager(cfg, store)
    print("ready", flush=True)
    if sys.stdin.readline().strip() != "go":
        return
    while True:
        manager.refresh()


# --- subprocess entry point -----------------------------------------------------------------


def main(argv: list[str]) -> int:
    command, cfg = argv[1], json.loads(argv[2])
    try:
        if command == "rotate":
            print(json.dumps(rotate(cfg)), flush=True)
        elif command == "crash-loop":
            crash_loop(cfg)
        else:
            print(f"unknown command {command!r}", file=sys.stderr)
            return 2
    except BaseException:
        traceback.print_exc()
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
