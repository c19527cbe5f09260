"""`close()` during a background refresh, on every store: issue 16's reproduction, measured.

A provider with 2 s tokens, 400 ms token latency and reuse detection; `seed()`, `token()`,
sleep into the refresh window, `token()` (starts the background refresh), `close()` 0.1 s later,
then a "next run" (a new manager on the same store) refreshes. Before the fix the closed HTTP
client killed the token request after the provider had rotated the refresh token: nothing was
stored, and the next run met `invalid_grant` with the whole token family revoked. Reports, per
store, how many trials kept the newest refresh token and how long `close()` waited.

    .venv/bin/python -m bench.shutdown [--trials 5] [--kinds sqlite,redis,...]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from tokenward.manager import TokenManager
from tokenward.sources import RefreshTokenGrant
from tokenward.testing import TEST_CLIENT_ID, TEST_CLIENT_SECRET
from tokenward.testing.emulator import Emulator, fingerprint
from tokenward.testing.server import EmulatorServer

from .stores import open_kind

KINDS = ["sqlite", "file", "dotenv", "redis", "postgres"]


def trial(
    emulator: Emulator, source: RefreshTokenGrant, kind: str, directory: Path
) -> dict[str, float]:
    """One close during a background refresh, then a next run: whether the next run could
    refresh, whether the store then holds the newest valid refresh token, how long close()
    took."""
    with open_kind(kind, directory) as (store, _size):
        manager = TokenManager("ml", source, store)
        manager.seed(refresh_token=emulator.issue_refresh_token(TEST_CLIENT_ID))
        token = manager.token()
        time.sleep(max(manager.policy.refresh_at(token) - time.time(), 0.0) + 0.01)
        manager.token()  # in the refresh window: the refresh runs in the background
        time.sleep(0.1)  # the token request is at the provider
        started = time.perf_counter()
        manager.close()
        closing = time.perf_counter() - started
        with TokenManager("ml", source, store) as next_run:
            try:
                next_run.refresh()
                next_ok = 1.0
            except Exception:
                next_ok = 0.0
        # After the next run: the store holds the provider's newest refresh token, still valid.
        record = store.load("ml")
        refresh = (record.refresh_token if record else None) or ""
        kept = fingerprint(refresh) == emulator.refresh_log[-1]["new"]
        kept = kept and emulator.is_refresh_token_valid(refresh)
        return {"kept": float(kept), "next_ok": next_ok, "close_s": closing}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=5)
    parser.add_argument("--kinds", default=",".join(KINDS))
    args = parser.parse_args()
    emulator = Emulator(access_lifetime=2, latency=0.4, revoke_family_on_reuse=True)
    emulator.add_client(TEST_CLIENT_ID, TEST_CLIENT_SECRET)
    with EmulatorServer(emulator) as server, tempfile.TemporaryDirectory() as tmp:
        source = RefreshTokenGrant(
            server.token_url, TEST_CLIENT_ID, TEST_CLIENT_SECRET, client_auth="body"
        )
        print(
            f"{'store':<9} {'trials':>6} {'kept':>5} {'next run ok':>11} {'close() median/max':>19}"
        )
        for kind in args.kinds.split(","):
            results = [trial(emulator, source, kind, Path(tmp)) for _ in range(args.trials)]
            kept = int(sum(r["kept"] for r in results))
            next_ok = int(sum(r["next_ok"] for r in results))
            closes = [r["close_s"] * 1000 for r in results]
            spread = f"{statistics.median(closes):.0f}/{max(closes):.0f} ms"
            print(f"{kind:<9} {args.trials:>6} {kept:>5} {next_ok:>11} {spread:>19}")
        counters = emulator.counters
        print(
            f"provider: {counters['refreshes']} refreshes, invalid_grant "
            f"{counters['invalid_grant']}, families revoked {counters['families_revoked']}"
        )


if __name__ == "__main__":
    main()
