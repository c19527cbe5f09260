"""tokenward.login from Python: the loopback listener, the browser and device logins against the
provider emulator over real loopback HTTP, the grant stored in a real SQLite store."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import httpx2
import pytest

from tokenward.config import Config, parse_config
from tokenward.login import CallbackListener, authorization_code, login
from tokenward.sources.authorization import AuthorizationDenied, DeviceAuthorization
from tokenward.testing import TEST_CLIENT_ID, TEST_CLIENT_SECRET
from tokenward.token import fingerprint


@pytest.fixture
def config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tokenward_emulator: Any) -> Config:
    """An OAuth credential `ml` on the emulator, stored in SQLite."""
    monkeypatch.setenv("TW_SECRET", TEST_CLIENT_SECRET)
    url = tokenward_emulator.url
    data = {
        "store": {"url": f"sqlite://{tmp_path}/tokens.db"},
        "credentials": {
            "ml": {
                "preset": "mercadolibre",
                "client_id": TEST_CLIENT_ID,
                "client_secret": "env:TW_SECRET",
                "base_url": url,
                "authorize_url": f"{url}/authorize",
                "device_authorization_url": f"{url}/oauth/device/code",
            }
        },
    }
    return parse_config(data, tmp_path / "tokenward.toml")


def _browse(url: str) -> threading.Thread:
    """The person's browser: follows the emulator's redirect to the callback listener."""
    seen: dict[str, Any] = {}

    def follow() -> None:
        seen["page"] = httpx2.get(url, follow_redirects=True, timeout=10)

    thread = threading.Thread(target=follow, daemon=True)
    thread.start()
    return thread


@pytest.mark.e2e
def test_listener_is_bound_before_it_waits_and_returns_the_query() -> None:
    with CallbackListener() as listener:
        assert listener.port > 0 and listener.redirect_uri.endswith(f":{listener.port}/callback")
        assert httpx2.get(f"http://127.0.0.1:{listener.port}/other", timeout=5).status_code == 404
        page = httpx2.get(listener.redirect_uri + "?code=c&state=s", timeout=5)
        assert page.status_code == 200 and "login complete" in page.text
        assert listener.wait(5) == {"code": "c", "state": "s"}


@pytest.mark.e2e
def test_listener_times_out_with_a_clear_error() -> None:
    with CallbackListener() as listener, pytest.raises(AuthorizationDenied, match="no login"):
        listener.wait(0.01)


def test_browser_login_stores_the_grant(config: Config, tokenward_emulator: Any) -> None:
    shown: list[str] = []
    browsers: list[threading.Thread] = []

    def on_url(url: str, redirect_uri: str) -> None:
        assert "code_challenge_method=S256" in url and redirect_uri.startswith("http://127.0.0.1")
        shown.append(redirect_uri)
        browsers.append(_browse(url))

    record = login("ml", config, browser=False, timeout=30, on_url=on_url)
    browsers[0].join(10)
    emulator = tokenward_emulator.emulator
    assert emulator.counters["authorization_code"] == 1 and len(shown) == 1
    assert record.access_token is not None and record.refresh_token
    assert emulator.is_access_token_valid(record.access_token)
    stored = config.store_for(config.credential_config("ml")).load("ml")
    assert stored is not None and stored.version == record.version and stored.state == "ok"
    assert fingerprint(record.access_token) in repr(stored)
    assert record.access_token not in repr(record)


def test_device_login_stores_the_grant(config: Config, tokenward_emulator: Any) -> None:
    emulator = tokenward_emulator.emulator
    codes: list[str] = []

    def on_device(device: DeviceAuthorization) -> None:
        codes.append(device.user_code)
        assert emulator.approve_device(device.user_code)

    record = login("ml", config, device=True, timeout=30, on_device=on_device)
    assert len(codes) == 1 and emulator.is_access_token_valid(record.access_token)


def test_a_forged_state_is_refused(config: Config) -> None:
    client = config.credential_config("ml").oauth_client()

    def forge(url: str, redirect_uri: str) -> None:
        threading.Thread(
            target=httpx2.get, args=(redirect_uri + "?code=x&state=forged",), daemon=True
        ).start()

    with pytest.raises(AuthorizationDenied, match="wrong state"):
        authorization_code(client, "http://127.0.0.1:9/authorize", on_url=forge, browser=False)
