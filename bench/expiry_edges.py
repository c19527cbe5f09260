"""Issue 16, sections 4 and 5, measured: requests that meet a rejected token at expiry.

`expiry`: 8 threads send requests back to back through `TokenAuth` for `--seconds`, with 2 s
tokens and a 50-200 ms token call (25 ms before the token is issued, the rest while its answer
travels back). Counts the provider's expired-token 401s.

`revoke`: the same, and an administrator revokes every access token 0-20 ms after each natural
refresh (a password change right after a refresh). Counts requests whose caller got a 401.

`--before` switches the fix off in this process only (expiry counted from receipt; one replay),
to show what it changes:

    .venv/bin/python -m bench.expiry_edges expiry [--before] [--seconds 30]
"""

from __future__ import annotations

import argparse
import random
import threading
import time

import httpx2

from tokenward import RefreshTokenGrant, TokenAuth, TokenManager
from tokenward.integrations import _replay
from tokenward.stores import MemoryStore
from tokenward.testing import TEST_CLIENT_ID, TEST_CLIENT_SECRET
from tokenward.testing.emulator import Emulator
from tokenward.testing.server import EmulatorServer
from tokenward.transport import HttpResponse

WORKERS = 8


def _switch_off(mode: str) -> None:
    if mode == "expiry":
        HttpResponse.lifetime_start = property(lambda self: self.received_at)  # type: ignore[method-assign,assignment]
    else:
        _replay.MAX_REPLAYS = 1  # type: ignore[misc]


def _provider_chaos(emulator: Emulator, mode: str, stop: threading.Event) -> None:
    """Vary the token call's latency; in `revoke` mode, revoke right after natural refreshes
    (not after the refreshes the revocation itself causes: at most one per 1.5 s)."""
    seen, last = 0, 0.0
    while not stop.is_set():
        emulator.answer_latency = random.uniform(0.025, 0.175)
        count = len(emulator.refresh_log)
        refreshed, seen = count > seen, count
        if mode == "revoke" and refreshed and time.monotonic() - last > 1.5:
            last = time.monotonic()
            time.sleep(random.uniform(0, 0.02))
            emulator.revoke_access_tokens()
        time.sleep(0.005)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", choices=["expiry", "revoke"])
    parser.add_argument("--before", action="store_true", help="switch the fix off")
    parser.add_argument("--seconds", type=float, default=30.0)
    args = parser.parse_args()
    if args.before:
        _switch_off(args.mode)
    emulator = Emulator(access_lifetime=2, latency=0.025)
    emulator.add_client(TEST_CLIENT_ID, TEST_CLIENT_SECRET)
    stop = threading.Event()
    sent, failed = [0] * WORKERS, [0] * WORKERS
    with EmulatorServer(emulator) as server:
        source = RefreshTokenGrant(
            server.token_url, TEST_CLIENT_ID, TEST_CLIENT_SECRET, client_auth="body"
        )
        with TokenManager("ml", source, MemoryStore()) as manager:
            manager.seed(refresh_token=emulator.issue_refresh_token(TEST_CLIENT_ID))
            manager.token()

            def work(index: int) -> None:
                with httpx2.Client(auth=TokenAuth(manager)) as client:
                    while not stop.is_set():
                        answer = client.get(f"{server.api_url}/items")
                        sent[index] += 1
                        failed[index] += answer.status_code != 200

            threads = [threading.Thread(target=work, args=(i,)) for i in range(WORKERS)]
            threads.append(
                threading.Thread(target=_provider_chaos, args=(emulator, args.mode, stop))
            )
            for thread in threads:
                thread.start()
            stop.wait(args.seconds)
            stop.set()
            for thread in threads:
                thread.join()
    counters = emulator.counters
    total = sum(sent)
    label = "before" if args.before else "now"
    print(
        f"{args.mode} ({label}): {total} requests, {sum(failed)} failed; provider: "
        f"{counters['api_401_expired']} expired-token 401s "
        f"({100 * counters['api_401_expired'] / max(total, 1):.2f} %), "
        f"{counters['api_401_revoked']} revoked-token 401s, {counters['refreshes']} refreshes, "
        f"{counters['admin_revocations']} admin revocations"
    )


if __name__ == "__main__":
    main()
