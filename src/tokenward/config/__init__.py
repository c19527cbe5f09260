"""`tokenward.toml`: where credentials, their providers and the store are described.

Why a file at all: the same credential is used by scripts, the CLI and the broker; one
description keeps them in agreement. Why secret *references* (`env:NAME`, `file:PATH`): the file
can then be committed or shared without leaking anything; an inline secret still works but
warns, and is refused outright when the file is readable by group or others.

    [store]
    url = "sqlite:///var/lib/tokenward/tokens.db"

    [credentials.ml]
    preset = "mercadolibre"
    client_id = "1234567890"
    client_secret = "env:ML_CLIENT_SECRET"

The file is read once into typed, frozen objects; every error is a `ConfigError` naming the
file, the table, the key and the fix. The package's modules, each with one concern:

    validate.py     the schema and the one validator (also used by the broker's `[broker]` table)
    files.py        finding and reading the file, presets, secret references, issuer discovery
    credentials.py  CredentialConfig, ProviderSettings, SessionCallSettings: one credential typed
    __init__.py     Config (the whole file, and the stores it opens), load_config, parse_config
"""

from __future__ import annotations

import os
import re
import stat
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from ..errors import ConfigError, InlineSecretWarning, ReadableSecretsWarning, did_you_mean
from ..stores.base import Store
from .credentials import (
    CredentialConfig,
    Grant,
    ProviderSettings,
    SessionCallSettings,
    parse_credential,
)
from .files import (
    CONFIG_ENV,
    candidate_paths,
    discover,
    find_config,
    load_preset,
    preset_names,
    read_config,
    resolve_reference,
    user_config_path,
)
from .validate import SECRET_KEYS, STORE_KEYS, TOP_KEYS, check_table, is_reference, table

if TYPE_CHECKING:
    from ..stores.encrypted import Keyring

__all__ = [
    "CONFIG_ENV",
    "Config",
    "ConfigError",
    "CredentialConfig",
    "Grant",
    "InlineSecretWarning",
    "ProviderSettings",
    "ReadableSecretsWarning",
    "SessionCallSettings",
    "StoreSettings",
    "candidate_paths",
    "discover",
    "find_config",
    "load_config",
    "load_preset",
    "parse_config",
    "preset_names",
    "resolve_reference",
    "user_config_path",
]


@dataclass(frozen=True)
class StoreSettings:
    """The `[store]` table."""

    #: The store URL (None: `$TOKENWARD_STORE`, else the default SQLite file).
    url: str | None = None
    #: References to the keys every store is encrypted with (the first writes, all read);
    #: none: `$TOKENWARD_ENCRYPTION_KEY`, else no encryption.
    encryption_keys: tuple[str, ...] = ()


def load_config(path: str | os.PathLike[str] | None = None) -> Config:
    """Find, read and validate the configuration (secrets are resolved later, on use)."""
    found, data, mode = read_config(path)
    return parse_config(data, found, mode)


def parse_config(data: Mapping[str, Any], path: Path, mode: int = 0o600) -> Config:
    """Validate a decoded configuration that came from `path` (with file mode `mode`)."""
    check_table(data, TOP_KEYS, str(path))
    store = _store(data.get("store", {}), path)
    credentials: dict[str, CredentialConfig] = {}
    for key, entry in data.get("credentials", {}).items():
        where = f"{path}: [credentials.{key}]"
        if not isinstance(entry, dict):
            raise ConfigError(f"{where}: expected a table, got {type(entry).__name__}")
        credentials[key] = parse_credential(key, entry, path)
    _check_inline_secrets(credentials, path, mode)
    broker = MappingProxyType(table(data.get("broker", {}), f"{path}: [broker]"))
    return Config(path, store, credentials, broker)


def _store(entry: Mapping[str, Any], path: Path) -> StoreSettings:
    check_table(entry, STORE_KEYS, f"{path}: [store]")
    keys = entry.get("encryption_keys", [])
    for index, reference in enumerate(keys):
        if not is_reference(reference):  # a key written inline would defeat its purpose
            raise ConfigError(
                f"{path}: [store] encryption_keys[{index}] must be a reference (env:NAME or "
                "file:PATH), not the key itself"
            )
    return StoreSettings(entry.get("url"), tuple(keys))


def _inline_secrets(credential: CredentialConfig) -> list[str]:
    return [
        key
        for key in sorted(SECRET_KEYS)
        if isinstance(value := getattr(credential.provider, key), str) and not is_reference(value)
    ]


def _check_inline_secrets(
    credentials: Mapping[str, CredentialConfig], path: Path, mode: int
) -> None:
    inline = [
        f"[credentials.{c.key}] {key}" for c in credentials.values() for key in _inline_secrets(c)
    ]
    if not inline:
        return
    if mode & 0o077:
        raise ConfigError(
            f"{path} is readable by group or others and holds an inline secret "
            f"({', '.join(inline)}). Run `chmod 600 {path}`, or replace the value with a "
            "reference such as env:NAME or file:PATH."
        )
    warnings.warn(
        f"{path}: {', '.join(inline)} written inline; prefer env:NAME or file:PATH",
        InlineSecretWarning,
        stacklevel=3,
    )


def _check_dotenv_mode(path: Path, credential: CredentialConfig) -> None:
    """Warn when a `.env` store is readable by group or others: it holds the refresh token, and
    usually the client secret the configuration references (`env:NAME` exported from it). The
    configuration file is held to the same rule (refused there, as it is ours to fix)."""
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
        text = path.read_text(encoding="utf-8", errors="replace") if mode & 0o077 else ""
    except OSError:
        return  # missing (created 0600 on first write) or unreadable: the store will say
    if not mode & 0o077:
        return
    held = [
        str(value)[4:]
        for key in sorted(SECRET_KEYS)
        if str(value := getattr(credential.provider, key) or "").startswith("env:")
        and re.search(rf"^\s*(?:export\s+)?{re.escape(str(value)[4:])}\s*=", text, re.M)
    ]
    what = f"the secret {', '.join(held)} and tokens" if held else "tokens"
    warnings.warn(
        f"{path} holds {what} and is readable by group or others (mode {mode:o}). "
        f"Run `chmod 600 {path}`.",
        ReadableSecretsWarning,
        stacklevel=4,
    )


@dataclass
class Config:
    """A validated configuration file, and the stores opened for its credentials (cached, so
    credentials sharing a store share one connection; `close()` closes them)."""

    path: Path | None
    store: StoreSettings = field(default_factory=StoreSettings)
    credentials: dict[str, CredentialConfig] = field(default_factory=dict)
    #: The `[broker]` table as written: `tokenward.broker.config.broker_config` types it.
    broker: Mapping[str, Any] = field(default_factory=dict, repr=False)
    _stores: dict[str, Store] = field(default_factory=dict, repr=False)

    @property
    def store_url(self) -> str | None:
        return self.store.url

    @property
    def encryption_keys(self) -> tuple[str, ...]:
        return self.store.encryption_keys

    def credential_config(self, key: str) -> CredentialConfig:
        found = self.credentials.get(key)
        if found is None:
            known = ", ".join(sorted(self.credentials)) or "none"
            raise ConfigError(
                f"{self.path}: no [credentials.{key}] table{did_you_mean(key, self.credentials)} "
                f"(configured: {known}). Add one with `tokenward add {key} --preset ...`."
            )
        return found

    def store_for(self, credential: CredentialConfig) -> Store:
        """The credential's own store when it names one, else the configuration's."""
        url = credential.store or self.store.url
        if url is None:
            return self._cached("", lambda: _default_store(self.keyring()))
        mapping = credential.store_variables
        key = url + (f"#{credential.key}" if mapping else "")
        return self._cached(key, lambda: self._encrypted(self._open(url, credential, mapping)))

    def keyring(self) -> Keyring | None:
        """The encryption keys (`[store] encryption_keys`, else `$TOKENWARD_ENCRYPTION_KEY`),
        resolved now; None when there are none. Errors name the reference, never the key."""
        from ..stores.encrypted import Keyring, keyring_from_env

        where = f"{self.path}: [store] encryption_keys"
        references = self.store.encryption_keys
        try:
            if not references:
                return keyring_from_env()
            path = self.path or Path.cwd() / "tokenward.toml"
            names = [f"{where}[{i}] ({ref})" for i, ref in enumerate(references)]
            values = [
                resolve_reference(ref, path, name)
                for ref, name in zip(references, names, strict=True)
            ]
            return Keyring(values, names)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None

    def _encrypted(self, store: Store) -> Store:
        from ..stores.encrypted import encrypt_store

        return encrypt_store(store, self.keyring())

    def _cached(self, key: str, factory: Callable[[], Store]) -> Store:
        if key not in self._stores:
            self._stores[key] = factory()
        return self._stores[key]

    def _open(
        self, url: str, credential: CredentialConfig, mapping: Mapping[str, str] | None
    ) -> Store:
        from ..stores.url import open_store, url_path

        url = self._anchor(url)
        try:
            if url.startswith("dotenv://"):
                _check_dotenv_mode(Path(url_path(url)), credential)
            if mapping and url.startswith("dotenv://"):
                from ..stores.dotenv import DotenvStore

                return DotenvStore(url_path(url), {credential.key: dict(mapping)})
            return open_store(url)
        except ValueError as exc:
            raise ConfigError(f"{self.path}: store URL: {exc}") from None

    def _anchor(self, url: str) -> str:
        """Relative store paths are relative to the configuration file, not the cwd."""
        scheme, _sep, rest = url.partition("://")
        if self.path is None or scheme not in ("sqlite", "file", "dotenv") or not rest:
            return url
        if rest.startswith(("/", "~")):
            return url
        return f"{scheme}://{(self.path.parent / rest).resolve()}"

    def close(self) -> None:
        for store in self._stores.values():
            store.close()
        self._stores.clear()


def _default_store(keys: Keyring | None = None) -> Store:
    from ..stores.default import default_store

    return default_store(keys)
