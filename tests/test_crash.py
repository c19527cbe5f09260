"""Invariants 2 and 7 under SIGKILL: a process killed at any instant of a refresh leaves a whole
record that a fresh process can use, and its lease does not outlive the lease TTL.

The child (tests/workers.py `crash-loop`, a plain subprocess) forces refreshes back to back and
publishes in shared memory which protocol phase it is in and how many refreshes it committed,
so each kill can be classified. The provider rotates refresh tokens (single use, no grace
period) and answers a little late, which widens the "rotated but not yet committed" window.
"""

from __future__ import annotations

import collections
import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx2
import pytest
import workers

from tokenward import events
from tokenward.errors import ReauthorizationRequired
from tokenward.integrations.httpx import TokenAuth
from tokenward.stores.base import Record, Store
from tokenward.testing import TEST_CLIENT_ID, Emulator, EmulatorServer, fingerprint

#: Kills per store (raise it for a soak run: TOKENWARD_CRASH_KILLS=500).
KILLS = int(os.environ.get("TOKENWARD_CRASH_KILLS", "30"))
LEASE_TTL = 0.3
#: Events that mean a fresh manager waited on the dead child (its lease or its in-flight
#: refresh token) instead of taking over at once: the child is provably dead (same host, its
#: pid reaped), so none may appear, however busy the machine. (Wall-clock recovery times are
#: printed, not asserted: a timing bound belongs in `make bench`.)
WAITED_ON_DEAD_CHILD = ("lease.holder_silent", "lease.waiting_in_flight")
KEY = "crash"
DOTENV_MAPPING = {
    KEY: {"access_token": "CRASH_ACCESS_TOKEN", "refresh_token": "CRASH_REFRESH_TOKEN"}
}
DOTENV_PREAMBLE = "# settings kept by hand\nexport OTHER_SETTING=keep-me  # not ours\n\n"
STORE_FILES = {"sqlite": "tokens.db", "json": "tokens.json", "dotenv": ".env"}

Counts = collections.Counter[str]


class Child:
    """A crash-loop child, started ahead of time: imports done, waiting for `go`."""

    def __init__(self, cfg: dict[str, Any], phase_file: Path) -> None:
        phase_file.write_bytes(bytes(workers.PHASE_SIZE))
        self.phase_file = phase_file
        child_cfg = {**cfg, "phase_file": str(phase_file)}
        self.proc = subprocess.Popen(
            [sys.executable, workers.__file__, "crash-loop", json.dumps(child_cfg)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    def go(self) -> None:
        """Wait until the child is ready, let it go, and return once it has started its
        first refresh (so that the kill delay is spent refreshing, not starting up)."""
        assert self.proc.stdout is not None and self.proc.stdin is not None
        line = self.proc.stdout.readline()
        assert line == "ready\n", self.fail_text()
        self.proc.stdin.write("go\n")
        self.proc.stdin.flush()
        deadline = time.monotonic() + 10
        while workers.read_phase(self.phase_file)[0] == workers.STARTING:
            assert self.proc.poll() is None, self.fail_text()
            assert time.monotonic() < deadline, "the child did not start refreshing"
            time.sleep(0.001)

    def kill(self) -> None:
        assert self.proc.poll() is None, "the child died on its own:\n" + self.fail_text()
        self.proc.kill()  # SIGKILL
        self.proc.wait(timeout=10)
        assert self.proc.returncode == -9
        self.close()

    def fail_text(self) -> str:
        """Stop the child; its stderr (a traceback if it failed)."""
        self.proc.kill()
        _, err = self.proc.communicate(timeout=10)
        return err

    def close(self) -> None:
        for stream in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
        self.close()


class _Events:
    """The names of the tokenward events emitted while it is attached (a subscriber: whatever
    the `tokenward` logger's level)."""

    def __init__(self) -> None:
        self.names: list[str] = []
        self._subscription: events.Subscription | None = None

    def attach(self) -> _Events:
        self._subscription = events.subscribe(lambda event: self.names.append(event.name))
        return self

    def detach(self) -> None:
        if self._subscription is not None:
            self._subscription.close()


def _settle(emu: Emulator) -> None:
    """Wait until the emulator is done with every token request the killed child sent: one
    still being processed could rotate the refresh token after the store was checked."""
    deadline = time.monotonic() + 30  # a hang, not a slow machine
    while (c := emu.counters)["token_requests_finished"] < c["token_requests"]:
        assert time.monotonic() < deadline, f"token requests never finished: {c}"
        time.sleep(0.001)


def _seed(emu: Emulator, store: Store) -> Record:
    """A login: a new refresh token (a new family at the provider), no access token yet."""
    workers_cfg = {"key": KEY, "token_url": "http://unused", "lease_ttl": LEASE_TTL}
    manager = workers.make_manager(workers_cfg, store)
    record = manager.seed(refresh_token=emu.issue_refresh_token(TEST_CLIENT_ID))
    manager.close()
    return record


def _check_whole(
    record: Record, log: list[dict[str, Any]], start: Record, emu: Emulator, where: str
) -> bool:
    """The record after a kill is one whole record, and it is the right one. Returns True when
    the kill landed in the lost-answer window (rotated at the provider, not committed)."""
    rotations = len(log)
    where = f"{where}; {rotations} rotations since version {start.version}; {record!r}"
    assert record.key == KEY and record.state == "ok", where
    assert record.refresh_token is not None and start.refresh_token is not None, where
    rt = fingerprint(record.refresh_token)
    # The provider's log is one chain starting at the refresh token the child was given.
    assert all(
        entry["old"] == (log[i - 1]["new"] if i else fingerprint(start.refresh_token))
        for i, entry in enumerate(log)
    ), f"the child presented a refresh token out of turn; {where}"
    if emu.is_refresh_token_valid(record.refresh_token):
        lost = False
        # The newest token of the chain, in a record written once per rotation.
        head = log[-1]["new"] if log else fingerprint(start.refresh_token)
        assert rt == head, where
        assert record.version == start.version + rotations, where
    else:
        # Lost answer: the provider rotated the stored token, the new one died with the child.
        # The store must hold exactly the previous whole record, not a torn one.
        lost = True
        assert rotations >= 1 and rt == log[-1]["old"], (
            f"stored refresh token is neither valid nor the last one rotated; {where}"
        )
        assert record.version == start.version + rotations - 1, where
    # Access token and refresh token come from the same grant (or both are the start ones).
    if record.version == start.version:
        assert record.access_token == start.access_token, where
        assert record.refresh_token == start.refresh_token, where
    else:
        grant = next(e for e in log if e["new"] == rt)
        assert record.access_token is not None, where
        assert fingerprint(record.access_token) == grant["access"], where
        assert emu.is_access_token_valid(record.access_token), where
    assert record.refresh_count == start.refresh_count + (record.version - start.version), where
    return lost


def _api_ok(manager: Any, server: EmulatorServer, expected_fp: str) -> None:
    with httpx2.Client(auth=TokenAuth(manager), timeout=10) as client:
        response = client.get(server.api_url + "/after-crash")
    assert response.status_code == 200
    assert response.json()["token_fingerprint"] == expected_fp


@pytest.mark.timeout(15 + 2 * KILLS)
@pytest.mark.parametrize("kind", ["sqlite", "json", "dotenv"])
def test_sigkill_during_refresh(
    kind: str, tokenward_emulator: EmulatorServer, tmp_path: Path
) -> None:
    emu = tokenward_emulator.emulator
    # Small provider latency before and after the rotation: kills land before the request,
    # while it is in flight, after the rotation but before the commit, and in the commit.
    emu.latency = 0.005
    emu.inject("drop_after_processing", times=10**9, delay=0.004)
    path = tmp_path / STORE_FILES[kind]
    mapping = DOTENV_MAPPING if kind == "dotenv" else None
    if kind == "dotenv":
        path.write_text(DOTENV_PREAMBLE)
    cfg = {
        "kind": kind,
        "path": str(path),
        "mapping": mapping,
        "key": KEY,
        "token_url": tokenward_emulator.token_url,
        "lease_ttl": LEASE_TTL,
        "lease_wait": 10.0,
    }
    seed = int(os.environ.get("TOKENWARD_CRASH_SEED") or random.randrange(2**32))
    rng = random.Random(seed)  # the kill delays (the instants they hit still vary)

    store = workers.open_store(kind, str(path), mapping)
    start = _seed(emu, store)
    store.close()

    windows: Counts = collections.Counter()
    lost_answers = leases_left = 0
    waits: list[float] = []
    started = time.monotonic()
    child = Child(cfg, tmp_path / "phase-0")
    try:
        for kill in range(KILLS):
            emu.reset_counters()
            delay = rng.uniform(0.0, 0.3)
            child.go()
            time.sleep(delay)
            child.kill()
            _settle(emu)
            phase, commits = workers.read_phase(child.phase_file)
            # Start the next child now: its imports overlap with the checks below.
            child = Child(cfg, tmp_path / f"phase-{kill + 1}")
            counters, log = emu.counters, emu.refresh_log
            # The child never presented a refused or already used refresh token.
            assert counters["invalid_grant"] == counters["refresh_reuse"] == 0, counters

            # 1. The store opens and the record is whole and right.
            store = workers.open_store(kind, str(path), mapping)
            record = store.load(KEY)
            assert record is not None
            lost = _check_whole(
                record, log, start, emu, f"kill {kill}, {workers.PHASE_NAMES[phase]}"
            )
            # Invariant 2: every commit the child saw succeed is in the store; one more is possible
            # only if it died inside compare_and_set, after the data was durable.
            durable = record.version - start.version
            where = f"kill {kill}: {workers.PHASE_NAMES[phase]}, {commits} commits seen, {record!r}"
            assert durable == commits or (phase == workers.COMMITTING and durable == commits + 1), (
                f"{durable} durable commits; {where}"
            )
            # Where the kill landed is consistent with what the store holds.
            if lost:
                assert phase in (workers.HTTP, workers.COMMITTING), workers.PHASE_NAMES[phase]
            if kind == "dotenv":
                assert path.read_text().startswith(DOTENV_PREAMBLE)
            name = workers.PHASE_NAMES[phase]
            windows[f"{name}, {'lost answer' if lost else 'record valid'}"] += 1
            lost_answers += lost

            # Did the dead child leave its lease behind? (Probe: take and give back at once.)
            probe = f"probe-{kill}"
            if store.acquire_lease(KEY, probe, LEASE_TTL):
                assert store.release_lease(KEY, probe)
            else:
                leases_left += 1

            # 2. A fresh manager continues: token() serves the stored token, then a forced refresh
            # waits out the dead child's lease (no longer than its TTL) and rotates.
            manager = workers.make_manager(cfg, store)
            before = emu.counters
            t0 = time.monotonic()
            seen = _Events().attach()
            try:
                if lost:
                    if record.access_token is not None:
                        token = manager.token()  # still valid at the provider
                        assert token.access_token == record.access_token
                        _api_ok(manager, tokenward_emulator, token.fingerprint)
                    with pytest.raises(ReauthorizationRequired):
                        manager.refresh()
                    waits.append(time.monotonic() - t0)
                    after = emu.counters
                    # Refused once, never retried, and the store says so (needs_reauth).
                    assert after["invalid_grant"] - before["invalid_grant"] == 1
                    assert after["refreshes"] == before["refreshes"]
                    refused = store.load(KEY)
                    assert refused is not None and refused.state == "needs_reauth"
                    start = _seed(emu, store)  # log in again
                else:
                    token = manager.token()
                    if record.access_token is not None:  # served from the store, no refresh
                        assert token.access_token == record.access_token
                        assert emu.counters["refreshes"] == before["refreshes"]
                    _api_ok(manager, tokenward_emulator, token.fingerprint)
                    fresh = manager.refresh()
                    waits.append(time.monotonic() - t0)
                    latest = store.load(KEY)
                    assert latest is not None and latest.version == fresh.version > record.version
                    # The served token has no refresh token: the record of its version holds
                    # the rotated one, and it is the one the provider accepts now.
                    assert latest.access_token == fresh.access_token
                    assert latest.refresh_token is not None and record.refresh_token is not None
                    assert emu.is_refresh_token_valid(latest.refresh_token)
                    assert not emu.is_refresh_token_valid(record.refresh_token)
                    _api_ok(manager, tokenward_emulator, fresh.fingerprint)
                    assert emu.counters["invalid_grant"] == 0
                    start = latest
                # The dead child never made us wait: its lease and in-flight record were taken
                # over (or had lapsed), not waited out.
                waited = [e for e in seen.names if e in WAITED_ON_DEAD_CHILD]
                assert waited == [], f"kill {kill}: waited on a dead child: {seen.names}"
            finally:
                seen.detach()
                manager.close()
                store.close()
    finally:
        child.stop()  # the spare child, or the one that was running
    elapsed = time.monotonic() - started
    temp_files = len(list(tmp_path.glob(".*.tmp")))  # atomic writes cut short by a kill

    report = "\n".join(f"  {n:3d}  {w}" for w, n in sorted(windows.items()))
    print(
        f"\n[{kind}] {KILLS} kills in {elapsed:.1f}s (seed {seed}): {lost_answers} in the "
        f"lost-answer window, {leases_left} left a lease; longest recovery "
        f"{max(waits):.3f}s; {temp_files} temp files left behind\n{report}"
    )
    # Both outcomes were exercised (each has probability far from 0 per kill).
    assert 0 < lost_answers < KILLS
