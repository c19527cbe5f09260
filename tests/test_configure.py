"""The library behind `tokenward import-env` and `tokenward refresher`, called from Python:
tokenward.configure.import_env (a .env taken over, its refresh token stored with no source and
no client secret) and tokenward.refresher.ConfiguredRefreshers, against the provider emulator
with real SQLite and dotenv stores."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest
from waiting import until

from tokenward.config import ConfigError, load_config, parse_config
from tokenward.configure import append_credential, import_env
from tokenward.refresher import ConfiguredRefreshers
from tokenward.stored_grant import seed_stored
from tokenward.stores.sqlite import SQLiteStore
from tokenward.testing import TEST_CLIENT_ID, TEST_CLIENT_SECRET


def test_import_env_needs_no_client_secret_and_the_first_use_refreshes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tokenward_emulator: Any
) -> None:
    monkeypatch.delenv("SHOP_SECRET", raising=False)  # not exported while importing
    emulator = tokenward_emulator.emulator
    refresh = emulator.issue_refresh_token(TEST_CLIENT_ID)
    dotenv = tmp_path / "app.env"
    dotenv.write_text(
        f"APP_ID={TEST_CLIENT_ID}\nSHOP_SECRET={TEST_CLIENT_SECRET}\nAPP_REFRESH={refresh}\n"
    )
    dotenv.chmod(0o600)
    imported = import_env(
        dotenv,
        name="shop",
        client_id_var="APP_ID",
        client_secret_var="SHOP_SECRET",
        refresh_token_var="APP_REFRESH",
        access_token_var="APP_ACCESS",
        base_url=tokenward_emulator.url,
        config_path=tmp_path / "tokenward.toml",
    )
    assert imported.config_path == tmp_path / "tokenward.toml"
    assert imported.record.refresh_token == refresh and imported.record.state == "ok"
    assert imported.added == ["APP_ACCESS", "TOKENWARD_STATE_SHOP"]
    assert TEST_CLIENT_SECRET not in imported.config_path.read_text()
    assert emulator.counters["token_requests"] == 0
    monkeypatch.setenv("SHOP_SECRET", TEST_CLIENT_SECRET)
    config = load_config(imported.config_path)
    settings = config.credential_config("shop")
    with settings.manager(config.store_for(settings)) as manager:
        token = manager.token()  # stored as expired: this is a refresh
    config.close()
    assert emulator.is_access_token_valid(token.access_token)
    assert f"APP_ACCESS={token.access_token}" in dotenv.read_text()
    with pytest.raises(ConfigError, match="shop"):  # a second import of the same name
        append_credential(imported.config_path, "shop", {"preset": "mercadolibre"})


def test_import_env_names_a_missing_variable(tmp_path: Path) -> None:
    dotenv = tmp_path / ".env"
    dotenv.write_text("ML_CLIENT_ID=1\n")
    with pytest.raises(ConfigError, match="ML_REFRESH_TOKEN is missing"):
        import_env(dotenv, config_path=tmp_path / "tokenward.toml")
    assert not (tmp_path / "tokenward.toml").exists()


def test_configured_refreshers_refresh_due_records_of_the_chosen_credentials(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tokenward_emulator: Any
) -> None:
    monkeypatch.setenv("TW_SECRET", TEST_CLIENT_SECRET)
    credential = {
        "preset": "mercadolibre",
        "client_id": TEST_CLIENT_ID,
        "client_secret": "env:TW_SECRET",
        "base_url": tokenward_emulator.url,
    }
    config = parse_config(
        {
            "store": {"url": f"sqlite://{tmp_path}/tokens.db"},
            "credentials": {"ml": credential, "other": credential},
        },
        tmp_path / "tokenward.toml",
    )
    emulator = tokenward_emulator.emulator
    store = SQLiteStore(tmp_path / "tokens.db")
    for key in ("ml:1", "ml:2", "other"):
        refresh = emulator.issue_refresh_token(TEST_CLIENT_ID)
        seed_stored(store, key, refresh_token=refresh, access_token="old", expires_in=0)
    store.close()
    stop = threading.Event()
    with ConfiguredRefreshers(config, ["ml"], concurrency=2, claim_ttl=60.0) as refreshers:
        assert refreshers.credentials == ["ml"] and len(refreshers.refreshers) == 1
        runner = threading.Thread(target=refreshers.run, args=(stop,))
        runner.start()
        until("both ml records refreshed", lambda: refreshers.totals()["refreshed"] == 2)
        stop.set()
        runner.join(30)
    assert not runner.is_alive() and emulator.counters["refreshes"] == 2
    stored = config.store_for(config.credential_config("other")).load("other")
    assert stored is not None and stored.refresh_count == 0  # not a chosen credential
    config.close()
