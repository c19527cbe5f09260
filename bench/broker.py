"""Broker: latency and throughput of `/v1/proxy/...` vs the upstream called directly vs a bare
pass-through proxy on the same stack (bench/passthrough.py), at several concurrencies.

Four processes: the upstream (bench/fastserver.py, raw asyncio, answers 200), the broker and the
pass-through (one uvicorn worker each, the same settings: asyncio loop, h11, access log off, no
Server header, no log handler), and the load generator: `wrk` (installed with apt-get when
missing and this runs as root), else bench/load.py (httpx2, slower: the results say which).
The broker's credential is a one-hour client-credentials token fetched once during the warm-up,
so no refresh happens while measuring: this measures the proxy path. Its client has a policy
allowing the path and a rate limit far above what one worker can serve.

Run as a script, `python bench/broker.py serve broker CONFIG` / `serve passthrough UPSTREAM`
starts one of the two proxies (the first stdout line is its port).
"""

from __future__ import annotations

import json
import math
import os
import random
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script (the proxies' processes)
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import BENCH_DIR, ROOT, FastServer, median

PATH = "/api/items"
CREDENTIAL = "bench"
SECRET_ENV = "TOKENWARD_BENCH_CLIENT_SECRET"
PROFILE_ENV = "TOKENWARD_BENCH_PROFILE"
TARGETS = ("direct", "pass-through", "broker")
#: The server settings both proxies run with (as `tokenward serve` would, minus the access log).
UVICORN: dict[str, Any] = {
    "loop": "asyncio",
    "http": "h11",
    "access_log": False,
    "log_level": "warning",
    "lifespan": "on",
    "proxy_headers": False,
    "server_header": False,
}


# -- the proxies' processes ------------------------------------------------------------------------
def _serve(kind: str, arg: str) -> None:
    import uvicorn

    app: Any
    if kind == "broker":
        from tokenward.broker import create_app

        app = create_app(arg)
    else:
        from bench.passthrough import create_app as passthrough_app

        app = passthrough_app(arg)
    if os.environ.get(PROFILE_ENV):
        app = _profiled(app, os.environ[PROFILE_ENV])
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    print(sock.getsockname()[1], flush=True)
    uvicorn.Server(uvicorn.Config(app, log_config=None, **UVICORN)).run(sockets=[sock])


def _profiled(app: Any, out: str) -> Any:
    """`app` with cProfile switched on by `GET /__profile__/on` and off (stats written to
    `out`, with the number of requests served meanwhile) by `GET /__profile__/off`."""
    import cProfile

    profile = cProfile.Profile()
    served = [0]

    async def wrapper(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["path"].startswith("/__profile__/"):
            if scope["path"].endswith("/on"):
                served[0] = 0
                profile.enable()
            else:
                profile.disable()
                profile.dump_stats(out)
                Path(out + ".requests").write_text(str(served[0]))
            await send({"type": "http.response.start", "status": 204, "headers": []})
            await send({"type": "http.response.body", "body": b""})
            return
        if scope["type"] == "http":
            served[0] += 1
        await app(scope, receive, send)

    return wrapper


class _Proxy:
    """A proxy in its own process (`prefix`: a command to run it under, e.g. valgrind)."""

    def __init__(
        self, kind: str, arg: str, env: dict[str, str], prefix: Sequence[str] = ()
    ) -> None:
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), *sys.path]), **env)
        self.proc = subprocess.Popen(
            [*prefix, sys.executable, str(BENCH_DIR / "broker.py"), "serve", kind, arg],
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the {kind} process exited")
        self.port = int(line)
        self.url = f"http://127.0.0.1:{self.port}"

    def cpu_seconds(self) -> float:
        """User + system CPU time of the process so far (Linux /proc; NaN elsewhere)."""
        try:
            fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
            return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        except (OSError, ValueError, IndexError):
            return math.nan

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def _config(directory: Path, upstream: str, key_hash: str) -> Path:
    path = directory / "tokenward.toml"
    path.write_text(
        f"""
[store]
url = "memory://"

[credentials.{CREDENTIAL}]
grant = "client_credentials"
base_url = "{upstream}"
token_url = "{{base_url}}/oauth/token"
client_id = "bench-app"
client_secret = "env:{SECRET_ENV}"

[broker.clients.bench]
key_sha256 = "{key_hash}"
credentials = ["{CREDENTIAL}"]
methods = ["GET"]
paths = ["/api/*"]
rate = 1000000000.0
burst = 1000000000
""",
        encoding="utf-8",
    )
    path.chmod(0o600)
    return path


def _wait_ready(url: str, headers: dict[str, str], timeout: float = 30.0) -> None:
    import httpx2

    deadline = time.monotonic() + timeout
    while True:
        try:
            if httpx2.get(url, headers=headers, timeout=5).status_code == 200:
                return
        except httpx2.HTTPError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"{url} did not answer 200")
        time.sleep(0.1)


# -- the load generator ----------------------------------------------------------------------------
def ensure_wrk(install: bool = True) -> str | None:
    """The path of `wrk`; installed from Debian (apt-get) when missing and allowed."""
    if os.environ.get("TOKENWARD_BENCH_LOAD") == "python":  # force the httpx2 fallback
        return None
    found = shutil.which("wrk")
    if found or not install:
        return found
    if shutil.which("apt-get") and hasattr(os, "geteuid") and os.geteuid() == 0:
        print("  installing wrk (apt-get)", flush=True)
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        subprocess.run(["apt-get", "update", "-qq"], capture_output=True, env=env, check=False)
        subprocess.run(
            ["apt-get", "install", "-y", "-qq", "wrk"], capture_output=True, env=env, check=False
        )
    return shutil.which("wrk")


_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1000.0, "m": 60_000.0}


def _ms(text: str) -> float:
    number, unit = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text.strip()).groups()  # type: ignore[union-attr]
    return float(number) * _UNITS[unit]


def parse_wrk(output: str) -> dict[str, Any]:
    """requests, errors, seconds, requests_per_s, p50_ms, p99_ms from `wrk --latency` output."""
    done = re.search(r"(\d+) requests in ([\d.]+)(us|ms|s|m)", output)
    if done is None:
        raise RuntimeError(f"unexpected wrk output:\n{output}")
    requests = int(done.group(1))
    seconds = _ms(done.group(2) + done.group(3)) / 1000
    errors = 0
    if non_2xx := re.search(r"Non-2xx or 3xx responses: (\d+)", output):
        errors += int(non_2xx.group(1))
    if sock := re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output
    ):
        errors += sum(int(n) for n in sock.groups())
    percentiles = dict(re.findall(r"^\s+(50|99)%\s+(\S+)$", output, re.MULTILINE))
    return {
        "requests": requests,
        "errors": errors,
        "seconds": seconds,
        "requests_per_s": requests / seconds if seconds else math.nan,
        "p50_ms": _ms(percentiles["50"]) if "50" in percentiles else math.nan,
        "p99_ms": _ms(percentiles["99"]) if "99" in percentiles else math.nan,
    }


# On a machine with 2+ cores, the proxy under test gets the last core to itself and the load
# generator and the upstream share the others: four busy processes on two unpinned cores made
# per-round throughput ratios swing by +-30 %.
_CPUS = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
PROXY_CPUS = set(_CPUS[-1:]) if len(_CPUS) >= 2 else set()
LOAD_CPUS = set(_CPUS[:-1]) if len(_CPUS) >= 2 else set()


def _pin(pid: int, cpus: set[int]) -> None:
    if cpus:
        os.sched_setaffinity(pid, cpus)


def _load(
    wrk: str | None, url: str, connections: int, seconds: float, headers: dict[str, str]
) -> dict[str, Any]:
    if wrk:
        command = [wrk, "-t1", f"-c{connections}", f"-d{max(1, round(seconds))}s", "--latency"]
        command += ["--timeout", "10s"]
        for name, value in headers.items():
            command += ["-H", f"{name}: {value}"]
        done = subprocess.run(
            [*command, url],
            capture_output=True,
            text=True,
            timeout=seconds + 30,
            check=True,
            preexec_fn=lambda: _pin(0, LOAD_CPUS),
        )
        return parse_wrk(done.stdout)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), *sys.path]))
    done = subprocess.run(
        [
            sys.executable,
            str(BENCH_DIR / "load.py"),
            url,
            str(connections),
            str(seconds),
            *(f"{k}: {v}" for k, v in headers.items()),
        ],
        capture_output=True,
        text=True,
        timeout=seconds + 60,
        env=env,
        check=True,
    )
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


# -- where the broker's time goes ---------------------------------------------------------------
def _function(key: tuple[str, int, str]) -> str:
    filename, line, name = key
    if not line:  # a builtin: "<method 'get' of 'dict' objects>"
        return re.sub(r" at 0x[0-9a-f]+", "", name)
    filename = re.sub(r"^.*(site-packages/|/src/|/lib/python3\.\d+/)", "", filename)
    return f"{filename}:{line}({name})"


def _profile(wrk: str | None, key: str, headers: dict[str, str], seconds: float) -> dict[str, Any]:
    """cProfile of both proxies under one connection of load (separate processes from the
    measured ones: profiling slows them down): Python function calls per request, and the
    functions whose own time per request grows most from the pass-through to the broker."""
    import pstats

    import httpx2

    from tokenward.broker.config import hash_key

    per_target: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory() as tmp, FastServer() as upstream:
        config = _config(Path(tmp), upstream.url, hash_key(key))
        for target, kind, arg, path in (
            ("pass-through", "passthrough", upstream.url, PATH),
            ("broker", "broker", str(config), f"/v1/proxy/{CREDENTIAL}{PATH}"),
        ):
            out = str(Path(tmp) / f"{kind}.prof")
            proxy = _Proxy(kind, arg, {SECRET_ENV: "bench-secret", PROFILE_ENV: out})
            try:
                _wait_ready(proxy.url + path, headers)
                _load(wrk, proxy.url + path, 1, 1, headers)  # warm up, unprofiled
                httpx2.get(proxy.url + "/__profile__/on")
                _load(wrk, proxy.url + path, 1, seconds, headers)
                httpx2.get(proxy.url + "/__profile__/off")
            finally:
                proxy.close()
            stats = pstats.Stats(out)
            requests = int(Path(out + ".requests").read_text())
            own: dict[str, float] = {}
            calls: dict[str, float] = {}
            for func, (_cc, count, tottime, _ct, _callers) in stats.stats.items():  # type: ignore
                name = _function(func)
                own[name] = own.get(name, 0.0) + tottime / requests * 1e6
                calls[name] = calls.get(name, 0.0) + count / requests
            per_target[target] = {
                "requests": requests,
                "calls_per_request": stats.total_calls / requests,  # type: ignore
                "own_us": own,
                "calls": calls,
                "tokenward_us": sum(v for k, v in own.items() if k.startswith("tokenward/")),
                "total_us": sum(own.values()),
            }
    ours, bare = per_target["broker"], per_target["pass-through"]
    names = set(ours["own_us"]) | set(bare["own_us"])
    # Time spent waiting in the kernel (epoll, socket calls) is load, not the broker's work.
    waits = ("epoll", "_socket.socket", "select.")
    extra = sorted(
        (
            (n, ours["own_us"].get(n, 0.0) - bare["own_us"].get(n, 0.0))
            for n in names
            if not any(w in n for w in waits)
        ),
        key=lambda item: -item[1],
    )
    more_calls = sorted(  # Python functions only: builtins say little about where
        (
            (n, ours["calls"].get(n, 0.0) - bare["calls"].get(n, 0.0))
            for n in names
            if not n.startswith("<")
        ),
        key=lambda item: -item[1],
    )
    return {
        "seconds": seconds,
        "requests": {t: v["requests"] for t, v in per_target.items()},
        "calls_per_request": {t: v["calls_per_request"] for t, v in per_target.items()},
        "profiled_us_per_request": {t: v["total_us"] for t, v in per_target.items()},
        "tokenward_us_per_request": ours["tokenward_us"],
        "top_extra": [{"function": n, "extra_us_per_request": d} for n, d in extra[:10]],
        "top_extra_calls": [
            {"function": n, "extra_calls_per_request": d} for n, d in more_calls[:10]
        ],
    }


def _row(target: str, connections: int, points: list[dict[str, Any]]) -> dict[str, Any]:
    """One target at one concurrency: medians over the rounds (requests and errors summed)."""
    return {
        "target": target,
        "connections": connections,
        "requests": sum(p["requests"] for p in points),
        "errors": sum(p["errors"] for p in points),
        "requests_per_s": median([p["requests_per_s"] for p in points]),
        "p50_ms": median([p["p50_ms"] for p in points]),
        "p99_ms": median([p["p99_ms"] for p in points]),
        "proxy_cpu_us_per_request": median([p["cpu_us"] for p in points])
        if target != "direct"
        else None,
        "rounds": points,
    }


# -- the benchmark ---------------------------------------------------------------------------------
def run(
    connections: Iterable[int] = (1, 50, 200),
    duration: float = 2.0,
    rounds: int = 4,
    warmup: float = 1.0,
    install: bool = True,
    profile_seconds: float = 3.0,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    from tokenward.broker.config import hash_key, new_key

    say = progress or (lambda _text: None)
    wrk = ensure_wrk(install)
    key = new_key()
    headers = {"Authorization": f"Bearer {key}"}
    rows: list[dict[str, Any]] = []
    ratios: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp, FastServer() as upstream:
        config = _config(Path(tmp), upstream.url, hash_key(key))
        secret = {SECRET_ENV: "bench-secret"}
        passthrough = _Proxy("passthrough", upstream.url, secret)
        broker = _Proxy("broker", str(config), secret)
        _pin(upstream.pid, LOAD_CPUS)
        for proxy in (passthrough, broker):
            _pin(proxy.proc.pid, PROXY_CPUS)
        try:
            urls = {
                "direct": upstream.url + PATH,
                "pass-through": passthrough.url + PATH,
                "broker": f"{broker.url}/v1/proxy/{CREDENTIAL}{PATH}",
            }
            processes = {"pass-through": passthrough, "broker": broker}
            for url in urls.values():
                _wait_ready(url, headers)
            for count in connections:
                for target in TARGETS:
                    if warmup > 0:
                        _load(wrk, urls[target], count, warmup, headers)
                measured: dict[str, list[dict[str, Any]]] = {t: [] for t in TARGETS}
                for _ in range(rounds):
                    # Every round runs each target once, in a new order: a drift in machine
                    # speed hits all three alike, and the ratio is taken within each round.
                    for target in random.sample(TARGETS, len(TARGETS)):
                        proc = processes.get(target)
                        cpu_before = proc.cpu_seconds() if proc else math.nan
                        point = _load(wrk, urls[target], count, duration, headers)
                        cpu = (proc.cpu_seconds() - cpu_before) if proc else math.nan
                        point["cpu_us"] = cpu / point["requests"] * 1e6 if point["requests"] else 0
                        measured[target].append(point)
                for target in TARGETS:
                    rows.append(_row(target, count, measured[target]))
                    row = rows[-1]
                    say(
                        f"  broker {target:12} c={count:<4} {row['requests_per_s']:8.0f} req/s "
                        f"p50 {row['p50_ms']:7.2f} ms  p99 {row['p99_ms']:7.2f} ms  "
                        f"errors {row['errors']}"
                    )
                ratio = [
                    b["requests_per_s"] / p["requests_per_s"]
                    for b, p in zip(measured["broker"], measured["pass-through"], strict=True)
                ]
                cpu_ratio = [
                    b["cpu_us"] / p["cpu_us"]
                    for b, p in zip(measured["broker"], measured["pass-through"], strict=True)
                ]
                ratios.append(
                    {
                        "connections": count,
                        "throughput_ratio": median(ratio),
                        "throughput_ratio_range": [min(ratio), max(ratio)],
                        "cpu_ratio": median(cpu_ratio),
                    }
                )
                say(f"  broker / pass-through c={count}: x{median(ratio):.3f} requests/s")
        finally:
            broker.close()
            passthrough.close()
    profile = _profile(wrk, key, headers, profile_seconds) if profile_seconds > 0 else None
    return {
        "generator": "wrk" if wrk else "python (bench/load.py)",
        "duration": duration,
        "rounds": rounds,
        "warmup": warmup,
        "uvicorn": UVICORN,
        "rows": rows,
        "ratios": ratios,
        "profile": profile,
    }


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "serve":
        _serve(sys.argv[2], sys.argv[3])
    else:
        print(json.dumps(run(progress=print), indent=1))
