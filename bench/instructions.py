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
import os
import re
import shutil
import subprocess
import sys
import tempfile
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
                "valgrind",
                "--tool=callgrind",
                f"--callgrind-out-file={out}",
                "--zero-before=os_getppid",
                "--dump-before=os_getpgrp",
                "--dump-instr=no",
                "--compress-strings=no",
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
        # The dump made at os_getpgrp is the first numbered part (out.1); its totals line
        # is the instructions executed since os_getppid zeroed the counters.
        dumps = sorted(Path(tmp).glob("callgrind.out.*"))
        if not dumps:
            raise RuntimeError(f"callgrind wrote no dump for {mode} {case!r}")
        text = dumps[0].read_text()
        match = re.search(r"^(?:totals|summary):\s*(\d+)", text, re.MULTILINE)
        if match is None:
            raise RuntimeError(f"no instruction total in the callgrind dump for {case!r}")
        return int(match.group(1))


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
    result = run()
    for row in result["rows"]:
        print(
            f"{row['mode']:5} {row['case']:26} {row['instructions_per_request']:>10,} "
            f"instructions/request  x{row['ratio_vs_static']:.4f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
