"""Encryption at rest (`EncryptedStore`): the store contract over every store kind, encrypted;
no plaintext secret in what each medium holds; key rotation; tampering and moved ciphertexts;
plaintext-to-encrypted migration; `tokenward rekey` (CliRunner and a real subprocess); and no
key or token in any message."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from servers import POSTGRES_URL, REDIS_URL
from test_stores import (  # the contract suite, re-run below against encrypted stores
    STORE_KINDS,
    _isolated_name,
    test_async_api_from_several_event_loops,  # noqa: F401
    test_async_tasks_lose_no_update,  # noqa: F401
    test_cas_requires_the_next_version,  # noqa: F401
    test_create_then_conflicting_cas_loses,  # noqa: F401
    test_delete,  # noqa: F401
    test_expired_lease_can_be_taken,  # noqa: F401
    test_keys_with_prefix,  # noqa: F401
    test_leases,  # noqa: F401
    test_load_missing_is_none,  # noqa: F401
    test_repr_names_location_not_secrets,  # noqa: F401
    test_round_trip_of_every_field,  # noqa: F401
    test_threads_lose_no_update,  # noqa: F401
)

from tokenward.cli import cli
from tokenward.config import ConfigError, parse_config
from tokenward.errors import StoreCorrupted, StoreError
from tokenward.manager import TokenManager
from tokenward.sources import FunctionSource
from tokenward.stores import EncryptedStore, Keyring, Record, SQLiteStore, Store
from tokenward.stores.encrypted import (
    ENCRYPTION_KEY_ENV,
    MARKER,
    StoreDecryptionError,
    generate_key,
    key_id,
    parse_key,
)

TOKENWARD = Path(sys.executable).parent / "tokenward"
KEY_A = generate_key()
KEY_B = bytes(range(32)).hex()  # the hex form
ACCESS = "APP_USR-access-0123456789-secret"
REFRESH = "TG-refresh-abcdef-secret"
ID_TOKEN = "eyJhbGciOi.id-token-secret"
SECRETS = (ACCESS, REFRESH, ID_TOKEN, KEY_A, KEY_B)


def _ring(*keys: str) -> Keyring:
    return Keyring(list(keys))


def _id(key: str) -> str:
    return key_id(parse_key(key))


def secret_record(key: str = "ml", version: int = 1) -> Record:
    return Record(
        key,
        version,
        access_token=ACCESS,
        refresh_token=REFRESH,
        expires_at=4102444800.0,
        extra={"id_token": ID_TOKEN, "user_id": 42},
        updated_at=1700000000.0,
    )


@pytest.fixture(params=list(STORE_KINDS))
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def store(kind: str, tmp_path: Path) -> Iterator[Store]:
    """Every store kind, wrapped: the imported contract tests run against these."""
    instance = EncryptedStore(STORE_KINDS[kind](tmp_path), _ring(KEY_A))
    yield instance
    instance.close()


def raw_bytes(kind: str, inner: Store, directory: Path) -> bytes:
    """Everything the medium holds, read around the store."""
    if kind == "memory":
        return json.dumps([inner.load(k).to_dict() for k in inner.keys("")]).encode()  # type: ignore[union-attr]
    if kind in ("json", "dotenv", "sqlite"):
        return b"".join(p.read_bytes() for p in sorted(directory.iterdir()) if p.is_file())
    if kind == "redis":
        import redis

        client = redis.Redis.from_url(REDIS_URL)
        found = b""
        for name in client.scan_iter(match=_isolated_name(directory) + "*"):
            if client.type(name) == b"hash":
                found += repr(client.hgetall(name)).encode()
        client.close()
        return found
    import psycopg

    with psycopg.connect(POSTGRES_URL) as conn:
        rows = conn.execute(
            f'SELECT key, data::text FROM "{_isolated_name(directory)}".records'
        ).fetchall()
    return repr(rows).encode()


# -- what the medium holds --------------------------------------------------------------------
def test_raw_storage_holds_no_plaintext_secret(kind: str, tmp_path: Path) -> None:
    inner = STORE_KINDS[kind](tmp_path)
    store = EncryptedStore(inner, _ring(KEY_A))
    try:
        assert store.compare_and_set(secret_record(), 0)
        raw = raw_bytes(kind, inner, tmp_path)
        assert b"twenc:v1:" + _id(KEY_A).encode() in raw
        for secret in SECRETS:
            assert secret.encode() not in raw
        loaded = store.load("ml")
        assert loaded is not None and loaded.to_dict() == secret_record().to_dict()
        assert loaded.token() is not None and loaded.token().extra["id_token"] == ID_TOKEN  # type: ignore[union-attr]
        stored = inner.load("ml")
        assert stored is not None and stored.version == 1 and stored.expires_at == 4102444800.0
        assert stored.extra["user_id"] == 42 and stored.extra[MARKER] == "v1"
    finally:
        store.close()


def test_each_value_gets_a_fresh_nonce(tmp_path: Path) -> None:
    store = EncryptedStore(SQLiteStore(tmp_path / "t.db"), _ring(KEY_A))
    assert store.compare_and_set(Record("a", 1, access_token="same"), 0)
    assert store.compare_and_set(Record("b", 1, access_token="same"), 0)
    first, second = store.inner.load("a"), store.inner.load("b")
    assert first and second and first.access_token != second.access_token
    store.close()


# -- rotation ---------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["sqlite", "redis"])
def test_key_rotation(kind: str, tmp_path: Path) -> None:
    inner = STORE_KINDS[kind](tmp_path)
    with_a = EncryptedStore(inner, _ring(KEY_A))
    assert with_a.compare_and_set(secret_record("old"), 0)

    rotated = EncryptedStore(inner, _ring(KEY_B, KEY_A))
    loaded = rotated.load("old")
    assert loaded is not None and loaded.access_token == ACCESS
    assert rotated.compare_and_set(secret_record("new"), 0)  # written with B
    assert f":{_id(KEY_B)}:" in (inner.load("new").access_token or "")  # type: ignore[union-attr]

    dry = rotated.rekey(dry_run=True)
    assert (dry.rekeyed, dry.current, dry.failed) == (1, 1, [])
    assert f":{_id(KEY_A)}:" in (inner.load("old").access_token or "")  # type: ignore[union-attr]
    report = rotated.rekey()
    assert (report.rekeyed, report.encrypted, report.current, report.key_id) == (
        1,
        0,
        1,
        _id(KEY_B),
    )
    assert rotated.rekey().current == 2  # nothing left to do

    only_b = EncryptedStore(inner, _ring(KEY_B))
    for key in ("old", "new"):
        record = only_b.load(key)
        assert record is not None and (record.access_token, record.refresh_token) == (
            ACCESS,
            REFRESH,
        )
    assert only_b.load("old").version == 2  # type: ignore[union-attr]

    with pytest.raises(StoreDecryptionError) as caught:
        with_a.load("new")  # A alone no longer reads what B wrote
    assert caught.value.reason == "unknown_key" and caught.value.key_id == _id(KEY_B)
    assert _id(KEY_B) in str(caught.value) and "tokenward rekey" in str(caught.value)
    only_b.close()


def test_rekey_retries_on_conflict(tmp_path: Path) -> None:
    """A write landing between rekey's read and its compare-and-set wins; rekey re-reads."""
    inner = SQLiteStore(tmp_path / "t.db")
    EncryptedStore(inner, _ring(KEY_A)).compare_and_set(secret_record(), 0)
    rotated = EncryptedStore(inner, _ring(KEY_B, KEY_A))
    real_cas = inner.compare_and_set
    raced: list[int] = []

    def racing_cas(record: Record, expected_version: int) -> bool:
        if not raced:  # a refresh lands first, still written with key A
            raced.append(expected_version)
            EncryptedStore(inner, _ring(KEY_A)).compare_and_set(
                replace(secret_record(), version=expected_version + 1, access_token="refreshed"),
                expected_version,
            )
        return real_cas(record, expected_version)

    inner.compare_and_set = racing_cas  # type: ignore[method-assign]
    report = rotated.rekey()
    assert report.rekeyed == 1 and raced == [1]
    loaded = EncryptedStore(inner, _ring(KEY_B)).load("ml")
    assert loaded is not None and (loaded.version, loaded.access_token) == (3, "refreshed")


# -- tampering --------------------------------------------------------------------------------
def _tamper(inner: Store, key: str, **changes: Any) -> None:
    raw = inner.load(key)
    assert raw is not None
    assert inner.compare_and_set(replace(raw, version=raw.version + 1, **changes), raw.version)


def _flip(value: str) -> str:
    last = value[-6]
    return value[:-6] + ("A" if last != "A" else "B") + value[-5:]


def test_tampered_ciphertext_surfaces_through_the_manager(tmp_path: Path) -> None:
    calls: list[object] = []

    def fetch(current: object) -> dict[str, Any]:
        calls.append(current)
        return {"access_token": "new-access-secret", "expires_in": 3600}

    inner = SQLiteStore(tmp_path / "t.db")
    store = EncryptedStore(inner, _ring(KEY_A))
    with TokenManager("ml", FunctionSource(fetch), store) as manager:
        manager.seed(access_token=ACCESS, refresh_token=REFRESH, expires_in=3600)
    raw = inner.load("ml")
    assert raw is not None and raw.access_token is not None
    _tamper(inner, "ml", access_token=_flip(raw.access_token))

    with TokenManager("ml", FunctionSource(fetch), store) as manager:
        for _ in range(2):  # the same clear error every time: no loop, no refresh attempt
            with pytest.raises(StoreDecryptionError) as caught:
                manager.token()
            assert isinstance(caught.value, StoreCorrupted)
    assert calls == []
    message = str(caught.value)
    assert caught.value.reason == "tampered"
    for part in (str(tmp_path / "t.db"), "'ml'", "access_token", _id(KEY_A), "--delete-unreadable"):
        assert part in message
    for secret in (*SECRETS, raw.access_token):
        assert secret not in message


async def test_tampered_ciphertext_surfaces_through_atoken(tmp_path: Path) -> None:
    inner = SQLiteStore(tmp_path / "t.db")
    store = EncryptedStore(inner, _ring(KEY_A))
    assert store.compare_and_set(secret_record(), 0)
    raw = inner.load("ml")
    assert raw is not None and raw.refresh_token is not None
    _tamper(inner, "ml", refresh_token=raw.refresh_token[:-10])  # truncated
    manager = TokenManager("ml", FunctionSource(lambda _t: "x"), store)
    with pytest.raises(StoreDecryptionError, match="refresh_token"):
        await manager.atoken()
    manager.close()


def test_ciphertext_moved_to_another_field_or_record_fails(tmp_path: Path) -> None:
    inner = SQLiteStore(tmp_path / "t.db")
    store = EncryptedStore(inner, _ring(KEY_A))
    assert store.compare_and_set(secret_record("a"), 0)
    assert store.compare_and_set(replace(secret_record("b"), access_token="other"), 0)
    a = inner.load("a")
    assert a is not None
    _tamper(inner, "b", access_token=a.access_token)  # a's token copied into b
    with pytest.raises(StoreDecryptionError) as caught:
        store.load("b")
    assert (caught.value.reason, caught.value.field, caught.value.record_key) == (
        "tampered",
        "access_token",
        "b",
    )
    _tamper(inner, "a", refresh_token=a.access_token)  # a's access token as its refresh token
    with pytest.raises(StoreDecryptionError, match="field refresh_token"):
        store.load("a")
    _tamper(inner, "a", refresh_token=a.refresh_token, extra={**a.extra, "id_token": "twenc:v1:"})
    with pytest.raises(StoreDecryptionError, match=r"field extra\.id_token") as caught:
        store.load("a")
    assert caught.value.reason == "tampered"


@pytest.mark.e2e
def test_importing_needs_no_cryptography() -> None:
    code = (
        "import sys, tokenward.stores, tokenward.cli, tokenward.config; "
        "assert 'cryptography' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


# -- migration from plaintext -----------------------------------------------------------------
def test_plaintext_store_migrates_on_write_and_on_rekey(tmp_path: Path) -> None:
    inner = SQLiteStore(tmp_path / "t.db")
    assert inner.compare_and_set(secret_record("written"), 0)
    assert inner.compare_and_set(secret_record("rekeyed"), 0)
    assert inner.compare_and_set(Record("no-secrets", 1, extra={"count": 1}), 0)
    store = EncryptedStore(inner, _ring(KEY_A))

    old = store.load("written")
    assert old is not None and old.to_dict() == secret_record("written").to_dict()
    with TokenManager("written", FunctionSource(lambda _t: "x"), store) as manager:
        assert manager.token().access_token == ACCESS  # still fresh: served as it was
        manager.seed(access_token="seeded-secret", expires_in=3600)
    raw = inner.load("written")
    assert raw is not None and raw.extra[MARKER] == "v1"
    assert raw.access_token and raw.access_token.startswith("twenc:v1:")
    assert raw.refresh_token and raw.refresh_token.startswith("twenc:v1:")

    report = store.rekey()
    assert (report.encrypted, report.rekeyed, report.current) == (1, 0, 2)
    rekeyed = store.load("rekeyed")
    assert rekeyed is not None and rekeyed.version == 2
    assert replace(rekeyed, version=1, updated_at=0) == replace(
        secret_record("rekeyed"), updated_at=0
    )
    inner.close()
    data = b"".join(p.read_bytes() for p in tmp_path.iterdir())
    for secret in (ACCESS, REFRESH, ID_TOKEN, "seeded-secret"):
        assert secret.encode() not in data


def test_plaintext_in_an_encrypted_record_is_refused(tmp_path: Path) -> None:
    inner = SQLiteStore(tmp_path / "t.db")
    store = EncryptedStore(inner, _ring(KEY_A))
    assert store.compare_and_set(secret_record(), 0)
    _tamper(inner, "ml", access_token=ACCESS)  # a hand edit, or a writer without the keys
    with pytest.raises(StoreDecryptionError) as caught:
        store.load("ml")
    assert caught.value.reason == "plaintext" and ACCESS not in str(caught.value)
    report = store.rekey()
    assert report.failed and report.failed[0][0] == "ml" and ACCESS not in report.failed[0][1]
    assert store.rekey(delete_unreadable=True).deleted == 1
    assert inner.load("ml") is None


# -- keys and messages ------------------------------------------------------------------------
def test_key_forms_and_ids() -> None:
    raw = bytes(range(32))
    import base64

    forms = [
        raw.hex(),
        raw.hex().upper(),
        base64.b64encode(raw).decode(),
        base64.urlsafe_b64encode(raw).decode().rstrip("="),
    ]
    assert {parse_key(form) for form in forms} == {raw}
    ring = Keyring([*forms, raw, generate_key()])
    assert ring.ids == (key_id(raw), ring.ids[1]) and len(ring.ids[0]) == 8
    assert ring.current == key_id(raw)
    assert "Keyring(ids=" in repr(ring) and raw.hex() not in repr(ring)


@pytest.mark.parametrize("bad", ["short", "x" * 64, KEY_A[:-4], KEY_B + "00", ""])
def test_bad_keys_are_refused_without_showing_them(bad: str) -> None:
    with pytest.raises(ValueError) as caught:
        Keyring([bad], ["env:MY_KEY"])
    assert "env:MY_KEY" in str(caught.value) and "256-bit" in str(caught.value)
    if bad:
        assert bad not in str(caught.value)


def test_no_key_or_token_in_any_message_or_repr(tmp_path: Path) -> None:
    inner = SQLiteStore(tmp_path / "t.db")
    store = EncryptedStore(inner, _ring(KEY_A, KEY_B))
    assert store.compare_and_set(secret_record(), 0)
    raw = inner.load("ml")
    assert raw is not None and raw.access_token and raw.refresh_token
    messages = [repr(store), repr(store.keyring), repr(store.load("ml"))]
    for ring, change in [
        (_ring(KEY_B), {}),
        (_ring(KEY_A), {"access_token": _flip(raw.access_token)}),
        (_ring(KEY_A), {"refresh_token": REFRESH}),
    ]:
        _tamper(inner, "ml", **change)
        with pytest.raises(StoreError) as caught:
            EncryptedStore(inner, ring).load("ml")
        messages.append(str(caught.value))
    for message in messages:
        for secret in (*SECRETS, raw.access_token, raw.refresh_token):
            assert secret not in message, message


# -- configuration ----------------------------------------------------------------------------
def test_config_encryption_keys(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TW_KEY_NEW", KEY_B)
    (tmp_path / "old.key").write_text(KEY_A + "\n")
    data = {
        "store": {
            "url": "sqlite://tokens.db",
            "encryption_keys": ["env:TW_KEY_NEW", "file:old.key"],
        },
        "credentials": {"api": {"grant": "api_key", "api_key": "env:X", "token_url": "http://x"}},
    }
    config = parse_config(data, tmp_path / "tokenward.toml")
    store = config.store_for(config.credential_config("api"))
    assert isinstance(store, EncryptedStore) and store.keyring.ids == (_id(KEY_B), _id(KEY_A))
    assert store.location == str(tmp_path / "tokens.db")
    config.close()

    inline = {"store": {"encryption_keys": [KEY_A]}}
    with pytest.raises(ConfigError, match="must be a reference") as caught:
        parse_config(inline, tmp_path / "tokenward.toml")
    assert KEY_A not in str(caught.value)

    monkeypatch.setenv("TW_KEY_NEW", "not-a-key")
    broken = parse_config(data, tmp_path / "tokenward.toml")
    with pytest.raises(ConfigError, match="TW_KEY_NEW") as caught:
        broken.store_for(broken.credential_config("api"))
    assert "not-a-key" not in str(caught.value)


def test_encryption_key_env_encrypts_the_default_store(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tokenward.stores.default import default_store

    monkeypatch.setenv("TOKENWARD_STORE", f"sqlite://{tmp_path}/d.db")
    monkeypatch.delenv(ENCRYPTION_KEY_ENV, raising=False)
    plain = default_store()
    assert isinstance(plain, SQLiteStore)
    plain.close()
    monkeypatch.setenv(ENCRYPTION_KEY_ENV, f"{KEY_B}, {KEY_A}")
    store = default_store()
    assert isinstance(store, EncryptedStore) and store.keyring.ids == (_id(KEY_B), _id(KEY_A))
    store.close()


# -- tokenward rekey --------------------------------------------------------------------------
@pytest.fixture
def rekey_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A configuration whose store is encrypted with $TW_KEYS, holding two credentials."""
    monkeypatch.delenv("TOKENWARD_CONFIG", raising=False)
    monkeypatch.delenv("TOKENWARD_STORE", raising=False)
    monkeypatch.delenv(ENCRYPTION_KEY_ENV, raising=False)
    monkeypatch.setenv("TW_NEW", KEY_B)
    monkeypatch.setenv("TW_OLD", KEY_A)
    path = tmp_path / "tokenward.toml"
    path.write_text(
        '[store]\nurl = "sqlite://tokens.db"\n'
        'encryption_keys = ["env:TW_NEW", "env:TW_OLD"]\n\n'
        '[credentials.ml]\nclient_id = "1"\ntoken_url = "http://127.0.0.1:9/token"\n'
    )
    path.chmod(0o600)
    inner = SQLiteStore(tmp_path / "tokens.db")
    old = EncryptedStore(inner, _ring(KEY_A))
    assert old.compare_and_set(secret_record("ml"), 0)
    assert old.compare_and_set(secret_record("other"), 0)
    assert inner.compare_and_set(secret_record("legacy"), 0)  # plaintext, before encryption
    inner.close()
    return path


def test_rekey_command(rekey_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    runner = CliRunner()
    args = ["rekey", "--config", str(rekey_env)]
    dry = runner.invoke(cli, [*args, "--dry-run"])
    assert dry.exit_code == 0, dry.output
    assert f"would re-encrypt 3 record(s) with key {_id(KEY_B)}" in dry.stdout
    assert "(2 from older keys, 1 from plaintext), 0 already current" in dry.stdout

    done = runner.invoke(cli, args)
    assert done.exit_code == 0, done.output
    assert "re-encrypted 3 record(s)" in done.stdout
    again = runner.invoke(cli, args)
    assert "re-encrypted 0 record(s)" in again.stdout and "3 already current" in again.stdout

    monkeypatch.delenv("TW_OLD")
    rekey_env.write_text(rekey_env.read_text().replace(', "env:TW_OLD"', ""))
    only_new = EncryptedStore(SQLiteStore(rekey_env.parent / "tokens.db"), _ring(KEY_B))
    for key in ("ml", "other", "legacy"):
        assert only_new.load(key).access_token == ACCESS  # type: ignore[union-attr]
    raw = only_new.inner.load("ml")
    assert raw is not None and raw.access_token and raw.refresh_token
    _tamper(only_new.inner, "ml", refresh_token=_flip(raw.refresh_token))
    only_new.close()

    broken = runner.invoke(cli, args)
    assert broken.exit_code == 1
    assert "1 failed" in broken.stdout and "does not authenticate" in broken.stderr
    for secret in (*SECRETS, raw.refresh_token):
        assert secret not in broken.output
    assert "'ml'" in broken.stderr and "field refresh_token" in broken.stderr

    cleaned = runner.invoke(cli, [*args, "--delete-unreadable"])
    assert cleaned.exit_code == 0 and "1 unreadable deleted" in cleaned.stdout


def test_delete_unreadable_keeps_records_of_a_missing_key(tmp_path: Path) -> None:
    inner = SQLiteStore(tmp_path / "t.db")
    assert EncryptedStore(inner, _ring(KEY_A)).compare_and_set(secret_record(), 0)
    report = EncryptedStore(inner, _ring(KEY_B)).rekey(delete_unreadable=True)
    assert report.deleted == 0 and report.failed[0][0] == "ml"
    assert "not configured" in report.failed[0][1]
    assert EncryptedStore(inner, _ring(KEY_A)).load("ml") is not None
    inner.close()


def test_rekey_without_keys_is_a_configuration_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(ENCRYPTION_KEY_ENV, raising=False)
    path = tmp_path / "tokenward.toml"
    path.write_text('[store]\nurl = "sqlite://tokens.db"\n')
    result = CliRunner().invoke(cli, ["rekey", "--config", str(path)])
    assert result.exit_code == 2 and "no encryption keys are configured" in result.stderr


@pytest.mark.e2e
def test_rekey_in_a_subprocess(rekey_env: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TOKENWARD_")}
    done = subprocess.run(
        [str(TOKENWARD), "rekey", "--config", str(rekey_env)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert f"re-encrypted 3 record(s) with key {_id(KEY_B)}" in done.stdout
    for secret in SECRETS:
        assert secret not in done.stdout + done.stderr
    store = EncryptedStore(SQLiteStore(rekey_env.parent / "tokens.db"), _ring(KEY_B))
    assert store.rekey(dry_run=True).current == 3
    store.close()


def test_encrypted_store_opened_without_keys_sends_nothing(tmp_path: Path) -> None:
    """Ciphertext read through a plain store must never reach the provider as a token."""
    calls: list[object] = []

    def fetch(current: object) -> dict[str, Any]:
        calls.append(current)
        return {"access_token": "new-access-secret", "expires_in": 3600}

    inner = SQLiteStore(tmp_path / "t.db")
    with TokenManager("ml", FunctionSource(fetch), EncryptedStore(inner, _ring(KEY_A))) as manager:
        manager.seed(access_token=ACCESS, refresh_token=REFRESH, expires_in=3600)
    with TokenManager("ml", FunctionSource(fetch), inner) as manager:
        with pytest.raises(StoreError) as caught:
            manager.token()
        with pytest.raises(StoreError):
            manager.refresh()
    assert calls == []
    message = str(caught.value)
    assert "encryption_keys" in message and str(tmp_path / "t.db") in message
    for secret in SECRETS:
        assert secret not in message


def test_record_knows_when_its_secrets_are_sealed(tmp_path: Path) -> None:
    """The store layer, not the protocol, tells ciphertext read without the keys apart."""
    inner = SQLiteStore(tmp_path / "t.db")
    keyed = EncryptedStore(inner, _ring(KEY_A))
    with TokenManager("ml", FunctionSource(lambda _: "x"), keyed) as manager:
        manager.seed(access_token=ACCESS, refresh_token=REFRESH, expires_in=3600)
    opened, raw = keyed.load("ml"), inner.load("ml")
    assert opened is not None and raw is not None
    assert not opened.sealed and raw.sealed
    opened.ensure_readable(keyed.location)
    with pytest.raises(StoreError, match="encryption_keys"):
        raw.ensure_readable(inner.location)
    inner.close()
