"""Hot path, counted in instructions: CPU per request that the machine's load cannot blur.

`hot.py` times CPU with `time.process_time()`, which on a shared 2-core VM moves by +-10 %
from round to round (other processes evict caches, steal cycles): too coarse to check a 3 %
target. Here every case runs in its own Python process under valgrind's callgrind, which counts
the instructions the process executes: the same code gives the same count (to a few hundred
instructions per request) whatever else the machine is doing. Hardware counters (`perf stat`)
would be faster but this VM does not expose them.

Only the measured requests are counted: after building the client and a warm-up, the worker
calls `os.getppid()` (callgrind zeroes its counters when the C function `os_getppid` is
entered), sends `n` requests, and calls `os.getpgrp()` (callgrind writes the counts when
`os_getpgrp` is entered). The server (bench/fastserver.py) runs natively in another process.

    python -m bench.instructions            # every case, a table of instructions per request
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from .common import FastServer

ROOT = Path(__file__).resolve().parent.parent

# (mode, case): the tokenward cases and the static-header baseline on the same library.
CASES = [
    ("sync", "httpx2 static header"),
    ("sync", "httpx2 + tokenward"),
    ("async", "httpx2 static header"),
    ("async", "httpx2 + tokenward"),
    ("sync", "requests static header"),
    ("sync", "requests + tokenward"),
]
BASELINE = {"httpx2": "httpx2 static header", "requests": "requests static header"}


def available() -> bool:
    return shutil.which("valgrind") is not None


def _callgrind(out: Path, *options: str) -> list[str]:
    """The valgrind command that counts instructions into `out` (dumps: `out.1`, ...)."""
    return [
        "valgrind",
        "--tool=callgrind",
        f"--callgrind-out-file={out}",
        "--dump-instr=no",
        "--compress-strings=no",
        *options,
    ]


def _worker(mode: str, case: str, url: str, n: int, warmup: int) -> None:
    """Runs under callgrind: build the case, warm up, then the counted requests."""
    from . import hot

    if mode == "sync":
        send, close = hot._sync_cases(url)[case]()
        for _ in range(warmup):
            send()
        os.getppid()  # callgrind: zero the counters here
        for _ in range(n):
            send()
        os.getpgrp()  # callgrind: dump the counts here
        close()
        return

    async def main() -> None:
        send, aclose = hot._async_cases(url)[case]()
        for _ in range(warmup):
            await send()
        os.getppid()
        for _ in range(n):
            await send()
        os.getpgrp()
        await aclose()

    asyncio.run(main())


def _count(mode: str, case: str, url: str, n: int, warmup: int) -> int:
    """Instructions executed by `n` requests of one case (one callgrind run)."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "callgrind.out"
        subprocess.run(
            [
                *_callgrind(out, "--zero-before=os_getppid", "--dump-before=os_getpgrp"),
                sys.executable,
                "-m",
                "bench.instructions",
                "--worker",
                mode,
                case,
                url,
                str(n),
                str(warmup),
            ],
            cwd=ROOT,
            # Fixed hash seed: dict and set layouts (so the instructions) are the same each run.
            env={**os.environ, "PYTHONHASHSEED": "0"},
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        # The dump made at os_getpgrp is the first numbered part (out.1): the instructions
        # executed since os_getppid zeroed the counters.
        return _dumped(out, f"{mode} {case!r}")


def _dumped(out: Path, what: str, timeout: float = 60.0) -> int:
    """The instruction total of callgrind's first numbered dump next to `out`."""
    ends = time.monotonic() + timeout
    while True:
        dumps = sorted(out.parent.glob(out.name + ".*"))
        text = dumps[0].read_text() if dumps else ""
        match = re.search(r"^totals:\s*(\d+)", text, re.MULTILINE)
        if match is not None:
            return int(match.group(1))
        if time.monotonic() > ends:
            raise RuntimeError(f"callgrind wrote no instruction total for {what}")
        time.sleep(0.2)  # a dump requested from outside is written by the process itself


def _broker_count(
    kind: str, arg: str, path: str, headers: dict[str, str], requests: int, warmup: int
) -> int:
    """Instructions one proxy process executes for `requests` proxied requests (one at a
    time): the proxy runs under callgrind, `callgrind_control` zeroes and dumps its counters
    around the counted requests."""
    import httpx2

    from . import broker

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "callgrind.out"
        prefix = _callgrind(out, f"--log-file={tmp}/valgrind.log")
        proxy = broker._Proxy(kind, arg, {broker.SECRET_ENV: "bench-secret"}, prefix)
        try:
            target = proxy.url + path
            broker._wait_ready(target, headers, timeout=180)  # slow to start under valgrind
            with httpx2.Client(headers=headers, timeout=120) as client:
                for _ in range(warmup):
                    client.get(target).raise_for_status()
                _control("-z", proxy.proc.pid)
                for _ in range(requests):
                    client.get(target).raise_for_status()
                _control("-d", proxy.proc.pid)
            return _dumped(out, f"the {kind} proxy")
        finally:
            proxy.close()


def _control(flag: str, pid: int) -> None:
    subprocess.run(["callgrind_control", flag, str(pid)], check=True, capture_output=True)


def broker_run(requests: int = 300, warmup: int = 50) -> dict[str, Any]:
    """Instructions per request of the broker's proxy path and of the bare pass-through (both
    run one at a time under callgrind; the upstream runs natively)."""
    from tokenward.broker.config import hash_key, new_key

    from . import broker

    key = new_key()
    headers = {"Authorization": f"Bearer {key}"}
    with tempfile.TemporaryDirectory() as tmp, FastServer() as upstream:
        config = broker._config(Path(tmp), upstream.url, hash_key(key))
        proxies = {
            "pass-through": ("passthrough", upstream.url, broker.PATH),
            "broker": ("broker", str(config), f"/v1/proxy/{broker.CREDENTIAL}{broker.PATH}"),
        }
        with ThreadPoolExecutor(2) as pool:
            futures = {
                name: pool.submit(_broker_count, *spec, headers, requests, warmup)
                for name, spec in proxies.items()
            }
            counts = {name: future.result() / requests for name, future in futures.items()}
    return {
        "requests": requests,
        "warmup": warmup,
        "pass_through_per_request": round(counts["pass-through"]),
        "broker_per_request": round(counts["broker"]),
        # One single-threaded worker each: when CPU-bound, requests/s go as 1 / instructions.
        "throughput_ratio": counts["pass-through"] / counts["broker"],
    }


def run(requests: int = 1000, warmup: int = 200, jobs: int = 2) -> dict[str, Any]:
    """Instructions per request for every case; ratios against the static header."""
    with FastServer() as server, ThreadPoolExecutor(jobs) as pool:
        futures = {
            (mode, case): pool.submit(_count, mode, case, server.url, requests, warmup)
            for mode, case in CASES
        }
        counts = {key: future.result() / requests for key, future in futures.items()}
    rows = []
    for (mode, case), per_request in counts.items():
        base = counts[(mode, BASELINE[case.split(" ")[0]])]
        rows.append(
            {
                "mode": mode,
                "case": case,
                "instructions_per_request": round(per_request),
                "ratio_vs_static": per_request / base,
            }
        )
    return {"requests": requests, "warmup": warmup, "rows": rows}


def main(argv: list[str]) -> int:
    if argv[:1] == ["--worker"]:
        mode, case, url, n, warmup = argv[1:6]
        _worker(mode, case, url, int(n), int(warmup))
        return 0
    if not available():
        print("valgrind is not installed (apt-get install valgrind)", file=sys.stderr)
        return 1
    if argv[:1] == ["--broker"]:
        print(json.dumps(broker_run(), indent=1))
        return 0
    result = run()
    for row in result["rows"]:
        print(
            f"{row['mode']:5} {row['case']:26} {row['instructions_per_request']:>10,} "
            f"instructions/request  x{row['ratio_vs_static']:.4f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
