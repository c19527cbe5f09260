"""The `[broker]` table of `tokenward.toml`: where the broker listens, its limits, and which
clients may do what.

Why here and not in `tokenward.config`: the broker is an optional layer (the `broker` extra);
the core configuration only checks that `[broker]` is a table and keeps it as written
(`Config.broker`); this module types it, with the core's validator
(`tokenward.config.validate.check_table`), so errors name the table and the key the same way.

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
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, replace
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any

from ..config import Config, ConfigError, load_config
from ..config.validate import BOOL, STR, STR_LIST, TABLE, Check, check_table, table

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


def _number(*, integer: bool, positive: bool) -> Callable[[Any], bool]:
    """A check for a number (an int when `integer`), > 0 when `positive`, else >= 0."""

    def check(value: Any) -> bool:
        if isinstance(value, bool) or not isinstance(value, int if integer else int | float):
            return False
        return bool(value > 0 if positive else value >= 0)

    return check


_POSITIVE_NUMBER: Check = (_number(integer=False, positive=True), "positive (a number)")
_POSITIVE_INT: Check = (_number(integer=True, positive=True), "positive (an integer)")


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


#: Every key a policy (or a client's own overrides) may hold.
_POLICY_KEYS: dict[str, Check] = {
    "credentials": STR_LIST,
    "methods": STR_LIST,
    "paths": STR_LIST,
    "raw_tokens": BOOL,
    "cors_origins": STR_LIST,
    "rate": (_POSITIVE_NUMBER[0], "positive (a number per second)"),
    "burst": _POSITIVE_INT,
    "max_sessions": (_number(integer=True, positive=False), ">= 0 (an integer)"),
    "admin": BOOL,
}


def _policy(entry: Mapping[str, Any], base: Policy, where: str) -> Policy:
    check_table(entry, _POLICY_KEYS, where)
    changes: dict[str, Any] = {
        key: tuple(value) if isinstance(value, list) else value for key, value in entry.items()
    }
    if "methods" in changes:
        changes["methods"] = tuple(m.upper() for m in changes["methods"])
    if "rate" in changes:
        changes["rate"] = float(changes["rate"])
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
_LIMIT_KEYS: dict[str, Check] = {
    name: _POSITIVE_INT if kind is int else _POSITIVE_NUMBER for name, kind in _LIMIT_KINDS.items()
}


def _limits(entry: Mapping[str, Any], where: str) -> Limits:
    check_table(entry, _LIMIT_KEYS, where)
    return replace(Limits(), **{key: _LIMIT_KINDS[key](value) for key, value in entry.items()})


@dataclass(frozen=True, slots=True)
class BrokerConfig:
    """The parsed `[broker]` table."""

    host: str = "127.0.0.1"
    port: int = 8421
    limits: Limits = field(default_factory=Limits)
    clients: tuple[ClientEntry, ...] = ()
    #: Serve the example pages under `/examples/` (off by default).
    examples: bool = False


_TOP: dict[str, Check] = {
    "host": STR,
    "port": (
        lambda v: isinstance(v, int) and not isinstance(v, bool) and 0 <= v < 65536,
        "a port number",
    ),
    "examples": BOOL,
    "limits": TABLE,
    "policies": (TABLE[0], "a table of [broker.policies.NAME] tables"),
    "clients": (TABLE[0], "a table of [broker.clients.NAME] tables"),
}


def parse_broker(data: Mapping[str, Any], where: str = "[broker]") -> BrokerConfig:
    """Validate a decoded `[broker]` table."""
    check_table(data, _TOP, where)
    limits = _limits(data.get("limits", {}), f"{where}.limits")
    policies: dict[str, Policy] = {}
    for name, entry in data.get("policies", {}).items():
        at = f"{where}.policies.{name}"
        policies[name] = _policy(table(entry, at), Policy(), at)
    clients = []
    for name, entry in data.get("clients", {}).items():
        clients.append(_client(name, table(entry, f"{where}.clients.{name}"), policies, where))
    host = data.get("host", "127.0.0.1")
    return BrokerConfig(
        host, data.get("port", 8421), limits, tuple(clients), data.get("examples", False)
    )


def _client(
    name: str, entry: dict[str, Any], policies: Mapping[str, Policy], where: str
) -> ClientEntry:
    at = f"{where}.clients.{name}"
    rest = dict(entry)
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
    """The credentials configuration and its `[broker]` table, from one file read once: the
    broker builds on the core's typed `Config` (credentials validated there, not again)."""
    config = load_config(path)
    return config, parse_broker(config.broker, f"{config.path}: [broker]")


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
