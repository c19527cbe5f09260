"""Soak: tokenward under steady load across hundreds of 1-second token lifetimes.

64 workers (half threads sharing one `httpx2.Client`, half asyncio tasks sharing one
`httpx2.AsyncClient`) call the emulator (its own process) through one `TokenAuth(manager)` on a
fixed schedule, with 1-second access tokens and single-use rotating refresh tokens stored in
SQLite. The client's RSS is sampled every second (more often in runs under 20 s). Pass: no
failed request, a valid refresh token at the end, and the mean RSS of the last window within
5 % of the first window's (a minute each in `make soak`, a quarter of the run when shorter).
"""

from __future__ import annotations

import asyncio
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from demo import Schedule, Tally

from .common import ProviderProcess, rss_mb
from .storm import (
    NOT_SENT,
    _async_side,
    _run_threads,
    _start_spec,
    provider_settings,
    settle_store,
)

WORKERS = 64
RATE = 256.0  # requests/s, all workers together
RSS_TOLERANCE = 0.05


def run(duration: float = 60.0, workers: int = WORKERS, rate: float = RATE) -> dict[str, Any]:
    from .peers import TokenwardPeer

    window = min(60.0, duration / 4)
    samples: list[tuple[float, float]] = []
    stop = threading.Event()
    with (
        ProviderProcess(**provider_settings()) as provider,
        tempfile.TemporaryDirectory(prefix="tokenward-soak-") as tmp,
    ):
        store = str(Path(tmp) / "tokens.db")
        start = _start_spec("tokenward", provider.info, provider.login(), store)
        obtained, obtained_mono = time.time(), time.monotonic()
        peer = TokenwardPeer(provider.info, start, 1.0)
        before = provider.counters()
        t0 = time.monotonic() + 0.05
        schedule = Schedule(t0, duration, rate, workers)
        tally = Tally()

        every = min(1.0, duration / 20)

        def sample() -> None:
            while not stop.wait(every):
                samples.append((time.monotonic() - t0, rss_mb()))

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        threads = workers // 2
        side = threading.Thread(target=_run_threads, args=(peer, schedule, range(threads), tally))
        side.start()
        asyncio.run(_async_side(peer, schedule, range(threads, workers), tally))
        side.join()
        stop.set()
        sampler.join()
        ended = obtained + max(tally.last_done - obtained_mono, 0.0)
        peer.manager.stop()
        final = settle_store(store)
        after = provider.counters()
        peer.close()
        valid = provider.accepts(final)
    first = [rss for at, rss in samples if at <= window]
    last = [rss for at, rss in samples if at >= duration - window]
    first_mean = sum(first) / len(first) if first else float("nan")
    last_mean = sum(last) / len(last) if last else float("nan")
    growth = (last_mean - first_mean) / first_mean if first else float("nan")
    lifetimes = ended - obtained
    refreshes = after["refreshes"] - before["refreshes"]
    return {
        "duration": duration,
        "workers": workers,
        "rate": rate,
        "window": window,
        "requests": tally.done,
        "ok": tally.ok,
        "failed": tally.failed,
        "not_sent": tally.errors.get(NOT_SENT, 0),
        "errors": dict(tally.errors),
        "lifetimes": round(lifetimes, 1),
        "refreshes": refreshes,
        "refreshes_per_expiry": refreshes / lifetimes,
        "refresh_token_valid": valid,
        "rss_first_mb": first_mean,
        "rss_last_mb": last_mean,
        "rss_growth": growth,
        "rss_samples": samples,
        "passed": tally.failed == 0 and valid and abs(growth) <= RSS_TOLERANCE,
    }
