"""A configured credential at run time, as the broker's routes use it.

Its `TokenManager` is built on first use: secrets are resolved then, so one missing secret
does not take the other credentials down. A session-scoped credential also has its `Sessions`
(each broker session opens one upstream session through it); session-scoped and
API-key-exchange credentials mint a fresh token per vending call, never cached, through
`Sessions.amint`: the broker never drives the refresh protocol (`flow`) itself.
"""

from __future__ import annotations

from dataclasses import dataclass

import httpx2

from ..config import CredentialConfig
from ..errors import TokenReused
from ..manager import TokenManager
from ..sessions import Sessions
from ..stores.base import Store
from ..token import Token
from .auth import BrokerError

__all__ = ["BrokerCredential"]


@dataclass
class BrokerCredential:
    """A configured credential, its manager (built on first use: secrets are resolved then,
    so one missing secret does not take the other credentials down) and, for session-scoped
    ones, its `Sessions`."""

    config: CredentialConfig
    store: Store
    _manager: TokenManager | None = None
    _sessions: Sessions | None = None
    _minter: Sessions | None = None
    _origin: tuple[str, str, int | None] | None = None
    _base_url: tuple[str | None] | None = None

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def base_url(self) -> str | None:
        """`base_url` from the settings (read once: the proxy asks on every request)."""
        if self._base_url is None:
            value = self.config.provider.base_url
            self._base_url = (str(value) if value else None,)
        return self._base_url[0]

    @property
    def origin(self) -> tuple[str, str, int | None]:
        """(scheme, host, port) of `base_url`, parsed once (the proxy checks every upstream
        URL against it)."""
        if self._origin is None:
            base = httpx2.URL(self.base_url or "")
            self._origin = (base.scheme, base.host, base.port)
        return self._origin

    @property
    def api_key(self) -> bool:
        """Whether the secret is an API key in the configuration (not a login's token)."""
        return self.config.grant == "api_key"

    @property
    def mints(self) -> bool:
        """Session-scoped and API-key-exchange tokens are minted per call, never cached."""
        return self.config.session_scoped or self.config.grant == "api_key"

    @property
    def manager(self) -> TokenManager:
        if self._manager is None:
            self._manager = self.config.manager(self.store)
        return self._manager

    @property
    def sessions(self) -> Sessions:
        if self._sessions is None:
            if not self.config.session_scoped:
                raise BrokerError(
                    400, "not_session_scoped", f"credential {self.name!r} has no sessions"
                )
            hooks = self.config.session_hooks(keep_alive_interval=None)  # clients drive it
            self._sessions = self.config.sessions(hooks=hooks)
        return self._sessions

    @property
    def lifetime_basis(self) -> str:
        """Where a minted token's `expires_at` comes from: the provider's answer, the
        preset's (documented or assumed) lifetime, or nowhere."""
        provider = self.config.provider
        if provider.expires_in_path or provider.expires_at_path:
            return "provider"
        return "preset" if provider.default_lifetime else "unknown"

    @property
    def minter(self) -> Sessions:
        """What mints this credential's per-call tokens: a session-scoped credential's own
        `Sessions` (one memory of the tokens handed out, by sessions and vending alike), or
        for an API-key exchange a `Sessions` of its source used only to mint."""
        if self._minter is None:
            if self.config.session_scoped:
                self._minter = self.sessions
            else:
                self._minter = Sessions(self.manager.source, key=self.name)
        return self._minter

    async def mint(self, client: httpx2.AsyncClient) -> Token:
        """A brand-new token (never cached, never stored, never handed out twice)."""
        try:
            return await self.minter.amint(client)
        except TokenReused:
            raise BrokerError(
                502, "token_reused", f"{self.name}: the provider repeated a token"
            ) from None

    async def aclose(self) -> None:
        """Let a refresh in flight reach the store (its answer may carry the only valid
        refresh token), then release the manager's and the sessions' HTTP clients."""
        if self._manager is not None:
            await self._manager.aclose()
        if self._sessions is not None:
            await self._sessions.aclose()
        if self._minter is not None and self._minter is not self._sessions:
            await self._minter.aclose()
