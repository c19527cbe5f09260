"""Invariants 1 and 2 across real processes sharing one SQLite file, over real HTTP.

Other processes are started with the spawn method or as plain subprocesses (never forked from
this threaded process); their code lives in tests/workers.py.
"""

from __future__ import annotations

import json
import multiprocessing
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx2
import pytest
import workers

from tokenward.integrations.httpx import TokenAuth
from tokenward.stores.sqlite import SQLiteStore
from tokenward.testing import TEST_CLIENT_ID, EmulatorServer, fingerprint

PROCESSES = 4
CHILD_THREADS, CHILD_TASKS = 8, 50
OWN_THREADS, OWN_TASKS = 16, 200


def _config(server: EmulatorServer, path: Path, key: str, **extra: Any) -> dict[str, Any]:
    return {
        "path": str(path),
        "key": key,
        "token_url": server.token_url,
        "api_url": server.api_url,
        "lease_ttl": 5.0,
        "lease_wait": 30.0,
        **extra,
    }


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    ("lease_ttl", "latency"),
    [
        # The provider answers within the lease TTL. Its latency is long enough that every
        # caller of every process is already asking for a token while the refresh is in flight.
        (5.0, 1.0),
        # The provider is slower than the lease TTL: the leader keeps its lease alive while the
        # request is in flight; and when a busy machine starves those renewals, the process
        # that takes the lapsed lease finds the refresh token recorded in flight and waits for
        # the leader's answer, instead of presenting the same single-use refresh token again
        # (invalid_grant; reuse detection would revoke the whole token family).
        (0.6, 1.5),
    ],
    ids=["answer-within-lease", "answer-slower-than-lease"],
)
def test_one_refresh_across_tasks_threads_processes(
    tokenward_emulator: EmulatorServer, tmp_path: Path, lease_ttl: float, latency: float
) -> None:
    """448 callers in 5 processes (threads and tasks mixed) meet one expired token at the same
    instant: the provider sees one refresh, and everybody uses the token it produced."""
    emu = tokenward_emulator.emulator
    path = tmp_path / "tokens.db"
    cfg = _config(tokenward_emulator, path, "storm", threads=CHILD_THREADS, tasks=CHILD_TASKS)
    cfg["lease_ttl"] = lease_ttl
    store = SQLiteStore(path)
    manager = workers.make_manager(cfg, store)
    # An expired access token (the provider agrees it is dead) and a good refresh token.
    stale_access = emu.issue_access_token(TEST_CLIENT_ID, lifetime=0)
    refresh_token = emu.issue_refresh_token(TEST_CLIENT_ID)
    seeded = manager.seed(refresh_token=refresh_token, access_token=stale_access, expires_in=-60)
    assert not emu.is_access_token_valid(stale_access)
    emu.latency = latency

    ctx = multiprocessing.get_context("spawn")
    ready, out, go = ctx.Queue(), ctx.Queue(), ctx.Event()
    start_at = ctx.Value("d", 0.0)
    started_count = ctx.Value("i", 0)
    procs = [
        ctx.Process(
            target=workers.storm_worker, args=(cfg, ready, go, start_at, out, started_count)
        )
        for _ in range(PROCESSES)
    ]
    total = PROCESSES * (CHILD_THREADS + CHILD_TASKS) + OWN_THREADS + OWN_TASKS
    # The refresh is held at the provider until every caller of every process has asked for a
    # token, however busy the machine: all of them contend (then the latency above applies).
    hold = emu.hold("token", stage="received")

    def release_when_all_asked() -> None:
        deadline = time.monotonic() + 45
        while started_count.value < total and time.monotonic() < deadline:
            time.sleep(0.005)
        hold.release()

    releaser = threading.Thread(target=release_when_all_asked, daemon=True)
    releaser.start()
    for proc in procs:
        proc.start()

    def announce_ready() -> float:
        for _ in procs:
            ready.get(timeout=45)  # each child: threads and tasks armed, clients open
        start_at.value = time.time() + 0.3
        go.set()
        return float(start_at.value)

    try:
        own = workers.run_storm(
            manager,
            tokenward_emulator.api_url,
            OWN_THREADS,
            OWN_TASKS,
            announce_ready,
            started_count,
        )
        reports = [out.get(timeout=45) for _ in procs]
        for proc in procs:
            proc.join(timeout=15)
    finally:
        hold.release()  # (a no-op once every caller asked)
        for proc in procs:
            if proc.is_alive():
                proc.kill()
                proc.join()
        manager.close()

    errors = [r["error"] for r in reports if "error" in r]
    assert not errors, "\n".join(errors)
    results = own + [row for r in reports for row in r["results"]]
    failed = [row for row in results if "error" in row]
    assert not failed, failed[:5]

    # Everybody took part: 4 children plus this process, each with all its callers.
    per_pid: dict[int, int] = {}
    for row in results:
        per_pid[row["pid"]] = per_pid.get(row["pid"], 0) + 1
    assert sorted(per_pid.values()) == [CHILD_THREADS + CHILD_TASKS] * PROCESSES + [
        OWN_THREADS + OWN_TASKS
    ]
    assert hold.arrived.is_set() and hold.agents and started_count.value == total

    # Exactly one refresh, never a refused or reused refresh token.
    counters = emu.counters
    log = emu.refresh_log
    assert counters["refreshes"] == 1, counters
    assert counters["invalid_grant"] == 0
    assert counters["refresh_reuse"] == 0
    assert len(log) == 1 and log[0]["old"] == fingerprint(refresh_token)

    # Every caller started before the provider had issued the new token: all of them really
    # contended (none was served from a warm cache after the fact).
    latest_start = max(row["started"] for row in results)
    assert latest_start < log[0]["time"], (latest_start, log[0]["time"])

    # Every process, thread and task got the same token, the one the provider issued, with the
    # version written by the single refresh, and used it successfully on the first try.
    assert {(row["version"], row["fp"]) for row in results} == {
        (seeded.version + 1, log[0]["access"])
    }
    assert all(row["status"] == 200 for row in results)
    assert all(row["api_fp"] == log[0]["access"] for row in results)
    assert counters["api_calls"] == counters["api_ok"] == total
    assert counters["api_401"] == 0

    # And the store holds that refresh, persisted once: the new refresh token is valid.
    record = store.load("storm")
    store.close()
    assert record is not None
    assert record.version == seeded.version + 1 and record.refresh_count == 1
    assert record.refresh_token is not None
    assert fingerprint(record.refresh_token) == log[0]["new"]
    assert emu.is_refresh_token_valid(record.refresh_token)
    spread = latest_start - min(row["started"] for row in results)
    print(
        f"\nstorm: {total} callers in {len(per_pid)} processes, start spread {spread * 1000:.1f} ms"
    )


@pytest.mark.timeout(60)
def test_rotation_restart(tokenward_emulator: EmulatorServer, tmp_path: Path) -> None:
    """50 forced rotations of a single-use refresh token: 20 here, 10 in a brand-new process
    that only has the SQLite file, then 20 more here. One unbroken chain, nothing refused."""
    emu = tokenward_emulator.emulator
    path = tmp_path / "tokens.db"
    cfg = _config(tokenward_emulator, path, "rotor")
    store = SQLiteStore(path)
    manager = workers.make_manager(cfg, store)
    first_refresh_token = emu.issue_refresh_token(TEST_CLIENT_ID)
    seeded = manager.seed(refresh_token=first_refresh_token)

    seen: list[int] = []  # versions returned, in order
    for _ in range(20):
        token = manager.refresh()
        assert not seen or token.version == seen[-1] + 1
        seen.append(token.version)
    assert emu.counters["refreshes"] == 20

    child = subprocess.run(
        [sys.executable, workers.__file__, "rotate", json.dumps({**cfg, "count": 10})],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert child.returncode == 0, child.stderr
    report = json.loads(child.stdout)
    assert report["start_version"] == seen[-1]  # it started from what this process stored
    assert report["versions"] == list(range(seen[-1] + 1, seen[-1] + 11))
    assert emu.counters["refreshes"] == 30

    # This process's manager still holds the token of version seen[-1] in memory; its refresh
    # token was rotated by the child. Continuing must go through the store, never present the
    # stale refresh token (that would be an invalid_grant). A refresh() may adopt the child's
    # newer token first (invariant 4: a newer version exists); every later one rotates.
    adopted = 0
    previous = seen[-1]
    for _ in range(21):
        if emu.counters["refreshes"] == 50:
            break
        before = emu.counters["refreshes"]
        token = manager.refresh()
        made = emu.counters["refreshes"] - before
        assert token.version > previous
        if made == 0:
            adopted += 1
            assert token.version == report["versions"][-1]
            assert token.fingerprint == report["fingerprints"][-1]
        else:
            assert made == 1
            assert token.version == previous + 1
        previous = token.version
    assert adopted <= 1
    assert emu.counters["refreshes"] == 50

    counters = emu.counters
    assert counters["invalid_grant"] == 0
    assert counters["refresh_reuse"] == 0

    # One chain: each refresh presented the refresh token the previous one issued.
    log = emu.refresh_log
    assert len(log) == 50
    assert log[0]["old"] == fingerprint(first_refresh_token)
    assert all(log[i]["old"] == log[i - 1]["new"] for i in range(1, 50))

    record = store.load("rotor")
    assert record is not None and record.refresh_token is not None
    assert record.version == seeded.version + 50 and record.refresh_count == 50
    assert fingerprint(record.refresh_token) == log[-1]["new"]
    assert emu.is_refresh_token_valid(record.refresh_token)
    # And the final token works.
    with httpx2.Client(auth=TokenAuth(manager), timeout=10) as client:
        response = client.get(tokenward_emulator.api_url + "/after-rotation")
    assert response.status_code == 200
    assert response.json()["token_fingerprint"] == log[-1]["access"]
    manager.close()
    store.close()
    print(f"\nrotation: 50 refreshes, {adopted} adoption after the restart")
