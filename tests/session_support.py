"""A broker (real uvicorn) in front of the emulator's HeyGen-style endpoints, configured for
sessions, for the session tests and the load test."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx2
import pytest
from broker_support import API_KEY_ENV, BrokerServer, Recorder

from tokenward.broker.app import create_app
from tokenward.broker.config import hash_key, new_key
from tokenward.testing import TEST_API_KEY
from tokenward.testing.emulator import Emulator
from tokenward.testing.server import EmulatorServer
from tokenward.token import fingerprint

CLIENTS = ("web", "other", "narrow")


def write_config(
    tmp: Path, emulator_url: str, extra: str = "", max_sessions: int = 3, crowd: int = 0
) -> tuple[Path, dict[str, str]]:
    """Clients web, other, narrow, and `crowd` more (load0, load1, ...) with the same policy."""
    keys = {name: new_key() for name in (*CLIENTS, *(f"load{n}" for n in range(crowd)))}
    more = "".join(
        f'\n[broker.clients.load{n}]\nkey_sha256 = "{hash_key(keys[f"load{n}"])}"\n'
        'policy = "page"\n'
        for n in range(crowd)
    )
    text = f"""
[store]
url = "sqlite://{tmp}/tokens.db"

[credentials.avatar]
preset = "heygen"
base_url = "{emulator_url}"
api_key = "env:{API_KEY_ENV}"

[credentials.plain]            # a provider (or plan) without streaming.start and keep_alive
preset = "heygen"
base_url = "{emulator_url}"
api_key = "env:{API_KEY_ENV}"
session_start = ""
session_keep_alive = ""

[broker]
examples = true

[broker.limits]
session_idle_timeout = 30.0
reap_interval = 0.05

[broker.policies.page]
credentials = ["*"]
methods = ["POST"]
paths = ["/v1/streaming.*"]
max_sessions = {max_sessions}
rate = 10000
burst = 10000

[broker.clients.web]
key_sha256 = "{hash_key(keys["web"])}"
policy = "page"

[broker.clients.other]
key_sha256 = "{hash_key(keys["other"])}"
policy = "page"

[broker.clients.narrow]
key_sha256 = "{hash_key(keys["narrow"])}"
policy = "page"
paths = ["/v1/streaming.task"]
{more}
{extra.replace("{url}", emulator_url)}
"""
    path = tmp / "tokenward.toml"
    path.write_text(text, encoding="utf-8")
    path.chmod(0o600)
    return path, keys


class SessionEnv:
    def __init__(
        self,
        emulator: Emulator,
        server: EmulatorServer,
        broker: BrokerServer,
        keys: dict[str, str],
        app: Any,
        path: Path,
    ) -> None:
        self.emulator = emulator
        self.server = server
        self.broker = broker
        self.keys = keys
        self.app = app
        self.path = path
        self.recorder = Recorder()
        #: Session tokens seen in answers (the emulator forgets those of stopped sessions).
        self.minted: set[str] = set()
        self.http = httpx2.Client(
            base_url=broker.url, timeout=30, event_hooks={"response": [self.recorder.response]}
        )

    def headers(self, client: str = "web") -> dict[str, str]:
        return {"Authorization": f"Bearer {self.keys[client]}"}

    def open(self, credential: str = "avatar", client: str = "web") -> dict[str, Any]:
        answer = self.http.post(
            "/v1/sessions", headers=self.headers(client), json={"credential": credential}
        )
        assert answer.status_code == 201, answer.text
        body: dict[str, Any] = answer.json()
        self.minted.add(body["token"])
        return body

    def task(
        self, session: dict[str, Any], text: str = "hello", client: str = "web", **body: Any
    ) -> httpx2.Response:
        return self.http.post(
            f"/v1/sessions/{session['session_id']}/proxy/v1/streaming.task",
            headers=self.headers(client),
            json={"text": text, **body},
        )

    def close(self, session: dict[str, Any], client: str = "web") -> httpx2.Response:
        return self.http.delete(
            f"/v1/sessions/{session['session_id']}", headers=self.headers(client)
        )

    def leaks(self) -> list[str]:
        """Fingerprints of the API key / client keys found in any answer or log line, and of
        session tokens found outside the answers that hand them out."""
        always = {TEST_API_KEY, *self.keys.values()}
        tokens = set(self.emulator._session_tokens)
        found = []
        for path, shown in self.recorder.responses:
            found += [fingerprint(s) for s in always if s in shown]
            if path != "/v1/sessions" and not path.endswith("/token"):  # handed out there
                found += [fingerprint(s) for s in tokens if s in shown]
        for line in self.recorder.lines:
            found += [fingerprint(s) for s in always | tokens if s in line]
        return found


@contextmanager
def session_env(
    tmp: Path, extra: str = "", max_sessions: int = 3, crowd: int = 0, **emulator: Any
) -> Iterator[SessionEnv]:
    emu = Emulator(**emulator)
    emu.add_api_key(TEST_API_KEY)
    server = EmulatorServer(emu).start()
    path, keys = write_config(tmp, server.url, extra, max_sessions, crowd)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(API_KEY_ENV, TEST_API_KEY)
        app = create_app(path)
        broker = BrokerServer(app).start()
        env = SessionEnv(emu, server, broker, keys, app, path)
        root = logging.getLogger()
        root.addHandler(env.recorder)
        loggers = [logging.getLogger(n) for n in ("tokenward", "tokenward.audit")]
        levels = [lg.level for lg in loggers]
        for lg in loggers:
            lg.setLevel(logging.DEBUG)
        try:
            yield env
        finally:
            root.removeHandler(env.recorder)
            for lg, level in zip(loggers, levels, strict=True):
                lg.setLevel(level)
            env.http.close()
            broker.stop()
            server.stop()
