"""Helpers for the broker tests: a broker served by real uvicorn on 127.0.0.1, a configuration
pointing at the emulator, and a recorder of every response and log line (for the secret scan)."""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
from pathlib import Path
from typing import Any

import httpx2
import uvicorn

from tokenward.broker.config import hash_key, new_key

CLIENT_SECRET_ENV = "TWB_CLIENT_SECRET"
API_KEY_ENV = "TWB_API_KEY"
ORIGIN = "https://app.example.com"


def listening_socket() -> socket.socket:
    """A socket bound to an ephemeral port of 127.0.0.1 (its address is known before the app
    that will serve on it is built)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    return sock


class BrokerServer:
    """An ASGI app served by uvicorn in a thread (lifespan on), on an ephemeral port."""

    def __init__(self, app: Any, sock: socket.socket | None = None) -> None:
        self.app = app
        sock = sock or listening_socket()
        self.sock = sock
        self.port = int(sock.getsockname()[1])
        config = uvicorn.Config(
            app, log_config=None, log_level="info", lifespan="on", loop="asyncio", http="h11"
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(
            target=self.server.run, kwargs={"sockets": [sock]}, daemon=True
        )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> BrokerServer:
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("broker did not start")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(10)
        self.sock.close()


def write_config(tmp: Path, emulator_url: str) -> tuple[Path, dict[str, str]]:
    """A tokenward.toml with credentials on the emulator and three broker clients; returns
    the path and each client's key."""
    keys = {name: new_key() for name in ("backend", "web", "slow", "batch")}
    h = {name: hash_key(key) for name, key in keys.items()}
    text = f"""
[store]
url = "sqlite://{tmp}/tokens.db"

[credentials.api]
grant = "refresh_token"
base_url = "{emulator_url}"
token_url = "{{base_url}}/oauth/token"
client_id = "test-client"
client_secret = "env:{CLIENT_SECRET_ENV}"

[credentials.other]
grant = "refresh_token"
base_url = "{emulator_url}"
token_url = "{{base_url}}/oauth/token"
client_id = "test-client"
client_secret = "env:{CLIENT_SECRET_ENV}"

[credentials.avatar]
preset = "heygen"
base_url = "{emulator_url}"
api_key = "env:{API_KEY_ENV}"

[broker.limits]
max_body_bytes = 4000000
replay_buffer_bytes = 65536
upstream_timeout = 1.0
session_idle_timeout = 1.0
reap_interval = 0.2

[broker.policies.browser]
credentials = ["api", "avatar"]
methods = ["GET"]
paths = ["/api/public/*"]
cors_origins = ["{ORIGIN}"]
max_sessions = 1

[broker.clients.backend]
key_sha256 = "{h["backend"]}"
credentials = ["api", "avatar"]
methods = ["*"]
paths = ["/api/*"]
raw_tokens = true
admin = true
max_sessions = 2
cors_origins = ["{ORIGIN}"]

[broker.clients.web]
key_sha256 = "{h["web"]}"
policy = "browser"

[broker.clients.batch]
key_sha256 = "{h["batch"]}"
credentials = ["api"]

[broker.clients.slow]
key_sha256 = "{h["slow"]}"
credentials = ["api"]
rate = 1
burst = 2
"""
    path = tmp / "tokenward.toml"
    path.write_text(text, encoding="utf-8")
    path.chmod(0o600)
    return path, keys


class Recorder(logging.Handler):
    """Every log record (all attributes, as a JSON formatter would show them) and every
    response the tests received (status, headers, body)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.setFormatter(logging.Formatter("%(levelname)s %(name)s %(message)s"))
        self.lines: list[str] = []
        self.responses: list[tuple[str, str]] = []  # (path, everything shown)
        self._lock = threading.Lock()

    def emit(self, record: logging.LogRecord) -> None:
        text = self.format(record) + " " + json.dumps(vars(record), default=repr)
        with self._lock:
            self.lines.append(text)

    def response(self, response: httpx2.Response) -> None:
        response.read()
        shown = f"{response.status_code} {list(response.headers.multi_items())} {response.text}"
        with self._lock:
            self.responses.append((response.request.url.path, shown))

    def raw(self, path: str, shown: str) -> None:
        with self._lock:
            self.responses.append((path, shown))

    def clear(self) -> None:
        with self._lock:
            self.lines.clear()
            self.responses.clear()


def raw_http(port: int, request: bytes) -> tuple[int, bytes]:
    """Send `request` bytes as they are (no client-side normalization) and read the answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(request)
        data = b""
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
            if b"\r\n\r\n" in data:
                head, _, body = data.partition(b"\r\n\r\n")
                length = next(
                    (
                        int(line.split(b":", 1)[1])
                        for line in head.split(b"\r\n")
                        if line.lower().startswith(b"content-length:")
                    ),
                    None,
                )
                if length is not None and len(body) >= length:
                    break
    status_line = data.split(b"\r\n", 1)[0]
    return int(status_line.split()[1]), data
