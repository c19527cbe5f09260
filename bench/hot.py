"""Hot path: requests per second and client CPU time per request with a fresh token.

Every client sends GET requests one after another to bench/fastserver.py, which runs in its own
process (its CPU is not counted). CPU time is `time.process_time()` of this process (all its
threads). Cases run in interleaved rounds (every case once per round) and each figure is the
median over the rounds, so drifts in machine speed hit every case alike. Ratios compare each
case with a static `Authorization` header on the same HTTP client library.
"""

from __future__ import annotations

import asyncio
import gc
import os
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from .common import FastServer, median

# The peers refuse plain http:// token endpoints unless told otherwise (loopback only here).
os.environ.setdefault("OAUTHLIB_INSECURE_TRANSPORT", "1")
os.environ.setdefault("AUTHLIB_INSECURE_TRANSPORT", "1")

ACCESS = "hot-path-access-token-0123456789abcdef"
REFRESH = "hot-path-refresh-token"
CLIENT_ID, CLIENT_SECRET = "bench-app", "bench-secret"
PATH = "/api/items"
LEEWAY = 0.05  # early-expiry setting given to every peer that has one (seconds)

SyncSend = Callable[[], Any]
AsyncSend = Callable[[], Awaitable[Any]]


def _token_dict() -> dict[str, Any]:
    return {
        "access_token": ACCESS,
        "token_type": "Bearer",
        "expires_in": 3600,
        "expires_at": time.time() + 3600,
        "refresh_token": REFRESH,
    }


def _manager(token_url: str) -> Any:
    from tokenward.manager import TokenManager
    from tokenward.sources.oauth2 import RefreshTokenGrant
    from tokenward.stores.memory import MemoryStore

    manager = TokenManager(
        "hot", RefreshTokenGrant(token_url, CLIENT_ID, CLIENT_SECRET), MemoryStore()
    )
    manager.seed(access_token=ACCESS, refresh_token=REFRESH, expires_in=3600)
    manager.token()
    return manager


def _httpx_auth(url: str) -> Any:
    from httpx_auth import OAuth2, OAuth2AuthorizationCode

    auth = OAuth2AuthorizationCode(
        url + "/authorize",
        url + "/oauth/token",
        client_id=CLIENT_ID,
        client_secret=CLIENT_SECRET,
        early_expiry=LEEWAY,
    )
    OAuth2.token_cache._add_token(auth.state, ACCESS, time.time() + 3600, REFRESH)
    return auth


# -- sync cases: build(url) -> (send, close) ---------------------------------------------------
def _sync_cases(url: str) -> dict[str, Callable[[], tuple[SyncSend, Callable[[], None]]]]:
    header = {"Authorization": f"Bearer {ACCESS}"}
    token_url = url + "/oauth/token"

    def httpx2_static() -> tuple[SyncSend, Callable[[], None]]:
        import httpx2

        client = httpx2.Client(base_url=url, headers=header)
        return (lambda: client.get(PATH)), client.close

    def httpx2_tokenward() -> tuple[SyncSend, Callable[[], None]]:
        import httpx2

        from tokenward.integrations.httpx import TokenAuth

        client = httpx2.Client(base_url=url, auth=TokenAuth(_manager(token_url)))
        return (lambda: client.get(PATH)), client.close

    def httpx_static() -> tuple[SyncSend, Callable[[], None]]:
        import httpx

        client = httpx.Client(base_url=url, headers=header)
        return (lambda: client.get(PATH)), client.close

    def httpx_tokenward() -> tuple[SyncSend, Callable[[], None]]:
        import httpx

        from tokenward.integrations.httpx import TokenAuth

        client = httpx.Client(base_url=url, auth=TokenAuth(_manager(token_url)))
        return (lambda: client.get(PATH)), client.close

    def httpx_authlib() -> tuple[SyncSend, Callable[[], None]]:
        # Authlib's httpx integration is built on httpx2 when httpx2 is installed (it is).
        from authlib.integrations.httpx_client import OAuth2Client

        client = OAuth2Client(
            client_id=CLIENT_ID,
            client_secret=CLIENT_SECRET,
            token=_token_dict(),
            token_endpoint=token_url,
            leeway=LEEWAY,
            base_url=url,
        )
        return (lambda: client.get(PATH)), client.close

    def httpx_httpx_auth() -> tuple[SyncSend, Callable[[], None]]:
        import httpx

        client = httpx.Client(base_url=url, auth=_httpx_auth(url))
        return (lambda: client.get(PATH)), client.close

    def requests_static() -> tuple[SyncSend, Callable[[], None]]:
        import requests

        session = requests.Session()
        session.headers.update(header)
        return (lambda: session.get(url + PATH)), session.close

    def requests_tokenward() -> tuple[SyncSend, Callable[[], None]]:
        import requests

        from tokenward.integrations.requests import TokenAuth

        session = requests.Session()
        session.auth = TokenAuth(_manager(token_url))
        return (lambda: session.get(url + PATH)), session.close

    def requests_authlib() -> tuple[SyncSend, Callable[[], None]]:
        from authlib.integrations.requests_client import OAuth2Session

        session = OAuth2Session(
            CLIENT_ID,
            CLIENT_SECRET,
            token=_token_dict(),
            token_endpoint=token_url,
            leeway=LEEWAY,
        )
        return (lambda: session.get(url + PATH)), session.close

    def requests_oauthlib() -> tuple[SyncSend, Callable[[], None]]:
        from requests_oauthlib import OAuth2Session

        session = OAuth2Session(
            CLIENT_ID,
            token=_token_dict(),
            auto_refresh_url=token_url,
            auto_refresh_kwargs={"client_id": CLIENT_ID, "client_secret": CLIENT_SECRET},
            token_updater=lambda token: None,
        )
        return (lambda: session.get(url + PATH)), session.close

    return {
        "httpx2 static header": httpx2_static,
        "httpx2 + tokenward": httpx2_tokenward,
        "httpx static header": httpx_static,
        "httpx + tokenward": httpx_tokenward,
        "httpx2 + Authlib": httpx_authlib,
        "httpx + httpx-auth": httpx_httpx_auth,
        "requests static header": requests_static,
        "requests + tokenward": requests_tokenward,
        "requests + Authlib": requests_authlib,
        "requests + requests-oauthlib": requests_oauthlib,
    }


# -- async cases: build(url) inside the loop -> (send, aclose) ---------------------------------
def _async_cases(url: str) -> dict[str, Callable[[], tuple[AsyncSend, Any]]]:
    header = {"Authorization": f"Bearer {ACCESS}"}
    token_url = url + "/oauth/token"

    def httpx2_static() -> tuple[AsyncSend, Any]:
        import httpx2

        client = httpx2.AsyncClient(base_url=url, headers=header)
        return (lambda: client.get(PATH)), client.aclose

    def httpx2_tokenward() -> tuple[AsyncSend, Any]:
        import httpx2

        from tokenward.integrations.httpx import TokenAuth

        client = httpx2.AsyncClient(base_url=url, auth=TokenAuth(_manager(token_url)))
        return (lambda: client.get(PATH)), client.aclose

    def httpx_static() -> tuple[AsyncSend, Any]:
        import httpx

        client = httpx.AsyncClient(base_url=url, headers=header)
        return (lambda: client.get(PATH)), client.aclose

    def httpx_tokenward() -> tuple[AsyncSend, Any]:
        import httpx

        from tokenward.integrations.httpx import TokenAuth

        client = httpx.AsyncClient(base_url=url, auth=TokenAuth(_manager(token_url)))
        return (lambda: client.get(PATH)), client.aclose

    def httpx_authlib() -> tuple[AsyncSend, Any]:
        from authlib.integrations.httpx_client import AsyncOAuth2Client

        client = AsyncOAuth2Client(
            client_id=CLIENT_ID,
            client_secret=CLIENT_SECRET,
            token=_token_dict(),
            token_endpoint=token_url,
            leeway=LEEWAY,
            base_url=url,
        )
        return (lambda: client.get(PATH)), client.aclose

    def httpx_httpx_auth() -> tuple[AsyncSend, Any]:
        import httpx

        client = httpx.AsyncClient(base_url=url, auth=_httpx_auth(url))
        return (lambda: client.get(PATH)), client.aclose

    return {
        "httpx2 static header": httpx2_static,
        "httpx2 + tokenward": httpx2_tokenward,
        "httpx static header": httpx_static,
        "httpx + tokenward": httpx_tokenward,
        "httpx2 + Authlib": httpx_authlib,
        "httpx + httpx-auth": httpx_httpx_auth,
    }


BASELINE = {
    "httpx2": "httpx2 static header",
    "httpx": "httpx static header",
    "requests": "requests static header",
}


@dataclass
class Sample:
    seconds: float
    cpu: float
    requests: int


def _time_sync(send: SyncSend, n: int) -> Sample:
    gc.collect()
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(n):
        response = send()
        if response.status_code != 200:
            raise RuntimeError(f"hot path answer {response.status_code}")
    return Sample(time.perf_counter() - wall, time.process_time() - cpu, n)


async def _time_async(send: AsyncSend, n: int) -> Sample:
    gc.collect()
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(n):
        response = await send()
        if response.status_code != 200:
            raise RuntimeError(f"hot path answer {response.status_code}")
    return Sample(time.perf_counter() - wall, time.process_time() - cpu, n)


def _iqr(values: list[float]) -> list[float]:
    ordered = sorted(values)
    n = len(ordered)
    return [ordered[n // 4], ordered[(3 * n) // 4]] if n else []


def _order(names: list[str], rng: random.Random) -> list[str]:
    """A new random order each round, so no case always runs first or after the same one."""
    shuffled = names[:]
    rng.shuffle(shuffled)
    return shuffled


def _summarize(samples: dict[str, list[Sample]], mode: str) -> list[dict[str, Any]]:
    rows = []
    cpu_us = {name: median([s.cpu / s.requests * 1e6 for s in ss]) for name, ss in samples.items()}
    for name, ss in samples.items():
        library = name.split(" ")[0]
        base = BASELINE[library]
        paired = [
            (a.cpu / a.requests) / (b.cpu / b.requests)
            for a, b in zip(ss, samples[base], strict=True)
        ]
        rows.append(
            {
                "mode": mode,
                "case": name,
                "library": library,
                "requests_per_round": ss[0].requests,
                "rounds": len(ss),
                "requests_per_s": median([s.requests / s.seconds for s in ss]),
                "cpu_us_per_request": cpu_us[name],
                # The median of the per-round ratios: both cases ran back to back in each round.
                "cpu_ratio_vs_static": median(paired),
                "cpu_ratio_iqr": _iqr(paired),
                "cpu_ratio_vs_httpx2_static": cpu_us[name] / cpu_us["httpx2 static header"],
                "cpu_ratio_rounds": paired,
            }
        )
    return rows


def run(requests: int = 400, rounds: int = 25, warmup: int = 200) -> dict[str, Any]:
    """Both modes; `requests` per case per round, cases in a new random order each round."""
    rng = random.Random(7)
    with FastServer() as server:
        url = server.url
        sync_cases = _sync_cases(url)
        built = {name: build() for name, build in sync_cases.items()}
        for send, _ in built.values():
            _time_sync(send, warmup)
        sync_samples: dict[str, list[Sample]] = {name: [] for name in built}
        for _ in range(rounds):
            for name in _order(list(built), rng):
                sync_samples[name].append(_time_sync(built[name][0], requests))
        for _, close in built.values():
            close()

        async def async_side() -> dict[str, list[Sample]]:
            cases = {name: build() for name, build in _async_cases(url).items()}
            for send, _ in cases.values():
                await _time_async(send, warmup)
            samples: dict[str, list[Sample]] = {name: [] for name in cases}
            for _ in range(rounds):
                for name in _order(list(cases), rng):
                    samples[name].append(await _time_async(cases[name][0], requests))
            for _, aclose in cases.values():
                await aclose()
            return samples

        async_samples = asyncio.run(async_side())
    rows = _summarize(sync_samples, "sync") + _summarize(async_samples, "async")
    return {"requests_per_round": requests, "rounds": rounds, "rows": rows}


def profile(requests: int = 5000) -> dict[str, Any]:
    """cProfile of httpx2 + tokenward, sync and async: the share of the client's profiled time
    spent in tokenward's own functions (own time, `tottime`), and the top tokenward entries.
    Deterministic profiling inflates small Python functions, so the share is an upper bound.
    Also the Python function calls per request with tokenward and with the static header: a
    count, so unlike CPU time it does not depend on what else the machine is doing."""
    import cProfile
    import pstats

    def shares(profiler: cProfile.Profile) -> dict[str, Any]:
        stats = pstats.Stats(profiler)
        total, calls_total = 0.0, 0
        ours: list[tuple[float, float, int, str]] = []
        for (filename, line, function), entry in stats.stats.items():  # type: ignore[attr-defined]
            calls, tottime, cumtime = entry[1], entry[2], entry[3]
            total += tottime
            calls_total += calls
            if "/tokenward/" in filename and "/bench/" not in filename:
                where = filename.split("/tokenward/", 1)[1]
                ours.append((tottime, cumtime, calls, f"{where}:{line}({function})"))
        ours.sort(reverse=True)
        return {
            "requests": requests,
            "total_s": total,
            "calls_per_request": calls_total / requests,
            "tokenward_own_s": sum(entry[0] for entry in ours),
            "tokenward_share": sum(entry[0] for entry in ours) / total if total else 0.0,
            "top": [
                {"function": name, "own_us_per_request": own / requests * 1e6, "calls": calls}
                for own, _, calls, name in ours[:8]
            ],
        }

    def sync_profile(url: str, case: str) -> cProfile.Profile:
        send, close = _sync_cases(url)[case]()
        _time_sync(send, 200)
        profiler = cProfile.Profile()
        profiler.enable()
        _time_sync(send, requests)
        profiler.disable()
        close()
        return profiler

    async def async_profile(url: str, case: str) -> cProfile.Profile:
        asend, aclose = _async_cases(url)[case]()
        await _time_async(asend, 200)
        profiler = cProfile.Profile()
        profiler.enable()
        await _time_async(asend, requests)
        profiler.disable()
        await aclose()
        return profiler

    result: dict[str, Any] = {}
    ours, static = "httpx2 + tokenward", "httpx2 static header"
    with FastServer() as server:
        for mode in ("sync", "async"):
            if mode == "sync":
                mine, base = sync_profile(server.url, ours), sync_profile(server.url, static)
            else:
                mine = asyncio.run(async_profile(server.url, ours))
                base = asyncio.run(async_profile(server.url, static))
            result[mode] = shares(mine)
            baseline = shares(base)
            result[mode]["static_calls_per_request"] = baseline["calls_per_request"]
            result[mode]["calls_ratio"] = (
                result[mode]["calls_per_request"] / baseline["calls_per_request"]
            )
    return result
