"""One process of the demo's pipeline: threads calling the orders API through one side's helpers
(`handmade` or `withtokenward`), on the demo's fixed schedule.

Run by the demo as `python -m demo.pipeline SIDE INDEX THREADS WORKERS RATE DURATION`
in the side's directory. The process prints `ready` once its libraries are imported, waits for
`go <start>` on stdin (a `time.monotonic()` instant, the same clock in every process), imports
the side's helpers (which load `./.env`, written meanwhile), runs its threads, then writes
`results/<INDEX>.json`: what it saw (its own tally, for the demo's cross-check only: the demo's
figures come from the provider) and, for the hand-made side, the refresh token its globals hold
at the end (tokenward's processes use the store's); readable by the owner only, never printed.
"""

from __future__ import annotations

import importlib
import json
import logging
import os
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from types import ModuleType
from typing import Any

from .workload import Schedule

SIDES = {"hand-made": "demo.handmade", "tokenward": "demo.withtokenward"}
#: What each side's helpers import, loaded while the demo waits for every process to start.
PRELOAD = {
    "hand-made": ("requests", "dotenv"),
    "tokenward": (
        "requests",
        "dotenv",
        "tokenward.integrations.requests",
        "tokenward.stores.dotenv",
    ),
}


def call(helpers: ModuleType, worker: int, seq: int) -> int:
    """One request of the pipeline's mix (POST, PUT, POST, GET); its final status."""
    order = {"worker": worker, "seq": seq, "item": f"MLA{1000 + seq % 97}", "quantity": 1}
    kind = seq % 4
    if kind == 1:
        response = helpers.http_put(f"/orders/{worker}-{seq - 1}", json={"quantity": 2})
    elif kind == 3:
        response = helpers.http_get(f"/orders/{worker}-{seq - 1}")
    else:
        response = helpers.http_post("/orders", json=order)
    return int(response.status_code)


def run_thread(
    helpers: ModuleType, schedule: Schedule, worker: int, tally: Counter[str], lock: threading.Lock
) -> None:
    seq = 0
    while (due := schedule.due(worker, seq)) is not None:
        time.sleep(max(due - time.monotonic(), 0.0))
        try:
            outcome = str(call(helpers, worker, seq))
        except Exception as exc:  # a failed request is a result to count, not a crash
            outcome = type(exc).__name__
        with lock:
            tally[outcome] += 1
        seq += 1


def main(argv: list[str]) -> int:
    side, index, threads, workers, rate, duration = argv
    for module in PRELOAD[side]:  # the slow part of starting, done before the login
        importlib.import_module(module)
    print("ready", flush=True)
    line = sys.stdin.readline().split()
    if len(line) != 2 or line[0] != "go":
        return 2
    logging.basicConfig(format="%(asctime)s %(message)s", level=logging.WARNING)  # the log file
    logging.getLogger("tokenward").setLevel(logging.INFO)  # tokenward's events, for diagnosis
    helpers = importlib.import_module(SIDES[side])  # loads ./.env, written just before "go"
    schedule = Schedule(float(line[1]), float(duration), float(rate), int(workers))
    first = int(index) * int(threads)
    tally: Counter[str] = Counter()
    lock = threading.Lock()
    pool = [
        threading.Thread(target=run_thread, args=(helpers, schedule, first + n, tally, lock))
        for n in range(int(threads))
    ]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()
    report: dict[str, Any] = {"tally": dict(tally)}
    if side == "tokenward":
        helpers.manager.close()  # waits for a refresh in flight: its token is stored first
    else:  # the hand-made globals: this process's own copy of the refresh token
        report["refresh_token"] = helpers.REFRESH_TOKEN
    path = Path("results") / f"{index}.json"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        json.dump(report, out)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
