"""Hostile input against a real `tokenward serve` process (issue 11).

One `tokenward serve` subprocess in front of an echo upstream (a plain `http.server` that
records every request it receives, byte for byte) and the provider emulator (for the tokens).
Each test sends the attacker's exact request over a raw socket or httpx2 and checks the status,
the body's shape (`{"error", "reason"}`), what reached the upstream, and the broker's memory.
The requests that already held before the issue are kept here too, so that they keep holding.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import quote, quote_plus

import httpx2
import pytest
from broker_support import API_KEY_ENV, CLIENT_SECRET_ENV
from servers import free_port, tokenward_command

from tokenward.broker.config import hash_key, new_key
from tokenward.config import load_config
from tokenward.testing import TEST_CLIENT_ID, TEST_CLIENT_SECRET
from tokenward.testing.emulator import Emulator
from tokenward.testing.server import EmulatorServer
from tokenward.token import fingerprint

pytestmark = [
    pytest.mark.timeout(120),
    pytest.mark.e2e,
]  # e2e: the broker as a process, the emulator and an upstream

ORIGIN = "https://app.example.com"
#: The issue's attack: a 200 MB body announced to an endpoint that parses JSON.
HUGE = 200_000_000


# -- the echo upstream -----------------------------------------------------------------------------
@dataclass
class Seen:
    method: str
    path: str
    headers: list[tuple[str, str]]
    body: bytes

    def header(self, name: str) -> list[str]:
        return [v for k, v in self.headers if k.lower() == name.lower()]


@dataclass
class Echo:
    """Records each request; answers 200 with a small JSON summary."""

    seen: list[Seen] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def last(self) -> Seen:
        with self.lock:
            return self.seen[-1]

    def count(self) -> int:
        with self.lock:
            return len(self.seen)


def _echo_handler(echo: Echo) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _body(self) -> bytes:
            if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                parts: list[bytes] = []
                while True:
                    size = int(self.rfile.readline().split(b";")[0], 16)
                    if size == 0:
                        self.rfile.readline()
                        return b"".join(parts)
                    parts.append(self.rfile.read(size))
                    self.rfile.readline()
            return self.rfile.read(int(self.headers.get("Content-Length") or 0))

        def _any(self) -> None:
            body = self._body()
            with echo.lock:
                echo.seen.append(Seen(self.command, self.path, list(self.headers.items()), body))
            answer = json.dumps({"method": self.command, "path": self.path}).encode()
            if self.path.startswith("/redirect"):
                self.send_response(302)
                self.send_header("Location", "http://evil.example.com/steal")
            else:
                self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(answer)))
            self.end_headers()
            self.wfile.write(answer)

        do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = do_OPTIONS = _any

        def log_message(self, format: str, *args: Any) -> None:
            pass

    return Handler


# -- the broker process ----------------------------------------------------------------------------
@dataclass
class Env:
    url: str
    port: int
    key: str
    narrow_key: str
    echo: Echo
    emulator: Emulator
    proc: subprocess.Popen[bytes]
    log: Path
    #: Every secret the broker holds or is shown (scanned for in its answers and its log).
    secrets: set[str]

    def rss(self) -> int:
        """The broker process's resident memory, in bytes."""
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise AssertionError("no VmRSS")

    def http(self, key: str | None = None) -> httpx2.Client:
        headers = {"Authorization": f"Bearer {key or self.key}"}
        return httpx2.Client(base_url=self.url, headers=headers, timeout=10)


def _config(tmp: Path, emulator_url: str, echo_url: str, key: str, narrow: str) -> Path:
    text = f"""
[store]
url = "sqlite://{tmp}/tokens.db"

[credentials.echo]
grant = "refresh_token"
base_url = "{echo_url}"
token_url = "{emulator_url}/oauth/token"
client_id = "{TEST_CLIENT_ID}"
client_secret = "env:{CLIENT_SECRET_ENV}"

[credentials.gone]
grant = "refresh_token"
base_url = "{echo_url}"
token_url = "{emulator_url}/oauth/token"
client_id = "{TEST_CLIENT_ID}"
client_secret = "env:{CLIENT_SECRET_ENV}"
client_auth = "body"

[credentials.avatar]
preset = "heygen"
base_url = "{emulator_url}"
api_key = "env:{API_KEY_ENV}"

[credentials.broken]
preset = "heygen"
base_url = "{emulator_url}"
api_key = "file:{tmp}/no-such-key"

[broker.limits]
max_body_bytes = 1000000
auth_failure_burst = 5
auth_failure_rate = 0.5

[broker.clients.wide]
key_sha256 = "{hash_key(key)}"
credentials = ["*"]
methods = ["*"]
paths = ["/*"]
raw_tokens = true
max_sessions = 5
cors_origins = ["{ORIGIN}"]
rate = 100000
burst = 100000

[broker.clients.narrow]
key_sha256 = "{hash_key(narrow)}"
credentials = ["echo"]
methods = ["GET", "POST"]
paths = ["/items/*", "/items"]
rate = 100000
burst = 100000
"""
    path = tmp / "tokenward.toml"
    path.write_text(text, encoding="utf-8")
    path.chmod(0o600)
    return path


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    tmp = tmp_path_factory.mktemp("hostile")
    # A careless provider: its refusals repeat the request (form, Authorization, API key).
    emulator = Emulator(echo_secrets=True)
    emulator.add_client(TEST_CLIENT_ID, TEST_CLIENT_SECRET)
    revoked = emulator.issue_refresh_token(TEST_CLIENT_ID)
    emulator.revoke(revoked)
    wrong_key = "ak-wrong-" + new_key()[4:]
    emu_server = EmulatorServer(emulator).start()
    echo = Echo()
    upstream = ThreadingHTTPServer(("127.0.0.1", 0), _echo_handler(echo))
    threading.Thread(target=upstream.serve_forever, daemon=True).start()
    echo_url = f"http://127.0.0.1:{upstream.server_address[1]}"
    key, narrow = new_key(), new_key()
    config_path = _config(tmp, emu_server.url, echo_url, key, narrow)
    config = load_config(config_path)
    try:
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv(CLIENT_SECRET_ENV, TEST_CLIENT_SECRET)
            seeds = {"echo": emulator.issue_refresh_token(TEST_CLIENT_ID), "gone": revoked}
            for name, refresh_token in seeds.items():
                cc = config.credentials[name]
                manager = cc.manager(config.store_for(cc))
                manager.seed(refresh_token=refresh_token)
                manager.close()
    finally:
        config.close()
    port = free_port()
    log = tmp / "broker.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [*tokenward_command(), "serve", "--config", str(config_path), "--port", str(port)],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={**os.environ, CLIENT_SECRET_ENV: TEST_CLIENT_SECRET, API_KEY_ENV: wrong_key},
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            if proc.poll() is not None:
                pytest.fail(f"the broker exited ({proc.returncode}):\n{log.read_text()[-3000:]}")
            try:
                if httpx2.get(f"{url}/readyz", timeout=1).status_code == 200:
                    break
            except httpx2.HTTPError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"the broker did not start:\n{log.read_text()[-3000:]}")
            time.sleep(0.05)
        secrets = {TEST_CLIENT_SECRET, wrong_key, revoked, key, narrow}
        yield Env(url, port, key, narrow, echo, emulator, proc, log, secrets)
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        upstream.shutdown()
        upstream.server_close()
        emu_server.stop()


# -- raw HTTP --------------------------------------------------------------------------------------
@dataclass
class Raw:
    status: int
    headers: dict[str, str]
    body: bytes

    def error(self) -> dict[str, Any]:
        """The broker's error shape: exactly `error` and `reason`, both strings."""
        payload = json.loads(self.body)
        assert set(payload) == {"error", "reason"}, payload
        assert isinstance(payload["error"], str) and isinstance(payload["reason"], str)
        return dict(payload)


def _read_answer(sock: socket.socket) -> Raw:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.strip().lower(): v.strip() for k, _, v in (x.partition(":") for x in lines[1:])}
    length = int(headers.get("content-length", "0"))
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    return Raw(status, headers, body)


def _connect(env: Env, source: str) -> socket.socket:
    """A connection to the broker from `source` (a loopback address of 127/8): tests that
    spend an address's failed-authentication budget use addresses of their own."""
    return socket.create_connection(("127.0.0.1", env.port), timeout=10, source_address=(source, 0))


def raw(env: Env, request: bytes, body: bytes = b"", source: str = "127.0.0.1") -> Raw:
    """Send `request` (head and body) as it is, and read the answer."""
    with _connect(env, source) as sock:
        sock.sendall(request + body)
        return _read_answer(sock)


def flood(env: Env, head: bytes, total: int, source: str) -> Raw:
    """Send `head` announcing a `total`-byte body, then stream the body until the broker
    answers or hangs up. The answer must come before the body is through."""
    chunk = b"x" * (1 << 20)
    with _connect(env, source) as sock:
        sock.sendall(head)
        sent = 0
        sock.setblocking(False)
        answer = b""
        while sent < total:
            try:
                answer += sock.recv(65536)
                if b"\r\n\r\n" in answer:
                    break
            except BlockingIOError:
                pass
            try:
                sent += sock.send(chunk)
            except BlockingIOError:
                time.sleep(0.001)  # the broker reads no more: wait for its answer
            except (BrokenPipeError, ConnectionResetError):
                break
        assert sent < total, "the broker read the whole body before answering"
        sock.setblocking(True)
        rest = _read_answer_from(sock, answer)
        return rest


def _read_answer_from(sock: socket.socket, start: bytes) -> Raw:
    class Prefixed:
        def __init__(self) -> None:
            self.pending = start

        def recv(self, n: int) -> bytes:
            if self.pending:
                out, self.pending = self.pending, b""
                return out
            try:
                return sock.recv(n)
            except ConnectionResetError:
                return b""

    return _read_answer(Prefixed())  # type: ignore[arg-type]


def _head(method: str, path: str, *headers: str) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1", *headers, "", ""]
    return "\r\n".join(lines).encode("latin-1")


# -- 1. unauthenticated memory exhaustion ----------------------------------------------------------
def test_huge_bodies_are_refused_before_they_are_read(env: Env) -> None:
    """Ten 200 MB bodies (no key, a wrong key, a valid key over the cap): each refused at once,
    and the broker's RSS grows by less than 10 MB."""
    before = env.rss()
    statuses = []
    for n in range(10):
        auth = [] if n % 3 == 0 else [f"Authorization: Bearer {env.key if n % 3 == 2 else 'x'}"]
        head = _head(
            "POST",
            "/v1/sessions",
            *auth,
            "Content-Type: application/json",
            f"Content-Length: {HUGE}",
        )
        answer = flood(env, head, HUGE, "127.0.0.2")
        answer.error()
        statuses.append(answer.status)
    grown = env.rss() - before
    assert set(statuses) <= {401, 413, 429}, statuses
    assert 413 in statuses  # the valid key: refused by size, not read
    assert grown < 10 * 1024 * 1024, f"RSS grew by {grown / 1e6:.1f} MB"


def test_a_chunked_body_over_the_cap_is_cut_off(env: Env) -> None:
    """No Content-Length to check up front: the stream is counted, 413 past the cap."""
    head = _head(
        "POST",
        "/v1/sessions",
        f"Authorization: Bearer {env.key}",
        "Content-Type: application/json",
        "Transfer-Encoding: chunked",
    )
    chunk = b"x" * 65536
    body = (f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n") * 4 + b"0\r\n\r\n"
    answer = raw(env, head, body)
    assert answer.status == 413 and answer.error()["error"] == "body_too_large"


def test_the_proxy_takes_bodies_up_to_its_own_cap(env: Env) -> None:
    """The proxy's cap is max_body_bytes (1 MB here), not the 16 KiB of other routes; above
    it, 413 before the body is read."""
    with env.http() as http:
        answer = http.post("/v1/proxy/echo/items", content=b"y" * 100_000)
    assert answer.status_code == 200 and len(env.echo.last().body) == 100_000
    head = _head(
        "POST",
        "/v1/proxy/echo/items",
        f"Authorization: Bearer {env.key}",
        f"Content-Length: {HUGE}",
    )
    refused = flood(env, head, HUGE, "127.0.0.1")
    assert refused.status == 413 and refused.error()["error"] == "body_too_large"


# -- 2. framing ------------------------------------------------------------------------------------
def test_transfer_encoding_with_content_length_is_refused(env: Env) -> None:
    before = env.echo.count()
    head = _head(
        "POST",
        "/v1/proxy/echo/items",
        f"Authorization: Bearer {env.key}",
        "Content-Length: 4",
        "Transfer-Encoding: chunked",
    )
    answer = raw(env, head, b"a\r\n0123456789\r\n0\r\n\r\n")
    assert answer.status == 400, answer
    assert answer.error()["error"] == "bad_request"
    assert env.echo.count() == before  # nothing reached the upstream


def test_a_chunked_proxy_body_reaches_the_upstream_with_its_own_framing(env: Env) -> None:
    head = _head(
        "POST",
        "/v1/proxy/echo/items",
        f"Authorization: Bearer {env.key}",
        "Transfer-Encoding: chunked",
    )
    answer = raw(env, head, b"a\r\n0123456789\r\n0\r\n\r\n")
    assert answer.status == 200, answer
    seen = env.echo.last()
    assert seen.body == b"0123456789"
    assert seen.header("content-length") in ([], ["10"])


# -- 3. paths and methods --------------------------------------------------------------------------
@pytest.mark.parametrize(
    "path",
    [
        "/v1/proxy/echo/items/..;/admin",
        "/v1/proxy/echo/items/..;x=1/admin",
        "/v1/proxy/echo/items/.;/admin",
        "/v1/proxy/echo/items/..%3b/admin",
        "/v1/proxy/echo/items/%c0%ae%c0%ae/admin",
        "/v1/proxy/echo/items/%c0%afadmin",
        "/v1/proxy/echo/items/%e0%80%ae%e0%80%ae/admin",
        # these held before the issue; they must keep holding
        "/v1/proxy/echo/items/../admin",
        "/v1/proxy/echo/items/%2e%2e/admin",
        "/v1/proxy/echo/items/%252e%252e/admin",
        "/v1/proxy/echo/items/..%5cadmin",
        "/v1/proxy/echo/items/%00",
        "/v1/proxy/echo/items%0d%0aX-Injected:%20yes",
        "/v1/proxy/echo//evil.example.com/x",
        "/v1/proxy/echo/http://evil.example.com/x",
    ],
)
def test_path_tricks_are_refused(env: Env, path: str) -> None:
    before = env.echo.count()
    answer = raw(env, _head("GET", path, f"Authorization: Bearer {env.narrow_key}"))
    assert answer.status in (400, 404), (path, answer)
    assert answer.error()["error"] in {"unsafe_path", "not_found", "bad_request", "bad_path"}
    assert env.echo.count() == before, f"{path} reached the upstream"


def test_two_authorization_headers_are_refused(env: Env) -> None:
    head = _head(
        "GET",
        "/v1/proxy/echo/items",
        f"Authorization: Bearer {env.key}",
        f"Authorization: Bearer {env.narrow_key}",
    )
    answer = raw(env, head, source="127.0.0.4")
    assert answer.status == 400 and answer.error()["error"] == "bad_request"


def test_oversized_headers_never_reach_the_upstream(env: Env) -> None:
    before = env.echo.count()
    head = _head(
        "GET", "/v1/proxy/echo/items", f"Authorization: Bearer {env.key}", "X-Big: " + "a" * 200_000
    )
    with _connect(env, "127.0.0.1") as sock:
        try:
            sock.sendall(head)
            answer: Raw | None = _read_answer(sock)
        except (ConnectionResetError, BrokenPipeError, IndexError, ValueError):
            answer = None  # the connection was dropped: refused too
    assert answer is None or answer.status in (400, 413, 431), answer
    assert env.echo.count() == before


def test_redirects_are_passed_back_not_followed(env: Env) -> None:
    before = env.echo.count()
    with env.http() as http:
        answer = http.get("/v1/proxy/echo/redirect")
    assert answer.status_code == 302
    assert answer.headers["location"] == "http://evil.example.com/steal"
    assert env.echo.count() == before + 1  # one request upstream, none to the new location


def test_method_override_headers_are_stripped(env: Env) -> None:
    headers = {
        "X-HTTP-Method-Override": "DELETE",
        "X-Method-Override": "DELETE",
        "X-HTTP-Method": "DELETE",
        "X-Original-URL": "/admin",
    }
    with env.http(env.narrow_key) as http:
        answer = http.post("/v1/proxy/echo/items", headers=headers, content=b"{}")
    assert answer.status_code == 200
    seen = env.echo.last()
    assert seen.method == "POST"
    assert not [k for k, _ in seen.headers if k.lower() in {h.lower() for h in headers}]


@pytest.mark.parametrize("query", ["_method=DELETE", "a=1&_METHOD=put", "%5fmethod=DELETE"])
def test_a_method_override_parameter_is_refused(env: Env, query: str) -> None:
    before = env.echo.count()
    with env.http(env.narrow_key) as http:
        answer = http.get(f"/v1/proxy/echo/items?{query}")
    assert answer.status_code == 400
    assert answer.json()["error"] == "method_override"
    assert env.echo.count() == before


def test_the_clients_policy_holds_for_methods(env: Env) -> None:
    with env.http(env.narrow_key) as http:
        answer = http.delete("/v1/proxy/echo/items")
    assert answer.status_code == 403 and answer.json()["error"] == "forbidden"


# -- 4. forwarding headers -------------------------------------------------------------------------
def test_client_forwarding_and_credential_headers_never_reach_the_upstream(env: Env) -> None:
    sent = {
        "X-Forwarded-For": "10.0.0.1",
        "X-Forwarded-Host": "admin.internal",
        "X-Forwarded-Proto": "https",
        "X-Forwarded-Port": "443",
        "X-Real-IP": "10.0.0.1",
        "Forwarded": "for=10.0.0.1;host=admin.internal",
        "True-Client-IP": "10.0.0.1",
        "Cookie": "session=abc",
        "Proxy-Authorization": "Basic eDp5",
    }
    with env.http() as http:
        answer = http.get("/v1/proxy/echo/items", headers=sent)
    assert answer.status_code == 200
    seen = env.echo.last()
    names = {k.lower() for k, _ in seen.headers}
    assert not names & {k.lower() for k in sent}, names
    (authorization,) = seen.header("authorization")
    assert env.key not in authorization  # the client's key is replaced by the token


# -- 5. failed authentication, origins ------------------------------------------------------------
def _metric(env: Env, reason: str) -> float:
    text = httpx2.get(f"{env.url}/metrics", timeout=10).text
    for line in text.splitlines():
        if line.startswith(f'tokenward_auth_failures_total{{reason="{reason}"}}'):
            return float(line.split()[-1])
    return 0.0


def test_failed_authentication_is_rate_limited(env: Env) -> None:
    """A burst of wrong keys: the first few get 401, then 429 with Retry-After before any key
    is looked at, counted in tokenward_auth_failures_total."""
    throttled_before = _metric(env, "throttled")
    statuses = []
    attacker = httpx2.HTTPTransport(local_address="127.0.0.3")
    with httpx2.Client(base_url=env.url, timeout=10, transport=attacker) as http:
        for n in range(30):
            answer = http.get("/v1/credentials", headers={"Authorization": f"Bearer twk_no{n}"})
            statuses.append(answer.status_code)
            assert set(answer.json()) == {"error", "reason"}
            if answer.status_code == 429:
                assert int(answer.headers["retry-after"]) >= 1
                assert answer.json()["error"] == "auth_throttled"
        # While throttled, even the right key is refused: a guess learns nothing.
        right = http.get("/v1/credentials", headers={"Authorization": f"Bearer {env.key}"})
    assert statuses[:5] == [401] * 5
    assert statuses.count(429) >= 20, statuses
    assert right.status_code == 429
    with env.http() as http:  # another address is not affected
        assert http.get("/v1/credentials").status_code == 200
    assert _metric(env, "throttled") - throttled_before >= 20
    assert _metric(env, "invalid") >= 5
    # The budget refills (0.5/s here): the right key works again once it has.
    deadline = time.monotonic() + 20
    headers = {"Authorization": f"Bearer {env.key}"}
    attacker = httpx2.HTTPTransport(local_address="127.0.0.3")
    with httpx2.Client(base_url=env.url, headers=headers, timeout=10, transport=attacker) as http:
        while (status := http.get("/v1/credentials").status_code) == 429:
            assert time.monotonic() < deadline
            time.sleep(0.1)
    assert status == 200


def test_an_origin_equal_to_the_host_is_not_trusted(env: Env) -> None:
    """DNS rebinding: a page on evil.example resolves its name to the broker; its Origin then
    equals scheme://Host. Only listed origins pass."""
    own = f"http://127.0.0.1:{env.port}"
    with env.http() as http:
        rebinding = http.get("/v1/credentials", headers={"Origin": own})
        listed = http.get("/v1/credentials", headers={"Origin": ORIGIN})
    assert rebinding.status_code == 403 and rebinding.json()["error"] == "origin_forbidden"
    assert listed.status_code == 200


# -- 7. the error contract -------------------------------------------------------------------------
def test_validation_errors_have_the_documented_shape(env: Env) -> None:
    with env.http() as http:
        answer = http.post("/v1/sessions", json={"credentials": "echo"})
    assert answer.status_code == 422
    payload = answer.json()
    assert set(payload) == {"error", "reason"} and payload["error"] == "invalid_request"
    assert "credential" in payload["reason"]


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [("GET", "/nowhere", 404), ("PUT", "/healthz", 405), ("GET", "/v1/proxy/none/x", 404)],
)
def test_routing_errors_have_the_documented_shape(
    env: Env, method: str, path: str, status: int
) -> None:
    with env.http() as http:
        answer = http.request(method, path)
    assert answer.status_code == status
    assert set(answer.json()) == {"error", "reason"}


def test_the_access_log_has_no_query_strings(env: Env) -> None:
    marker = "q" + new_key()[4:20]
    with env.http() as http:
        assert http.get(f"/v1/proxy/echo/items?search={marker}").status_code == 200
        assert http.get("/healthz", params={"x": marker}).status_code == 200
    assert env.echo.last().path.endswith(f"search={marker}")  # the upstream got the query
    log = env.log.read_text(encoding="utf-8", errors="replace")
    assert "GET /v1/proxy/echo/items?" in log  # the access line is there ...
    assert marker not in log  # ... without the query


# -- 6. provider text that echoes secrets ----------------------------------------------------------
def _no_secret_in(env: Env, *texts: str) -> None:
    forms = {f for s in env.secrets for f in (s, quote(s, safe=""), quote_plus(s))}
    joined = "\n".join(texts)
    leaked = [fingerprint(f) for f in forms if f in joined]
    assert leaked == [], f"{len(leaked)} secret form(s) leaked"


def test_provider_echoes_never_reach_answers_or_the_log(env: Env) -> None:
    with env.http() as http:
        gone = http.post("/v1/credentials/gone/token")
        listed = http.get("/v1/credentials")
        avatar = http.post("/v1/credentials/avatar/token")
        session = http.post("/v1/sessions", json={"credential": "avatar"})
        broken = http.post("/v1/credentials/broken/token")
    # A refused refresh token: log in again.
    assert gone.status_code == 503 and gone.json()["error"] == "reauthorization_required"
    assert "tokenward login gone" in gone.json()["reason"]
    (record,) = [c for c in listed.json() if c["name"] == "gone"]
    assert record["state"] == "needs_reauth" and "[secret " in record["last_error"]
    # A refused API key: fix the key, not a login.
    for answer in (avatar, session):
        assert answer.status_code == 503, answer.text
        assert answer.json()["error"] == "reauthorization_required"
        assert "api_key" in answer.json()["reason"] and "login" not in answer.json()["reason"]
    # A missing API-key file: the configuration, named.
    assert broken.status_code == 503 and broken.json()["error"] == "credential_misconfigured"
    assert "no-such-key" in broken.json()["reason"]
    texts = [a.text for a in (gone, listed, avatar, session, broken)]
    _no_secret_in(env, *texts, env.log.read_text(encoding="utf-8", errors="replace"))
