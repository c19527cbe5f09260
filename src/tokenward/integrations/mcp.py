"""tokenward for MCP clients: OAuth 2.1 to remote MCP servers, one refresh per expiry across
every process of an agent platform.

The `mcp` SDK's `OAuthClientProvider` refreshes in-process and keeps its tokens in memory,
reading its `TokenStorage` once: N agent processes sharing a user's grant each refresh on their
own, and a rotating refresh token (OAuth 2.1 requires rotation for public clients) is spent
twice, which an authorization server that detects reuse answers by revoking the grant. Here:

- `StoreTokenStorage`: the SDK's `TokenStorage` protocol over any tokenward store (SQLite,
  Redis, PostgreSQL, JSON file, encrypted). One record per grant (the key is the credential
  name, e.g. `mcp:alice`); the client registration and the token endpoint live beside the
  tokens in the record (`extra["mcp"]`, the client secret in `extra["mcp_client_secret"]`, so
  the encrypted store seals it), which is all a worker needs to refresh without discovery.
- `McpOAuth`: a drop-in `OAuthClientProvider` (an `httpx2.Auth`, which is what the SDK's
  streamable-HTTP client and fastmcp's `Client(auth=...)` take) whose tokens come from a
  `TokenManager`: proactive refresh, one refresh per expiry across threads, tasks and processes
  (store lease + compare-and-set), the rotated refresh token persisted before the new access
  token is used, one replay of a request answered 401 (`_replay.replay_flow`, shared with every
  tokenward integration), and `invalid_grant` persisted as `needs_reauth` and raised as
  `McpLoginRequired`, which names the command that fixes it.

Reused from the SDK, unchanged: protected-resource metadata discovery (RFC 9728, from the
401's `WWW-Authenticate` or the well-known URLs), authorization-server metadata discovery
(RFC 8414 / OpenID, with the SDK's issuer checks), dynamic client registration (RFC 7591, or
a client-ID metadata document), the PKCE authorization-code flow with its state and RFC 9207
`iss` checks, the RFC 8707 `resource` parameter, the scope selection and step-up: all of it
runs in the SDK's own `OAuthClientProvider._auth_flow`, which `McpOAuth` calls when a person
has to (re)authorize and redirect/callback handlers were given (`tokenward login` does).

Replaced, because in-process state cannot be right across processes: where the tokens come
from (the store, re-read whenever the hot token is due, never a per-process copy), the refresh
(tokenward's refresh flow under the store lease, instead of the SDK's inline refresh under an
`anyio.Lock`), what a 401 does (an `invalidate` + replay that adopts a token another process
already refreshed, instead of an immediate full re-authorization), and what a refused refresh
does (one `needs_reauth` state every process sees, instead of each process clearing its own
tokens and starting a browser flow no worker can finish). A headless worker (no handlers)
never starts an interactive flow: it raises `McpLoginRequired`.

Not handled here: a 403 `insufficient_scope` step-up is returned to the caller as it is (a
person must grant the wider scope: `tokenward login` with `--scope`).

The module is a little over 500 lines: the SDK's storage protocol, the provider and the
interactive login are three faces of one integration that share its record layout.
"""

from __future__ import annotations

import time
from collections.abc import AsyncGenerator, Awaitable, Callable, Generator
from dataclasses import dataclass, field, replace
from typing import Any

import httpx2

try:
    from mcp.client.auth import OAuthClientProvider
    from mcp.shared.auth import (
        AuthorizationCodeResult,
        OAuthClientInformationFull,
        OAuthClientMetadata,
        OAuthToken,
    )
except ImportError as exc:  # pragma: no cover - the `mcp` extra is optional
    raise ImportError(
        "tokenward.integrations.mcp needs the `mcp` package: pip install 'tokenward[mcp]'"
    ) from exc

from .. import events
from ..errors import ReauthorizationRequired, TokenwardError
from ..manager import TokenManager
from ..sources.base import PriorGrant
from ..sources.oauth2 import ClientAuth, RefreshTokenGrant
from ..stores.base import Record, Store
from .httpx import TokenAuth

__all__ = [
    "MCP_EXTRA",
    "McpLoginRequired",
    "McpOAuth",
    "McpRefreshGrant",
    "McpRegistration",
    "StoreTokenStorage",
    "default_client_metadata",
]

#: `Record.extra` entries holding an MCP grant's registration (kept across refreshes).
MCP_EXTRA = "mcp"
MCP_SECRET_EXTRA = "mcp_client_secret"

#: The SDK's token-endpoint auth methods -> tokenward's client authentication.
_CLIENT_AUTH: dict[str | None, ClientAuth] = {
    None: "none",
    "none": "none",
    "client_secret_basic": "basic",
    "client_secret_post": "body",
}


class McpLoginRequired(ReauthorizationRequired):
    """A person must log in to the MCP server (again): no grant is stored under the credential,
    it lacks its registration, or the authorization server refused it (`invalid_grant`, a
    revoked grant). The message names the command that fixes it; never a secret."""

    def __init__(self, credential: str, server_url: str, cause: str, error: str = "login") -> None:
        self.credential = credential
        self.server_url = server_url
        self.error = error
        self.description = None
        self.answer_lost = False
        TokenwardError.__init__(
            self,
            f"credential {credential!r} for the MCP server {server_url}: {cause}. Log in: "
            f"`tokenward login {server_url} --name {credential}` (or pass redirect and callback "
            "handlers to McpOAuth for an interactive login).",
        )


# -- the registration stored beside a grant -------------------------------------------------------
@dataclass(frozen=True, slots=True)
class McpRegistration:
    """What refreshing an MCP grant needs, stored in the grant's record: the client (from
    dynamic registration or preconfigured), the token endpoint and the RFC 8707 resource."""

    server_url: str
    token_endpoint: str | None = None
    resource: str | None = None
    issuer: str | None = None
    client: dict[str, Any] = field(default_factory=dict)
    client_secret: str | None = field(default=None, repr=False)

    @classmethod
    def from_record(cls, record: Record | PriorGrant | None) -> McpRegistration | None:
        data = record.extra.get(MCP_EXTRA) if record is not None else None
        if not isinstance(data, dict) or not isinstance(data.get("server_url"), str):
            return None
        secret = record.extra.get(MCP_SECRET_EXTRA) if record is not None else None
        client = data.get("client")
        return cls(
            server_url=data["server_url"],
            token_endpoint=data.get("token_endpoint"),
            resource=data.get("resource"),
            issuer=data.get("issuer"),
            client=dict(client) if isinstance(client, dict) else {},
            client_secret=secret if isinstance(secret, str) else None,
        )

    def to_extra(self) -> dict[str, Any]:
        """The record's `extra` entries for this registration (the secret apart, so that the
        encrypted store seals it)."""
        data = {
            "server_url": self.server_url,
            "token_endpoint": self.token_endpoint,
            "resource": self.resource,
            "issuer": self.issuer,
            "client": self.client,
        }
        extra: dict[str, Any] = {MCP_EXTRA: {k: v for k, v in data.items() if v is not None}}
        if self.client_secret:
            extra[MCP_SECRET_EXTRA] = self.client_secret
        return extra

    @property
    def client_id(self) -> str | None:
        value = self.client.get("client_id")
        return value if isinstance(value, str) and value else None

    def client_info(self) -> OAuthClientInformationFull | None:
        if self.client_id is None:
            return None
        return OAuthClientInformationFull.model_validate(
            {**self.client, "client_secret": self.client_secret}
        )


def _with_extra(record: Record, extra: dict[str, Any]) -> dict[str, Any]:
    merged = dict(record.extra)
    merged.update(extra)
    if MCP_SECRET_EXTRA not in extra:
        merged.pop(MCP_SECRET_EXTRA, None)
    return merged


# -- TokenStorage over a tokenward store ----------------------------------------------------------
class StoreTokenStorage:
    """The `mcp` SDK's `TokenStorage` over any tokenward store, one record per grant.

    Usable on its own with the SDK's `OAuthClientProvider` (persistent tokens and client
    registration in SQLite, Redis, PostgreSQL ...); `McpOAuth` uses it so that a login made
    through the SDK's flow lands in the record its `TokenManager` refreshes. `set_tokens`
    returns once the record is durably written (the store's compare-and-set), so a rotated
    refresh token is persisted before the access token that came with it is used.

    A grant in `needs_reauth` reads as "no tokens": the SDK then goes straight to a new
    authorization instead of presenting a refresh token the server already refused.
    """

    def __init__(self, store: Store, key: str, server_url: str) -> None:
        self.store = store
        self.key = key
        self.server_url = server_url
        #: Set by `McpOAuth`: where the SDK's discovery found the token endpoint and resource.
        self.discovered: Callable[[], dict[str, str | None]] | None = None

    async def get_tokens(self) -> OAuthToken | None:
        record = await self.store.aload(self.key)
        if record is None or record.state != "ok" or not record.access_token:
            return None
        expires_in = None
        if record.expires_at is not None:
            expires_in = max(int(record.expires_at - time.time()), 0)
        return OAuthToken(
            access_token=record.access_token,
            token_type="Bearer",
            expires_in=expires_in,
            scope=record.scope,
            refresh_token=record.refresh_token,
        )

    async def set_tokens(self, tokens: OAuthToken) -> None:
        now = time.time()
        expires_at = None if tokens.expires_in is None else now + float(tokens.expires_in)

        def change(current: Record) -> Record:
            registration = self._registration(current)
            return current.successor(
                access_token=tokens.access_token,
                token_type=tokens.token_type,
                expires_at=expires_at,
                refresh_token=tokens.refresh_token or current.refresh_token,
                scope=tokens.scope or current.scope,
                obtained_at=now,
                state="ok",
                last_error=None,
                extra=_with_extra(current, registration.to_extra()),
            )

        new = await self._update(change)
        events.emit("token.seeded", self.key, version=new.version)

    async def get_client_info(self) -> OAuthClientInformationFull | None:
        record = await self.store.aload(self.key)
        registration = McpRegistration.from_record(record)
        return registration.client_info() if registration is not None else None

    async def set_client_info(self, client_info: OAuthClientInformationFull) -> None:
        client = client_info.model_dump(mode="json", exclude_none=True)
        secret = client.pop("client_secret", None)

        def change(current: Record) -> Record:
            registration = replace(self._registration(current), client=client, client_secret=secret)
            return current.successor(extra=_with_extra(current, registration.to_extra()))

        await self._update(change)

    def _registration(self, current: Record) -> McpRegistration:
        """The stored registration, updated with what this process's discovery found."""
        stored = McpRegistration.from_record(current) or McpRegistration(self.server_url)
        found: dict[str, Any] = self.discovered() if self.discovered is not None else {}
        found = {name: value for name, value in found.items() if value is not None}
        return replace(stored, server_url=self.server_url, **found)

    async def _update(self, change: Callable[[Record], Record]) -> Record:
        while True:
            current = await self.store.aload(self.key) or Record(self.key)
            new = change(current)
            if await self.store.acompare_and_set(new, current.version):
                return new

    def __repr__(self) -> str:
        return f"StoreTokenStorage({self.key!r}, store={self.store!r})"


# -- the refresh source ---------------------------------------------------------------------------
@dataclass(repr=False)
class McpRefreshGrant(RefreshTokenGrant):
    """`grant_type=refresh_token` against the token endpoint stored with the grant, as the
    client the grant was registered for (with the RFC 8707 `resource` the SDK sends): the
    request is `RefreshTokenGrant`'s, configured from the record on every refresh, so a worker
    needs no discovery and a re-login with a new registration takes effect at once."""

    token_url: str = ""
    client_id: str = ""
    server_url: str = ""
    kept_extra = frozenset({MCP_EXTRA, MCP_SECRET_EXTRA})

    def build_request(self, prior: PriorGrant | None) -> Any:
        registration = McpRegistration.from_record(prior)
        key = prior.key if prior is not None else "?"
        if registration is None or registration.client_id is None:
            raise McpLoginRequired(
                key, self.server_url, "the stored grant carries no MCP client registration"
            )
        if registration.token_endpoint is None:
            raise McpLoginRequired(
                key, registration.server_url, "the stored grant names no token endpoint"
            )
        method = registration.client.get("token_endpoint_auth_method")
        if method not in _CLIENT_AUTH:
            raise McpLoginRequired(
                key,
                registration.server_url,
                f"the client was registered with token_endpoint_auth_method {method!r}, which "
                "tokenward cannot apply",
            )
        configured = replace(
            self,
            token_url=registration.token_endpoint,
            client_id=registration.client_id,
            client_secret=registration.client_secret,
            client_auth=_CLIENT_AUTH[method],
            extra_params={"resource": registration.resource} if registration.resource else {},
        )
        return RefreshTokenGrant.build_request(configured, prior)

    def describe(self) -> str:
        return f"McpRefreshGrant({self.server_url or 'registration stored with the grant'})"


# -- the auth -------------------------------------------------------------------------------------
def default_client_metadata(
    redirect_uri: str = "http://127.0.0.1/callback",
    scope: str | None = None,
    client_name: str = "tokenward",
) -> OAuthClientMetadata:
    """Registration metadata for a public client (PKCE, no secret) with a loopback redirect."""
    return OAuthClientMetadata.model_validate(
        {
            "client_name": client_name,
            "redirect_uris": [redirect_uri],
            "grant_types": ["authorization_code", "refresh_token"],
            "response_types": ["code"],
            "token_endpoint_auth_method": "none",
            "scope": scope,
        }
    )


class McpOAuth(OAuthClientProvider):
    """An `OAuthClientProvider` on tokenward's engine: pass it wherever the SDK takes one.

    >>> auth = McpOAuth("https://mcp.example.com/mcp", "mcp:alice", store)
    >>> async with Client(streamable_http_client(url, http_client=httpx2.AsyncClient(auth=auth)))
    >>> fastmcp.Client(url, auth=auth)

    `key` names the grant in `store` (one per end user on an agent platform). Without
    `redirect_handler` and `callback_handler` the auth never starts a login: a missing or
    refused grant raises `McpLoginRequired`. With them, the SDK's own authorization flow runs
    (discovery, registration, PKCE) and its result is stored under `key`. `manager_options`
    go to the `TokenManager` (`policy`, `retry`, `lease_ttl`, ...). Close with `aclose()`.
    """

    requires_response_body = False  # tokenward reads a body only when an answer needs it

    def __init__(
        self,
        server_url: str,
        key: str,
        store: Store | None = None,
        *,
        client_metadata: OAuthClientMetadata | None = None,
        redirect_handler: Callable[[str], Awaitable[None]] | None = None,
        callback_handler: Callable[[], Awaitable[AuthorizationCodeResult]] | None = None,
        client_metadata_url: str | None = None,
        **manager_options: Any,
    ) -> None:
        if store is None:
            from ..stores.default import default_store

            store = default_store()
        self.key = key
        self.store = store
        self.storage = StoreTokenStorage(store, key, server_url)
        super().__init__(
            server_url,
            client_metadata or default_client_metadata(),
            self.storage,
            redirect_handler=redirect_handler,
            callback_handler=callback_handler,
            client_metadata_url=client_metadata_url,
        )
        self.storage.discovered = self._discovered
        self.manager = TokenManager(
            key, McpRefreshGrant(server_url=server_url), store, **manager_options
        )
        self._auth = TokenAuth(self.manager)
        self._force_login = False
        #: A usable grant was seen in the store: from then on the manager serves every request
        #: (no store read on the hot path) until it reports that a login is needed.
        self._ready = False

    @property
    def interactive(self) -> bool:
        """Whether this auth may start a login (it was given redirect and callback handlers)."""
        return (
            self.context.redirect_handler is not None and self.context.callback_handler is not None
        )

    def _discovered(self) -> dict[str, str | None]:
        """What the SDK's discovery found in this process (stored with the grant at login)."""
        ctx = self.context
        token_endpoint = self._get_token_endpoint() if ctx.oauth_metadata is not None else None
        resource = (
            ctx.get_resource_url()
            if ctx.should_include_resource_param(ctx.protocol_version)
            else None
        )
        return {
            "token_endpoint": token_endpoint,
            "resource": resource,
            "issuer": str(ctx.oauth_metadata.issuer) if ctx.oauth_metadata else None,
        }

    async def _grant_ready(self) -> bool:
        record = await self.store.aload(self.key)
        registration = McpRegistration.from_record(record)
        return (
            record is not None
            and record.state == "ok"
            and bool(record.refresh_token or record.access_token)
            and registration is not None
            and registration.token_endpoint is not None
        )

    def _login_required(self, cause: str, error: str = "login") -> McpLoginRequired:
        return McpLoginRequired(self.key, self.context.server_url, cause, error)

    async def _auth_flow(self, request: httpx2.Request) -> AsyncGenerator[httpx2.Request, Any]:
        """The stored grant through tokenward's replay flow; the SDK's login flow only when a
        person must authorize and can (handlers given); else `McpLoginRequired`."""
        stored = not self._force_login and (self._ready or await self._grant_ready())
        self._ready = stored
        logging_in = not stored and self.interactive
        if stored:
            inner = self._auth.async_auth_flow(request)
        elif logging_in:
            inner = self._login_flow(request)
        else:
            inner = self._anonymous(request)
        response: Any = None
        try:
            while True:
                try:
                    outgoing = await inner.asend(response)
                except StopAsyncIteration:
                    return
                except McpLoginRequired:
                    self._ready = False
                    raise
                except ReauthorizationRequired as exc:
                    self._ready = False
                    if not self.interactive or logging_in:
                        raise self._login_required(_refused(exc), exc.error) from None
                    events.emit("mcp.login_started", self.key, reason=exc.error)
                    await inner.aclose()
                    inner, response, logging_in = self._login_flow(request), None, True
                    continue
                response = yield outgoing
        finally:
            await inner.aclose()

    async def login(self, timeout: float = 30.0) -> Record:
        """Log in now (the SDK's discovery, registration and PKCE flow through the handlers),
        whatever is stored, and return the stored record. `tokenward login URL` uses it; an
        agent platform calls it once per end user."""
        if not self.interactive:
            raise ValueError("McpOAuth.login() needs redirect_handler and callback_handler")
        self._force_login = True
        try:
            async with httpx2.AsyncClient(auth=self, timeout=timeout) as client:
                answer = await client.post(
                    self.context.server_url,
                    json={"jsonrpc": "2.0", "id": 0, "method": "ping"},
                    headers={"Accept": "application/json, text/event-stream"},
                )
        finally:
            self._force_login = False
        record = await self.store.aload(self.key)
        if record is None or not record.access_token or answer.status_code == 401:
            raise self._login_required(
                f"the login did not produce a grant (the server answered HTTP {answer.status_code})"
            )
        return record

    async def _anonymous(self, request: httpx2.Request) -> AsyncGenerator[httpx2.Request, Any]:
        """No grant and no way to get one here: the server may not need one; a 401 says it does."""
        response = yield request
        if response.status_code == 401:
            raise self._login_required("no usable grant is stored under this credential")

    async def _login_flow(self, request: httpx2.Request) -> AsyncGenerator[httpx2.Request, Any]:
        """The SDK's own flow from a clean slate: its registration is reused from the store,
        its tokens are not (a refused grant must not be refreshed again)."""
        self._initialized = True
        self.context.current_tokens = None
        self.context.token_expiry_time = None
        self.context.client_info = await self.storage.get_client_info()
        flow = super()._auth_flow(request)
        response: Any = None
        try:
            while True:
                try:
                    outgoing = await flow.asend(response)
                except StopAsyncIteration:
                    return
                response = yield outgoing
        finally:
            await flow.aclose()

    def sync_auth_flow(self, request: httpx2.Request) -> Generator[httpx2.Request, Any, None]:
        """For sync `httpx2.Client`s: the stored grant only (a login needs the async SDK)."""
        try:
            yield from self._auth.sync_auth_flow(request)
        except ReauthorizationRequired as exc:
            raise self._login_required(_refused(exc), exc.error) from None

    async def aclose(self) -> None:
        """Wait for a refresh in flight (its answer may hold the only valid refresh token)."""
        await self.manager.aclose()

    def close(self) -> None:
        self.manager.close()

    def __repr__(self) -> str:
        return f"McpOAuth({self.context.server_url!r}, key={self.key!r})"


def _refused(exc: ReauthorizationRequired) -> str:
    """Why the grant needs a login, in the engine's words, without its generic advice."""
    text = str(exc).removeprefix(f"credential {exc.credential!r}: ")
    return text.split(". Log in again (`tokenward login", 1)[0]
