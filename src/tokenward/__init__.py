"""tokenward: keeps API credentials alive.

Proactive refresh before expiry, exactly one refresh per expiry across threads, event loops and
processes, one replay of a request that met an expired-token answer, rotated refresh tokens
persisted before use, and secrets that never reach a log.

    import httpx2
    from tokenward import RefreshTokenGrant, TokenAuth, TokenManager

    manager = TokenManager("ml", RefreshTokenGrant(token_url, client_id, client_secret))
    client = httpx2.Client(auth=TokenAuth(manager))

Every public name is importable from here, but only the exceptions are loaded by `import
tokenward`: the rest is imported on first use (PEP 562 `__getattr__`), so a program that needs
the core never pays for (or needs the extras of) the broker, the CLI, sessions, the network
stores or the requests/aiohttp/MCP integrations. The `TYPE_CHECKING` block tells type checkers
and IDEs where each name lives.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

from .errors import (
    AuthorizationDenied,
    ConfigError,
    CredentialNotSeeded,
    InlineSecretWarning,
    LeaseTimeout,
    MalformedTokenResponse,
    ManagerClosed,
    ReadableSecretsWarning,
    ReauthorizationRequired,
    RefreshFailed,
    RequestRejected,
    SessionClosed,
    SessionExpired,
    SessionScoped,
    StopFailed,
    StoreCorrupted,
    StoreError,
    TokenReused,
    TokenwardError,
    TransientError,
)

if TYPE_CHECKING:
    from .configured import Credential, credential
    from .events import Event, Subscription, subscribe
    from .integrations.httpx import TokenAuth
    from .integrations.mcp import McpLoginRequired as McpLoginRequired
    from .integrations.sdk import ExpiryGuard
    from .manager import RefreshPolicy, TokenManager
    from .retry import RetryPolicy
    from .rules import ExpiryRule
    from .sessions import Sessions
    from .sources import (
        ApiKeyExchange,
        ClientCredentialsGrant,
        FunctionSource,
        RefreshTokenGrant,
        Source,
    )
    from .stored_grant import RevocationConflict
    from .stores import (
        DotenvStore,
        EncryptedStore,
        JsonFileStore,
        MemoryStore,
        SQLiteStore,
        Store,
        open_store,
    )
    from .stores.encrypted import StoreDecryptionError
    from .stores.postgres import PostgresStore as PostgresStore
    from .stores.redis import RedisStore as RedisStore
    from .token import Grant, Token

__version__ = "0.1.0"

#: Public name -> the module that defines it, imported on first access. The network stores and
#: the MCP exception are left out of `__all__`, so `import *` does not need their extras.
_LAZY: dict[str, str] = {
    "ApiKeyExchange": ".sources",
    "ClientCredentialsGrant": ".sources",
    "Credential": ".configured",
    "DotenvStore": ".stores.dotenv",
    "EncryptedStore": ".stores.encrypted",
    "Event": ".events",
    "ExpiryGuard": ".integrations.sdk",
    "ExpiryRule": ".rules",
    "FunctionSource": ".sources",
    "Grant": ".token",
    "JsonFileStore": ".stores.file",
    "McpLoginRequired": ".integrations.mcp",
    "MemoryStore": ".stores.memory",
    "PostgresStore": ".stores.postgres",
    "RedisStore": ".stores.redis",
    "RefreshPolicy": ".manager",
    "RefreshTokenGrant": ".sources",
    "RetryPolicy": ".retry",
    "RevocationConflict": ".stored_grant",
    "SQLiteStore": ".stores.sqlite",
    "Sessions": ".sessions",
    "Source": ".sources",
    "Store": ".stores.base",
    "StoreDecryptionError": ".stores.encrypted",
    "Subscription": ".events",
    "Token": ".token",
    "TokenAuth": ".integrations.httpx",
    "TokenManager": ".manager",
    "credential": ".configured",
    "open_store": ".stores.url",
    "subscribe": ".events",
}

#: Subpackages and modules reachable as attributes (`tokenward.stores`) without an explicit
#: import, as they were when `import tokenward` loaded them all.
_SUBMODULES = frozenset(
    {
        "config",
        "configured",
        "events",
        "flow",
        "integrations",
        "liveness",
        "manager",
        "redact",
        "refresher",
        "retry",
        "rules",
        "session_hooks",
        "sessions",
        "sources",
        "stores",
        "token",
        "transport",
    }
)

__all__ = [
    "ApiKeyExchange",
    "AuthorizationDenied",
    "ClientCredentialsGrant",
    "ConfigError",
    "Credential",
    "CredentialNotSeeded",
    "DotenvStore",
    "EncryptedStore",
    "Event",
    "ExpiryGuard",
    "ExpiryRule",
    "FunctionSource",
    "Grant",
    "InlineSecretWarning",
    "JsonFileStore",
    "LeaseTimeout",
    "MalformedTokenResponse",
    "ManagerClosed",
    "MemoryStore",
    "ReadableSecretsWarning",
    "ReauthorizationRequired",
    "RefreshFailed",
    "RefreshPolicy",
    "RefreshTokenGrant",
    "RequestRejected",
    "RetryPolicy",
    "RevocationConflict",
    "SQLiteStore",
    "SessionClosed",
    "SessionExpired",
    "SessionScoped",
    "Sessions",
    "Source",
    "StopFailed",
    "Store",
    "StoreCorrupted",
    "StoreDecryptionError",
    "StoreError",
    "Subscription",
    "Token",
    "TokenAuth",
    "TokenManager",
    "TokenReused",
    "TokenwardError",
    "TransientError",
    "__version__",
    "credential",
    "open_store",
    "subscribe",
]


def __getattr__(name: str) -> Any:
    """Import a public name's module on first access, then keep the name here (PEP 562)."""
    module = _LAZY.get(name)
    if module is not None:
        value = getattr(import_module(module, __name__), name)
        globals()[name] = value  # next access skips __getattr__
        return value
    if name in _SUBMODULES:
        return import_module(f".{name}", __name__)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY, *_SUBMODULES})
