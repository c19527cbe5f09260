"""The demo's hand-made refresher (`demo/handmade.py`) must stay the real thing teams ship:
tokens loaded once from `.env`, refresh on a 401 that says `invalid_token`/`expired`, one retry
only, a cooldown between refreshes, `.env` rewritten after a refresh. Over real HTTP against the
emulator; time is moved by rewinding the module's own `_last_refresh`, never by sleeping."""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("requests")
pytest.importorskip("dotenv")

from dotenv import dotenv_values

from tokenward.testing import Emulator, EmulatorServer

pytestmark = pytest.mark.e2e  # its fixture runs the emulator

HANDMADE = Path(__file__).parents[1] / "demo" / "handmade.py"


@pytest.fixture
def server() -> Iterator[EmulatorServer]:
    emulator = Emulator(access_lifetime=60, revoke_family_on_reuse=True)
    emulator.add_client("app", "app-secret")
    with EmulatorServer(emulator) as running:
        yield running


def load(
    server: EmulatorServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cooldown: str = "5"
) -> Any:
    """A fresh copy of the module (its own globals), imported in a directory with a `.env`."""
    emulator = server.emulator
    pair = emulator.issue_refresh_token("app")
    access = emulator.issue_access_token("app")
    (tmp_path / ".env").write_text(
        f"API_URL={server.api_url}\nTOKEN_URL={server.token_url}\nCLIENT_ID=app\n"
        f"CLIENT_SECRET=app-secret\nREFRESH_TOKEN={pair}\nACCESS_TOKEN={access}\n"
    )
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("REFRESH_COOLDOWN", cooldown)
    name = f"handmade_under_test_{len(sys.modules)}"
    spec = importlib.util.spec_from_file_location(name, HANDMADE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_globals_are_loaded_once_from_dotenv(
    server: EmulatorServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    handmade = load(server, tmp_path, monkeypatch)
    env = dotenv_values(tmp_path / ".env")
    assert env["REFRESH_TOKEN"] == handmade.REFRESH_TOKEN
    assert handmade.REFRESH_COOLDOWN == 5.0
    (tmp_path / ".env").write_text("REFRESH_TOKEN=changed-later\n")
    assert handmade.http_get("/orders/1").status_code == 200
    assert env["REFRESH_TOKEN"] == handmade.REFRESH_TOKEN  # never re-read


def test_expired_token_refreshes_rewrites_dotenv_and_retries_once(
    server: EmulatorServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    handmade = load(server, tmp_path, monkeypatch)
    emulator = server.emulator
    old_refresh = handmade.REFRESH_TOKEN
    emulator.expire_access_tokens()

    response = handmade.http_post("/orders", json={"n": 1})

    assert response.status_code == 200
    counters = emulator.counters
    assert (counters["api_401"], counters["refreshes"], counters["api_ok"]) == (1, 1, 1)
    env = dotenv_values(tmp_path / ".env")
    assert env["REFRESH_TOKEN"] == handmade.REFRESH_TOKEN != old_refresh
    assert env["ACCESS_TOKEN"] == handmade.ACCESS_TOKEN
    assert emulator.is_refresh_token_valid(handmade.REFRESH_TOKEN)
    assert env["API_URL"] == server.api_url  # the rest of the file is kept


def test_retry_once_only_even_when_the_retry_is_refused(
    server: EmulatorServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    handmade = load(server, tmp_path, monkeypatch)
    emulator = server.emulator
    emulator.inject("401", times=6, endpoint="api")

    for call in (handmade.http_get, handmade.http_post, handmade.http_put):
        before = emulator.counters
        assert call("/orders/7").status_code == 401
        after = emulator.counters
        assert after["api_calls"] - before["api_calls"] == 2  # the request and one retry


def test_cooldown_skips_a_second_refresh_until_it_has_passed(
    server: EmulatorServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    handmade = load(server, tmp_path, monkeypatch)
    emulator = server.emulator
    emulator.inject("401", times=1, endpoint="api")
    assert handmade.http_get("/orders/1").status_code == 200
    assert emulator.counters["token_requests"] == 1

    emulator.inject("401", times=2, endpoint="api")  # within the cooldown: no refresh, one retry
    assert handmade.http_get("/orders/2").status_code == 401
    assert emulator.counters["token_requests"] == 1

    handmade._last_refresh -= handmade.REFRESH_COOLDOWN  # the cooldown has passed
    emulator.inject("401", times=1, endpoint="api")
    assert handmade.http_get("/orders/3").status_code == 200
    assert emulator.counters["token_requests"] == 2
    assert emulator.counters["invalid_grant"] == 0


def test_a_401_that_is_not_about_the_token_refreshes_nothing(
    server: EmulatorServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    handmade = load(server, tmp_path, monkeypatch)
    handmade.ACCESS_TOKEN = ""  # the emulator answers "authorization required"
    assert handmade.http_get("/orders/1").status_code == 401
    assert server.emulator.counters["token_requests"] == 0
    assert server.emulator.counters["api_calls"] == 1
