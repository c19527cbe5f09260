"""The `[broker]` table of `tokenward.toml`: where the broker listens, its limits, and which
clients may do what.

Why here and not in `tokenward.config`: the broker is an optional layer (the `broker` extra);
the core configuration only has to tolerate a `[broker]` table, and this module reads it from
the same TOML data. Errors are `ConfigError`s naming the table and the key, like the core's.

    [broker]
    host = "127.0.0.1"
    port = 8421

    [broker.limits]
    max_body_bytes = 10_485_760
    upstream_timeout = 30.0

    [broker.policies.frontend]
    credentials = ["avatar"]
    paths = ["/v1/streaming.*"]
    cors_origins = ["https://app.example.com"]
    max_sessions = 2

    [broker.clients.web]
    key_sha256 = "3f1c..."          # written by `tokenward broker add-client web`
    policy = "frontend"

Client keys are stored only as SHA-256 hashes (see `hash_key` for why SHA-256 suffices).
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import secrets
import stat
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any

from ..config import Config, ConfigError, find_config, parse_config

__all__ = [
    "KEY_PREFIX",
    "BrokerConfig",
    "ClientEntry",
    "Limits",
    "Policy",
    "client_table",
    "hash_key",
    "known_client_names",
    "load_broker",
    "new_key",
    "parse_broker",
]

KEY_PREFIX = "twk_"
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")


def new_key() -> str:
    """A new client key: `twk_` and 256 random bits (43 URL-safe characters)."""
    return KEY_PREFIX + secrets.token_urlsafe(32)


def hash_key(key: str) -> str:
    """The stored form of a client key: its SHA-256, hex.

    Why a plain SHA-256 and not bcrypt/scrypt/argon2: slow hashes protect *low-entropy* secrets
    (passwords) against offline guessing. Broker keys are 256 random bits, so guessing one from
    its hash is hopeless whatever the hash speed, and a fast hash keeps per-request
    authentication cheap. The hash is compared in constant time (`ClientEntry.matches`).
    """
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def _check(value: Any, kind: type | tuple[type, ...], where: str, expected: str) -> Any:
    if isinstance(value, bool) and kind is not bool:
        raise ConfigError(f"{where} must be {expected}, got {value!r}")
    if not isinstance(value, kind):
        raise ConfigError(f"{where} must be {expected}, got {value!r}")
    return value


def _str_list(value: Any, where: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"{where} must be a list of strings, got {value!r}")
    return tuple(value)


@dataclass(frozen=True, slots=True)
class Policy:
    """What one client may do. Everything not granted is refused (403 with a reason)."""

    #: Credential names (fnmatch globs) the client may use.
    credentials: tuple[str, ...] = ()
    #: HTTP methods it may proxy (`*` for any).
    methods: tuple[str, ...] = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE")
    #: Upstream paths (relative to the credential's base_url, with a leading `/`; fnmatch
    #: globs, where `*` also matches `/`) it may proxy.
    paths: tuple[str, ...] = ("/*",)
    #: Whether it may receive raw tokens (`POST /v1/credentials/{name}/token`).
    raw_tokens: bool = False
    #: Browser origins allowed to call the broker with this client's key (CORS).
    cors_origins: tuple[str, ...] = ()
    #: Token bucket: sustained requests per second, and the burst size.
    rate: float = 50.0
    burst: int = 100
    #: Concurrent broker sessions (`POST /v1/sessions`); 0 forbids sessions.
    max_sessions: int = 0
    #: May force refreshes (`POST /v1/credentials/{name}/refresh`).
    admin: bool = False

    def allows_credential(self, name: str) -> bool:
        if "*" in self.credentials:  # matches any name: no pattern match needed
            return True
        return any(fnmatchcase(name, pattern) for pattern in self.credentials)

    def allows_method(self, method: str) -> bool:
        return "*" in self.methods or method.upper() in self.methods

    def allows_path(self, path: str) -> bool:
        for pattern in self.paths:  # `*` matches any path, `/*` any path starting with /
            if pattern == "*" or (pattern == "/*" and path[:1] == "/"):
                return True
            if fnmatchcase(path, pattern):
                return True
        return False


_POLICY_KEYS = {f.name for f in fields(Policy)}


def _policy(table: Mapping[str, Any], base: Policy, where: str) -> Policy:
    changes: dict[str, Any] = {}
    for key, value in table.items():
        at = f"{where} {key}"
        if key in ("credentials", "paths", "cors_origins"):
            changes[key] = _str_list(value, at)
        elif key == "methods":
            changes[key] = tuple(m.upper() for m in _str_list(value, at))
        elif key in ("raw_tokens", "admin"):
            changes[key] = _check(value, bool, at, "true or false")
        elif key == "rate":
            changes[key] = float(_check(value, (int, float), at, "a number (per second)"))
            if changes[key] <= 0:
                raise ConfigError(f"{at} must be positive")
        elif key in ("burst", "max_sessions"):
            changes[key] = _check(value, int, at, "an integer")
            if changes[key] < 0 or (key == "burst" and changes[key] == 0):
                raise ConfigError(f"{at} must be {'positive' if key == 'burst' else '>= 0'}")
        else:
            raise ConfigError(
                f"{where}: unknown key {key!r} (known: {', '.join(sorted(_POLICY_KEYS))})"
            )
    for path in changes.get("paths", ()):
        if not path.startswith(("/", "*")):
            raise ConfigError(f"{where} paths: {path!r} must start with / (or *)")
    return replace(base, **changes)


@dataclass(frozen=True, slots=True)
class ClientEntry:
    """A broker client: its name, its key hash, and its policy."""

    name: str
    key_sha256: str = field(repr=False)
    policy: Policy

    def matches(self, presented_hash: str) -> bool:
        """Constant-time comparison of hashes (no timing hint about how much matched)."""
        return hmac.compare_digest(self.key_sha256, presented_hash)


@dataclass(frozen=True, slots=True)
class Limits:
    """Resource limits of the broker (per request, per session)."""

    #: Largest request body the proxy accepts (413 beyond).
    max_body_bytes: int = 10 * 1024 * 1024
    #: Bodies up to this size are buffered so that a request can be replayed after an expiry;
    #: larger ones are streamed (and a rejected token is retired, but not replayed).
    replay_buffer_bytes: int = 1024 * 1024
    #: Seconds the upstream may take to answer (connect, and between bytes): 504 beyond.
    upstream_timeout: float = 30.0
    #: Seconds without keepalive after which a broker session is closed (and stopped upstream).
    session_idle_timeout: float = 120.0
    #: How often the idle-session reaper looks.
    reap_interval: float = 5.0
    #: Largest request body of every route but the proxy (413 beyond, before it is read).
    max_request_bytes: int = 16 * 1024
    #: Failed authentications one source address may make at once (then 429) ...
    auth_failure_burst: int = 10
    #: ... and per second after that.
    auth_failure_rate: float = 1.0
    #: The same across all source addresses (see `broker.lockout`).
    auth_failure_global_burst: int = 100
    auth_failure_global_rate: float = 20.0


_LIMIT_KINDS: dict[str, type] = {f.name: type(getattr(Limits(), f.name)) for f in fields(Limits)}


def _limits(table: Mapping[str, Any], where: str) -> Limits:
    changes: dict[str, Any] = {}
    for key, value in table.items():
        kind = _LIMIT_KINDS.get(key)
        if kind is None:
            known = ", ".join(sorted(_LIMIT_KINDS))
            raise ConfigError(f"{where}: unknown key {key!r} (known: {known})")
        expected = "an integer" if kind is int else "a number"
        allowed: tuple[type, ...] = (int,) if kind is int else (int, float)
        number = _check(value, allowed, f"{where} {key}", expected)
        if number <= 0:
            raise ConfigError(f"{where} {key} must be positive")
        changes[key] = kind(number)
    return replace(Limits(), **changes)


@dataclass(frozen=True, slots=True)
class BrokerConfig:
    """The parsed `[broker]` table."""

    host: str = "127.0.0.1"
    port: int = 8421
    limits: Limits = field(default_factory=Limits)
    clients: tuple[ClientEntry, ...] = ()
    #: Serve the example pages under `/examples/` (off by default).
    examples: bool = False


_TOP = {"host", "port", "examples", "limits", "policies", "clients"}


def parse_broker(data: Mapping[str, Any], where: str = "[broker]") -> BrokerConfig:
    """Validate a decoded `[broker]` table."""
    for key in data:
        if key not in _TOP:
            raise ConfigError(f"{where}: unknown key {key!r} (known: {', '.join(sorted(_TOP))})")
    host = _check(data.get("host", "127.0.0.1"), str, f"{where} host", "a string")
    port = _check(data.get("port", 8421), int, f"{where} port", "a port number")
    if not 0 <= port < 65536:
        raise ConfigError(f"{where} port must be a port number, got {port}")
    examples = _check(data.get("examples", False), bool, f"{where} examples", "true or false")
    limits = _limits(_table(data.get("limits", {}), f"{where} limits"), f"{where}.limits")
    policies: dict[str, Policy] = {}
    for name, table in _table(data.get("policies", {}), f"{where} policies").items():
        at = f"{where}.policies.{name}"
        policies[name] = _policy(_table(table, at), Policy(), at)
    clients = []
    for name, table in _table(data.get("clients", {}), f"{where} clients").items():
        clients.append(_client(name, _table(table, f"{where}.clients.{name}"), policies, where))
    return BrokerConfig(host, port, limits, tuple(clients), examples)


def _table(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ConfigError(f"{where} must be a table, got {type(value).__name__}")
    return value


def _client(
    name: str, table: dict[str, Any], policies: Mapping[str, Policy], where: str
) -> ClientEntry:
    at = f"{where}.clients.{name}"
    rest = dict(table)
    digest = rest.pop("key_sha256", None)
    if not isinstance(digest, str) or not _HEX64.match(digest):
        raise ConfigError(
            f"{at}: key_sha256 must be the 64 hex digits written by "
            f"`tokenward broker add-client {name}`"
        )
    base = Policy()
    if "policy" in rest:
        named = rest.pop("policy")
        if named not in policies:
            known = ", ".join(sorted(policies)) or "none"
            raise ConfigError(f"{at}: unknown policy {named!r} (defined: {known})")
        base = policies[named]
    return ClientEntry(name, digest, _policy(rest, base, at))


def load_broker(path: str | os.PathLike[str] | None = None) -> tuple[Config, BrokerConfig]:
    """The credentials configuration and its `[broker]` table, from one file."""
    found = find_config(path)
    try:
        data = tomllib.loads(found.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{found}: cannot read the configuration: {exc}") from None
    broker = _table(data.get("broker", {}), f"{found}: [broker]")
    core = {k: v for k, v in data.items() if k != "broker"}
    config = parse_config(core, found, stat.S_IMODE(found.stat().st_mode))
    return config, parse_broker(broker, f"{found}: [broker]")


def client_table(
    name: str,
    digest: str,
    *,
    policy: str | None = None,
    credentials: tuple[str, ...] = (),
    raw_tokens: bool = False,
    origins: tuple[str, ...] = (),
    max_sessions: int | None = None,
) -> str:
    """The TOML text of a `[broker.clients.NAME]` table (appended by `add-client`)."""
    if not _NAME.match(name):
        raise ConfigError(f"client name {name!r}: use letters, digits, '_', '-', '.'")

    def strings(values: tuple[str, ...]) -> str:
        return "[" + ", ".join(_quote(v) for v in values) + "]"

    lines = [f"\n[broker.clients.{name}]", f'key_sha256 = "{digest}"']
    if policy is not None:
        lines.append(f"policy = {_quote(policy)}")
    if credentials:
        lines.append(f"credentials = {strings(credentials)}")
    if raw_tokens:
        lines.append("raw_tokens = true")
    if origins:
        lines.append(f"cors_origins = {strings(origins)}")
    if max_sessions is not None:
        lines.append(f"max_sessions = {max_sessions}")
    return "\n".join(lines) + "\n"


def _quote(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def known_client_names(path: Path) -> set[str]:
    """Client names already in the file's `[broker.clients]` table."""
    data = tomllib.loads(path.read_text(encoding="utf-8"))
    clients = data.get("broker", {}).get("clients", {})
    return set(clients) if isinstance(clients, dict) else set()
