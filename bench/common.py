"""Shared pieces of the benchmark harness: machine facts, the two server processes, RSS."""

from __future__ import annotations

import json
import os
import platform
import resource
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
ROOT = BENCH_DIR.parent


def machine() -> dict[str, Any]:
    """CPU model, core count, Python version, platform and the date of the run."""
    model = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "load_average": [round(value, 2) for value in os.getloadavg()],
    }


def rss_mb() -> float:
    """The current resident set size of this process, in MB (Linux /proc; else the peak)."""
    try:
        fields = Path("/proc/self/statm").read_text().split()
        return int(fields[1]) * os.sysconf("SC_PAGE_SIZE") / 1e6
    except (OSError, ValueError, IndexError):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e3


def _spawn(args: list[str]) -> subprocess.Popen[str]:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), *sys.path]))
    return subprocess.Popen(
        [sys.executable, *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )


class FastServer:
    """bench/fastserver.py in a child process: 200 for everything, as fast as possible."""

    def __init__(self) -> None:
        self._proc = _spawn([str(BENCH_DIR / "fastserver.py")])
        assert self._proc.stdout is not None
        self.port = int(self._proc.stdout.readline())
        self.pid = self._proc.pid
        self.url = f"http://127.0.0.1:{self.port}"
        self.token_url = self.url + "/oauth/token"

    def close(self) -> None:
        assert self._proc.stdin is not None
        self._proc.stdin.close()
        try:
            self._proc.wait(5)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()

    def __enter__(self) -> FastServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass
class ProviderInfo:
    """What a client needs to reach the emulator (picklable, for worker processes)."""

    url: str
    client_id: str
    client_secret: str

    @property
    def token_url(self) -> str:
        return self.url + "/oauth/token"

    @property
    def api_url(self) -> str:
        return self.url + "/api"


class ProviderProcess:
    """bench/provider.py (the tokenward emulator) in a child process."""

    def __init__(self, **settings: Any) -> None:
        self._proc = _spawn([str(BENCH_DIR / "provider.py"), json.dumps(settings)])
        hello = self._read()
        self.info = ProviderInfo(hello["url"], hello["client_id"], hello["client_secret"])

    def _read(self) -> Any:
        assert self._proc.stdout is not None
        line = self._proc.stdout.readline()
        if not line:
            raise RuntimeError("the emulator process exited")
        return json.loads(line)

    def _ask(self, command: str) -> Any:
        assert self._proc.stdin is not None
        self._proc.stdin.write(command + "\n")
        self._proc.stdin.flush()
        return self._read()

    def login(self) -> str:
        """A new refresh token (a new token family), as a user's consent would give."""
        token: str = self._ask("login")
        return token

    def counters(self) -> dict[str, int]:
        counters: dict[str, int] = self._ask("counters")
        return counters

    def accepts(self, refresh_token: str | None) -> bool:
        return bool(refresh_token) and bool(self._ask(f"valid {refresh_token}"))

    def close(self) -> None:
        assert self._proc.stdin is not None
        try:
            self._proc.stdin.write("quit\n")
            self._proc.stdin.close()
        except (BrokenPipeError, OSError):
            pass
        try:
            self._proc.wait(10)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()

    def __enter__(self) -> ProviderProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def median(values: list[float]) -> float:
    ordered = sorted(values)
    n = len(ordered)
    if n == 0:
        return float("nan")
    mid = n // 2
    return ordered[mid] if n % 2 else (ordered[mid - 1] + ordered[mid]) / 2
