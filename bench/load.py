"""The broker benchmark's load generator when `wrk` is not available: N keep-alive connections,
each sending GET requests one after another for a while, in its own process.

    python bench/load.py URL CONNECTIONS SECONDS [HEADER: VALUE]...

Prints one JSON line: requests, errors (non-2xx/3xx answers and transport errors), seconds,
requests_per_s, p50_ms, p99_ms. Python is far slower than wrk: at high concurrency this
process may be what limits the figures (bench/broker.py says which generator ran).
"""

from __future__ import annotations

import asyncio
import json
import sys
import time

import httpx2


async def _run(url: str, connections: int, seconds: float, headers: dict[str, str]) -> None:
    latencies: list[float] = []
    errors = 0
    limits = httpx2.Limits(max_connections=connections, max_keepalive_connections=connections)
    async with httpx2.AsyncClient(limits=limits, headers=headers, timeout=10.0) as client:
        deadline = time.perf_counter() + seconds

        async def worker() -> None:
            nonlocal errors
            while time.perf_counter() < deadline:
                started = time.perf_counter()
                try:
                    response = await client.get(url)
                    if response.status_code >= 400:
                        errors += 1
                except httpx2.HTTPError:
                    errors += 1
                latencies.append(time.perf_counter() - started)

        began = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(connections)))
        elapsed = time.perf_counter() - began
    latencies.sort()

    def pct(q: float) -> float:
        return latencies[min(len(latencies) - 1, int(q * len(latencies)))] * 1000

    print(
        json.dumps(
            {
                "requests": len(latencies),
                "errors": errors,
                "seconds": elapsed,
                "requests_per_s": len(latencies) / elapsed,
                "p50_ms": pct(0.50) if latencies else float("nan"),
                "p99_ms": pct(0.99) if latencies else float("nan"),
            }
        ),
        flush=True,
    )


def main(argv: list[str]) -> None:
    url, connections, seconds = argv[0], int(argv[1]), float(argv[2])
    headers = dict(h.split(": ", 1) for h in argv[3:])
    asyncio.run(_run(url, connections, seconds, headers))


if __name__ == "__main__":
    main(sys.argv[1:])
