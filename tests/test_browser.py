"""examples/browser-session in a real browser: Debian's headless chromium, driven by playwright.

The broker (real uvicorn, examples on) serves the page in front of the provider emulator. The
page starts three sessions (three fresh tokens, checked at the emulator) and stops them (no
session left open upstream). CORS: the same page served from an origin the broker's client
lists may call the broker; served from another origin, the browser's fetch fails.

Chromium comes from the system (`make browser` installs Debian's package); playwright never
downloads a browser here. Without chromium the test skips, except in CI (CI=true) where it fails.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import http.server
import os
import shutil
import threading
from collections.abc import Iterator
from importlib import resources
from pathlib import Path
from typing import Any

import httpx2
import pytest
from broker_support import API_KEY_ENV, BrokerServer, listening_socket

from tokenward.broker.app import create_app
from tokenward.broker.config import hash_key, load_broker, new_key
from tokenward.testing import TEST_API_KEY
from tokenward.testing.emulator import Emulator
from tokenward.testing.server import EmulatorServer
from tokenward.token import fingerprint

pytestmark = [
    pytest.mark.timeout(90),
    pytest.mark.e2e,
]  # e2e: the broker, the emulator and chromium

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SCREENSHOT = Path("/tmp/tokenward-browser-session.png")


def _need_chromium() -> None:
    if os.path.exists(CHROMIUM) and shutil.which("chromium"):
        return
    if os.environ.get("CI") == "true":
        pytest.fail(f"{CHROMIUM} is missing in CI: `make browser` should have installed it")
    pytest.skip(f"{CHROMIUM} is not installed (run `make browser`: apt-get install chromium)")


class StaticOrigin:
    """The example's files served by a plain http.server on another port: another origin."""

    def __init__(self, folder: Path) -> None:
        handler = functools.partial(_QuietHandler, directory=str(folder))
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def origin(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def __enter__(self) -> StaticOrigin:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


class Env:
    def __init__(self, emulator: Emulator, broker: BrokerServer, key: str) -> None:
        self.emulator = emulator
        self.broker = broker
        self.key = key


def _config(tmp: Path, emulator_url: str, key: str, *allowed_origins: str) -> Path:
    origins = ", ".join(f'"{origin}"' for origin in allowed_origins)
    text = f"""
[store]
url = "sqlite://{tmp}/tokens.db"

[credentials.avatar]
preset = "heygen"
base_url = "{emulator_url}"
api_key = "env:{API_KEY_ENV}"

[broker]
examples = true

[broker.policies.page]
credentials = ["avatar"]
methods = ["POST"]
paths = ["/v1/streaming.*"]
cors_origins = [{origins}]
max_sessions = 3
rate = 20
burst = 20

[broker.clients.page]
key_sha256 = "{hash_key(key)}"
policy = "page"
"""
    path = tmp / "tokenward.toml"
    path.write_text(text, encoding="utf-8")
    path.chmod(0o600)
    return path


@pytest.fixture(scope="module")
def folder() -> Path:
    return Path(str(resources.files("tokenward.broker").joinpath("examples/browser-session")))


@pytest.fixture(scope="module")
def allowed(folder: Path) -> Iterator[StaticOrigin]:
    with StaticOrigin(folder) as server:
        yield server


@pytest.fixture(scope="module")
def disallowed(folder: Path) -> Iterator[StaticOrigin]:
    with StaticOrigin(folder) as server:
        yield server


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory, allowed: StaticOrigin) -> Iterator[Env]:
    _need_chromium()
    emulator = Emulator()
    emulator.add_api_key(TEST_API_KEY)
    emu_server = EmulatorServer(emulator).start()
    key = new_key()
    # The page the broker serves itself calls it with the broker's own Origin, which passes
    # only when listed (an Origin equal to the Host is not trusted: DNS rebinding).
    sock = listening_socket()
    own = f"http://127.0.0.1:{sock.getsockname()[1]}"
    path = _config(tmp_path_factory.mktemp("browser"), emu_server.url, key, allowed.origin, own)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(API_KEY_ENV, TEST_API_KEY)
        broker = BrokerServer(create_app(path), sock).start()
        try:
            yield Env(emulator, broker, key)
        finally:
            broker.stop()
            emu_server.stop()


@pytest.fixture(scope="module")
def browser(env: Env) -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    context = browser.new_context()
    page = context.new_page()
    page.console_lines = []
    page.on("console", lambda message: page.console_lines.append(message.text))
    try:
        yield page
    finally:
        context.close()


def test_example_files_are_served_from_the_package_only_when_enabled(tmp_path: Path) -> None:
    """No browser needed: the broker serves the page's three files and nothing else."""
    path = _config(tmp_path, "http://127.0.0.1:9", new_key(), "https://app.example.com")

    async def fetch(examples: bool, *paths: str) -> list[httpx2.Response]:
        config, settings = load_broker(path)
        app = create_app(config, dataclasses.replace(settings, examples=examples))
        transport = httpx2.ASGITransport(app=app)
        async with httpx2.AsyncClient(transport=transport, base_url="http://broker") as c:
            return [await c.get(p) for p in paths]

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(API_KEY_ENV, TEST_API_KEY)
        base = "/examples/browser-session/"
        page, script, style, other, up = asyncio.run(
            fetch(True, base, base + "session.js", base + "style.css", base + "x.js", base + "..")
        )
        off = asyncio.run(fetch(False, base, base + "session.js"))
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert '<script src="session.js">' in page.text
    assert script.status_code == 200 and "/v1/sessions" in script.text
    assert script.headers["content-type"].startswith("text/javascript")
    assert "console." not in script.text  # the page logs nothing, tokens least of all
    assert style.status_code == 200 and style.headers["content-type"].startswith("text/css")
    assert other.status_code == 404 and up.status_code == 404
    assert [r.status_code for r in off] == [404, 404]


def _rows(page: Any) -> list[dict[str, str]]:
    rows: list[dict[str, str]] = page.eval_on_selector_all(
        "#sessions tr[data-session-id]",
        """rows => rows.map(r => ({id: r.dataset.sessionId, fingerprint: r.dataset.fingerprint,
                                   length: r.cells[2].textContent}))""",
    )
    return rows


def test_page_starts_three_sessions_with_fresh_tokens_and_stops_them(env: Env, page: Any) -> None:
    emulator = env.emulator
    before = emulator.counters["session_tokens"]
    page.goto(f"{env.broker.url}/examples/browser-session/#key={env.key}")
    assert page.title().startswith("tokenward broker")
    assert "#" not in page.url, "the key must leave the address bar"

    for n in range(1, 4):
        page.click("#start")
        page.wait_for_function(
            f"document.querySelectorAll('#sessions tr[data-session-id]').length === {n}",
            timeout=10_000,
        )
    rows = _rows(page)
    assert len({r["id"] for r in rows}) == 3
    # At the emulator: three sessions open, each with its own token, minted for this page.
    upstream = list(emulator._sessions.values())
    tokens = {s.token for s in upstream}
    assert len(upstream) == 3 and len(tokens) == 3
    assert emulator.counters["session_tokens"] - before == 3
    assert {r["fingerprint"] for r in rows} == {fingerprint(t) for t in tokens}
    assert sorted(int(r["length"]) for r in rows) == sorted(len(t) for t in tokens)
    # The page shows no token, and logged nothing about one.
    html = page.content()
    assert not [t for t in tokens if t in html]
    assert not [line for line in page.console_lines if any(t in line for t in tokens)]
    assert env.key not in html

    page.screenshot(path=str(SCREENSHOT), full_page=True)

    page.click("#stop-all")
    page.wait_for_selector("#sessions tr.empty", timeout=10_000)
    assert emulator.open_sessions() == []
    assert len(env.broker.app.state.broker.sessions) == 0  # the broker forgot them too


def _start_from(page: Any, origin: StaticOrigin, env: Env) -> str:
    page.goto(f"{origin.origin}/index.html#broker={env.broker.url}&key={env.key}")
    page.click("#start")
    page.wait_for_function(
        "document.getElementById('status').textContent !== 'ready'", timeout=10_000
    )
    return str(page.text_content("#status"))


def test_an_origin_the_client_lists_may_call_the_broker(
    env: Env, page: Any, allowed: StaticOrigin
) -> None:
    status = _start_from(page, allowed, env)
    assert status.startswith("started "), status
    page.click("#stop-all")
    page.wait_for_selector("#sessions tr.empty", timeout=10_000)
    assert env.emulator.open_sessions() == []


def test_another_origin_cannot_call_the_broker(
    env: Env, page: Any, disallowed: StaticOrigin
) -> None:
    before = env.emulator.counters["session_tokens"]
    status = _start_from(page, disallowed, env)
    # The preflight is refused, so the browser's fetch itself fails (a TypeError).
    assert status == "start failed: the broker could not be reached (TypeError)", status
    assert env.emulator.counters["session_tokens"] == before
    assert env.emulator.open_sessions() == []
