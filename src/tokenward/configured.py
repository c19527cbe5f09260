"""`tokenward.credential("KEY")`: a configured credential in one line.

Why a wrapper: most programs need exactly three things — an `Auth` for their HTTP client, a
token for an SDK, and the manager for status — and should not have to assemble a source, a
store and an expiry rule from the configuration themselves.

    import httpx2, tokenward

    ml = tokenward.credential("ml")
    with httpx2.Client(auth=ml.auth) as client:
        client.get("https://api.mercadolibre.com/users/me")
"""

from __future__ import annotations

import os
import warnings
from typing import Any

from ._compat import renamed_keyword
from .config import Config, CredentialConfig, load_config
from .integrations.httpx import TokenAuth
from .manager import TokenManager
from .sessions import Sessions
from .token import Token

__all__ = ["Credential", "credential"]


class Credential:
    """A configured credential: `.auth`, `.token()`, `await .atoken()`, `.manager`."""

    def __init__(self, config: CredentialConfig, manager: TokenManager) -> None:
        #: The credential's key: its `[credentials.KEY]` table, its record in the store.
        self.key = config.name
        self.config = config
        self.manager = manager
        self.auth = TokenAuth(manager)

    def token(self) -> Token:
        """A valid token (`.access_token` for SDKs, `.authorization` for a header). A
        session-scoped credential raises `SessionScoped`: use `sessions()`."""
        return self.manager.token()

    def sessions(self, **options: Any) -> Sessions:
        """Sessions of a session-scoped credential (HeyGen, LiveAvatar, OpenAI Realtime): a
        fresh token per session, never cached or stored, with the preset's session calls.
        `options` go to `Sessions` (`stop_timeout`, `hooks`, ...)."""
        return self.config.sessions(**options)

    async def atoken(self) -> Token:
        """`token()` for asyncio code."""
        return await self.manager.atoken()

    def close(self) -> None:
        """Wait for a refresh in flight to reach the store, then release the HTTP client
        (`TokenManager.close`); later refreshes raise `ManagerClosed`."""
        self.manager.close()

    async def aclose(self) -> None:
        """`close()` for asyncio code (does not block the event loop)."""
        await self.manager.aclose()

    def __enter__(self) -> Credential:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    async def __aenter__(self) -> Credential:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    @property
    def name(self) -> str:
        """Deprecated: the credential's `key`."""
        warnings.warn(
            "Credential.name is deprecated; use Credential.key", DeprecationWarning, stacklevel=2
        )
        return self.key

    def __repr__(self) -> str:
        return f"Credential({self.key!r}, grant={self.config.grant!r})"


def credential(
    key: str | None = None,
    config: str | os.PathLike[str] | Config | None = None,
    **deprecated: Any,
) -> Credential:
    """The credential `key` (its `[credentials.KEY]` table) from the configuration (found as
    `tokenward.config` describes: explicit path, `TOKENWARD_CONFIG`, `./tokenward.toml`, the
    user config directory). `name=` is the deprecated spelling of `key=`."""
    key = renamed_keyword(key, deprecated, old="name", new="key", call="tokenward.credential")
    loaded = config if isinstance(config, Config) else load_config(config)
    settings = loaded.credential_config(key)
    return Credential(settings, settings.manager(loaded.store_for(settings)))
