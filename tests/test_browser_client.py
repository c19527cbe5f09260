"""The browser module the broker serves (`/v1/client.js`, `SessionClient`) in Debian's headless
chromium (playwright with executable_path; no downloaded browser), end to end: start, 5 tasks
through the session-bound proxy, a token that expires mid-session (the module starts a fresh
session and sends the task again), stop, restart, and a page that goes away stopping its
session. Checked on the emulator's counters: tokens issued = sessions started, 0 reused, 0 left
open; the page never sees the API key."""

from __future__ import annotations

import dataclasses
import functools
import re
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2
import pytest
from session_support import SessionEnv, session_env
from test_browser import CHROMIUM, CHROMIUM_ARGS, _need_chromium
from waiting import until

from tokenward.broker.app import create_app
from tokenward.broker.config import hash_key, new_key
from tokenward.config import parse_config
from tokenward.sessions import SessionCalls
from tokenward.testing import TEST_API_KEY
from tokenward.testing.emulator import Emulator
from tokenward.testing.server import EmulatorServer

pytestmark = [
    pytest.mark.timeout(90),
    pytest.mark.e2e,
]  # e2e: the broker, the emulator and chromium

START = """async ([broker, key]) => {
  const { SessionClient } = await import(broker + "/v1/client.js");
  window.events = [];
  window.avatar = new SessionClient({ broker, key, credential: "avatar", keepAliveMs: 0 });
  for (const name of ["started", "expired", "stopped", "error"]) {
    window.avatar.addEventListener(name, (e) => window.events.push([name, e.detail]));
  }
  const session = await window.avatar.start();
  const tasks = [];
  for (let n = 0; n < 5; n++) tasks.push(await window.avatar.task("hello " + n));
  return { session, tasks, key: typeof window.avatar.session.api_key };
}"""


@pytest.fixture
def env(tmp_path: Path) -> Iterator[SessionEnv]:
    _need_chromium()
    with session_env(tmp_path) as environment:
        for client in environment.app.state.broker.clients.clients:
            policy = dataclasses.replace(client.policy, cors_origins=(environment.broker.url,))
            object.__setattr__(client, "policy", policy)
        yield environment


@pytest.fixture
def page(env: SessionEnv) -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            context = browser.new_context()
            page = context.new_page()
            page.goto(f"{env.broker.url}/healthz")  # the broker's origin
            yield page
        finally:
            browser.close()


#: Waits for what the page did upstream (the emulator's counters).
_until = functools.partial(until, "the page's calls to reach the emulator", timeout=20.0)


def test_module_is_served_publicly_as_javascript(env: SessionEnv) -> None:
    answer = httpx2.get(f"{env.broker.url}/v1/client.js", timeout=10)
    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith("text/javascript")
    assert "export class SessionClient" in answer.text
    assert "console." not in answer.text  # the module logs nothing, tokens least of all


def test_start_tasks_expiry_stop_restart_in_chromium(env: SessionEnv, page: Any) -> None:
    emulator = env.emulator
    first = page.evaluate(START, [env.broker.url, env.keys["web"]])
    assert [t["duration_ms"] > 0 for t in first["tasks"]] == [True] * 5
    assert emulator.counters["tasks"] == 5
    # the token dies mid-session (the upstream session stays open): the next task is refused
    # upstream, and the module starts a fresh session and sends it there
    assert emulator.expire_session_token(first["session"]["upstream_session_id"])
    done = page.evaluate("() => window.avatar.task('after expiry')")
    assert done["duration_ms"] > 0
    second = page.evaluate("() => window.avatar.session")
    assert second["session_id"] != first["session"]["session_id"]
    assert second["token"] != first["session"]["token"]
    events = [name for name, _ in page.evaluate("() => window.events")]
    assert events == ["started", "expired", "started"]
    page.evaluate("() => window.avatar.stop()")
    assert emulator.open_sessions() == []
    # restart: a fresh token again
    page.evaluate("async () => { await window.avatar.start(); await window.avatar.task('x'); }")
    page.evaluate("() => window.avatar.stop()")
    counts = emulator.counters
    assert counts["tasks"] == 7
    assert counts["session_tokens"] == counts["sessions_started"] == 3
    assert counts["session_tokens_reused"] == 0 and counts["session_401_expired"] == 1
    assert emulator.open_sessions() == []
    assert TEST_API_KEY not in page.content()
    assert env.leaks() == []


def test_a_page_that_goes_away_stops_its_session(env: SessionEnv, page: Any) -> None:
    page.evaluate(
        """async ([broker, key]) => {
          const { SessionClient } = await import(broker + "/v1/client.js");
          window.avatar = new SessionClient({ broker, key, credential: "avatar" });
          await window.avatar.start();
        }""",
        [env.broker.url, env.keys["web"]],
    )
    assert len(env.emulator.open_sessions()) == 1
    page.goto("about:blank")  # pagehide: the module's keepalive DELETE outlives the page
    _until(lambda: env.emulator.open_sessions() == [])
    assert env.emulator.counters["sessions_stopped"] == 1


def test_the_example_page_uses_the_module(env: SessionEnv, page: Any) -> None:
    emulator = env.emulator
    page.goto(f"{env.broker.url}/examples/session")
    page.fill("#key", env.keys["web"])
    page.click("#start")
    page.wait_for_function("() => document.getElementById('out').textContent.startsWith('session')")
    page.click("#task")
    _until(lambda: emulator.counters["tasks"] == 1)
    (upstream,) = emulator.open_sessions()
    assert emulator.expire_session_token(upstream)
    page.click("#task")  # a fresh session, the task again
    _until(lambda: emulator.counters["tasks"] == 2)
    page.click("#stop")
    _until(lambda: emulator.open_sessions() == [])
    counts = emulator.counters
    assert counts["session_tokens"] == counts["sessions_started"] == 2
    assert counts["session_tokens_reused"] == 0
    assert env.keys["web"] not in page.content()


# -- docs/sessions.md's recipe, as written ---------------------------------------------------------
def _doc_blocks(kind: str) -> list[str]:
    text = (Path(__file__).parents[1] / "docs" / "sessions.md").read_text(encoding="utf-8")
    return re.findall(rf"^```{kind}\n(.*?)^```", text, re.DOTALL | re.MULTILINE)


def test_the_plan_without_start_in_the_docs_has_no_start_call(tmp_path: Path) -> None:
    plan = _doc_blocks("toml")[0]
    config = parse_config(tomllib.loads(plan), tmp_path / "tokenward.toml")
    hooks = config.credential_config("avatar").session_hooks()
    assert isinstance(hooks, SessionCalls) and hooks.start_path is None and hooks.new


def test_the_docs_recipe_runs_in_chromium(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _need_chromium()
    from broker_support import BrokerServer
    from playwright.sync_api import sync_playwright
    from test_browser import StaticOrigin

    recipe = _doc_blocks("toml")[1]
    (page_html,) = _doc_blocks("html")
    emulator = Emulator()
    emulator.add_api_key(TEST_API_KEY)
    server = EmulatorServer(emulator).start()
    monkeypatch.setenv("HEYGEN_API_KEY", TEST_API_KEY)
    key = new_key()
    folder = tmp_path / "site"
    folder.mkdir()
    with StaticOrigin(folder) as site:
        # The only changes: the emulator for HeyGen, the test's store, key and origin.
        text = (
            recipe.replace('preset = "heygen"', f'preset = "heygen"\nbase_url = "{server.url}"')
            .replace('key_sha256 = "..."', f'key_sha256 = "{hash_key(key)}"')
            .replace("https://app.example.com", site.origin)
        )
        path = tmp_path / "tokenward.toml"
        path.write_text(f'[store]\nurl = "sqlite://{tmp_path}/tokens.db"\n\n{text}')
        path.chmod(0o600)
        broker = BrokerServer(create_app(path)).start()
        try:
            html = page_html.replace("http://127.0.0.1:8421", broker.url).replace("twk_...", key)
            (folder / "index.html").write_text(html)
            with sync_playwright() as pw:
                chromium = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
                try:
                    page = chromium.new_page()
                    page.goto(f"{site.origin}/index.html")
                    page.wait_for_function("() => window.avatar !== undefined")
                    for n in range(1, 4):
                        page.click("#speak")

                        def spoken(n: int = n) -> bool:
                            return bool(emulator.counters["tasks"] == n)

                        _until(spoken)
                    (upstream,) = emulator.open_sessions()
                    assert emulator.expire_session_token(upstream)
                    page.click("#speak")  # refused upstream: a fresh session, the task again
                    _until(lambda: emulator.counters["tasks"] == 4)
                    assert emulator.counters["sessions_started"] == 2
                    page.goto("about:blank")  # the page goes away: its session is stopped
                    _until(lambda: emulator.open_sessions() == [])
                finally:
                    chromium.close()
        finally:
            broker.stop()
            server.stop()
    counts = emulator.counters
    assert counts["session_tokens"] == counts["sessions_started"] == 2
    assert counts["session_tokens_reused"] == 0 and counts["sessions_stopped"] == 2
